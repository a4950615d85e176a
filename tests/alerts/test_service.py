"""The alert service as real processes: leader election, hot standby, kill -9 mid-delivery, bad rules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from finpulse import db
from tests.alerts.conftest import hour_floor, service_env, surge_series, wait_for, write_rules, write_windows
from tests.conftest import free_port, record_drill


def _start(settings, rules, log_path, **env):
    log = open(log_path, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "finpulse", "alerts", "run", "--rules", str(rules)],
                            env=service_env(settings, **env), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    return proc


def _stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _kill9(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _scalar(engine, sql):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar()


@pytest.fixture
def engine(alert_settings):
    eng = db.engine(alert_settings)
    yield eng
    eng.dispose()


def _seed(engine):
    # Real time: the last closed hour is the last window; the surge is 8..6 hours before it.
    write_windows(engine, surge_series(hour_floor(datetime.now(timezone.utc)), key="ACME"))


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    """The service's /metrics as {(sample name, sorted labels): value}."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_two_instances_exactly_one_sends_and_the_standby_takes_over(engine, alert_settings, tmp_path, hook, mailbox):
    _seed(engine)
    rules = write_rules(tmp_path / "rules.yaml", port=hook.port)
    ports = {"a": free_port(), "b": free_port()}
    a = _start(alert_settings, rules, tmp_path / "a.log", FINPULSE_ALERTS_METRICS_PORT=str(ports["a"]))
    b = _start(alert_settings, rules, tmp_path / "b.log", FINPULSE_ALERTS_METRICS_PORT=str(ports["b"]))
    try:
        wait_for(lambda: _scalar(engine, "SELECT count(*) FROM alert_outbox WHERE state = 'sent'") == 4,
                 what="4 messages sent")
        unique = hook.unique()
        assert len(hook.requests) == 2 and sorted(r.json["status"] for r in unique.values()) == ["firing", "resolved"]
        assert len(mailbox.messages) == 2
        holders = {r[0] for r in engine.connect().execute(sa.text("SELECT DISTINCT holder FROM alert_deliveries"))}
        assert len(holders) == 1  # one instance sent everything
        logs = (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
        assert logs.count("is now the leader") == 1  # the other one never led
        leader = _scalar(engine, "SELECT holder FROM alert_leader")
        leader_proc, standby = (a, b) if leader.endswith(f":{a.pid}") else (b, a)
        assert leader.endswith(f":{leader_proc.pid}")
        # Scraped from the running services: the leader evaluated, queued and sent; the standby did none of it.
        led = wait_for(lambda: (m := _scrape(ports["a" if leader_proc is a else "b"]))[
            ("finpulse_alerts_outbox_pending", (("receiver", "hook"),))] == 0 and m, what="pending 0 scraped")
        stood = _scrape(ports["b" if leader_proc is a else "a"])
        assert led[("finpulse_alerts_is_leader", ())] == 1 and stood[("finpulse_alerts_is_leader", ())] == 0
        for receiver in ("hook", "mail"):
            for event in ("queued", "sent"):
                assert led[("finpulse_alerts_messages_total", (("event", event), ("receiver", receiver)))] == 2
            assert led[("finpulse_alerts_delivery_duration_seconds_count", (("receiver", receiver),))] == 2
            assert ("finpulse_alerts_messages_total", (("event", "failed"), ("receiver", receiver))) not in led
        for event in ("pending", "firing", "resolved"):
            assert led[("finpulse_alerts_transitions_total", (("event", event),))] == 1
        assert led[("finpulse_alerts_evaluations_total", (("result", "evaluated"),))] >= 1
        assert led[("finpulse_alerts_evaluation_duration_seconds_count", ())] >= 1
        assert led[("finpulse_alerts_last_evaluation_timestamp_seconds", ())] > 1.7e9
        assert stood[("finpulse_alerts_evaluations_total", (("result", "standby"),))] >= 1
        assert not any(name == "finpulse_alerts_messages_total" for name, _ in stood)
        _kill9(leader_proc)
        wait_for(lambda: _scalar(engine, "SELECT holder FROM alert_leader").endswith(f":{standby.pid}"),
                 timeout=30, what="the standby to take the lead")
        # The new leader re-evaluates nothing and re-sends nothing.
        wait_for(lambda: _scalar(engine, "SELECT heartbeat > since FROM alert_leader"), what="a heartbeat")
        assert len(hook.requests) == 2 and len(mailbox.messages) == 2
    finally:
        _stop(a)
        _stop(b)


@pytest.mark.drill
def test_kill_9_mid_delivery_then_restart_neither_duplicates_nor_loses(engine, alert_settings, tmp_path, hook):
    _seed(engine)
    hook.delay = 2.0  # the leader is killed while the receiver is still answering
    rules = write_rules(tmp_path / "rules.yaml", port=hook.port, routes="hook", timeout=3)
    first = _start(alert_settings, rules, tmp_path / "first.log")
    try:
        wait_for(hook.started.is_set, what="a delivery in flight")
        _kill9(first)
    finally:
        _stop(first)
    hook.delay = 0.0
    assert _scalar(engine, "SELECT count(*) FROM alert_outbox WHERE state = 'sent'") == 0
    second = _start(alert_settings, rules, tmp_path / "second.log")
    try:
        wait_for(lambda: _scalar(engine, "SELECT count(*) FROM alert_outbox WHERE state = 'sent'") == 2,
                 what="both messages sent after the restart")
    finally:
        _stop(second)
    # The receiver may have seen a message twice in transport (the first answer was lost with the
    # process), always under the same webhook-id: what it keeps is one firing and one resolved.
    unique = hook.unique()
    assert sorted(r.json["status"] for r in unique.values()) == ["firing", "resolved"]
    with engine.connect() as conn:
        ids = {r[0] for r in conn.execute(sa.text("SELECT id FROM alert_outbox"))}
        assert _scalar(engine, "SELECT count(*) FROM alert_notifications") == 2
    assert set(unique) == ids
    record_drill("alerts-kill9-during-delivery", {
        "messages": len(ids), "delivered_distinct_ids": len(unique),
        "requests_received": len(hook.requests), "repeats_of_one_id": len(hook.requests) - len(unique),
        "lost": len(ids - set(unique))})


def test_invalid_rules_refuse_to_start_naming_file_line_and_field(alert_settings, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: x\n    scope: {dimension: all}\n    detector: negative_share\n    width: soon\n")
    result = subprocess.run([sys.executable, "-m", "finpulse", "alerts", "run", "--rules", str(bad)],
                            env=service_env(alert_settings), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"{bad}:5: rules.0.width:" in result.stderr
    result = subprocess.run([sys.executable, "-m", "finpulse", "alerts", "start", "--rules", str(bad)],
                            env=service_env(alert_settings, FINPULSE_HOME=str(tmp_path)), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and f"{bad}:5: rules.0.width:" in result.stderr
    assert not (tmp_path / "alerts" / "alerts.pid").exists()


def test_service_with_the_shipped_rules_runs_on_an_empty_table(alert_settings, tmp_path):
    env = service_env(alert_settings, FINPULSE_HOME=str(tmp_path))
    env.pop("FINPULSE_ALERTS_SMTP_HOST")
    start = subprocess.run([sys.executable, "-m", "finpulse", "alerts", "start"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert start.returncode == 0, start.stderr
    log = tmp_path / "alerts" / "alerts.log"
    try:
        wait_for(lambda: "evaluation skipped: no windows" in log.read_text(), what="an evaluation")
        status = subprocess.run([sys.executable, "-m", "finpulse", "alerts", "status"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert "running" in status.stdout and "leader" in status.stdout
        pid = json.loads((tmp_path / "alerts" / "alerts.pid").read_text())["pid"]
        figures = json.loads(subprocess.run([sys.executable, "-m", "finpulse", "alerts", "status", "--json"], env=env,
                                            capture_output=True, text=True, timeout=60).stdout)
        assert figures["service"]["running"] and figures["service"]["pid"] == pid
        assert figures["leader"]["holder"].endswith(f":{pid}") and 0 <= figures["leader"]["heartbeat_age_seconds"] < 30
        assert figures["last_evaluation"]["skipped"] == "no windows in sentiment_windows yet"
        assert figures["episodes"] == {"firing": 0, "pending": 0} and figures["outbox"] == {"pending": 0, "dead": 0}
    finally:
        stop = subprocess.run([sys.executable, "-m", "finpulse", "alerts", "stop"], env=env, capture_output=True,
                              text=True, timeout=60)
    assert stop.stdout.strip() == "stopped"
    text = log.read_text()
    assert "Traceback" not in text and "receiver email is off" in text


def test_a_taken_metrics_port_is_one_line_naming_the_setting(alert_settings, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "finpulse", "alerts", "run"], capture_output=True, text=True,
                                env=service_env(alert_settings, FINPULSE_ALERTS_METRICS_PORT=str(port)), timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: cannot serve metrics on 127.0.0.1:{port} (Address already in use): set FINPULSE_ALERTS_METRICS_PORT "
        "to a free port, or 0 for no metrics")
