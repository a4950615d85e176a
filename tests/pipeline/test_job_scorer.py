"""The job scoring through the model server (``--scorer URL``): the same tables as in-process, and a
server that is down fails the batch (retried), never writing a default score."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.pipeline.conftest import (
    REPO,
    committed_batches,
    job_env,
    kill_group,
    new_topics,
    produce,
    scalar,
    scratch_database,
    snapshot,
    snapshot_diff,
    start_job,
    tail,
)
from tests.conftest import free_port

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.stack]




def _start_server(port: int, log) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "finpulse", "model", "serve", "--device", "cpu", "--port", str(port),
                                 "--threads", "1", "--precision", "fp32"],  # as the in-process reference
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"model server exited:\n{tail(log)}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    kill_group(proc)
    raise AssertionError(f"model server not healthy:\n{tail(log)}")


def test_server_down_then_up_scores_everything_once_like_in_process(stack, stream, reference, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = None
    with scratch_database(stack) as settings:
        topics = new_topics(stack)
        produce(stack, topics, stream.messages)
        log = tmp_path / "job.log"
        job = start_job(job_env(settings, topics, tmp_path), log, "--until-idle", "6", "--scorer", url,
                        "--query-name", "remote")
        try:
            # Nothing listens on the port yet: every batch fails and the job restarts its query.
            deadline = time.monotonic() + 300
            while log.read_text(errors="replace").count("batch failed") < 2:
                assert job.poll() is None, f"the job died instead of retrying:\n{tail(log)}"
                assert time.monotonic() < deadline, f"no failed batch seen:\n{tail(log)}"
                time.sleep(0.5)
            assert committed_batches(settings) == 0
            assert scalar(settings, "SELECT count(*) FROM document_scores") == 0  # no default scores
            assert scalar(settings, "SELECT count(*) FROM documents") == 0

            server = _start_server(port, tmp_path / "server.log")
            assert job.wait(timeout=420) == 0, tail(log)
        finally:
            if job.poll() is None:
                kill_group(job)
            if server is not None:
                kill_group(server)
        got = snapshot(settings)
        assert not snapshot_diff(got, reference["snapshot"]), snapshot_diff(got, reference["snapshot"])
        assert scalar(settings, "SELECT count(DISTINCT scorer) FROM pipeline_batches") == 1
        assert scalar(settings, f"SELECT count(*) FROM pipeline_batches WHERE scorer <> '{url}'") == 0
