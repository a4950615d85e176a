import shutil
import uuid

import pytest
import sqlalchemy as sa

from finpulse import db

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
