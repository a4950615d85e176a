"""`finpulse status` against the real test stack: a seeded database, a served dashboard, the real
`finpulse pipeline status --json` subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import sqlalchemy as sa

from finpulse import db
from finpulse.status import Component, Status
from tests.conftest import free_port, scratch_database
from tests.dashboard import seed as seeddata


@pytest.fixture(scope="module")
def system(stack, tmp_path_factory):
    """Seed data, an alert leader with a fresh heartbeat, committed pipeline batches, a dashboard serving."""
    import waitress

    from dashboard.app import create_app

    home = tmp_path_factory.mktemp("status-home")
    with scratch_database(stack) as settings:
        owner = db.engine(settings)
        seeddata.seed(owner)
        with owner.begin() as conn:
            conn.execute(sa.text("INSERT INTO alert_leader (holder, since, heartbeat) VALUES ('host-a:42', now(), now())"))
            conn.execute(sa.text("""
                INSERT INTO pipeline_batches (query_name, batch_id, status, n_input, n_scored, started_at, finished_at,
                                              duration_ms)
                SELECT 'status-test', b, 'committed', 600, 600, now() - interval '1 minute', now() - interval '50 seconds', 2000
                FROM generate_series(1, 3) AS b"""))
        settings = settings.model_copy(update={"home": home, "dashboard_port": free_port()})
        server = waitress.create_server(create_app(settings).server, host="127.0.0.1", port=settings.dashboard_port)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        env = {**os.environ, "FINPULSE_HOME": str(home), "FINPULSE_DATABASE_URL": settings.database_url.get_secret_value(),
               "FINPULSE_ANALYST_DATABASE_URL": settings.analyst_database_url.get_secret_value(),
               "FINPULSE_DASHBOARD_PORT": str(settings.dashboard_port), "FINPULSE_PIPELINE_QUERY_NAME": "status-test",
               "FINPULSE_RECEIVERS_SMTP_PORT": str(free_port()), "FINPULSE_RECEIVERS_WEBHOOK_PORT": str(free_port())}
        yield env, owner, server
        server.close()
        owner.dispose()


def _status(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "finpulse", "status", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_status_shows_every_component_and_says_the_stopped_pipeline_is_not_healthy(system, stack):
    env, owner, _ = system
    done = _status(env, "--json")
    report = json.loads(done.stdout)
    parts = {c["name"]: c for c in report["components"]}
    assert list(parts) == ["broker", "postgres", "pipeline", "alerts", "model", "dashboard", "receivers"]
    assert parts["broker"]["healthy"] and parts["broker"]["address"] == f"127.0.0.1:{stack.kafka_port}"
    assert parts["postgres"]["healthy"] and parts["postgres"]["facts"]["schema_version"] == db.discover()[-1].version
    # No pipeline runs here: down, and so the whole is not healthy (exit 1), with its last batch and rate still shown.
    pipeline = parts["pipeline"]
    assert not pipeline["healthy"] and pipeline["facts"]["running"] is False
    assert pipeline["facts"]["last_batch_id"] == 3 and pipeline["facts"]["docs_per_second"] == round(1800 / 300, 1)
    assert pipeline["facts"]["docs_per_busy_second"] == 300.0
    alerts = parts["alerts"]["facts"]
    assert parts["alerts"]["healthy"] and alerts["leader"] == "host-a:42"
    assert (alerts["firing"], alerts["outbox_pending"], alerts["outbox_dead"]) == (1, 1, 0)
    assert parts["model"]["healthy"] and parts["model"]["address"] == seeddata.MODEL
    assert parts["dashboard"]["healthy"] and parts["dashboard"]["facts"]["model_version"] == seeddata.MODEL
    assert not parts["receivers"]["required"]
    assert report["healthy"] is False and done.returncode == 1

    text = _status(env)
    assert text.returncode == 1 and "NOT healthy: pipeline" in text.stdout.splitlines()[-1]
    assert env["FINPULSE_DATABASE_URL"].split(":")[2].split("@")[0] not in text.stdout  # no password on screen


def test_a_stale_leader_a_dead_message_and_a_silent_dashboard_are_each_down(system):
    env, owner, server = system
    with owner.begin() as conn:
        conn.execute(sa.text("UPDATE alert_leader SET heartbeat = now() - interval '1 hour'"))
    try:
        parts = {c["name"]: c for c in json.loads(_status(env, "--json").stdout)["components"]}
        assert not parts["alerts"]["healthy"] and "heartbeat older than 180s" in parts["alerts"]["detail"]
        with owner.begin() as conn:
            conn.execute(sa.text("UPDATE alert_leader SET heartbeat = now()"))
            conn.execute(sa.text("UPDATE alert_outbox SET state = 'dead' WHERE id = 'msg-acme-hook'"))
        parts = {c["name"]: c for c in json.loads(_status(env, "--json").stdout)["components"]}
        assert not parts["alerts"]["healthy"] and parts["alerts"]["facts"]["outbox_dead"] == 1
    finally:
        with owner.begin() as conn:
            conn.execute(sa.text("UPDATE alert_outbox SET state = 'pending' WHERE id = 'msg-acme-hook'"))
    silent = {**env, "FINPULSE_DASHBOARD_PORT": str(free_port())}
    parts = {c["name"]: c for c in json.loads(_status(silent, "--json").stdout)["components"]}
    assert not parts["dashboard"]["healthy"] and parts["dashboard"]["detail"].startswith("no answer")


def test_health_counts_required_components_only():
    up, down = Component("a", True), Component("b", False)
    assert Status([up, Component("demo", False, required=False)], "t").healthy
    assert not Status([up, down], "t").healthy
