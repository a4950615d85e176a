"""The streaming job end to end: real Kafka, Spark local[2], Postgres, the shipped model.

One uninterrupted reference run over a known stream (good documents, a re-sent one, malformed
records, ingest dead letters) is shared by the assertions below and by the drills
(``test_drills.py``), which replay the same stream through failures and compare whole tables with it.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import pytest
import sqlalchemy as sa

from tests.pipeline.conftest import expected_windows

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.stack]


def _rows(settings, sql: str, **params):
    from finpulse import db

    engine = db.engine(settings)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql), params).mappings().all()
    finally:
        engine.dispose()


def test_every_good_document_is_stored_and_scored_once(reference, stream):
    settings = reference["settings"]
    expected = {d["id"]: d for d in stream.documents}
    docs = {r["id"]: r for r in _rows(settings, "SELECT * FROM documents")}
    assert set(docs) == set(expected)
    for doc_id, doc in expected.items():
        row = docs[doc_id]
        assert row["source"] == doc["source"] and row["text"] == doc["text"]
        assert row["published_at"] == datetime.fromisoformat(doc["published_at"])
        assert row["novelty"] == doc["extra"]["novelty"]
    scores = _rows(settings, "SELECT * FROM document_scores")
    assert sorted(r["document_id"] for r in scores) == sorted(expected)  # one model version, once each
    for r in scores:
        assert r["sentiment"] in ("negative", "neutral", "positive")
        assert abs(r["p_negative"] + r["p_neutral"] + r["p_positive"] - 1) < 1e-3
        assert r["topic"] and r["n_chunks"] >= 1


def test_entities_are_cashtags_and_aliases(reference, stream):
    rows = _rows(reference["settings"], "SELECT DISTINCT document_id, entity FROM document_entities")
    found: dict[str, set] = {}
    for r in rows:
        found.setdefault(r["document_id"], set()).add(r["entity"])
    for doc in stream.documents:
        assert found.get(doc["id"], set()) >= set(doc["_expected_tickers"]), doc["id"]


def test_every_link_carries_the_entity_heads_score(reference):
    """The shipped model has an entity head (tests/models pins that): every link is scored by it, with the
    document's model version, a sentiment and a distribution."""
    rows = _rows(reference["settings"], "SELECT e.*, s.model_version AS doc_version FROM document_entities e "
                                        "JOIN document_scores s ON s.document_id = e.document_id")
    assert rows
    for r in rows:
        assert r["model_version"] == r["doc_version"] and r["sentiment"] in ("negative", "neutral", "positive")
        assert abs(r["p_negative"] + r["p_neutral"] + r["p_positive"] - 1) < 1e-3
        assert r["confidence"] == pytest.approx(max(r["p_negative"], r["p_neutral"], r["p_positive"]), abs=1e-6)


def test_window_counts_match_the_stream(reference, stream):
    settings = reference["settings"]
    docs = stream.documents
    for width in (60, 3600, 86400):
        for dimension, by in (("all", lambda d: ["*"]), ("source", lambda d: [d["source"]]),
                              ("ticker", lambda d: d["_expected_tickers"])):
            expected = expected_windows(docs, width, by)
            rows = _rows(settings, "SELECT key, window_start, n_docs FROM sentiment_windows "
                                   "WHERE dimension = :d AND width_seconds = :w", d=dimension, w=width)
            got = Counter({(r["key"], r["window_start"]): r["n_docs"] for r in rows})
            if dimension == "ticker":
                # The alias table may link more than the test plants; every planted link is counted.
                assert all(got[k] >= v for k, v in expected.items()), (dimension, width)
            else:
                assert got == expected, (dimension, width)
    totals = _rows(settings, "SELECT n_negative + n_neutral + n_positive AS n, n_docs FROM sentiment_windows")
    assert all(r["n"] == r["n_docs"] for r in totals)


def test_bad_records_land_in_dead_letters_and_the_job_keeps_going(reference, stream):
    settings = reference["settings"]
    rows = _rows(settings, "SELECT stage, reason, detail, raw_payload, source_topic, source_offset FROM dead_letters")
    assert Counter((r["stage"], r["reason"]) for r in rows) == Counter(stream.dead)
    for r in rows:
        assert r["detail"], r
        assert r["source_topic"] in (reference["topics"].documents, reference["topics"].dead_letters)
        assert r["source_offset"] is not None
    by_reason = {r["reason"]: r for r in rows}
    assert bytes(by_reason["not_json"]["raw_payload"]) == b"{not json"
    assert bytes(by_reason["not_utf8"]["raw_payload"]) == b"\xff\xfe not utf-8"
    assert bytes(by_reason["http_status"]["raw_payload"]) == b"<html>oops</html>"
    # No document row for any rejected record, and none scored with a default.
    ids = {r["id"] for r in _rows(settings, "SELECT id FROM documents")}
    assert not {i for i in ids if i.startswith(("bad-", "empty-"))}
    # One log line per batch with the figures the operator reads.
    log = reference["log"].read_text()
    assert "dead letters" in log and "lag" in log and "scored (" in log
