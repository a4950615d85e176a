"""`finpulse stack up | down | status` against real processes, in a state dir of its own."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from finpulse import db
from finpulse.kafka import admin, ensure_topics
from finpulse.settings import Settings
from stack import LocalStack, StackError
from tests.conftest import TEST_KAFKA_PORT, TEST_POSTGRES_PORT

pytestmark = pytest.mark.slow


@pytest.fixture
def own_settings(tmp_path_factory):
    home = tmp_path_factory.mktemp("lifecycle")
    return Settings(home=home, kafka_port=TEST_KAFKA_PORT + 100, kafka_controller_port=TEST_KAFKA_PORT + 101,
                    postgres_port=TEST_POSTGRES_PORT + 20)


def _topics(settings):
    client = admin(settings)
    try:
        return set(client.list_topics())
    finally:
        client.close()


def test_up_twice_down_up_keeps_data_then_purge(own_settings):
    local = LocalStack(own_settings)
    try:
        first = {s.name: s for s in local.up()}
        assert all(s.healthy for s in first.values()), first
        again = {s.name: s for s in local.up()}
        assert again["kafka"].pid == first["kafka"].pid  # second `up` is a no-op
        assert again["postgres"].pid == first["postgres"].pid

        ensure_topics(["keep.me"], settings=own_settings)
        eng = db.engine(own_settings)
        db.migrate(eng)
        with eng.begin() as conn:
            conn.execute(sa.text("INSERT INTO dead_letters (stage, reason) VALUES ('test', 'kept')"))
        eng.dispose()

        local.down()
        assert not any(s.healthy for s in local.status() if s.name != "spark-jars")

        local.up()
        assert "keep.me" in _topics(own_settings)
        eng = db.engine(own_settings)
        with eng.connect() as conn:
            assert conn.execute(sa.text("SELECT reason FROM dead_letters")).scalar() == "kept"
        eng.dispose()
    finally:
        local.down(purge=True)
    assert not (own_settings.home / "kafka").exists()
    assert not (own_settings.home / "postgres").exists()


def test_port_taken_is_a_clear_error(own_settings):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", own_settings.kafka_port))
        blocker.listen()
        local = LocalStack(own_settings)
        try:
            with pytest.raises(StackError, match=f"port {own_settings.kafka_port} .*already taken.*FINPULSE_KAFKA_PORT"):
                local.components[1].up()
        finally:
            local.down(purge=True)


def test_broker_that_exits_during_start_shows_its_log(own_settings):
    broken = own_settings.model_copy(update={"kafka_heap": "1k"})  # the JVM refuses to start
    kafka = LocalStack(broken).components[1]
    try:
        with pytest.raises(StackError, match="exited during start") as info:
            kafka.up()
        assert "heap" in str(info.value).lower()
    finally:
        kafka.down(purge=True)


def test_unreachable_external_urls(own_settings):
    dead = own_settings.model_copy(update={
        "kafka_bootstrap": "127.0.0.1:1",
        "database_url": sa.engine.make_url("postgresql+psycopg2://u:s3cret@127.0.0.1:1/x").render_as_string(False),
    })
    from pydantic import SecretStr

    dead = dead.model_copy(update={"database_url": SecretStr("postgresql+psycopg2://u:s3cret@127.0.0.1:1/x")})
    postgres, kafka, _ = LocalStack(dead).components
    with pytest.raises(StackError, match="external Kafka at 127.0.0.1:1 .*unreachable"):
        kafka.up()
    with pytest.raises(StackError, match="external Postgres at .*unreachable") as info:
        postgres.up()
    assert "s3cret" not in str(info.value)


def test_missing_java_and_maven_say_what_to_install(own_settings, tmp_path):
    env = {**os.environ, "PATH": str(tmp_path), "FINPULSE_HOME": str(own_settings.home),
           "FINPULSE_DATABASE_URL": "postgresql://u:p@127.0.0.1:1/x"}
    code = "from stack.base import require_java; require_java()"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "java not found" in out.stderr and "openjdk-17-jre-headless" in out.stderr
    code = "from stack.base import require_tool; require_tool('mvn', 'apt-get install maven')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "mvn not found" in out.stderr and "apt-get install maven" in out.stderr


def test_status_command_reports_each_component(stack):
    from finpulse.cli import main
    from finpulse.settings import get_settings

    get_settings.cache_clear()
    result = CliRunner().invoke(main, ["stack", "status"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert f"127.0.0.1:{stack.kafka_port}" in lines["kafka"] and " up " in lines["kafka"]
    assert f"127.0.0.1:{stack.postgres_port}" in lines["postgres"] and "pid" in lines["postgres"]
    assert "spark-sql-kafka-0-10_2.13" in lines["spark-jars"]


def test_spark_jars_match_pyspark_and_skip_its_own(stack):
    import pyspark

    from stack import spark_jars
    from stack.jars import artifact_name

    jars = [Path(j) for j in spark_jars(stack)]
    names = {artifact_name(j) for j in jars}
    assert f"spark-sql-kafka-0-10_2.13-{pyspark.__version__}.jar" in {j.name for j in jars}
    shipped = {artifact_name(j) for j in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    assert not names & shipped
    assert "kafka-clients" in names


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch):
    """Kafka's storage tool takes `-t -abc...` for an option: such an id must be drawn again."""
    import uuid

    from stack import kafka

    dash_first = uuid.UUID(bytes=b"\xf8" + b"\x00" * 15)  # base64 of 0b111110.. is '-'
    plain = uuid.UUID(bytes=b"\x00" * 15 + b"\x01")
    draws = iter([dash_first, plain])
    monkeypatch.setattr(kafka.uuid, "uuid4", lambda: next(draws))
    assert kafka.new_cluster_id() == "AAAAAAAAAAAAAAAAAAAAAQ"
