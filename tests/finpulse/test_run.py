"""`finpulse run` (what `make run` calls): the stack, the pipeline service, the sample replayed once (`finpulse ingest demo`).

Runs against the shared test broker and a scratch database as *external* services (so it starts
nothing embedded), with its own topics and state dir, and a 120-row slice of the sample.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa

from tests.conftest import free_port, scratch_database
from tests.pipeline.conftest import REPO

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.stack]

LIMIT = 120


def _counts(settings) -> dict[str, int]:
    from finpulse import db

    engine = db.engine(settings)
    try:
        with engine.connect() as conn:
            return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
                    for t in ("documents", "document_scores", "document_entities", "dead_letters", "sentiment_windows")}
    finally:
        engine.dispose()


def test_finpulse_run_replays_the_sample_once_and_reports(stack, tmp_path):
    tag = uuid.uuid4().hex[:10]
    with scratch_database(stack) as settings:
        env = {
            **os.environ,
            "FINPULSE_HOME": str(tmp_path / "home"),
            "FINPULSE_KAFKA_BOOTSTRAP": ",".join(stack.bootstrap_servers),
            "FINPULSE_DATABASE_URL": settings.database_url.get_secret_value(),
            "FINPULSE_TOPIC_DOCUMENTS": f"test.run.{tag}.docs",
            "FINPULSE_TOPIC_DEAD_LETTERS": f"test.run.{tag}.dl",
            "FINPULSE_SPARK_MASTER": "local[2]",
            "FINPULSE_PIPELINE_TRIGGER": "1s",
            "OMP_NUM_THREADS": "1",
            # the services `finpulse run` starts for the demo, on ports of their own
            "FINPULSE_RECEIVERS_SMTP_PORT": str(free_port()),
            "FINPULSE_RECEIVERS_WEBHOOK_PORT": str(free_port()),
            "FINPULSE_DASHBOARD_PORT": str(free_port()),
            "FINPULSE_ALERTS_METRICS_PORT": "0",
        }

        def finpulse(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "finpulse", *args], cwd=REPO, env=env, capture_output=True,
                                  text=True, timeout=timeout)

        try:
            first = finpulse("run", "--demo-limit", str(LIMIT), "--wait", "400", "--alerts-wait", "90")
            assert first.returncode == 0, first.stdout + first.stderr
            counts = _counts(settings)
            assert counts["documents"] + counts["dead_letters"] == LIMIT, (counts, first.stdout)
            assert counts["document_scores"] == counts["documents"] > LIMIT // 2
            assert counts["sentiment_windows"] > 0 and counts["document_entities"] > 0
            assert re.search(rf"In Postgres now: {counts['documents']} documents", first.stdout), first.stdout
            assert "Top tickers:" in first.stdout and "SELECT" in first.stdout
            # the demo's services and where the alerts land, said in the summary
            assert re.search(r"^receivers +running", first.stdout, re.M), first.stdout + first.stderr
            assert f"Dashboard: http://127.0.0.1:{env['FINPULSE_DASHBOARD_PORT']}/" in first.stdout, first.stdout
            assert "Alert evaluation:" in first.stdout and re.search(r"^Alerts: (none fired|\d+ fired)", first.stdout, re.M)
            assert "Mail caught:" in first.stdout and "Webhooks received:" in first.stdout
            # progress while it waited, and the line that ended the wait
            assert re.search(r"pipeline: [\d,]+ records scored, none to go", first.stdout), first.stdout

            status = finpulse("pipeline", "status")
            assert status.returncode == 0 and "running" in status.stdout and "lag: 0" in status.stdout, status.stdout

            second = finpulse("run", "--demo-limit", str(LIMIT), "--wait", "400", "--alerts-wait", "30")
            assert second.returncode == 0, second.stdout + second.stderr
            assert "already replayed" in second.stdout and "already running" in second.stdout
            assert _counts(settings) == counts
        finally:
            stop = finpulse("pipeline", "stop", timeout=180)
            finpulse("alerts", "stop", timeout=120)
            finpulse("dashboard", "stop", timeout=60)
            subprocess.run([sys.executable, "-m", "stack.receivers", "stop"], cwd=REPO, env=env, timeout=60)
        assert stop.returncode == 0 and "pipeline stopped" in stop.stdout, stop.stdout + stop.stderr
        log = (tmp_path / "home" / "pipeline" / "pipeline.log").read_text()
        # SIGTERM stopped it between batches: the job said so and exited through its own path.
        assert "stop requested (SIGTERM)" in log and "stopped after" in log, log[-3000:]


def test_every_query_make_run_prints_runs(fresh_db):
    """The summary prints sql/examples/for_analysts.sql (tests/finpulse/test_analyst.py checks each query's
    answers as the analyst) and runs its top-tickers query: all must run on the schema."""
    from finpulse import db
    from finpulse.run import TOP_TICKERS_SQL, analyst_examples, analyst_examples_file
    from tests.finpulse.test_analyst import EXAMPLES, example_queries

    assert analyst_examples_file().resolve() == EXAMPLES.resolve()
    printed = analyst_examples()
    queries = [q for _, q in example_queries()]
    assert len(queries) == 5 and all(" ".join(q.split()[:3]) in " ".join(printed.split()) for q in queries)
    engine = db.engine(fresh_db)
    try:
        with engine.connect() as conn:
            for statement in queries + [TOP_TICKERS_SQL]:
                conn.execute(sa.text(statement)).all()
    finally:
        engine.dispose()


def test_progress_counts_records_to_go_per_partition_and_gives_an_eta():
    from finpulse.run import progress_line, records_to_go

    ends = {"docs": {"0": 100, "1": 50, "2": 0}, "dl": {"0": 3}}
    assert records_to_go(ends, {}) == 153
    assert records_to_go(ends, {"docs": {"0": 100, "1": 20}, "dl": {"0": 5}}) == 30  # never negative
    assert progress_line(1240, 3760, 148.0) == "1,240 records scored, 3,760 to go (148/s, about 25 s left)"
    assert progress_line(0, 5000, None) == "0 records scored, 5,000 to go (the first batch loads the model)"


# --- the demo's alert path: receivers, alert service, signed webhook, `finpulse alerts verify` --------------

def test_the_demo_alert_reaches_the_mail_catcher_and_the_webhook_receiver_and_verifies(fresh_db, tmp_path):
    """What `finpulse run` wires up for the demo, piece by piece with the real services: the alert
    environment it gives its children (demo_alert_env), the receivers started as a background service
    with it, the alert service started with it on the shipped rules, a market surge in the windows; the
    alert is mailed to the catcher and posted, signed, to the webhook receiver, and `finpulse alerts
    verify --saved` checks the received file with the secret from the demo's secret file."""
    import json
    import stat
    import time
    from datetime import datetime, timedelta, timezone

    from finpulse import db
    from finpulse.inbox import demo_secret_file, mail_dir, webhook_dir
    from finpulse.run import demo_alert_env, demo_webhook_url
    from stack import LocalStack
    from tests.alerts.conftest import add_documents, hour_floor, surge_series, write_windows

    home = tmp_path / "home"
    ports = {"FINPULSE_RECEIVERS_SMTP_PORT": str(free_port()), "FINPULSE_RECEIVERS_WEBHOOK_PORT": str(free_port())}
    settings = fresh_db.model_copy(update={"home": home, "receivers_smtp_port": int(ports["FINPULSE_RECEIVERS_SMTP_PORT"]),
                                           "receivers_webhook_port": int(ports["FINPULSE_RECEIVERS_WEBHOOK_PORT"])})
    alert_env = demo_alert_env(settings, environ={})
    secret_file = demo_secret_file(settings)
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600 and secret_file.is_relative_to(home)
    assert alert_env["FINPULSE_ALERTS_WEBHOOK_SECRET"] == secret_file.read_text().strip()
    assert alert_env["FINPULSE_ALERTS_WEBHOOK_URL"] == demo_webhook_url(settings)
    assert alert_env["FINPULSE_ALERTS_SMTP_STARTTLS"] == "false" and alert_env["FINPULSE_ALERTS_SMTP_PORT"] == ports[
        "FINPULSE_RECEIVERS_SMTP_PORT"]
    assert demo_alert_env(settings, environ={}) == alert_env  # generated once
    assert "FINPULSE_ALERTS_WEBHOOK_URL" not in demo_alert_env(settings, environ={"FINPULSE_ALERTS_WEBHOOK_URL": "x"})

    base = {**os.environ, "FINPULSE_HOME": str(home), "FINPULSE_DATABASE_URL": fresh_db.database_url.get_secret_value(),
            **ports, "FINPULSE_ALERTS_SETTLE_SECONDS": "0", "FINPULSE_ALERTS_METRICS_PORT": "0",
            "FINPULSE_ALERTS_DELIVERY_INTERVAL_SECONDS": "0.5"}
    base.pop("FINPULSE_ALERTS_WEBHOOK_SECRET", None)
    env = {**base, **alert_env}

    def run(*argv, env=env, timeout=120):
        return subprocess.run(list(argv), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)

    # a market-wide surge the shipped market rule fires on: 100 documents an hour, 10% negative, then two
    # hours of 200 at 50%
    end = hour_floor(datetime.now(timezone.utc))
    engine = db.engine(fresh_db)
    try:
        write_windows(engine, surge_series(end, key="all", dimension="all", surge_at=(1, 0), quiet=(100, 10),
                                           surge=(200, 100)))
        add_documents(engine, key="all", start=end - timedelta(hours=1), dimension="all")
    finally:
        engine.dispose()

    started = run(sys.executable, "-m", "stack.receivers", "start")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        alerts = run(sys.executable, "-m", "finpulse", "alerts", "start")
        assert alerts.returncode == 0, alerts.stdout + alerts.stderr
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (list(mail_dir(settings).glob("*.eml"))
                                                   and list(webhook_dir(settings).glob("*.json"))):
            time.sleep(0.5)
        mails, hooks = list(mail_dir(settings).glob("*.eml")), list(webhook_dir(settings).glob("*.json"))
        log = (home / "alerts" / "alerts.log")
        assert mails and hooks, log.read_text()[-3000:] if log.exists() else "no alerts log"
    finally:
        run(sys.executable, "-m", "finpulse", "alerts", "stop")
        stopped = LocalStack(settings).stop_demo_services()  # what `finpulse stack down` does for them
    assert stopped == ["receivers"]
    mail = mails[0].read_text()
    assert "market-negative-share" in mail and "analysts@finpulse.localhost" in mail
    record = json.loads(hooks[0].read_text())
    assert record["verified"] is True and record["path"] == "/finpulse/alerts"
    assert json.loads(record["body"])["alerts"][0]["labels"]["alertname"] == "market-negative-share"

    # verify: the secret from the demo's file (the variable unset), ok on the file as received ...
    ok = run(sys.executable, "-m", "finpulse", "alerts", "verify", "--saved", str(hooks[0]), env=base)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: msg_"), ok.stdout + ok.stderr
    assert secret_file.read_text().strip() not in ok.stdout + ok.stderr
    # ... mismatch on a body changed after signing, or with another secret
    record["body"] = record["body"].replace("firing", "resolved")
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(record))
    bad = run(sys.executable, "-m", "finpulse", "alerts", "verify", "--saved", str(tampered), env=base)
    assert bad.returncode == 1 and bad.stderr.startswith("mismatch:"), bad.stdout + bad.stderr
    other = run(sys.executable, "-m", "finpulse", "alerts", "verify", "--saved", str(hooks[0]),
                env={**base, "FINPULSE_ALERTS_WEBHOOK_SECRET": "whsec_" + "A" * 32})
    assert other.returncode == 1 and "mismatch" in other.stderr
