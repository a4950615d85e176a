"""Drills: the streaming job on a real stream through the failures an operator meets.

Each drill runs the shared test stream (``make_stream``: good documents, a re-sent one, malformed records)
through the job in small batches while something fails: the Kafka broker restarts, Postgres is down for
30 s, the job is killed with SIGKILL three times. Then it lets the job finish and compares every table
with the uninterrupted reference run: 0 documents lost, 0 counted twice, the same windows. Each drill
writes its figures to ``var/drills/<name>.json`` (``tests.conftest.record_drill``; README "Drills").
The alert service's drill (kill -9 during delivery) is in ``tests/alerts/test_service.py``.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.conftest import free_port, record_drill
from tests.pipeline.conftest import (
    committed_batches,
    finish_job,
    job_env,
    kill_group,
    new_topics,
    produce,
    run_job,
    scalar,
    scratch_database,
    snapshot,
    snapshot_diff,
    start_job,
    tail,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.stack, pytest.mark.drill]

BATCH = 12  # records per micro-batch: several batches, so each failure lands with work on both sides
BROKER_DOWN_S = 10.0
POSTGRES_DOWN_S = 30.0


def _wait(condition, proc: subprocess.Popen, log, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"job died on its own while waiting for {what}:\n{tail(log)}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f}s:\n{tail(log)}"
        time.sleep(0.2)


def _figures(settings, stream, reference, log) -> dict:
    """What every drill reports: lost and doubly counted documents, tables unlike the uninterrupted run."""
    expected = {d["id"] for d in stream.documents}
    ids = scalar(settings, "SELECT coalesce(array_agg(id), '{}') FROM documents")
    stored, stored_expected = len(ids), len(expected & set(ids))
    # A document counted twice shows in the windows: each width's `all` windows must sum to the documents.
    counted = scalar(settings, "SELECT coalesce(max(n), 0) FROM (SELECT sum(n_docs) AS n FROM sentiment_windows "
                               "WHERE dimension = 'all' GROUP BY width_seconds) t")
    diff = snapshot_diff(snapshot(settings), reference["snapshot"])
    text = log.read_text(errors="replace")
    return {
        "documents_expected": len(expected), "documents_stored": stored, "lost": len(expected) - stored_expected,
        "counted_twice": counted - stored, "tables_unlike_uninterrupted_run": diff.count(" rows vs "),
        "batches_failed": text.count("batch failed, query stopped"),
        "storage_retries": text.count("Postgres unreachable"),
        "_diff": diff,
    }


def _check(name: str, figures: dict, **extra) -> None:
    diff = figures.pop("_diff")
    record_drill(name, {**figures, **extra})
    assert figures["lost"] == 0 and figures["counted_twice"] == 0, figures
    assert figures["documents_stored"] == figures["documents_expected"], figures
    assert not diff, diff


def test_broker_restarted_mid_stream(stack, stream, reference, tmp_path):
    """Half the stream, the broker stops and starts again, the other half: all of it lands once."""
    from stack.kafka import EmbeddedKafka

    with scratch_database(stack) as settings:
        topics = new_topics(stack)
        half = len(stream.messages) // 2
        produce(stack, topics, stream.messages[:half])
        env = job_env(settings, topics, tmp_path, FINPULSE_PIPELINE_MAX_OFFSETS_PER_TRIGGER=str(BATCH))
        log = tmp_path / "job.log"
        proc = start_job(env, log, "--until-idle", "10", "--query-name", "drill-broker")
        try:
            _wait(lambda: committed_batches(settings) >= 1, proc, log, "first committed batch")
            broker = EmbeddedKafka(settings=stack)
            t0 = time.monotonic()
            broker.down()
            time.sleep(BROKER_DOWN_S)
            broker.up()
            broker_away_s = time.monotonic() - t0
            assert proc.poll() is None, f"the job died with the broker:\n{tail(log)}"
            produce(stack, topics, stream.messages[half:])
            t_back = time.monotonic()
            finish_job(proc, log)
        finally:
            kill_group(proc)
        _check("broker-restart", _figures(settings, stream, reference, log),
               broker_away_s=round(broker_away_s, 1),
               drained_after_restart_s=round(time.monotonic() - t_back, 1))


def test_postgres_down_for_30s_mid_stream(stack, stream, reference, tmp_path):
    """Postgres stops for 30 s while batches are due: the batch waits (no re-read, no re-score), then lands."""
    from stack.postgres import EmbeddedPostgres

    with scratch_database(stack) as settings:
        topics = new_topics(stack)
        produce(stack, topics, stream.messages)
        env = job_env(settings, topics, tmp_path, FINPULSE_PIPELINE_MAX_OFFSETS_PER_TRIGGER=str(BATCH))
        log = tmp_path / "job.log"
        proc = start_job(env, log, "--until-idle", "10", "--query-name", "drill-postgres")
        postgres = EmbeddedPostgres(settings=stack)
        try:
            _wait(lambda: committed_batches(settings) >= 1, proc, log, "first committed batch")
            before = committed_batches(settings)
            postgres.down()
            try:
                time.sleep(POSTGRES_DOWN_S)
                assert proc.poll() is None, f"the job died with Postgres:\n{tail(log)}"
            finally:
                postgres.up()
            t_back = time.monotonic()
            finish_job(proc, log)
        finally:
            kill_group(proc)
            postgres.up()  # the next tests need it whatever happened here
        figures = _figures(settings, stream, reference, log)
        assert before * BATCH < len(stream.messages), "Postgres went down after the stream was done"
        assert figures["storage_retries"] >= 1, f"no batch met the outage:\n{tail(log)}"
        assert figures["batches_failed"] == 0, f"the outage failed a batch (it should wait):\n{tail(log)}"
        _check("postgres-down-30s", figures, postgres_down_s=POSTGRES_DOWN_S,
               batches_before_outage=before, drained_after_postgres_back_s=round(time.monotonic() - t_back, 1))


def test_exactly_once_after_three_kill9(stack, stream, reference, tmp_path):
    with scratch_database(stack) as settings:
        topics = new_topics(stack)
        produce(stack, topics, stream.messages)
        env = job_env(settings, topics, tmp_path, FINPULSE_PIPELINE_MAX_OFFSETS_PER_TRIGGER=str(BATCH))
        log = tmp_path / "job.log"
        kills = 0
        for attempt in range(3):
            before = committed_batches(settings)
            port = free_port()
            proc = start_job({**env, "FINPULSE_PIPELINE_METRICS_PORT": str(port)}, log, "--query-name", "crashy")
            try:
                _wait(lambda: committed_batches(settings) > before, proc, log, "new committed batch")
                if attempt == 0:
                    _assert_metrics_count_the_committed_batches(port, settings)
            finally:
                kill_group(proc)  # SIGKILL to the driver and its JVM: no clean-up at all
            kills += 1
        assert kills == 3
        at_last_kill = committed_batches(settings)
        assert at_last_kill * BATCH < len(stream.messages), "the kills came after the stream was done"
        t0 = time.monotonic()
        run_job(env, log, "--query-name", "crashy")
        _check("pipeline-kill9-x3", _figures(settings, stream, reference, log), kills=kills,
               batches_committed_before_last_restart=at_last_kill,
               final_run_s=round(time.monotonic() - t0, 1))


def _assert_metrics_count_the_committed_batches(port: int, settings) -> None:
    """The running job's /metrics (pipeline.metrics) against pipeline_batches: its first k committed batches'
    scored and dead-letter counts, k being the batches the metrics counted."""
    import httpx
    import sqlalchemy as sa

    from finpulse import db

    def sample(text: str, name: str) -> float:
        return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")), 0.0)

    deadline = time.monotonic() + 30
    while True:  # the driver updates its metrics just after Spark reports the batch's progress
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        counted = int(sample(text, 'finpulse_pipeline_batches_total{result="committed"}'))
        if counted or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert counted >= 1, text
    engine = db.engine(settings)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT n_scored, n_dead FROM pipeline_batches WHERE status = 'committed' "
                                        "ORDER BY batch_id LIMIT :k"), {"k": counted}).all()
    finally:
        engine.dispose()
    assert sample(text, 'finpulse_pipeline_records_total{outcome="scored"}') == sum(r.n_scored for r in rows) > 0
    assert sample(text, 'finpulse_pipeline_records_total{outcome="dead_letter"}') == sum(r.n_dead for r in rows)
    assert sample(text, "finpulse_pipeline_batch_duration_seconds_count") == counted
