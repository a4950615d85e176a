import shutil

import pytest
import sqlalchemy as sa

from finpulse import db

TABLES = {"documents", "document_scores", "document_entities", "sentiment_windows", "dead_letters",
          "pipeline_batches", "alerts", "alert_deliveries", "schema_migrations"}


@pytest.fixture
def empty_db(stack):
    """A fresh, empty database on the test cluster, dropped afterwards."""
    name = "migrate_test"
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


def test_upserts_on_natural_keys_are_idempotent(stack):
    eng = db.engine(stack)
    upsert = sa.text("""
        INSERT INTO documents (id, schema_version, source, kind, text, published_at, fetched_at, batch_id)
        VALUES ('db-test-1', 1, 'test', 'news', :text, now(), now(), :batch)
        ON CONFLICT (id) DO UPDATE SET text = EXCLUDED.text, batch_id = EXCLUDED.batch_id
    """)
    with eng.begin() as conn:
        conn.execute(upsert, {"text": "first", "batch": 1})
        conn.execute(upsert, {"text": "replayed", "batch": 1})
        rows = conn.execute(sa.text("SELECT text FROM documents WHERE id = 'db-test-1'")).all()
        conn.execute(sa.text("DELETE FROM documents WHERE id = 'db-test-1'"))
    assert rows == [("replayed",)]
