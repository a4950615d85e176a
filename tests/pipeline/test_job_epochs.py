"""A lost checkpoint is a new epoch, not a replay: real Kafka, Spark local[2], Postgres, the shipped model.

Spark numbers batches per checkpoint, so after ``finpulse pipeline reset`` (or a lost checkpoint) the next
run's batch 0 is not the batch 0 that Postgres committed. The job keys its ledger on the streaming query's id
(the checkpoint's identity) as well: the new epoch re-reads the topics and every record lands exactly once.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.pipeline.conftest import (
    REPO,
    job_env,
    new_topics,
    produce,
    run_job,
    scalar,
    scratch_database,
    snapshot,
    snapshot_diff,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.stack]


def test_after_a_reset_new_records_land_once_and_the_tables_equal_one_run(stack, stream, reference, tmp_path):
    with scratch_database(stack) as settings:
        topics = new_topics(stack)
        half = len(stream.messages) // 2
        produce(stack, topics, stream.messages[:half])
        env = job_env(settings, topics, tmp_path)
        log = tmp_path / "job.log"
        run_job(env, log, "--query-name", "epochs")
        checkpoint = tmp_path / "checkpoint" / "epochs"
        assert (checkpoint / "metadata").is_file()
        first_id = scalar(settings, "SELECT min(query_id) FROM pipeline_batches")
        assert first_id and scalar(settings, "SELECT count(DISTINCT query_id) FROM pipeline_batches") == 1

        reset = subprocess.run([sys.executable, "-m", "finpulse", "pipeline", "reset", "--query-name", "epochs"],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert reset.returncode == 0, reset.stdout + reset.stderr
        assert f"deleted the checkpoint {checkpoint} (query id {first_id})" in reset.stdout
        assert "new epoch" in reset.stdout
        assert not checkpoint.exists()

        # New records while the checkpoint is gone; the next run numbers its batches from 0 again.
        produce(stack, topics, stream.messages[half:])
        run_job(env, log, "--query-name", "epochs")

        # Every document once, scored once; windows, entities and dead letters as one uninterrupted run.
        n_docs = len(stream.documents)
        assert scalar(settings, "SELECT count(*) FROM documents") == n_docs
        assert scalar(settings, "SELECT count(*) FROM document_scores") == n_docs
        assert scalar(settings, "SELECT count(DISTINCT document_id) FROM document_scores") == n_docs
        got = snapshot(settings)
        assert not snapshot_diff(got, reference["snapshot"]), snapshot_diff(got, reference["snapshot"])
        # Two epochs in the ledger, both with a batch 0, and one line that says so.
        text = log.read_text()
        assert text.count("new checkpoint (query id") == 1, text[-3000:]
        assert scalar(settings, "SELECT count(DISTINCT query_id) FROM pipeline_batches") == 2
        assert scalar(settings, "SELECT count(*) FROM pipeline_batches WHERE batch_id = 0") == 2
