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
from finpulse.service import read_pid
from finpulse.settings import Settings
from stack import LocalStack, StackError
from tests.conftest import TEST_KAFKA_PORT, TEST_POSTGRES_PORT
from tests.finpulse.test_service import unrelated  # noqa: F401 - a fixture: a live `sleep` that is none of ours

pytestmark = pytest.mark.slow


@pytest.fixture
def own_settings(tmp_path_factory):
    home = tmp_path_factory.mktemp("lifecycle")
    # Checkpoints outside HOME (FINPULSE_PIPELINE_CHECKPOINT_DIR): a purge follows them there.
    return Settings(home=home, kafka_port=TEST_KAFKA_PORT + 100, kafka_controller_port=TEST_KAFKA_PORT + 101,
                    postgres_port=TEST_POSTGRES_PORT + 20, pipeline_checkpoint_dir=home.with_name(home.name + "-cp"))


def _environment(settings: Settings) -> dict[str, str]:
    return {**os.environ, "FINPULSE_HOME": str(settings.home), "FINPULSE_KAFKA_PORT": str(settings.kafka_port),
            "FINPULSE_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
            "FINPULSE_POSTGRES_PORT": str(settings.postgres_port),
            "FINPULSE_PIPELINE_CHECKPOINT_DIR": str(settings.pipeline_checkpoint_dir)}


def _topics(settings):
    client = admin(settings)
    try:
        return set(client.list_topics())
    finally:
        client.close()


def test_up_twice_down_up_keeps_data_then_purge_takes_every_derived_state(own_settings):
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
        # Secrets and the files holding them are the owner's only.
        assert own_settings.postgres_password_file.stat().st_mode & 0o777 == 0o600
        assert (own_settings.home / "kafka" / "server.properties").stat().st_mode & 0o777 == 0o600

        # `stack down --purge` takes along every piece of state made from the data, and says what it deleted.
        files = _derived_state(own_settings)
        cluster = own_settings.home / "postgres" / "cluster"  # as root: a link into the postgres user's home
        outside = [f"deleted {cluster.resolve()} (Postgres cluster (in the postgres user's home))"] \
            if cluster.is_symlink() else []
        kept_log = own_settings.home / "pipeline" / "pipeline.log"
        kept_log.write_text("the operator's history\n")
        out = subprocess.run([sys.executable, "-m", "finpulse", "stack", "down", "--purge"],
                             env=_environment(own_settings), capture_output=True, text=True, timeout=180)
    finally:
        local.down(purge=True)
    assert out.returncode == 0, out.stderr
    home = own_settings.home
    for what, path in files.items():
        assert not path.exists(), what
    assert not (home / "kafka").exists() and not (home / "postgres").exists()
    assert kept_log.read_text() == "the operator's history\n"  # a log is not derived from the data
    said = [line.split(" stack: ", 1)[1] for line in out.stderr.splitlines() if " stack: deleted " in line]
    assert said == [
        f"deleted {home / 'postgres'} (Postgres cluster and its password)",
        *outside,
        f"deleted {home / 'kafka'} (Kafka data and configuration)",
        f"deleted {own_settings.pipeline_checkpoint_dir} (pipeline checkpoints)",
        f"deleted {home / 'pipeline' / 'queries'} (pipeline progress files)",
        f"deleted {home / 'demo'} (demo replay marker)",
        f"deleted {home / 'ingest'} (ingest replay positions and seen-store)",
    ]
    assert [line for line in out.stdout.splitlines() if line.startswith("deleted ")] == said  # and on stdout


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


def _derived_state(settings: Settings) -> dict[str, Path]:
    """Files of every piece of state a purge must take along: as the pipeline, `finpulse run` and ingest write them."""
    from pipeline.job import checkpoint_root

    home = settings.home
    files = {
        "checkpoint": checkpoint_root(settings) / "finpulse-documents" / "commits" / "0",
        "progress": settings.pipeline_progress_file("finpulse-documents"),
        "demo marker": home / "demo" / "stock_market_tweets_2020.replayed",
        "seen-store": home / "ingest" / "seen.sqlite3",
        "replay position": home / "ingest" / "replay" / "replay-0123456789abcdef.json",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    return files


def test_purge_is_refused_while_the_pipeline_runs_and_deletes_nothing(own_settings):
    from finpulse.service import write_pid_file

    files = _derived_state(own_settings)
    pid_file = own_settings.home / "pipeline" / "pipeline.pid"
    runner = subprocess.Popen(["sleep", "60"])
    try:
        write_pid_file(pid_file, runner.pid)
        with pytest.raises(StackError, match=rf"the pipeline service is running \(pid {runner.pid}\).*"
                                             "`finpulse pipeline stop`"):
            LocalStack(own_settings).down(purge=True)
        assert all(path.exists() for path in files.values())
        assert runner.poll() is None
    finally:
        runner.kill()
        runner.wait()


def test_purge_of_an_external_kafka_and_postgres_keeps_ingest_and_pipeline_state(own_settings):
    external = own_settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    from pydantic import SecretStr

    external = external.model_copy(update={"database_url": SecretStr("postgresql+psycopg2://u:p@127.0.0.1:1/x")})
    files = _derived_state(external)
    assert LocalStack(external).down(purge=True) == []  # nothing of theirs was purged: their state stays valid
    assert all(path.exists() for path in files.values())


def test_a_stale_kafka_pid_file_naming_another_process_signals_nothing(own_settings, unrelated):
    from finpulse.service import ProcessIdentity

    kafka = LocalStack(own_settings).components[1]
    kafka.dir.mkdir(parents=True)
    me = ProcessIdentity.of(unrelated.pid)
    # What our broker left: its pid (now the sleep's) with the start time and command line it had.
    kafka.pid_file.write_text(ProcessIdentity(me.pid, me.start_ticks - 100, ("java", "kafka.Kafka")).to_json())
    assert read_pid(kafka.pid_file) is None  # what status() reports
    kafka.pid_file.write_text(ProcessIdentity(me.pid, me.start_ticks - 100, ("java", "kafka.Kafka")).to_json())
    kafka.down()
    assert unrelated.poll() is None and not kafka.pid_file.exists()


def test_a_stale_postmaster_pid_naming_another_process_signals_nothing(own_settings, unrelated):
    postgres = LocalStack(own_settings).components[0]
    data = own_settings.home / "postgres" / "cluster" / "data"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    # Postgres's own lock file: pid, data dir, start time (epoch seconds), port, ...
    (data / "postmaster.pid").write_text(f"{unrelated.pid}\n{data}\n1000000000\n{own_settings.postgres_port}\n")
    postgres.down()  # pg_ctl stop would SIGINT the pid in the lock file
    assert unrelated.poll() is None
    assert not (data / "postmaster.pid").exists()  # Postgres would refuse to start over it


def test_secrets_are_private_from_the_first_byte(tmp_path, monkeypatch):
    """write_private: the file is 0600 when the secret is written (not chmod-ed after), whatever the umask,
    and a stale copy left readable by others is replaced."""
    from stack.base import write_private

    seen = []
    real_write = os.write

    def spy(fd, data):
        seen.append((os.fstat(fd).st_mode & 0o777, bytes(data)))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy)
    stale = tmp_path / "password"
    stale.write_text("old\n")
    stale.chmod(0o644)
    old_umask = os.umask(0)
    try:
        write_private(stale, "s3cret\n")
    finally:
        os.umask(old_umask)
    assert seen == [(0o600, b"s3cret\n")]
    assert stale.read_text() == "s3cret\n" and stale.stat().st_mode & 0o777 == 0o600
