"""PostgresSink against the real Postgres (a fresh database per test): one transaction per batch,
exactly once per batch id, in-batch dedupe, re-sent documents, atomicity, lateness."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pandas as pd
import psycopg2.errors
import pytest
import sqlalchemy as sa

from finpulse import db
from pipeline.rows import ROW_DEAD_LETTER, ROW_DOCUMENT, blank_row
from pipeline.sink import PostgresSink

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
MV = "test-model@1"
TABLES = ["documents", "document_scores", "document_entities", "dead_letters", "sentiment_windows",
          "pipeline_batches"]


def doc_row(doc_id: str, published_at: datetime, *, offset: int, p=(0.2, 0.3, 0.5), source="src-a",
            topic="Earnings", novelty=None, tickers=(), entity_p: dict | None = None, partition=0,
            text="some text", model_version=MV) -> dict:
    """A processed document row as the executors produce it: one link per ticker, scored by the entity head
    (``entity_p``: that model's version) or bare (version ``''``)."""
    p_neg, p_neu, p_pos = p
    sentiment = ["negative", "neutral", "positive"][max(range(3), key=lambda k: p[k])]
    entities = []
    for ticker in tickers:
        ep = (entity_p or {}).get(ticker)
        entities.append({
            "entity": ticker, "entity_type": "ticker", "linked_by": "cashtag", "mention": f"${ticker}",
            "model_version": "" if ep is None else model_version, "sentiment": None if ep is None else ["negative", "neutral", "positive"][
                max(range(3), key=lambda k: ep[k])],
            "confidence": None, "p_negative": None if ep is None else ep[0], "p_neutral": None if ep is None else ep[1],
            "p_positive": None if ep is None else ep[2],
        })
    return blank_row(
        row_type=ROW_DOCUMENT, kafka_topic="docs", kafka_partition=partition, kafka_offset=offset,
        kafka_timestamp=pd.Timestamp(published_at), id=doc_id, schema_version=1, source=source, kind="news",
        title=f"title {doc_id}", text=text, published_at=pd.Timestamp(published_at),
        fetched_at=pd.Timestamp(published_at), tickers=list(tickers), extra="{}", novelty=novelty,
        model_version=model_version, sentiment=sentiment, p_negative=p_neg, p_neutral=p_neu, p_positive=p_pos,
        topic=topic, topic_confidence=0.9, n_chunks=1, truncated=False, entities=entities,
    )


def dl_row(offset: int, *, stage="contract", reason="not_json", topic="docs", partition=0, raw=b"{oops") -> dict:
    return blank_row(row_type=ROW_DEAD_LETTER, kafka_topic=topic, kafka_partition=partition, kafka_offset=offset,
                     kafka_timestamp=pd.Timestamp(T0), dl_stage=stage, dl_reason=reason, dl_detail="document: not JSON",
                     dl_rejected_at=pd.Timestamp(T0), raw_payload=raw, raw_key=b"key")


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def write(sink: PostgresSink, batch_id: int, rows: list[dict]):
    return sink.write_batch(batch_id, frame(rows), scorer_name="test", started_at=datetime.now(timezone.utc))


def snapshot(engine) -> dict[str, list[tuple]]:
    with engine.connect() as conn:
        return {t: sorted(map(tuple, conn.execute(sa.text(f"SELECT * FROM {t}")).all()), key=repr) for t in TABLES}


def windows_frame(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(sa.text("SELECT * FROM sentiment_windows"), conn)


@pytest.fixture
def engine(fresh_db):
    eng = db.engine(fresh_db)
    yield eng
    eng.dispose()


@pytest.fixture
def sink(engine):
    return PostgresSink(engine, query_name="test-query", widths="1m,1h,1d", lateness="1d")


def _rows(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def count(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def test_in_batch_duplicate_keys_keep_the_highest_offset(engine, sink):
    rows = [
        doc_row("a", T0, offset=7, text="newer", p=(0.7, 0.2, 0.1)),
        doc_row("a", T0, offset=3, text="older", p=(0.1, 0.2, 0.7)),
        doc_row("b", T0, offset=4),
        dl_row(9), dl_row(9),  # a replayed bad message, twice in one batch
    ]
    report = write(sink, 0, rows)
    assert (report.n_input, report.n_documents, report.n_scored, report.n_dead, report.n_duplicates) == (5, 2, 3, 1, 2)
    assert count(engine, "SELECT text FROM documents WHERE id = 'a'") == "newer"
    assert count(engine, "SELECT sentiment FROM document_scores WHERE document_id = 'a'") == "negative"
    assert count(engine, "SELECT count(*) FROM dead_letters") == 1
    assert count(engine, "SELECT n_docs FROM sentiment_windows WHERE dimension = 'all' AND width_seconds = 60") == 2
    assert count(engine, "SELECT n_duplicates FROM pipeline_batches WHERE batch_id = 0") == 2


def test_replaying_a_committed_batch_changes_nothing_and_a_resent_document_counts_once(engine, sink):
    rows = [doc_row("a", T0, offset=1, tickers=["TSLA"]), doc_row("b", T0 + timedelta(seconds=5), offset=2),
            dl_row(3)]
    first = write(sink, 0, rows)
    assert not first.skipped
    before = snapshot(engine)
    # Spark replays batch 0 after a crash (the same offsets from the same checkpoint): nothing moves.
    # (Other offsets under the same batch id are a mismatch: test_a_batch_id_committed_with_other_offsets_...)
    replay = write(sink, 0, rows)
    assert replay.skipped and replay.n_windows == 0
    assert snapshot(engine) == before
    # The producer re-sends "a" and the bad message is re-read in a later batch: counted once.
    later = write(sink, 1, [doc_row("a", T0, offset=10, tickers=["TSLA"]), dl_row(3)])
    assert not later.skipped
    assert count(engine, "SELECT n_docs FROM sentiment_windows WHERE dimension = 'all' AND width_seconds = 60") == 2
    assert count(engine, "SELECT n_docs FROM sentiment_windows WHERE dimension = 'ticker' AND key = 'TSLA' "
                         "AND width_seconds = 86400") == 1
    assert count(engine, "SELECT count(*) FROM dead_letters") == 1
    assert count(engine, "SELECT kafka_offset FROM documents WHERE id = 'a'") == 10
    assert count(engine, "SELECT count(*) FROM pipeline_batches WHERE status = 'committed'") == 2


def test_a_new_query_id_is_a_new_epoch_whose_batch_0_is_written(engine, sink, caplog):
    """Checkpoint lost: the new query id numbers its batches from 0 again; its records are new, not committed."""
    first = sink.write_batch(0, frame([doc_row("a", T0, offset=0), doc_row("b", T0, offset=1)]), scorer_name="test",
                             started_at=datetime.now(timezone.utc), query_id="old-checkpoint")
    assert not first.skipped and not first.new_epoch
    # The new checkpoint re-reads a and b and reads c: batch 0 again, under another query id.
    with caplog.at_level("WARNING", logger="pipeline.sink"):
        again = sink.write_batch(0, frame([doc_row("a", T0, offset=0), doc_row("b", T0, offset=1),
                                           doc_row("c", T0, offset=2)]), scorer_name="test",
                                 started_at=datetime.now(timezone.utc), query_id="new-checkpoint")
    assert not again.skipped and again.new_epoch and again.query_id == "new-checkpoint"
    lines = [r.getMessage() for r in caplog.records if "new checkpoint" in r.getMessage()]
    assert len(lines) == 1 and "epoch 2" in lines[0] and "up to offsets docs 0:1," in lines[0] and "starts at docs 0:0;" in lines[0], lines
    assert count(engine, "SELECT count(*) FROM documents") == 3
    assert count(engine, "SELECT count(*) FROM document_scores") == 3
    assert count(engine, "SELECT n_docs FROM sentiment_windows WHERE dimension = 'all' AND width_seconds = 60") == 3
    assert _rows(engine, "SELECT query_id, batch_id FROM pipeline_batches ORDER BY query_id") == [
        ("new-checkpoint", 0), ("old-checkpoint", 0)]
    # The new epoch's replay of its own batch 0 is skipped; its next batch is no new epoch.
    replay = sink.write_batch(0, frame([doc_row("a", T0, offset=0), doc_row("b", T0, offset=1),
                                        doc_row("c", T0, offset=2)]), scorer_name="test",
                              started_at=datetime.now(timezone.utc), query_id="new-checkpoint")
    assert replay.skipped
    nxt = sink.write_batch(1, frame([doc_row("d", T0, offset=3)]), scorer_name="test",
                           started_at=datetime.now(timezone.utc), query_id="new-checkpoint")
    assert not nxt.skipped and not nxt.new_epoch
    assert count(engine, "SELECT n_docs FROM sentiment_windows WHERE dimension = 'all' AND width_seconds = 60") == 4


def test_batches_from_before_query_ids_are_no_new_epoch_but_never_skip_the_first_recorded_one(engine, sink, caplog):
    write(sink, 0, [doc_row("a", T0, offset=0)])  # query id '': a ledger row written before migration 0006
    with caplog.at_level("WARNING", logger="pipeline.sink"):
        report = sink.write_batch(0, frame([doc_row("a", T0, offset=0), doc_row("b", T0, offset=1)]),
                                  scorer_name="test", started_at=datetime.now(timezone.utc), query_id="q-1")
    assert not report.skipped and not report.new_epoch
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "query id q-1 is the first the batch ledger records" in lines[0], lines
    assert count(engine, "SELECT count(*) FROM documents") == 2


def test_a_batch_id_committed_with_other_offsets_is_a_mismatch_and_is_written(engine, sink, caplog):
    write(sink, 0, [doc_row("a", T0, offset=1), doc_row("b", T0, offset=2)])
    with caplog.at_level("WARNING", logger="pipeline.sink"):
        report = write(sink, 0, [doc_row("a", T0, offset=1), doc_row("b", T0, offset=2), doc_row("c", T0, offset=3)])
    assert not report.skipped and report.offsets_mismatch and not report.new_epoch
    assert [r for r in caplog.records if "checkpoint and Postgres disagree" in r.getMessage()]
    assert count(engine, "SELECT count(*) FROM documents") == 3
    assert count(engine, "SELECT n_docs FROM sentiment_windows WHERE dimension = 'all' AND width_seconds = 60") == 3
    assert count(engine, "SELECT offsets->'docs'->'0' FROM pipeline_batches WHERE batch_id = 0")  == [1, 3]
    assert count(engine, "SELECT count(*) FROM pipeline_batches") == 1


def test_a_resent_document_with_a_new_time_and_tickers_leaves_its_old_windows(engine, sink):
    write(sink, 0, [doc_row("a", T0, offset=1, tickers=["TSLA"], source="src-a"),
                    doc_row("b", T0, offset=2, source="src-b")])
    moved = T0 + timedelta(hours=2, minutes=30)
    write(sink, 1, [doc_row("a", moved, offset=3, tickers=["AAPL"], source="src-a")])
    w = windows_frame(engine)
    minute = w[w.width_seconds == 60]
    old_all = minute[(minute.dimension == "all") & (minute.window_start == pd.Timestamp(T0))]
    assert old_all.n_docs.tolist() == [1]                      # only "b" is left at T0
    assert minute[(minute.dimension == "source") & (minute.key == "src-a")].window_start.tolist() == [
        pd.Timestamp(moved)]                                    # src-a's T0 window was deleted, not left at 1
    assert "TSLA" not in set(w[w.dimension == "ticker"].key)   # the stale ticker vanished with its windows
    assert set(w[w.dimension == "ticker"].key) == {"AAPL"}
    assert count(engine, "SELECT count(*) FROM document_entities WHERE document_id = 'a'") == 1
    assert count(engine, "SELECT published_at FROM document_scores WHERE document_id = 'a'") == moved
    day = w[(w.width_seconds == 86400) & (w.dimension == "all")]
    assert day.n_docs.tolist() == [2]                          # the day still holds both, once each


def test_a_batch_that_fails_mid_write_leaves_nothing_and_is_not_recorded(engine, sink):
    write(sink, 0, [doc_row("a", T0, offset=1)])
    before = snapshot(engine)
    # pipeline_batches is written last, after documents, scores, entities and windows
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE pipeline_batches ADD CONSTRAINT test_not_one CHECK (batch_id <> 1)"))
    with pytest.raises(psycopg2.errors.CheckViolation, match="test_not_one"):
        write(sink, 1, [doc_row("b", T0, offset=2, tickers=["NVDA"]), doc_row("c", T0, offset=3), dl_row(4)])
    assert snapshot(engine) == before
    assert count(engine, "SELECT count(*) FROM pipeline_batches WHERE batch_id = 1") == 0
    # Spark retries the batch (the fault fixed meanwhile): it goes through as a whole.
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE pipeline_batches DROP CONSTRAINT test_not_one"))
    report = write(sink, 1, [doc_row("b", T0, offset=2, tickers=["NVDA"]), doc_row("c", T0, offset=3), dl_row(4)])
    assert not report.skipped and report.n_documents == 2
    assert count(engine, "SELECT n_docs FROM sentiment_windows WHERE dimension = 'all' AND width_seconds = 60") == 3


def test_a_score_postgres_refuses_dead_letters_its_document(engine, sink):
    bad = doc_row("c", T0, offset=3)
    bad["p_negative"] = 1.5  # violates document_scores' CHECK, written after the documents
    report = write(sink, 0, [doc_row("b", T0, offset=2), bad])
    assert report.n_documents == 1 and report.n_dead == 1
    assert count(engine, "SELECT count(*) FROM documents WHERE id = 'c'") == 0
    assert "p_negative" in count(engine, "SELECT detail FROM dead_letters WHERE stage = 'storage'")


def test_late_documents_are_stored_and_counted_but_not_folded(engine, sink):
    write(sink, 0, [doc_row("now", T0, offset=1)])
    late_time = T0 - timedelta(days=2)
    report = write(sink, 1, [doc_row("late", late_time, offset=2), doc_row("fresh", T0 + timedelta(hours=1), offset=3)])
    assert report.n_late == 1
    assert count(engine, "SELECT n_late FROM pipeline_batches WHERE batch_id = 1") == 1
    assert count(engine, "SELECT count(*) FROM documents WHERE id = 'late'") == 1
    assert count(engine, "SELECT count(*) FROM document_scores WHERE document_id = 'late'") == 1
    assert count(engine, "SELECT count(*) FROM sentiment_windows WHERE window_start < :t", t=T0 - timedelta(days=1)) == 0
    assert count(engine, "SELECT max_event_time FROM pipeline_batches WHERE batch_id = 1") == T0 + timedelta(hours=1)


def test_dead_letters_keep_raw_bytes_and_envelope_columns(engine, sink):
    row = dl_row(5, stage="ingest", reason="contract", topic="dlq", raw=b"\xff\x00raw")
    row.update(dl_source="rss-feed", dl_url="https://example.com/x", dl_detail="text: empty")
    write(sink, 0, [row])
    write(sink, 1, [row])  # the same Kafka record re-read: no second row
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT stage, reason, raw_payload, raw_key, source_topic, source_offset, source, "
                                    "url, detail, batch_id FROM dead_letters")).all()
    assert len(rows) == 1
    stage, reason, raw, key, topic, offset, source, url, detail, batch = rows[0]
    assert (stage, reason, bytes(raw), bytes(key), topic, offset, source, url, detail, batch) == (
        "ingest", "contract", b"\xff\x00raw", b"key", "dlq", 5, "rss-feed", "https://example.com/x", "text: empty", 0)


def test_arrow_input_is_accepted(engine, sink):
    import pyarrow as pa

    from pipeline.rows import arrow_schema

    table = pa.Table.from_pandas(frame([doc_row("a", T0, offset=1, tickers=["TSLA"]), dl_row(2)]),
                                 schema=arrow_schema(), preserve_index=False)
    report = sink.write_batch(0, table, scorer_name="test", started_at=datetime.now(timezone.utc))
    assert (report.n_documents, report.n_dead) == (1, 1)
    assert count(engine, "SELECT published_at FROM documents") == T0
    assert count(engine, "SELECT count(*) FROM document_entities WHERE entity = 'TSLA'") == 1


def test_ticker_windows_use_the_entity_score_of_their_own_model_version(engine, sink):
    """Model A (with an entity head) scored "a"; model B (without one) re-scores it: A's ticker window keeps A's
    entity-level score, B's uses B's document score, and neither counts the document twice."""
    write(sink, 0, [doc_row("a", T0, offset=1, p=(0.1, 0.1, 0.8), tickers=["TSLA"],
                            entity_p={"TSLA": (0.9, 0.05, 0.05)}, model_version="model-a")])
    write(sink, 1, [doc_row("a", T0, offset=2, p=(0.2, 0.2, 0.6), tickers=["TSLA"], model_version="model-b")])
    assert count(engine, "SELECT count(*) FROM document_entities WHERE document_id = 'a'") == 2  # A's and B's bare link
    # recompute every version's windows from the stored rows (as `finpulse pipeline backfill` does)
    from pipeline import windows

    windows.backfill(engine, since=T0 - timedelta(hours=1), until=T0 + timedelta(hours=1),
                     widths=[timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)])
    sql = ("SELECT {} FROM sentiment_windows WHERE dimension = 'ticker' AND key = 'TSLA' AND width_seconds = 3600 "
           "AND model_version = :mv")
    assert count(engine, sql.format("n_docs"), mv="model-a") == 1
    assert count(engine, sql.format("n_negative"), mv="model-a") == 1        # the entity head said negative
    assert count(engine, sql.format("n_docs"), mv="model-b") == 1
    assert count(engine, sql.format("n_positive"), mv="model-b") == 1        # the document's own score


def test_a_document_postgres_refuses_is_dead_lettered_and_the_batch_commits(engine, sink):
    """A value no upstream check caught (here: a constraint the test adds) must not stall the stream."""
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE documents ADD CONSTRAINT test_no_evil CHECK (text <> 'evil')"))
    rows = [doc_row("good", T0, offset=1, tickers=["TSLA"]), doc_row("bad", T0, offset=2, text="evil", tickers=["AAPL"]),
            doc_row("bad", T0, offset=3, text="evil"),  # its replay in the same batch: refused too
            dl_row(4)]
    report = write(sink, 0, rows)
    assert not report.skipped and report.n_documents == 1 and report.n_dead == 3
    assert [r[0] for r in _rows(engine, "SELECT id FROM documents")] == ["good"]
    assert count(engine, "SELECT count(*) FROM document_entities WHERE entity = 'AAPL'") == 0
    refused = _rows(engine, "SELECT stage, reason, detail, raw_payload, source_offset FROM dead_letters "
                            "WHERE stage = 'storage' ORDER BY source_offset")
    assert [(r.stage, r.reason, r.source_offset) for r in refused] == [("storage", "rejected", 2), ("storage", "rejected", 3)]
    assert "test_no_evil" in refused[0].detail and "23514" in refused[0].detail
    payload = json.loads(bytes(refused[0].raw_payload))
    assert payload["id"] == "bad" and payload["text"] == "evil" and payload["tickers"] == ["AAPL"]
    assert count(engine, "SELECT n_docs FROM sentiment_windows WHERE dimension = 'all' AND width_seconds = 60") == 1
    assert count(engine, "SELECT status FROM pipeline_batches WHERE batch_id = 0") == "committed"


def test_an_unsupported_language_document_is_stored_unscored_and_in_no_window(engine, sink):
    zh = doc_row("zh", T0, offset=2, source="weibo", tickers=["TSLA"], topic=None, text="特斯拉股价大跌")
    zh.update(score_status="unsupported_language", detected_lang="zh", sentiment=None, p_negative=None,
              p_neutral=None, p_positive=None, topic_confidence=None)
    report = write(sink, 0, [doc_row("en", T0, offset=1, tickers=["TSLA"]), zh])
    assert (report.n_scored, report.n_unsupported, report.unsupported_by_source) == (1, 1, {"weibo": 1})
    assert _rows(engine, "SELECT document_id, status, sentiment, p_negative, p_neutral, p_positive FROM document_scores "
                         "ORDER BY document_id") == [("en", "ok", "positive", 0.2, 0.3, 0.5),
                                                     ("zh", "unsupported_language", None, None, None, None)]
    assert count(engine, "SELECT count(*) FROM documents") == 2
    assert count(engine, "SELECT count(*) FROM sentiment_windows WHERE key = 'weibo'") == 0
    assert count(engine, "SELECT max(n_docs) FROM sentiment_windows WHERE dimension IN ('all', 'ticker')") == 1
    assert _rows(engine, "SELECT n_scored, n_unsupported, unsupported_by_source FROM pipeline_batches") == [
        (1, 1, {"weibo": 1})]
    # The analysts' views give sentiment only where there is one.
    assert count(engine, "SELECT count(*) FROM document_sentiment") == 1
    assert count(engine, "SELECT status FROM document_detail WHERE id = 'zh'") == "unsupported_language"


def _producer(row: dict) -> dict:
    for e in row["entities"]:
        e["linked_by"] = "producer"
    return row


def test_the_same_story_under_two_tickers_keeps_both_in_one_batch_and_across_batches(engine, sink):
    # One batch: the story arrives twice, once per ticker (two feeds, or a replayed file with a row per ticker).
    write(sink, 0, [_producer(doc_row("s1", T0, offset=1, tickers=["AAPL"])),
                    _producer(doc_row("s1", T0, offset=2, tickers=["MSFT"]))])
    assert count(engine, "SELECT tickers FROM documents WHERE id = 's1'") == ["AAPL", "MSFT"]
    assert _rows(engine, "SELECT entity FROM document_entities WHERE document_id = 's1' ORDER BY entity") == [
        ("AAPL",), ("MSFT",)]
    # A later batch: the same id under a third ticker adds it; nothing is lost, nothing counted twice.
    write(sink, 1, [_producer(doc_row("s1", T0, offset=3, tickers=["NVDA"]))])
    assert count(engine, "SELECT tickers FROM documents WHERE id = 's1'") == ["AAPL", "MSFT", "NVDA"]
    assert _rows(engine, "SELECT entity FROM document_entities WHERE document_id = 's1' ORDER BY entity") == [
        ("AAPL",), ("MSFT",), ("NVDA",)]
    w = windows_frame(engine)
    day = w[(w.width_seconds == 86400) & (w.dimension == "ticker")].set_index("key").n_docs.to_dict()
    assert day == {"AAPL": 1, "MSFT": 1, "NVDA": 1}
    assert count(engine, "SELECT n_docs FROM sentiment_windows WHERE dimension = 'all' AND width_seconds = 86400") == 1
    assert count(engine, "SELECT count(*) FROM document_scores") == 1


# -- lateness per partition -------------------------------------------------------------------------------------

def _all_daily_docs(engine) -> int:
    return count(engine, "SELECT coalesce(sum(n_docs), 0) FROM sentiment_windows WHERE dimension = 'all' "
                         "AND width_seconds = 86400")


def _windows_state(engine) -> list[tuple]:
    return sorted(map(tuple, _rows(engine, "SELECT dimension, key, window_start, window_end, model_version, n_docs, "
                                           "n_negative, n_neutral, n_positive, round(sum_score::numeric, 6), "
                                           "n_first_stories FROM sentiment_windows")))


def test_a_partition_behind_in_event_time_holds_the_watermark_back_so_no_batch_cut_makes_documents_late(engine):
    """Partition 0 is ten days ahead of partition 1 (each in event-time order), read in many small batches that
    drain partition 0 first, the way Spark splits maxOffsetsPerTrigger by backlog: no document is late, every
    one is in the windows, and the windows equal those of writing everything in one batch."""
    sink = PostgresSink(engine, query_name="uneven", widths="1m,1h,1d", lateness="1d")
    ahead = [doc_row(f"p0-{i}", T0 + timedelta(days=10, minutes=37 * i), offset=i, partition=0,
                     source=["src-a", "src-b"][i % 2], p=[(0.6, 0.3, 0.1), (0.1, 0.2, 0.7)][i % 2])
             for i in range(60)]
    behind = [doc_row(f"p1-{i}", T0 + timedelta(minutes=53 * i), offset=i, partition=1, tickers=["AAPL"])
              for i in range(60)]
    batches, a, b = [], 0, 0
    while a < len(ahead) or b < len(behind):
        take_a, take_b = (7, 1) if a < len(ahead) else (0, 9)  # uneven: partition 0 runs days ahead
        batches.append(ahead[a:a + take_a] + behind[b:b + take_b])
        a, b = a + take_a, b + take_b
    assert len(batches) > 10
    reports = [write(sink, k, rows) for k, rows in enumerate(batches)]
    assert sum(r.n_late for r in reports) == 0
    assert _all_daily_docs(engine) == 120
    assert count(engine, "SELECT count(*) FROM windows_pending") == 0
    streamed = _windows_state(engine)
    times = _rows(engine, "SELECT partition_event_times FROM pipeline_batches WHERE query_name = 'uneven' "
                          "AND batch_id = 0")[0][0]
    assert set(times["docs"]) == {"0", "1"}

    # The same documents in one batch (a fresh ledger, every window recomputed from the stored rows).
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM sentiment_windows"))
    one = PostgresSink(engine, query_name="one-batch", widths="1m,1h,1d", lateness="1d")
    assert write(one, 0, ahead + behind).n_late == 0
    assert _windows_state(engine) == streamed


def test_an_idle_partition_stops_holding_the_watermark_back_after_the_lateness(engine):
    """Partition 1 delivered at T0 and went quiet: within the lateness (wall clock) it holds the watermark back,
    after it a truly late document on partition 0 is late again; once it delivers again it counts again."""
    now = datetime.now(timezone.utc)

    def at(sink, batch_id, rows, started_at):
        return sink.write_batch(batch_id, frame(rows), scorer_name="test", started_at=started_at)

    for name, quiet_since, expect_late in (("held", now - timedelta(hours=1), 0), ("idle", now - timedelta(days=2), 1)):
        sink = PostgresSink(engine, query_name=name, widths="1m,1h,1d", lateness="1d")
        at(sink, 0, [doc_row(f"{name}-p1", T0, offset=1, partition=1)], quiet_since)
        at(sink, 1, [doc_row(f"{name}-p0-{i}", T0 + timedelta(days=5, hours=i), offset=i, partition=0)
                     for i in range(3)], now)
        raw = engine.raw_connection()
        try:
            held_back = T0 - timedelta(days=1)  # partition 1's high minus the lateness
            without_p1 = T0 + timedelta(days=5, hours=2) - timedelta(days=1)
            assert sink.watermark(raw.cursor(), now=now) == (held_back if expect_late == 0 else without_p1), name
        finally:
            raw.close()
        straggler = at(sink, 2, [doc_row(f"{name}-late", T0 + timedelta(days=1), offset=9, partition=0)], now)
        assert straggler.n_late == expect_late, name
        # The quiet partition delivers again (in its own event-time order): it counts again, nothing is late.
        back = at(sink, 3, [doc_row(f"{name}-p1-again", T0 + timedelta(hours=2), offset=2, partition=1)], now)
        assert back.n_late == 0, name


def test_a_far_future_timestamp_does_not_push_the_partition_watermark_past_real_time(engine, sink):
    started = datetime.now(timezone.utc)
    write(sink, 0, [doc_row("future", datetime(2999, 1, 1, tzinfo=timezone.utc), offset=1)])
    times = _rows(engine, "SELECT partition_event_times FROM pipeline_batches WHERE batch_id = 0")[0][0]
    assert datetime.fromisoformat(times["docs"]["0"]) <= datetime.now(timezone.utc)
    assert datetime.fromisoformat(times["docs"]["0"]) >= started
    # A document of today is not late: the watermark is at most now minus the lateness.
    assert write(sink, 1, [doc_row("today", datetime.now(timezone.utc) - timedelta(hours=1), offset=2)]).n_late == 0


def test_late_documents_wait_for_a_backfill_until_the_printed_command_folds_them_in(engine, sink, fresh_db, monkeypatch, capsys):
    from click.testing import CliRunner

    from finpulse.pending import line, pending_backfill
    from pipeline import cli as pipeline_cli

    write(sink, 0, [doc_row("now", T0, offset=1)])
    late = [doc_row("late-1", T0 - timedelta(days=3, seconds=0.5), offset=2),
            doc_row("late-2", T0 - timedelta(days=2, hours=5), offset=3)]
    assert write(sink, 1, late + [doc_row("fresh", T0 + timedelta(hours=1), offset=4)]).n_late == 2
    # Re-sent late again: still two documents waiting, not three.
    assert write(sink, 2, [doc_row("late-2", T0 - timedelta(days=2, hours=5), offset=5)]).n_late == 1
    with engine.connect() as conn:
        pending = pending_backfill(conn)
    assert pending["documents"] == 2
    assert pending["since"] == "2024-04-28T11:59:59Z" and pending["until"] == "2024-04-29T07:00:01Z"
    assert pending["command"] == "finpulse pipeline backfill --since 2024-04-28T11:59:59Z --until 2024-04-29T07:00:01Z"
    assert line(pending).startswith("2 document(s) wait for a backfill") and line(pending).endswith(pending["command"])

    monkeypatch.setattr(pipeline_cli, "_settings", lambda: fresh_db)
    runner = CliRunner()
    text = runner.invoke(pipeline_cli.cli, ["status", "--query-name", "test-query"])
    assert line(pending) in text.output, text.output
    as_json = json.loads(runner.invoke(pipeline_cli.cli, ["status", "--query-name", "test-query", "--json"]).output)
    assert as_json["backfill"] == pending
    # `make run`'s end-of-run summary says the same.
    from finpulse.run import _print_summary
    _print_summary(fresh_db)
    assert line(pending) in capsys.readouterr().out

    # The printed command, run as printed: the documents are in their windows and no longer wait.
    args = pending["command"].split()[2:]
    result = runner.invoke(pipeline_cli.cli, args)
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        assert pending_backfill(conn)["documents"] == 0
    assert _all_daily_docs(engine) == 4
    assert "backfill" not in runner.invoke(pipeline_cli.cli, ["status", "--query-name", "test-query"]).output


def test_a_late_document_re_sent_on_time_no_longer_waits(engine, sink):
    write(sink, 0, [doc_row("now", T0, offset=1)])
    assert write(sink, 1, [doc_row("moved", T0 - timedelta(days=3), offset=2)]).n_late == 1
    assert count(engine, "SELECT count(*) FROM windows_pending") == 1
    assert write(sink, 2, [doc_row("moved", T0 + timedelta(minutes=5), offset=3)]).n_late == 0
    assert count(engine, "SELECT count(*) FROM windows_pending") == 0
    assert _all_daily_docs(engine) == 2


def test_a_new_epoch_is_announced_once_even_when_its_batch_is_written_twice(engine, sink, caplog):
    """A refused document makes write_batch write the batch a second time (after quarantine): still one line."""
    sink.write_batch(0, frame([doc_row("a", T0, offset=0)]), scorer_name="test", started_at=datetime.now(timezone.utc),
                     query_id="old")
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE documents ADD CONSTRAINT test_no_evil CHECK (text <> 'evil')"))
    with caplog.at_level("WARNING", logger="pipeline.sink"):
        report = sink.write_batch(0, frame([doc_row("a", T0, offset=0), doc_row("b", T0, offset=1, text="evil")]),
                                  scorer_name="test", started_at=datetime.now(timezone.utc), query_id="new")
    assert report.new_epoch and not report.skipped and report.n_dead == 1
    assert len([r for r in caplog.records if "new checkpoint" in r.getMessage()]) == 1


class _FlakyEngine:
    """The engine, but its first ``refusals`` connections fail as with Postgres down; with ``lose_commit``, the
    first commit succeeds on the server and then fails as a connection lost before the answer came back."""

    def __init__(self, engine, *, refusals: int = 0, lose_commit: bool = False):
        self.engine, self.refusals, self.lose_commit, self.attempts = engine, refusals, lose_commit, 0

    def raw_connection(self):
        self.attempts += 1
        if self.refusals:
            self.refusals -= 1
            raise psycopg2.OperationalError("connection to server at 127.0.0.1 failed: Connection refused")
        raw = self.engine.raw_connection()
        if self.lose_commit:
            self.lose_commit = False
            real_commit = raw.commit

            def commit():
                real_commit()
                raise psycopg2.OperationalError("server closed the connection unexpectedly")
            raw.commit = commit
        return raw


def test_postgres_unreachable_for_a_while_the_batch_waits_and_lands_once(engine, caplog):
    flaky = _FlakyEngine(engine, refusals=3)
    sink = PostgresSink(flaky, query_name="outage", widths="1m", lateness="1d", outage="30s")
    report = write(sink, 0, [doc_row("a", T0, offset=1), doc_row("b", T0, offset=2)])
    assert flaky.attempts == 4 and not report.skipped
    assert count(engine, "SELECT count(*) FROM documents") == 2
    assert count(engine, "SELECT count(*) FROM pipeline_batches WHERE status = 'committed'") == 1
    assert sum("Postgres unreachable" in r.getMessage() for r in caplog.records) == 3
    assert any("Postgres is back" in r.getMessage() for r in caplog.records)


def test_past_the_outage_the_connection_error_propagates(engine):
    sink = PostgresSink(_FlakyEngine(engine, refusals=10**6), query_name="outage", widths="1m", lateness="1d",
                        outage="1s")
    with pytest.raises(psycopg2.OperationalError, match="Connection refused"):
        write(sink, 0, [doc_row("a", T0, offset=1)])
    assert count(engine, "SELECT count(*) FROM documents") == 0


def test_a_commit_whose_answer_was_lost_is_not_written_twice(engine):
    """The retry after a lost commit finds the batch in the ledger and skips it: the windows count each once."""
    flaky = _FlakyEngine(engine, lose_commit=True)
    sink = PostgresSink(flaky, query_name="outage", widths="1m", lateness="1d", outage="30s")
    report = write(sink, 0, [doc_row("a", T0, offset=1), doc_row("b", T0, offset=2)])
    assert flaky.attempts == 2 and report.skipped
    assert count(engine, "SELECT n_docs FROM sentiment_windows WHERE dimension = 'all'") == 2
    assert count(engine, "SELECT count(*) FROM pipeline_batches") == 1
