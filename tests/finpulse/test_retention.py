"""Retention (finpulse/retention.py, `finpulse db prune`) on a real Postgres."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from finpulse import db
from finpulse.retention import prune, window_class
from finpulse.settings import retention_age

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
MV = "m@1"
# document id -> age
DOCS = {"d-45d": timedelta(days=45), "d-31d": timedelta(days=31), "d-30d-1m": timedelta(days=30, minutes=1),
        "d-29d": timedelta(days=29), "d-1h": timedelta(hours=1)}
# (width_seconds, age of window_start) -> kept with the default settings?
WINDOWS = {
    (60, timedelta(hours=47)): True, (60, timedelta(hours=49)): False, (60, timedelta(days=5)): False,
    (300, timedelta(hours=49)): False,  # 5-minute windows count as minute windows
    (3600, timedelta(days=89)): True, (3600, timedelta(days=91)): False, (3600, timedelta(days=400)): False,
    (86400, timedelta(days=400)): True, (86400, timedelta(days=2000)): True,
}


def _fill(engine) -> None:
    with engine.begin() as conn:
        for doc_id, age in DOCS.items():
            t = NOW - age
            conn.execute(sa.text("""
                INSERT INTO documents (id, schema_version, source, kind, title, text, published_at, fetched_at)
                VALUES (:id, 1, 's', 'news', :id, 'the full text of ' || :id, :t, :t)"""), {"id": doc_id, "t": t})
            conn.execute(sa.text("""
                INSERT INTO document_scores (document_id, model_version, published_at, sentiment, p_negative,
                                             p_neutral, p_positive) VALUES (:id, :mv, :t, 'negative', 0.8, 0.1, 0.1)"""),
                {"id": doc_id, "mv": MV, "t": t})
            conn.execute(sa.text("INSERT INTO document_entities (document_id, entity) VALUES (:id, 'ACME')"), {"id": doc_id})
        for (width, age), _ in WINDOWS.items():
            for key in ("A", "B", "C"):  # three rows per (width, age): several batches of 2
                start = NOW - age
                conn.execute(sa.text("""
                    INSERT INTO sentiment_windows (dimension, key, window_start, window_end, model_version, n_docs)
                    VALUES ('ticker', :k, :s, :e, :mv, 1)"""),
                    {"k": key, "s": start, "e": start + timedelta(seconds=width), "mv": MV})


def _state(engine) -> tuple[dict[str, str], set[tuple[int, timedelta]]]:
    with engine.connect() as conn:
        texts = dict(conn.execute(sa.text("SELECT id, text FROM documents")).all())
        windows = {(r.width_seconds, NOW - r.window_start) for r in conn.execute(sa.text(
            "SELECT DISTINCT width_seconds, window_start FROM sentiment_windows"))}
    return texts, windows


@pytest.fixture
def filled(fresh_db):
    engine = db.engine(fresh_db)
    _fill(engine)
    yield fresh_db.model_copy(update={"retention_batch_size": 2}), engine
    engine.dispose()


def test_prune_empties_old_text_and_deletes_old_windows_per_width_class_in_batches(filled):
    settings, engine = filled
    dry = prune(engine, settings, now=NOW, dry_run=True)
    assert _state(engine)[0]["d-45d"] != ""  # a dry run changes nothing
    report = prune(engine, settings, now=NOW)
    texts, windows = _state(engine)
    assert {k for k, v in texts.items() if v == ""} == {"d-45d", "d-31d", "d-30d-1m"}
    assert texts["d-29d"] == "the full text of d-29d"
    assert windows == {key for key, kept in WINDOWS.items() if kept}
    assert report.documents_text_pruned == dry.documents_text_pruned == 3
    expected = {60: 6, 300: 3, 3600: 6}
    assert report.windows_deleted == expected and {k: v for k, v in dry.windows_deleted.items() if v} == expected
    # Batches of 2 rows: 3 documents take 2 batches + the empty one that ends the loop, and so on.
    assert report.batches == (2 + 1) + (3 + 1) + (2 + 1) + (3 + 1)
    with engine.connect() as conn:
        # Only the text goes: the row, its scores and entity links stay, marked with when.
        kept = conn.execute(sa.text(
            "SELECT d.title, d.text_pruned_at, count(DISTINCT s.model_version), count(DISTINCT e.entity) "
            "FROM documents d JOIN document_scores s ON s.document_id = d.id "
            "JOIN document_entities e ON e.document_id = d.id WHERE d.id = 'd-45d' GROUP BY 1, 2")).one()
        assert kept[0] == "d-45d" and kept[1] is not None and kept[2:] == (1, 1)
        assert conn.execute(sa.text("SELECT text_pruned_at FROM documents WHERE id = 'd-29d'")).scalar() is None

    again = prune(engine, settings, now=NOW)  # idempotent
    assert again.documents_text_pruned == 0 and set(again.windows_deleted.values()) == {0}
    assert _state(engine) == (texts, windows)


def test_prune_skips_rows_in_use_instead_of_waiting_and_takes_them_next_time(filled):
    settings, engine = filled
    holder = engine.connect()
    holder.execute(sa.text("SELECT 1 FROM documents WHERE id = 'd-45d' FOR UPDATE"))  # a writer mid-transaction
    result = {}
    worker = threading.Thread(target=lambda: result.update(report=prune(engine, settings, now=NOW)))
    worker.start()
    worker.join(timeout=30)
    try:
        assert not worker.is_alive(), "prune waited on a row lock"
        assert result["report"].documents_text_pruned == 2
        assert _state(engine)[0]["d-45d"] != ""
    finally:
        holder.rollback()
        holder.close()
    assert prune(engine, settings, now=NOW).documents_text_pruned == 1
    assert _state(engine)[0]["d-45d"] == ""


def test_settings_choose_the_ages_and_forever_keeps(filled):
    settings, engine = filled
    settings = settings.model_copy(update={"retention_document_text": "forever", "retention_minute_windows": "4d",
                                           "retention_hour_windows": "forever", "retention_day_windows": "1000d"})
    report = prune(engine, settings, now=NOW)
    texts, windows = _state(engine)
    assert "" not in texts.values() and report.text_cutoff is None
    assert windows == set(WINDOWS) - {(60, timedelta(days=5)), (86400, timedelta(days=2000))}


def test_retention_ages_and_width_classes():
    assert retention_age("48h") == timedelta(hours=48) and retention_age("FOREVER") is None
    for bad in ("", "0d", "3w", "-1d", "12"):
        with pytest.raises(ValueError, match="not a retention age"):
            retention_age(bad)
    assert [window_class(w) for w in (1, 60, 3599, 3600, 86399, 86400, 604800)] == \
        ["minute", "minute", "minute", "hour", "hour", "day", "day"]


def test_db_prune_command_reports_json(filled):
    settings, engine = filled
    env = {**os.environ, "FINPULSE_DATABASE_URL": settings.database_url.get_secret_value()}
    with engine.connect() as conn:  # the command prunes relative to the real now
        due = conn.execute(sa.text("SELECT count(*) FROM documents WHERE published_at < now() - interval '30 days'")).scalar()
    assert 0 < due < len(DOCS)
    dry = json.loads(subprocess.run([sys.executable, "-m", "finpulse", "db", "prune", "--dry-run", "--json"],
                                    env=env, capture_output=True, text=True, check=True).stdout)
    done = json.loads(subprocess.run([sys.executable, "-m", "finpulse", "db", "prune", "--json"],
                                     env=env, capture_output=True, text=True, check=True).stdout)
    assert (dry["dry_run"], done["dry_run"]) == (True, False)
    assert dry["documents_text_pruned"] == done["documents_text_pruned"] == due
    assert "86400" not in done["windows_deleted"] and done["window_cutoffs"]["day"] is None
    text = subprocess.run([sys.executable, "-m", "finpulse", "db", "prune"], env=env, capture_output=True,
                          text=True, check=True).stdout
    assert "document text: pruned 0" in text and "day windows: kept forever" in text
