"""process_records: one row per record, every kind of bad record dead-lettered with its reason and raw
bytes, good ones scored by the real shipped Scorer, scorer failures propagated (never a default score)."""

from __future__ import annotations

import base64
import json
import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.entities import EntityLinker
from pipeline.process import ProcessorConfig, make_processor, process_records, task_resources
from pipeline.rows import PROCESSED_COLUMNS, arrow_schema

DOCS, DLQ = "docs", "dlq"
CONFIG = ProcessorConfig(documents_topic=DOCS, dead_letter_topic=DLQ, max_chunks=2, max_message_bytes=4096)


def document(doc_id: str, **fields) -> dict:
    doc = {"schema_version": 1, "id": doc_id, "source": "rss-a", "kind": "news",
           "title": "Tesla shares plunge after recall", "text": "Regulators widen the probe; $NVDA unaffected.",
           "published_at": "2024-05-01T12:00:00Z", "fetched_at": "2024-05-01T12:00:05Z", "tickers": ["tsla"]}
    doc.update(fields)
    return doc


def records(values: list[tuple[str, bytes | None]]) -> pd.DataFrame:
    n = len(values)
    return pd.DataFrame({
        "key": [f"k{i}".encode() for i in range(n)], "value": [v for _, v in values], "topic": [t for t, _ in values],
        "partition": [1] * n, "offset": list(range(100, 100 + n)),
        "timestamp": [pd.Timestamp("2024-05-01 12:00:06")] * n,  # naive, as Spark hands them (session tz UTC)
    })


@pytest.fixture(scope="module")
def scorer():
    from models.scorer import get_scorer

    return get_scorer(None, "cpu", threads=2, precision="fp32")


@pytest.fixture(scope="module")
def linker():
    return EntityLinker.load()


ENVELOPE = {"stage": "ingest", "source": "reuters-rss", "reason": "contract", "detail": "published_at: missing",
            "raw": "<item>broken</item>", "raw_truncated": False, "raw_bytes": 19, "url": "https://example.com/feed",
            "at": "2024-05-01T11:59:00+00:00"}

BAD = {
    # value -> (stage, reason, text the detail must contain)
    b"\xff\xfe{}": ("contract", "not_utf8", "UTF-8"),
    b"{not json": ("contract", "not_json", "JSON"),
    b"[1, 2]": ("contract", "not_object", "object"),
    json.dumps(document("v2", schema_version=2)).encode(): ("contract", "schema_version", "schema_version"),
    json.dumps({k: v for k, v in document("nokind").items() if k != "kind"}).encode(): ("contract", "invalid", "kind"),
    json.dumps(document("naive", published_at="2024-05-01T12:00:00")).encode(): ("contract", "invalid", "published_at"),
    json.dumps(document("big", text="x" * 5000)).encode(): ("contract", "oversize", "4096"),
    json.dumps(document("nul", text="a\u0000b")).encode(): ("contract", "unstorable_text", "text"),
    json.dumps(document("surrogate", extra={"note": "\ud800"})).encode(): ("contract", "unstorable_text", "extra"),
    json.dumps(document("nan", extra={"x": float("nan")})).encode(): ("contract", "not_json", "NaN"),
    json.dumps(document("long-first", extra={"first_story_id": "x" * 600})).encode(): (
        "contract", "invalid", "first_story_id"),
    json.dumps(document("only-link", title=None, text="https://t.co/abc123")).encode(): ("scoring", "empty_text", "text"),
}


def mixed_records() -> pd.DataFrame:
    """Three good documents, every kind of bad one, a tombstone, and the dead-letter topic's records."""
    good = [document("g1"), document("g2", title="Apple beats earnings estimates", tickers=[], text="",
                                     extra={"novelty": False, "first_story_id": "g0"}),
            document("g3", title=None, text="Shares of Alibaba rose 4% in Hong Kong.", tickers=[])]
    values = [(DOCS, json.dumps(g).encode()) for g in good]
    values += [(DOCS, raw) for raw in BAD]
    values += [(DOCS, None)]
    envelope_b64 = dict(ENVELOPE, raw="\ufffd", raw_base64=base64.b64encode(b"\xff\x00binary").decode(),
                        detail="text: \u0000 and \udc80 inside")  # must still fit a text column
    values += [(DLQ, json.dumps(ENVELOPE).encode()), (DLQ, json.dumps(envelope_b64).encode()), (DLQ, b"not an envelope")]
    return records(values)


def test_every_kind_of_record_gives_one_row_and_good_ones_are_scored(scorer, linker):
    recs = mixed_records()
    out = process_records(recs, scorer=scorer, linker=linker, config=CONFIG)

    assert list(out.columns) == PROCESSED_COLUMNS
    assert len(out) == len(recs)  # rows out == records in, in order
    assert out.kafka_offset.tolist() == recs.offset.tolist()
    assert (out.raw_key.tolist() == recs.key.tolist())
    docs = out[out.row_type == "document"]
    assert docs.id.tolist() == ["g1", "g2", "g3"]
    assert (docs.model_version == scorer.version).all()
    probs = docs[["p_negative", "p_neutral", "p_positive"]].to_numpy(dtype=float)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-3) and not np.isnan(probs).any()
    assert set(docs.sentiment) <= {"negative", "neutral", "positive"}
    assert (docs.n_chunks >= 1).all()
    g2 = docs.set_index("id").loc["g2"]
    assert g2.novelty is False and g2.first_story_id == "g0"
    assert docs.set_index("id").loc["g1"].novelty is None
    assert str(docs.published_at.dt.tz) == "UTC" and str(out.kafka_timestamp.dt.tz) == "UTC"
    links = {row.id: {(e["entity"], e["linked_by"]) for e in row.entities} for row in docs.itertuples()}
    assert links["g1"] == {("TSLA", "producer"), ("NVDA", "cashtag")}
    assert links["g2"] == {("AAPL", "alias")}
    assert links["g3"] == {("BABA", "alias")}

    dead = out[out.row_type == "dead_letter"].reset_index(drop=True)
    by_raw = {bytes(r.raw_payload) if r.raw_payload is not None else None: r for r in dead.itertuples()}
    for raw, (stage, reason, detail) in BAD.items():
        row = by_raw[raw]  # the raw bytes are kept exactly
        assert (row.dl_stage, row.dl_reason) == (stage, reason), raw[:40]
        assert detail in row.dl_detail, (reason, row.dl_detail)
        assert row.kafka_topic == DOCS and row.kafka_partition == 1 and row.id is None and row.model_version is None
    assert (by_raw[None].dl_stage, by_raw[None].dl_reason) == ("contract", "empty_value")
    ingest = dead[dead.kafka_topic == DLQ].reset_index(drop=True)
    assert ingest.dl_stage.tolist() == ["ingest", "ingest", "contract"]
    assert ingest.dl_reason.tolist() == ["contract", "contract", "bad_envelope"]
    assert bytes(ingest.raw_payload[0]) == b"<item>broken</item>"
    assert bytes(ingest.raw_payload[1]) == b"\xff\x00binary"     # raw_base64 wins over the lossy text
    assert bytes(ingest.raw_payload[2]) == b"not an envelope"    # an unreadable envelope keeps its bytes
    assert ingest.dl_source[0] == "reuters-rss" and ingest.dl_url[0] == "https://example.com/feed"
    assert ingest.dl_detail[0] == "published_at: missing"
    assert "\x00" not in ingest.dl_detail[1] and ingest.dl_detail[1].encode("utf-8")
    assert ingest.dl_rejected_at[0] == pd.Timestamp("2024-05-01T11:59:00Z")
    assert dead.dl_rejected_at.notna().all()

    # The frame converts to the Spark schema mapInPandas declares (Arrow, no Spark needed).
    table = pa.Table.from_pandas(out, schema=arrow_schema(), preserve_index=False)
    assert table.num_rows == len(recs)


class Exploding:
    version = "boom@0"
    labels = {"sentiment": ["negative", "neutral", "positive"]}

    def score_arrays(self, texts, *, max_chunks=None, evidence=False):
        raise RuntimeError("CUDA out of memory")


def test_a_scorer_failure_propagates_and_is_never_a_default(linker):
    recs = records([(DOCS, json.dumps(document("g1")).encode()), (DOCS, b"{bad")])
    with pytest.raises(RuntimeError, match="out of memory"):
        process_records(recs, scorer=Exploding(), linker=linker, config=CONFIG)


def test_an_unreachable_model_server_propagates(linker):
    from models.remote import RemoteScorer, ScorerUnavailable

    recs = records([(DOCS, json.dumps(document("g1")).encode())])
    with RemoteScorer("http://127.0.0.1:9", timeout=2.0, retries=0) as remote:
        with pytest.raises(ScorerUnavailable):
            process_records(recs, scorer=remote, linker=linker, config=CONFIG)


def test_a_batch_of_only_bad_records_never_calls_the_scorer(linker):
    recs = records([(DOCS, b"{bad"), (DLQ, json.dumps(ENVELOPE).encode())])
    out = process_records(recs, scorer=Exploding(), linker=linker, config=CONFIG)
    assert out.row_type.tolist() == ["dead_letter", "dead_letter"]
    empty = process_records(records([]), scorer=Exploding(), linker=linker, config=CONFIG)
    assert list(empty.columns) == PROCESSED_COLUMNS and len(empty) == 0


def test_make_processor_pickles_only_config_and_runs_without_a_task_context(scorer):
    config = ProcessorConfig(documents_topic=DOCS, dead_letter_topic=DLQ, aliases_files="")
    assert config.aliases_files == ()
    fn = make_processor(config)
    pickle.loads(pickle.dumps(config))
    assert task_resources() == ("cpu", None)
    batches = [records([(DOCS, json.dumps(document("a")).encode())]), records([(DOCS, b"{")])]
    outs = list(fn(iter(batches)))
    assert [len(o) for o in outs] == [1, 1]
    assert outs[0].model_version[0] == scorer.version
    assert outs[1].dl_reason[0] == "not_json"


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        ProcessorConfig(documents_topic=DOCS, dead_letter_topic=DLQ, max_chunks=0)
    with pytest.raises(ValueError):
        ProcessorConfig(documents_topic=DOCS, dead_letter_topic=DLQ, max_message_bytes=0)


@pytest.mark.spark
@pytest.mark.slow
def test_the_processor_in_spark_from_kafka_into_postgres(stack, unique_topic, fresh_db, monkeypatch):
    """Real Kafka -> Spark mapInPandas(make_processor) -> Arrow -> PostgresSink: the shapes agree end to end."""
    import sys
    from datetime import datetime, timezone

    import sqlalchemy as sa
    from kafka import KafkaProducer
    from pyspark.sql import SparkSession

    from finpulse import db
    from finpulse.kafka import ensure_topics
    from pipeline.rows import PROCESSED_DDL
    from pipeline.sink import PostgresSink
    from stack import spark_jars

    dlq = unique_topic + ".dlq"
    ensure_topics([unique_topic, dlq], settings=stack)
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap_servers, acks="all")
    for i in range(3):
        producer.send(unique_topic, key=f"d{i}".encode(), value=json.dumps(document(f"d{i}")).encode())
    producer.send(unique_topic, key=b"d0", value=json.dumps(document("d0")).encode())  # a re-sent copy
    producer.send(unique_topic, key=b"bad", value=b"\xff{")
    producer.send(dlq, key=b"reuters-rss", value=json.dumps(ENVELOPE).encode())
    producer.flush()
    producer.close()

    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    spark = (SparkSession.builder.master("local[1]").appName("finpulse-test-processor")
             .config("spark.jars", ",".join(spark_jars(stack))).config("spark.ui.enabled", "false")
             .config("spark.sql.session.timeZone", "UTC").config("spark.sql.shuffle.partitions", "1").getOrCreate())
    try:
        records = (spark.read.format("kafka").option("kafka.bootstrap.servers", ",".join(stack.bootstrap_servers))
                   .option("subscribe", f"{unique_topic},{dlq}").option("startingOffsets", "earliest").load()
                   .select("key", "value", "topic", "partition", "offset", "timestamp"))
        config = ProcessorConfig(documents_topic=unique_topic, dead_letter_topic=dlq)
        table = records.mapInPandas(make_processor(config), PROCESSED_DDL).toArrow()
    finally:
        spark.stop()
    assert table.num_rows == 6
    engine = db.engine(fresh_db)
    try:
        report = PostgresSink(engine, query_name="spark-test").write_batch(
            0, table, scorer_name="in-process", started_at=datetime.now(timezone.utc))
        assert (report.n_input, report.n_documents, report.n_dead, report.n_duplicates) == (6, 3, 2, 1)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM document_scores")).scalar() == 3
            assert conn.execute(sa.text("SELECT count(*) FROM document_entities WHERE entity = 'NVDA'")).scalar() == 3
            assert sorted(conn.execute(sa.text("SELECT stage, reason, source_topic FROM dead_letters")).all()) == [
                ("contract", "not_utf8", unique_topic), ("ingest", "contract", dlq)]
            assert conn.execute(sa.text("SELECT n_docs FROM sentiment_windows WHERE dimension = 'all' "
                                        "AND width_seconds = 86400")).scalar() == 3
    finally:
        engine.dispose()


def test_everything_the_processor_emits_is_storable(fresh_db, scorer, linker):
    """No record, however bad, yields a row Postgres refuses (that batch would fail on every retry)."""
    from datetime import datetime, timezone

    import sqlalchemy as sa

    from finpulse import db
    from pipeline.sink import PostgresSink

    recs = mixed_records()
    out = process_records(recs, scorer=scorer, linker=linker, config=CONFIG)
    engine = db.engine(fresh_db)
    try:
        report = PostgresSink(engine, query_name="storable").write_batch(
            0, out, scorer_name="in-process", started_at=datetime.now(timezone.utc))
        assert report.n_input == len(recs) and report.n_documents == 3 and report.n_dead == len(recs) - 3
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM dead_letters")).scalar() == len(recs) - 3
            assert conn.execute(sa.text("SELECT count(*) FROM dead_letters WHERE raw_payload IS NULL")).scalar() == 1
            assert conn.execute(sa.text("SELECT novelty FROM documents WHERE id = 'g2'")).scalar() is False
    finally:
        engine.dispose()


ENTITY_WEIGHTS = {"slumps": (3.0, 0.0, 0.0), "soars": (0.0, 0.0, 3.0)}


def test_the_entity_head_scores_every_link_in_one_call(linker):
    from tests.models.keyword_scorer import KeywordEntityScorer, KeywordScorer

    doc = document("mixed", title="$TSLA slumps after a recall; $NVDA soars on record demand", text="", tickers=[])
    scorer = KeywordEntityScorer(ENTITY_WEIGHTS)
    out = process_records(records([(DOCS, json.dumps(doc).encode()), (DOCS, json.dumps(document("g")).encode())]),
                          scorer=scorer, linker=linker, config=CONFIG)
    entities = {e["entity"]: e for e in out.iloc[0]["entities"]}
    assert entities["TSLA"]["sentiment"] == "negative" and entities["NVDA"]["sentiment"] == "positive"
    for e in entities.values():
        assert e["model_version"] == scorer.version
        assert abs(e["p_negative"] + e["p_neutral"] + e["p_positive"] - 1) < 1e-5
        assert e["confidence"] == max(e["p_negative"], e["p_neutral"], e["p_positive"])
    # one scorer call for the batch: the documents and every (document, ticker) link, read from the same pass
    assert len(scorer.calls) == 1 and len(scorer.calls[0]) == 2

    # a model without an entity head: the links stay, bare (the document's score counts for them)
    bare = process_records(records([(DOCS, json.dumps(doc).encode())]), scorer=KeywordScorer(ENTITY_WEIGHTS),
                           linker=linker, config=CONFIG)
    assert [(e["entity"], e["model_version"], e["sentiment"]) for e in bare.iloc[0]["entities"]] == [
        ("TSLA", "", None), ("NVDA", "", None)]


def test_an_entity_scorer_failure_propagates(linker):
    from tests.models.keyword_scorer import KeywordEntityScorer

    class Broken(KeywordEntityScorer):
        def score_documents(self, texts, entities, *, max_chunks=None, evidence=False):
            raise RuntimeError("entity head down")

    with pytest.raises(RuntimeError, match="entity head down"):
        process_records(records([(DOCS, json.dumps(document("x")).encode())]), scorer=Broken(ENTITY_WEIGHTS),
                        linker=linker, config=CONFIG)


def test_a_link_the_model_does_not_find_in_the_text_keeps_no_entity_score(linker):
    """A producer's ticker the text never names has nothing to read: NULL entity score (its windows count the
    document's), never a guess; the other links of the document are scored."""
    from tests.models.keyword_scorer import KeywordEntityScorer

    doc = document("unnamed", title="Tesla slumps after a recall", text="", tickers=["IBM"])
    out = process_records(records([(DOCS, json.dumps(doc).encode())]), scorer=KeywordEntityScorer(ENTITY_WEIGHTS),
                          linker=linker, config=CONFIG)
    entities = {e["entity"]: e for e in out.iloc[0]["entities"]}
    assert entities["IBM"]["linked_by"] == "producer" and entities["IBM"]["sentiment"] is None
    assert entities["IBM"]["model_version"] == "" and entities["IBM"]["p_negative"] is None
    # found by its alias ("Tesla"), though the link came from the alias table, not a cashtag
    assert entities["TSLA"]["sentiment"] == "negative" and entities["TSLA"]["model_version"] == "keyword-stub"


def test_a_document_the_model_cannot_read_is_kept_unscored_never_neutral(scorer, linker):
    """A Chinese post for an English model: a document row of status unsupported_language, no probabilities, and
    its text never reaches the scorer (even when the producer tagged it 'en')."""
    seen: list[str] = []

    class Counting:
        version, languages, labels = scorer.version, scorer.languages, scorer.labels

        def __getattr__(self, name):
            return getattr(scorer, name)

        def score_documents(self, texts, entities, **kw):
            seen.extend(texts)
            return scorer.score_documents(texts, entities, **kw)

        def score_arrays(self, texts, **kw):
            seen.extend(texts)
            return scorer.score_arrays(texts, **kw)

    zh = document("zh1", title="特斯拉股价大跌", text="$TSLA 投资者担心需求放缓，股价下跌百分之五。", lang="en")
    recs = records([(DOCS, json.dumps(zh).encode()), (DOCS, json.dumps(document("en1")).encode())])
    out = process_records(recs, scorer=Counting(), linker=linker, config=CONFIG).set_index("id")
    row = out.loc["zh1"]
    assert row.row_type == "document" and row.score_status == "unsupported_language" and row.detected_lang == "zh"
    assert row.sentiment is None and row.topic is None and row.model_version == scorer.version
    assert all(pd.isna(row[p]) for p in ("p_negative", "p_neutral", "p_positive"))
    assert {e["entity"] for e in row.entities} == {"TSLA"} and all(e["sentiment"] is None for e in row.entities)
    assert out.loc["en1"].score_status == "ok" and out.loc["en1"].sentiment in ("negative", "neutral", "positive")
    assert len(seen) == 1 and "Tesla" in seen[0]


def test_evidence_words_reach_document_scores(fresh_db, linker):
    """The scorer's evidence words (asked for in the same call that scores the batch) are stored as
    document_scores.evidence, [{"word", "weight"}] strongest first, what the dashboard's ticker page lists."""
    from datetime import datetime, timezone

    import sqlalchemy as sa

    from finpulse import db
    from pipeline.sink import PostgresSink
    from tests.models.keyword_scorer import KeywordEntityScorer

    weights = {"slumps": (3.0, 0.0, 0.0), "recall": (1.0, 0.0, 0.0), "soars": (0.0, 0.0, 3.0)}
    doc = document("ev", title="$TSLA slumps after a recall", text="", tickers=[])
    out = process_records(records([(DOCS, json.dumps(doc).encode())]), scorer=KeywordEntityScorer(weights),
                          linker=linker, config=CONFIG)
    assert [w["word"] for w in json.loads(out.iloc[0]["evidence"])] == ["slumps", "recall"]
    engine = db.engine(fresh_db)
    try:
        PostgresSink(engine, query_name="evidence").write_batch(0, out, scorer_name="in-process",
                                                                started_at=datetime.now(timezone.utc))
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT evidence FROM document_scores WHERE document_id = 'ev'")).scalar_one()
    finally:
        engine.dispose()
    assert [w["word"] for w in stored] == ["slumps", "recall"] and stored[0]["weight"] > stored[1]["weight"] > 0
