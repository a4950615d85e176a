"""Documents in a language the model cannot read, end to end: real Kafka, Spark local[2], Postgres, the shipped
(English) model. They are stored with status unsupported_language, never scored, in no window, and counted per
batch and per source."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.pipeline.conftest import (
    BASE_TIME,
    Message,
    _doc,
    expected_windows,
    job_env,
    new_topics,
    produce,
    run_job,
    scratch_database,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.stack]

_ZH = ["$TSLA 特斯拉股价大跌，投资者担心需求放缓", "苹果公司第三季度营收超出市场预期", "阿里巴巴宣布新一轮股票回购计划",
       "英伟达发布新款芯片，股价创历史新高"]


def _rows(settings, sql: str):
    from finpulse import db

    engine = db.engine(settings)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql)).mappings().all()
    finally:
        engine.dispose()


def test_chinese_documents_are_unsupported_language_and_absent_from_windows(stack, tmp_path):
    english = [_doc(i) for i in range(8)]
    chinese = [{**_doc(100 + i), "id": f"zh-{i}", "source": "weibo", "title": None, "text": text,
                "lang": "zh" if i % 2 else "en",  # a producer's lang may be wrong: the text decides
                "published_at": (BASE_TIME + timedelta(seconds=53 * i)).isoformat()}
               for i, text in enumerate(_ZH)]
    messages = [Message("documents", i % 3, d["id"].encode(),
                        json.dumps({k: v for k, v in d.items() if not k.startswith("_")}).encode(), doc=d)
                for i, d in enumerate(english + chinese)]
    with scratch_database(stack) as settings:
        topics = new_topics(stack)
        produce(stack, topics, messages)
        log = tmp_path / "job.log"
        run_job(job_env(settings, topics, tmp_path), log, "--query-name", "languages")

        assert {r["id"] for r in _rows(settings, "SELECT id FROM documents")} == {d["id"] for d in english + chinese}
        scores = {r["document_id"]: r for r in _rows(settings, "SELECT * FROM document_scores")}
        for d in chinese:
            row = scores[d["id"]]
            assert row["status"] == "unsupported_language", row
            assert row["sentiment"] is None and row["score"] is None
            assert row["p_negative"] is None and row["p_neutral"] is None and row["p_positive"] is None
        for d in english:
            assert scores[d["id"]]["status"] == "ok" and scores[d["id"]]["sentiment"] is not None
        # Windows count the English documents only; no window for the Chinese posts' source.
        for width in (60, 3600, 86400):
            got = Counter({(r["key"], r["window_start"]): r["n_docs"] for r in _rows(
                settings, f"SELECT key, window_start, n_docs FROM sentiment_windows "
                          f"WHERE dimension = 'all' AND width_seconds = {width}")})
            assert got == expected_windows(english, width), width
        assert not _rows(settings, "SELECT * FROM sentiment_windows WHERE key = 'weibo'")
        # Counted per batch and per source, and logged.
        batches = _rows(settings, "SELECT n_scored, n_unsupported, unsupported_by_source FROM pipeline_batches")
        assert sum(b["n_unsupported"] for b in batches) == len(chinese)
        assert sum(b["n_scored"] for b in batches) == len(english)
        by_source: Counter = Counter()
        for b in batches:
            by_source.update(b["unsupported_by_source"])
        assert by_source == {"weibo": len(chinese)}
        assert "4 unsupported language (weibo 4)" in log.read_text()
