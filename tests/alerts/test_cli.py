"""The `finpulse alerts` commands as an operator runs them: check, backtest, silence, verify."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from alerts.notify import sign
from finpulse import db
from tests.alerts.conftest import SECRET, add_documents, hour_floor, service_env, surge_series, write_rules, write_windows


def _cli(settings, *args, **env):
    return subprocess.run([sys.executable, "-m", "finpulse", "alerts", *args], env=service_env(settings, **env),
                          capture_output=True, text=True, timeout=120)


def _invoke(settings, monkeypatch, *args):
    """The same command in this process (no interpreter start: seconds less per call)."""
    from click.testing import CliRunner

    from alerts.cli import cli
    from finpulse.settings import get_settings

    for name, value in service_env(settings).items():
        if name.startswith("FINPULSE_"):
            monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, list(args))
    finally:
        get_settings.cache_clear()


def test_backtest_lists_the_episode_with_its_evidence(alert_settings, tmp_path, hook):
    engine = db.engine(alert_settings)
    end = datetime(2026, 10, 5, 0, tzinfo=timezone.utc)
    write_windows(engine, surge_series(end, key="ACME", hours=72, surge_at=(30, 29, 28)))
    fired_window = end - timedelta(hours=30)
    add_documents(engine, key="ACME", start=fired_window)
    engine.dispose()
    rules = write_rules(tmp_path / "rules.yaml", port=hook.port)
    result = _cli(alert_settings, "backtest", "--since", "2026-10-03T00:00", "--until", "2026-10-05", "--rules", str(rules))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "1 episode(s)" in out
    assert "2026-10-03 17:00 UTC -> 2026-10-03 21:00 UTC  ticker-share  ticker=ACME  warning" in out
    assert "fired at 2026-10-03 19:00 UTC; peak statistic +" in out
    assert "    evidence: share 66.7% vs " in out and "60 documents, 40 negative" in out
    assert "    - [0.73] ACME slumps #3 — wire, 2026-10-03 18:08 UTC (first story)" in out  # p_negative 0.73, first story
    # It wrote and sent nothing.
    engine = db.engine(alert_settings)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alerts")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM alert_outbox")).scalar() == 0
    engine.dispose()
    assert not hook.requests
    empty = _cli(alert_settings, "backtest", "--since", "2020-01-01", "--until", "2020-01-02", "--rules", str(rules))
    assert empty.returncode == 0 and "0 episode(s)" in empty.stdout


def test_check_once_dry_run_then_for_real(alert_settings, tmp_path, hook, monkeypatch):
    engine = db.engine(alert_settings)
    write_windows(engine, surge_series(hour_floor(datetime.now(timezone.utc)), key="ACME"))
    rules = write_rules(tmp_path / "rules.yaml", port=hook.port, routes="hook")
    dry = _cli(alert_settings, "check", "--once", "--dry-run", "--rules", str(rules))
    assert dry.returncode == 0, dry.stderr
    assert "would send firing to hook" in dry.stdout and '"version": "4"' in dry.stdout
    assert not hook.requests
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alert_outbox")).scalar() == 0
    never = json.loads(_invoke(alert_settings, monkeypatch, "status", "--json").output)
    assert never["last_evaluation"] is None  # a dry run records nothing, not even that it ran
    real = _cli(alert_settings, "check", "--once", "--rules", str(rules))
    assert real.returncode == 0, real.stderr
    assert sorted(r.json["status"] for r in hook.requests) == ["firing", "resolved"]
    status = json.loads(_invoke(alert_settings, monkeypatch, "status", "--json").output)
    assert status["database"] == {"ok": True} and status["leader"] is None  # no service ran
    assert status["service"]["running"] is False
    assert status["episodes"] == {"firing": 0, "pending": 0} and status["outbox"] == {"pending": 0, "dead": 0}
    last = status["last_evaluation"]
    assert last["holder"] == "check" and last["windows"] == 2 * 24 and last["transitions"] == 3  # two rules
    assert last["messages"] == 2 and last["skipped"] is None and 0 <= last["age_seconds"] < 60
    engine.dispose()


def test_silence_add_list_expire(alert_settings, monkeypatch):
    added = _cli(alert_settings, "silence", "add", "--dimension", "ticker", "--key", "ACME", "--duration", "2h",
                 "--author", "ana", "--comment", "earnings call")
    assert added.returncode == 0, added.stderr
    sid = added.stdout.split()[1].rstrip(":")
    assert added.stdout.split()[2] == "active"
    later = (datetime.now(timezone.utc) + timedelta(hours=3)).isoformat()
    pending = _invoke(alert_settings, monkeypatch, "silence", "add", "--key", "BETA", "--starts", later, "--duration",
                      "1h", "--author", "bo", "--comment", "tonight's maintenance")
    assert pending.exit_code == 0 and pending.output.split()[2] == "pending", pending.output
    listed = _cli(alert_settings, "silence", "list")
    lines = listed.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].split()[:2] == [sid, "active"] and "key=ACME" in lines[0] and "by ana: earnings call" in lines[0]
    assert lines[1].split()[1] == "pending" and "key=BETA" in lines[1]
    as_json = [json.loads(line)
               for line in _invoke(alert_settings, monkeypatch, "silence", "list", "--json").output.splitlines()]
    assert [(s["key_pattern"], s["state"]) for s in as_json] == [("ACME", "active"), ("BETA", "pending")]
    assert as_json[1]["starts_at"] == datetime.fromisoformat(later).isoformat() and as_json[1]["author"] == "bo"
    assert _cli(alert_settings, "silence", "expire", sid).returncode == 0
    assert "key=ACME" not in _cli(alert_settings, "silence", "list").stdout
    assert "expired" in _cli(alert_settings, "silence", "list", "--all").stdout
    again = _cli(alert_settings, "silence", "expire", sid)
    assert again.returncode != 0 and "no active silence" in again.stderr
    bad = _cli(alert_settings, "silence", "add", "--duration", "soon", "--author", "a", "--comment", "c")
    assert bad.returncode != 0 and "--duration" in bad.stderr


def test_verify_accepts_a_good_signature_and_rejects_a_tampered_body(tmp_path, alert_settings):
    body = '{"status":"firing"}'
    headers = sign(SECRET, "msg_1", body)
    (tmp_path / "body.json").write_text(body)
    args = ["verify", str(tmp_path / "body.json")] + [x for k, v in headers.items() for x in ("-H", f"{k}: {v}")]
    ok = _cli(alert_settings, *args, FINPULSE_ALERTS_WEBHOOK_SECRET=SECRET)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: msg_1"), ok.stdout + ok.stderr
    (tmp_path / "body.json").write_text(body.replace("firing", "resolved"))
    bad = _cli(alert_settings, *args, FINPULSE_ALERTS_WEBHOOK_SECRET=SECRET)
    assert bad.returncode == 1 and bad.stderr.startswith("mismatch:"), bad.stderr


def _commands(help_text: str) -> set[str]:
    """The command names a click --help lists under "Commands:" (the first word of each entry)."""
    section = help_text.split("Commands:\n", 1)[1]
    return {line.split()[0] for line in section.splitlines() if line.startswith("  ") and line.split()}


def test_help_lists_exactly_the_alerts_commands():
    from click.testing import CliRunner

    from alerts.cli import cli

    top = CliRunner().invoke(cli, ["--help"])
    assert top.exit_code == 0
    assert _commands(top.output) == {"backtest", "check", "run", "silence", "start", "status", "stop", "validate",
                                     "verify"}
    silence = CliRunner().invoke(cli, ["silence", "--help"])
    assert _commands(silence.output) == {"add", "expire", "list"}
    for command in (["status"], ["silence", "list"]):
        assert "--json" in CliRunner().invoke(cli, [*command, "--help"]).output.split("Options:", 1)[1]
