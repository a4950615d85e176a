import os
import shutil
import site
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from finpulse import db

REPO = Path(__file__).resolve().parents[2]

TABLES = {"documents", "document_scores", "document_entities", "sentiment_windows", "dead_letters",
          "pipeline_batches", "alerts", "alert_deliveries", "schema_migrations"}


@pytest.fixture
def empty_db(stack):
    """A fresh, empty database on the test cluster, dropped afterwards."""
    # A name of its own: two checkouts (or engineers) running this file never share it.
    name = f"migrate_test_{uuid.uuid4().hex[:8]}"
    admin = db.engine(stack, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    url = sa.engine.make_url(stack.sqlalchemy_url().get_secret_value()).set(database=name)
    eng = sa.create_engine(url)
    yield eng
    eng.dispose()
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


def test_migrates_up_from_empty_then_is_a_no_op(empty_db):
    assert db.current_version(empty_db) == 0
    applied = db.migrate(empty_db)
    assert applied[0] == "0001_initial"
    assert db.current_version(empty_db) == len(db.discover())
    assert TABLES <= set(sa.inspect(empty_db).get_table_names())
    assert db.migrate(empty_db) == []
    with empty_db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM schema_migrations")).scalar() == len(db.discover())


def test_an_edited_applied_migration_is_refused(empty_db, tmp_path):
    for path in db.SQL_DIR.glob("*.sql"):
        shutil.copy(path, tmp_path / path.name)
    db.migrate(empty_db, tmp_path)
    first = sorted(tmp_path.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(db.MigrationError, match="changed after it was applied"):
        db.migrate(empty_db, tmp_path)


def test_a_failing_migration_rolls_back_and_says_which(empty_db, tmp_path):
    for path in db.SQL_DIR.glob("*.sql"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "9999_broken.sql").write_text("CREATE TABLE half_done (x int); SELECT no_such_column FROM documents;")
    with pytest.raises(db.MigrationError, match="9999_broken.sql failed"):
        db.migrate(empty_db, tmp_path)
    assert "half_done" not in sa.inspect(empty_db).get_table_names()
    assert 9999 not in db.applied_versions(empty_db)


def test_the_sinks_upserts_on_natural_keys_are_idempotent(fresh_db):
    """The project's own upsert code (pipeline.sink), with a key twice in one batch and again later."""
    from datetime import datetime, timedelta, timezone

    import pandas as pd

    from pipeline.sink import PostgresSink
    from tests.pipeline.test_sink import T0, dl_row, doc_row

    eng = db.engine(fresh_db)
    sink = PostgresSink(eng, query_name="db-test", widths="1m,1h", lateness="1d")
    started = datetime.now(timezone.utc)

    # ON CONFLICT cannot touch one row twice in a statement: the sink must dedupe first.
    first = pd.DataFrame([doc_row("db-test-1", T0, offset=1, text="first"),
                          doc_row("db-test-1", T0, offset=2, text="replayed"), dl_row(3), dl_row(3)])
    report = sink.write_batch(0, first, scorer_name="test", started_at=started)
    assert (report.n_documents, report.n_dead, report.n_duplicates) == (1, 1, 2)
    with eng.connect() as conn:  # the record with the highest offset wins
        assert conn.execute(sa.text("SELECT text, kafka_offset FROM documents")).all() == [("replayed", 2)]
    again = pd.DataFrame([doc_row("db-test-1", T0 + timedelta(seconds=1), offset=5, text="edited"), dl_row(3)])
    sink.write_batch(1, again, scorer_name="test", started_at=started)
    with eng.connect() as conn:
        assert conn.execute(sa.text("SELECT id, text, kafka_offset, batch_id FROM documents")).all() == [
            ("db-test-1", "edited", 5, 1)]
        assert conn.execute(sa.text("SELECT count(*) FROM document_scores")).scalar() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM dead_letters")).scalar() == 1
        assert conn.execute(sa.text(
            "SELECT width_seconds, n_docs FROM sentiment_windows WHERE dimension = 'all' ORDER BY 1")).all() == [
            (60, 1), (3600, 1)]
    eng.dispose()


def test_scratch_database_is_migrated_and_dropped_even_when_the_body_fails(stack):
    names = []
    with pytest.raises(RuntimeError, match="boom"):
        with db.scratch_database(stack, prefix="scratch_test") as settings:
            eng = db.engine(settings)
            try:
                assert db.current_version(eng) == max(m.version for m in db.discover())
                with eng.connect() as conn:
                    names.append(conn.execute(sa.text("SELECT current_database()")).scalar())
                    conn.execute(sa.text("SELECT 1"))  # a connection left open: the drop forces it off
                    raise RuntimeError("boom")
            finally:
                eng.dispose()
    assert names[0].startswith("scratch_test_")
    admin = db.engine(stack)
    with admin.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": names[0]}).scalar() == 0
    admin.dispose()


def _finpulse(*args: str, **env: str) -> subprocess.CompletedProcess:
    # The test stack's FINPULSE_* variables come from tests/conftest.py's environment.
    environ = {**{k: v for k, v in os.environ.items() if k != "FINPULSE_DATABASE_URL"}, **env}
    return subprocess.run([sys.executable, "-m", "finpulse", *args], capture_output=True, text=True, env=environ,
                          timeout=120)


def test_the_url_db_url_prints_works_as_finpulse_database_url(stack):
    """`finpulse db url --show-password` prints libpq's postgresql://..., which SQLAlchemy 2.1 alone maps to
    psycopg 3 (not installed): finpulse reads it, and postgres://, as psycopg2."""
    printed = _finpulse("db", "url", "--show-password")
    assert printed.returncode == 0, printed.stderr
    url = printed.stdout.strip()
    assert url.startswith("postgresql://finpulse:") and url.endswith(f"@127.0.0.1:{stack.postgres_port}/finpulse")
    for given in (url, url.replace("postgresql://", "postgres://", 1)):
        out = _finpulse("db", "status", FINPULSE_DATABASE_URL=given)
        assert out.returncode == 0, out.stderr
        assert "Traceback" not in out.stderr
        assert [line.split()[1] for line in out.stdout.splitlines()] == ["applied"] * len(db.discover())


def test_libpq_query_parameters_reach_the_connection(fresh_db):
    from pydantic import SecretStr

    from stack.postgres import probe_postgres

    base = fresh_db.database_url.get_secret_value().replace("postgresql+psycopg2://", "postgresql://", 1)

    def with_query(query: str):
        return fresh_db.model_copy(update={"database_url": SecretStr(f"{base}?{query}")})

    settings = with_query("sslmode=disable&application_name=finpulse-x")
    eng = db.engine(settings)
    try:
        with eng.connect() as conn:
            assert conn.execute(sa.text("SHOW application_name")).scalar() == "finpulse-x"
            assert conn.execute(sa.text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar() is False
    finally:
        eng.dispose()
    assert probe_postgres(settings.sqlalchemy_url().get_secret_value()) is None
    # The test cluster has no TLS: sslmode=require reaching libpq is what makes these fail.
    required = with_query("sslmode=require")
    eng = db.engine(required)
    try:
        with pytest.raises(sa.exc.OperationalError, match="server does not support SSL"):
            eng.connect()
    finally:
        eng.dispose()
    assert "server does not support SSL" in probe_postgres(required.sqlalchemy_url().get_secret_value())


def test_migrate_refuses_a_folder_without_migrations(empty_db, tmp_path):
    with pytest.raises(db.MigrationError, match=f"no migration files \\(NNNN_name.sql\\) in {tmp_path}"):
        db.migrate(empty_db, tmp_path)
    assert db.applied_versions(empty_db) == []


@pytest.mark.slow
def test_a_non_editable_install_ships_and_applies_the_migrations(empty_db, tmp_path):
    """`pip install .` (a wheel, no editable link to the checkout) into a new venv: `finpulse db migrate` there
    finds the migrations inside the installed package and applies them.

    The venv sees this venv's dependencies through a .pth line (the base interpreter has none of them),
    but not its editable finpulse: that is only reachable through a .pth *file* of this venv, which a
    path added by a .pth line does not run.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site_packages = next((venv / "lib").glob("python3*/site-packages"))
    (site_packages / "finpulse_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    source = tmp_path / "source"  # a clean copy: an in-tree build would reuse a stale build/ folder
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", "var", ".git", "build", "*.egg-info",
                                                               "__pycache__", ".pytest_cache", "bench", "tests"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-build-isolation", str(source)], check=True, timeout=600,
                   capture_output=True)
    env = {**os.environ, "FINPULSE_DATABASE_URL": empty_db.url.render_as_string(hide_password=False)}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import finpulse.db; print(finpulse.db.SQL_DIR)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, check=True)
    assert Path(where.stdout.strip()) == site_packages / "finpulse" / "sql"
    out = subprocess.run([str(venv / "bin" / "finpulse"), "db", "migrate"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in db.discover())
    assert out.stdout.strip() == f"applied {names}; schema at version {len(db.discover())}"
