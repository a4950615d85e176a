"""The job's pure parts, without Spark: option parsing, lag arithmetic, checkpoint reading, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.job import JobError, JobOptions, parse_trigger, progress_lag, read_checkpoint_offsets
from tests.pipeline.conftest import REPO


@pytest.mark.parametrize(("text", "seconds"), [("2s", 2.0), ("500ms", 0.5), ("1m", 60.0), (" 1.5 s ", 1.5),
                                                ("2", 2.0)])  # a bare number is seconds (finpulse.durations)
def test_parse_trigger(text, seconds):
    assert parse_trigger(text) == seconds


@pytest.mark.parametrize("text", ["", "two seconds", "0s", "-1s", "2w"])
def test_parse_trigger_rejects(text):
    with pytest.raises(JobError):
        parse_trigger(text)


def test_options_reject_a_query_name_that_is_not_a_folder_name(settings):
    with pytest.raises(JobError, match="query name"):
        JobOptions.from_settings(settings, query_name="../escape")
    options = JobOptions.from_settings(settings, query_name="q-1", trigger="500ms", max_offsets_per_trigger=7)
    assert options.checkpoint.name == "q-1" and options.trigger_s == 0.5 and options.max_offsets_per_trigger == 7


def test_progress_lag_sums_latest_minus_end_over_topics_and_partitions():
    progress = {"sources": [{
        "latestOffset": json.dumps({"docs": {"0": 10, "1": 7}, "dl": {"0": 3}}),
        "endOffset": {"docs": {"0": 4, "1": 7}, "dl": {"0": 1}},
    }]}
    assert progress_lag(progress) == 8
    assert progress_lag(None) is None
    assert progress_lag({"sources": [{"latestOffset": None, "endOffset": None}]}) is None


def test_read_checkpoint_offsets_uses_the_last_committed_batch(tmp_path):
    (tmp_path / "offsets").mkdir()
    (tmp_path / "commits").mkdir()
    meta = '{"batchWatermarkMs":0,"batchTimestampMs":1}'
    (tmp_path / "offsets" / "0").write_text(f'v1\n{meta}\n{{"docs":{{"0":5,"1":2}}}}')
    (tmp_path / "offsets" / "1").write_text(f'v1\n{meta}\n{{"docs":{{"0":9,"1":4}}}}')  # planned, not committed
    (tmp_path / "commits" / "0").write_text("v1\n{}")
    assert read_checkpoint_offsets(tmp_path) == (0, {"docs": {"0": 5, "1": 2}})
    assert read_checkpoint_offsets(tmp_path / "missing") == (None, {})


def test_pipeline_help_does_not_start_spark():
    code = ("import sys; from click.testing import CliRunner; from pipeline.cli import cli; "
            "r = [CliRunner().invoke(cli, a) for a in (['--help'], ['run', '--help'], ['start', '--help'])]; "
            "assert all(x.exit_code == 0 for x in r), [x.output for x in r]; "
            "assert 'pyspark' not in sys.modules and 'torch' not in sys.modules; print(r[1].output)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for option in ("--trigger", "--max-offsets-per-trigger", "--until-idle", "--scorer", "--master", "--query-name"):
        assert option in out.stdout


class _IdleQuery:
    """A streaming query between batches, as PySpark's StreamingQuery looks to the job (no session handle);
    it terminates at its third poll."""

    def __init__(self):
        self.polls = 0
        self.recentProgress = []

    def awaitTermination(self, timeout):  # noqa: N802 - PySpark's name
        self.polls += 1
        return self.polls >= 3

    def exception(self):
        return None


def test_keep_warm_while_idle_uses_the_jobs_own_spark_session(settings, monkeypatch, tmp_path):
    import time

    import pipeline.job as job_module
    from pipeline.job import PipelineJob

    settings = settings.model_copy(update={"home": tmp_path})
    job = PipelineJob(JobOptions.from_settings(settings, query_name="idle"), settings=settings)
    warmed = []
    monkeypatch.setattr(job_module, "WARM_EVERY_S", 0.0)
    monkeypatch.setattr(job, "_warm_workers", lambda spark, config: warmed.append((spark, config)))
    job._spark, job._warm_config = "the job's session", "config"
    job.state.last_activity = time.monotonic() - 60
    assert job._watch(_IdleQuery()) is None
    assert warmed and all(w == ("the job's session", "config") for w in warmed)


def _reset(tmp_path, *args: str) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "FINPULSE_HOME": str(tmp_path / "home"),
           "FINPULSE_PIPELINE_CHECKPOINT_DIR": str(tmp_path / "checkpoint")}
    return subprocess.run([sys.executable, "-m", "finpulse", "pipeline", "reset", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_reset_deletes_the_checkpoint_and_refuses_while_the_query_runs(tmp_path):
    import os

    from pipeline.job import checkpoint_query_id

    checkpoint = tmp_path / "checkpoint" / "q1"
    (checkpoint / "commits").mkdir(parents=True)
    (checkpoint / "metadata").write_text('{"id":"3f1c0d2e-aaaa-bbbb-cccc-000000000001"}')
    assert checkpoint_query_id(checkpoint) == "3f1c0d2e-aaaa-bbbb-cccc-000000000001"
    progress = tmp_path / "home" / "pipeline" / "queries" / "q1" / "progress.json"
    progress.parent.mkdir(parents=True)
    # A foreground run of the query is alive (this test's pid stands in for it): nothing is deleted.
    progress.write_text(json.dumps({"state": "running", "pid": os.getpid()}))
    refused = _reset(tmp_path, "--query-name", "q1")
    assert refused.returncode != 0 and "running in the foreground" in refused.stderr and checkpoint.exists()
    # Stopped (or killed: its pid is gone): the checkpoint and the progress file go, and it says what that means.
    progress.write_text(json.dumps({"state": "stopped", "pid": os.getpid()}))
    done = _reset(tmp_path, "--query-name", "q1")
    assert done.returncode == 0, done.stderr
    assert f"deleted the checkpoint {checkpoint} (query id 3f1c0d2e-aaaa-bbbb-cccc-000000000001)" in done.stdout
    assert "new epoch" in done.stdout and "idempotent upsert" in done.stdout
    assert not checkpoint.exists() and not progress.exists()
    again = _reset(tmp_path, "--query-name", "q1")
    assert again.returncode == 0 and "nothing to delete" in again.stdout
