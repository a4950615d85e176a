"""`finpulse dashboard start | status --json | stop`, as the run command will drive it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

from tests.conftest import free_port


def test_dashboard_service_starts_answers_as_the_analyst_and_stops(seeded_db):
    settings, _, _ = seeded_db
    port = free_port()
    env = {**os.environ, "FINPULSE_HOME": str(settings.home), "FINPULSE_DASHBOARD_PORT": str(port),
           "FINPULSE_DATABASE_URL": settings.database_url.get_secret_value(),
           "FINPULSE_ANALYST_DATABASE_URL": settings.analyst_database_url.get_secret_value()}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "finpulse", "dashboard", *args], env=env, capture_output=True,
                              text=True, timeout=90)

    started = run("start")
    try:
        assert started.returncode == 0, started.stderr
        assert f"http://127.0.0.1:{port}/" in started.stdout
        report = json.loads(run("status", "--json").stdout)
        assert report["running"] and report["healthy"] and report["role"] == "finpulse_analyst"
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "_dash-config" in page.text
        assert run("start").returncode == 0  # idempotent: already running
    finally:
        stopped = run("stop")
    assert stopped.stdout.strip() == "dashboard stopped"
    down = run("status", "--json")
    assert down.returncode == 3 and json.loads(down.stdout)["answers"] is False


def test_a_taken_port_is_one_line_naming_the_setting(seeded_db):
    import socket

    settings, _, _ = seeded_db
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = {**os.environ, "FINPULSE_DATABASE_URL": settings.database_url.get_secret_value(),
               "FINPULSE_ANALYST_DATABASE_URL": settings.analyst_database_url.get_secret_value()}
        done = subprocess.run([sys.executable, "-m", "finpulse", "dashboard", "--port", str(busy.getsockname()[1])],
                              env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "FINPULSE_DASHBOARD_PORT" in done.stderr and "Traceback" not in done.stderr
