"""Shared fixtures.

The ``stack`` fixture starts a real local stack (Apache Kafka in KRaft mode and a Postgres
cluster) once per test session, under its own state dir and ports so it never touches the
operator's ``./var`` stack, and stops it at the end. Tests that use it are marked ``stack``.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from finpulse.db import scratch_database  # a new migrated database per use; the stack tests import it from here

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Two checkouts can run their suites side by side by moving the test ports.
TEST_KAFKA_PORT = int(os.environ.get("FINPULSE_TEST_KAFKA_PORT", "29092"))
TEST_POSTGRES_PORT = int(os.environ.get("FINPULSE_TEST_POSTGRES_PORT", "54339"))

# Set before any finpulse import reads the environment; a session-wide, test-only stack.
TEST_ENV = {
    "FINPULSE_HOME": os.environ.get("FINPULSE_TEST_HOME", str(REPO / "var" / "test-stack")),
    "FINPULSE_CACHE_DIR": str(REPO / "var" / "cache"),
    "FINPULSE_KAFKA_PORT": str(TEST_KAFKA_PORT),
    "FINPULSE_KAFKA_CONTROLLER_PORT": str(TEST_KAFKA_PORT + 1),
    "FINPULSE_POSTGRES_PORT": str(TEST_POSTGRES_PORT),
    "FINPULSE_PIPELINE_METRICS_PORT": "0",  # a test that scrapes the job's /metrics gives it a free port
}
# The operator's own external services and Kafka security settings must not leak into the tests.
for _key in [k for k in os.environ if k in ("FINPULSE_DATABASE_URL", "FINPULSE_KAFKA_BOOTSTRAP")
             or k.startswith(("FINPULSE_KAFKA_SECURITY_", "FINPULSE_KAFKA_SASL_", "FINPULSE_KAFKA_SSL_"))]:
    os.environ.pop(_key, None)
os.environ.update(TEST_ENV)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "stack" in item.fixturenames:
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def settings():
    from finpulse.settings import Settings, get_settings

    get_settings.cache_clear()
    return Settings()


@pytest.fixture(scope="session")
def stack(settings):
    """A running local Kafka broker + Postgres with the schema migrated; yields their Settings."""
    from finpulse import db
    from stack import LocalStack

    local = LocalStack(settings)
    # Reuse a test stack another pytest run already started (and leave it to that run to stop);
    # tests never depend on the stack being empty: they use fresh topics, ids and databases.
    already_running = all(s.healthy for s in local.status() if s.name in ("kafka", "postgres"))
    local.up()
    db.migrate(db.engine(settings))
    yield settings
    if not already_running:
        local.down()


@pytest.fixture
def unique_topic(stack):
    """A fresh topic name per test, so tests never see each other's messages."""
    return f"test.{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for servers a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fresh_db(stack):
    """A new, migrated database on the test cluster for one test, dropped afterwards.

    Yields Settings whose ``database_url`` points at it; for a subprocess, pass
    ``FINPULSE_DATABASE_URL=settings.database_url.get_secret_value()`` in its environment.
    """
    with scratch_database(stack) as settings:
        yield settings



DRILLS_DIR = REPO / "var" / "drills"


def record_drill(name: str, figures: dict) -> dict:
    """Write a drill's figures to ``var/drills/<name>.json`` (what README "Drills" quotes) and print them."""
    import importlib.util
    import json
    from datetime import datetime, timezone

    spec = importlib.util.spec_from_file_location("bench_machine", REPO / "bench" / "machine.py")
    machine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(machine)
    out = {"drill": name, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "cpu": machine.cpu_model(), **figures}
    DRILLS_DIR.mkdir(parents=True, exist_ok=True)
    (DRILLS_DIR / f"{name}.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"drill {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    return out
