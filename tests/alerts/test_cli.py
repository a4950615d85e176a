"""The `finpulse alerts` commands as an operator runs them: check, backtest, silence, verify."""

from __future__ import annotations

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
    assert f"{(end - timedelta(hours=31)).isoformat()} -> {(end - timedelta(hours=27)).isoformat()}  ticker-share  ticker=ACME" in out
    assert "ACME slumps" in out and "first story" in out
    # It wrote and sent nothing.
    engine = db.engine(alert_settings)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alerts")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM alert_outbox")).scalar() == 0
    engine.dispose()
    assert not hook.requests
    empty = _cli(alert_settings, "backtest", "--since", "2020-01-01", "--until", "2020-01-02", "--rules", str(rules))
    assert empty.returncode == 0 and "0 episode(s)" in empty.stdout


def test_check_once_dry_run_then_for_real(alert_settings, tmp_path, hook):
    engine = db.engine(alert_settings)
    write_windows(engine, surge_series(hour_floor(datetime.now(timezone.utc)), key="ACME"))
    rules = write_rules(tmp_path / "rules.yaml", port=hook.port, routes="hook")
    dry = _cli(alert_settings, "check", "--once", "--dry-run", "--rules", str(rules))
    assert dry.returncode == 0, dry.stderr
    assert "would send firing to hook" in dry.stdout and '"version": "4"' in dry.stdout
    assert not hook.requests
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alert_outbox")).scalar() == 0
    real = _cli(alert_settings, "check", "--once", "--rules", str(rules))
    assert real.returncode == 0, real.stderr
    assert sorted(r.json["status"] for r in hook.requests) == ["firing", "resolved"]
    engine.dispose()


def test_silence_add_list_expire(alert_settings):
    added = _cli(alert_settings, "silence", "add", "--dimension", "ticker", "--key", "ACME", "--duration", "2h",
                 "--author", "ana", "--comment", "earnings call")
    assert added.returncode == 0, added.stderr
    sid = added.stdout.split()[1].rstrip(":")
    listed = _cli(alert_settings, "silence", "list")
    assert "active" in listed.stdout and "key=ACME" in listed.stdout and "by ana: earnings call" in listed.stdout
    assert _cli(alert_settings, "silence", "expire", sid).returncode == 0
    assert "no silences" in _cli(alert_settings, "silence", "list").stdout
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
    assert ok.returncode == 0 and "valid: msg_1" in ok.stdout
    (tmp_path / "body.json").write_text(body.replace("firing", "resolved"))
    bad = _cli(alert_settings, *args, FINPULSE_ALERTS_WEBHOOK_SECRET=SECRET)
    assert bad.returncode == 1 and "INVALID" in bad.stderr
