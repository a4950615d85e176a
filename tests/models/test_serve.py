"""The model server over real HTTP: `finpulse model serve` as a subprocess, RemoteScorer against it and against failing servers."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from models.remote import RemoteScorer, ScorerRejected, ScorerUnavailable
from models.results import ScoreArrays

from tests.models.test_chunking import LEAD, NEGATIVE_BODY, SHORT
from tests.conftest import free_port

FINPULSE = Path(sys.executable).parent / "finpulse"
TEXTS = SHORT + [None, "  ", LEAD + NEGATIVE_BODY * 2, "Gold hits a record high", LEAD + NEGATIVE_BODY * 12]




def _start_server(tmp_path_factory, *extra: str) -> tuple[subprocess.Popen, str]:
    """`finpulse model serve` on a free port, CPU, 2 threads, in a session of its own; returns once healthy."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("metrics"))}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(FINPULSE), "model", "serve", "--device", "cpu", "--port", str(port), "--threads", "2",
             "--precision", "fp32", *extra],  # the in-process reference (shipped_scorer) is fp32
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            _stop_group(process)
            pytest.fail(f"server not healthy after 180 s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)


def _stop_group(process: subprocess.Popen) -> None:
    """Stop the server's whole process group (its LitServe workers included): SIGTERM, then SIGKILL to whatever
    of the group is left, because a worker that outlives its server keeps a core busy for the rest of the suite."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if process.poll() is None:
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server for this module; waits up to 0.5 s to merge up to 4 requests into one batch."""
    process, url = _start_server(tmp_path_factory, "--max-batch-size", "4", "--batch-timeout", "0.5")
    try:
        yield url
    finally:
        _stop_group(process)


def _assert_same(remote: ScoreArrays, local: ScoreArrays) -> None:
    assert remote.model_version == local.model_version
    assert remote.status.tolist() == local.status.tolist()
    assert remote.sentiment.tolist() == local.sentiment.tolist()
    assert remote.topic.tolist() == local.topic.tolist()
    assert remote.n_chunks.tolist() == local.n_chunks.tolist()
    assert remote.truncated.tolist() == local.truncated.tolist()
    for name in ("p_negative", "p_neutral", "p_positive", "topic_confidence"):
        # Same model and inputs; thread count and autocast may differ in the last bits.
        np.testing.assert_allclose(getattr(remote, name), getattr(local, name), atol=1e-2, equal_nan=True)


def test_remote_scores_equal_in_process_scores(server, shipped_scorer):
    with RemoteScorer(server) as remote:
        assert remote.version == shipped_scorer.version
        for k in (1, 4):
            _assert_same(remote.score_arrays(TEXTS, max_chunks=k), shipped_scorer.score_arrays(TEXTS, max_chunks=k))
        assert len(remote.score_arrays([])) == 0


def _metric(server: str, name: str) -> float:
    """One sample of the server's Prometheus text (0 when not yet present)."""
    for line in httpx.get(f"{server}/metrics/", timeout=10).text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == name:
            return float(value)
    return 0.0


def test_concurrent_requests_are_batched_and_split_back(server, shipped_scorer):
    """Requests of different sizes and K at once: merged into model batches (the server waits up to
    0.5 s for 4 requests), each answer holds exactly its own texts' scores."""
    requests = [(TEXTS[i:], 2 if i % 3 == 0 else 4) for i in range(8)]
    ok_name, requests_name = 'finpulse_model_server_texts_total{status="ok"}', "finpulse_model_server_requests_total"
    batches_name = "finpulse_model_server_batch_requests_count"
    ok_before, requests_before = _metric(server, ok_name), _metric(server, requests_name)
    batches_before = _metric(server, batches_name)
    with RemoteScorer(server) as remote, ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda r: remote.score_arrays(r[0], max_chunks=r[1]), requests))
    for (texts, k), answer in zip(requests, answers, strict=True):
        assert len(answer) == len(texts)
        _assert_same(answer, shipped_scorer.score_arrays(texts, max_chunks=k))
    # The metrics count what was served (the logger process may lag a moment behind the answers).
    expected_ok = sum(int((a.status == "ok").sum()) for a in answers)
    deadline = time.monotonic() + 10
    while _metric(server, ok_name) - ok_before < expected_ok and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _metric(server, ok_name) - ok_before == expected_ok
    assert _metric(server, requests_name) - requests_before == len(requests)
    batches = _metric(server, batches_name) - batches_before
    assert batches < len(requests)  # dynamic batching merged requests
    info = httpx.get(f"{server}/info", timeout=10).json()
    assert info["model"]["model_version"] == shipped_scorer.version and info["model"]["max_chunks"] == 4
    assert info["model"]["entity_input"] == shipped_scorer.entity_input


def test_bad_request_is_rejected_not_retried(server):
    with RemoteScorer(server, retries=3) as remote, pytest.raises(ScorerRejected, match="422"):
        remote.score_arrays(["fine"], max_chunks=0)
    response = httpx.post(f"{server}/score", json={"texts": [1, 2]}, timeout=10)
    assert response.status_code == 422


def test_server_down_raises_after_retries():
    port = free_port()  # nothing listens here
    started = time.monotonic()
    with RemoteScorer(f"http://127.0.0.1:{port}", timeout=2, retries=2, backoff=0.01) as remote:
        with pytest.raises(ScorerUnavailable, match="failed 3 times") as error:
            remote.score_arrays(["Shares plunge"])
    assert "Connect" in str(error.value)
    assert time.monotonic() - started < 30


class _Failing(http.server.BaseHTTPRequestHandler):
    """A real HTTP server that answers 503, or a misaligned 200, counting requests."""

    calls = 0
    mode = "503"

    def do_POST(self):  # noqa: N802 (http.server's naming)
        type(self).calls += 1
        length = int(self.headers["Content-Length"])
        texts = json.loads(self.rfile.read(length))["texts"]
        if self.mode == "503":
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"overloaded")
            return
        short = ScoreArrays.empty(len(texts) - 1, model_version="finpulse-minilm-lora-x").to_dict()
        body = json.dumps(short).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("mode", ["503", "misaligned"])
def test_failing_server_raises_after_retries_and_never_defaults(mode):
    _Failing.calls, _Failing.mode = 0, mode
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with RemoteScorer(f"http://127.0.0.1:{httpd.server_address[1]}", timeout=5, retries=2, backoff=0.01) as remote:
            with pytest.raises(ScorerUnavailable) as error:
                remote.score_arrays(["a", "b", None])
        assert _Failing.calls == 3
        assert ("503" in str(error.value)) if mode == "503" else ("2 scores for 3 texts" in str(error.value))
    finally:
        httpd.shutdown()


def test_sigterm_to_the_server_stops_its_workers_too(tmp_path_factory):
    """A service manager signals the main pid only: no LitServe worker may outlive it."""
    process, url = _start_server(tmp_path_factory)
    try:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) is not None
        deadline = time.monotonic() + 30
        while True:
            try:
                os.killpg(process.pid, 0)  # anything left in the server's process group?
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, "LitServe workers outlived the server"
            time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        _stop_group(process)


@pytest.fixture(scope="module")
def entity_server(tmp_path_factory, entity_model_without_comments):
    """A server of a tiny model with an entity head."""
    model = entity_model_without_comments.out
    process, url = _start_server(tmp_path_factory, "--model", str(model), "--max-batch-size", "4",
                                 "--batch-timeout", "0.5")
    try:
        yield url, model
    finally:
        _stop_group(process)


PAIRS = (["Gold shines on seasonal demand; Silver dull", "Gold shines on seasonal demand; Silver dull", None, "x"],
         ["Gold", "Silver", "Gold", "  "])


def test_remote_pairs_equal_in_process_pairs_and_batch_with_texts(entity_server):
    from models.scorer import Scorer

    url, model = entity_server
    local = Scorer.load(model, device="cpu", precision="fp32").score_pairs(*PAIRS)
    with RemoteScorer(url) as remote:
        assert "entity" in remote.labels
        # a pairs request and a texts request in flight together (one server batch): each gets its own answer
        with ThreadPoolExecutor(2) as pool:
            pairs = pool.submit(remote.score_pairs, *PAIRS)
            texts = pool.submit(remote.score_arrays, TEXTS[:3])
            got, arrays = pairs.result(), texts.result()
    assert got.status.tolist() == local.status.tolist() == ["ok", "ok", "empty", "empty"]
    assert got.sentiment.tolist() == local.sentiment.tolist()
    assert np.allclose(got.p_negative[:2], local.p_negative[:2], atol=1e-4) and np.isnan(got.p_negative[2])
    assert len(arrays) == 3 and arrays.model_version == got.model_version


def test_pairs_to_a_model_without_an_entity_head_are_rejected_and_spoil_no_other_request(tmp_path_factory, tiny_model):
    process, url = _start_server(tmp_path_factory, "--model", str(tiny_model[0].out), "--max-batch-size", "4",
                                 "--batch-timeout", "0.5")
    try:
        with RemoteScorer(url, retries=0) as remote:
            assert "entity" not in remote.labels
            with ThreadPoolExecutor(2) as pool:
                pairs = pool.submit(remote.score_pairs, *PAIRS)
                texts = pool.submit(remote.score_arrays, TEXTS[:3])
                with pytest.raises(ScorerRejected, match="no entity head"):
                    pairs.result()
                assert texts.result().status.tolist() == ["ok"] * 3
        misaligned = httpx.post(f"{url}/score", json={"texts": ["a", "b"], "entities": ["a"]}, timeout=30)
        assert misaligned.status_code == 422 and "2 texts but 1 entities" in misaligned.text
    finally:
        _stop_group(process)
