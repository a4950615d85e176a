"""The model server: ``finpulse model serve``, the Scorer behind HTTP on LitServe, so one GPU host serves many CPU executors.

Endpoints (all from LitServe except ``/score``'s body and ``/metrics``):

- ``POST /score`` ``{"texts": [str | null, ...], "max_chunks": int | null}`` -> ``ScoreArrays.to_dict()``
  (``model_version`` plus one list per column, aligned with ``texts``). With ``"entities": [...]``
  (one per text) it scores the pairs with the entity head instead -> ``EntityArrays.to_dict()``;
  a model without one answers ``{"error": ...}`` (not an exception, which would fail every
  request batched with it). One request is one Arrow
  batch of the pipeline; LitServe's dynamic batching merges up to ``--max-batch-size`` waiting
  requests (waiting at most ``--batch-timeout`` s), ``batch()`` flattens their texts into one
  Scorer call (one length-sorted, token-budgeted pass) and ``unbatch()`` splits the result back.
- ``GET /health``: 200 ``ok`` once every inference worker has loaded the model, else 503.
- ``GET /info``: ``{"model": {"model_version", "max_chunks", "max_length", ...}, "server": {...}}``.
- ``GET /metrics/``: Prometheus text format (LitServe's ``Logger`` hook; prometheus_client in
  multiprocess mode, because predictions run in LitServe's inference worker processes and the
  metrics are served by its API server processes).

Torch and the model are imported in the inference workers only (``ScorerAPI.setup``).
"""

import logging
import os
import signal
import tempfile
import time

import litserve as ls
from pydantic import BaseModel, Field, model_validator

from finpulse.memory import trim_heap

log = logging.getLogger(__name__)

SCORE_PATH = "/score"
METRICS_PATH = "/metrics"
MAX_CHUNKS_LIMIT = 64


class ScoreRequest(BaseModel):
    """One request: the texts of one batch, scored over up to ``max_chunks`` chunks (server default if null)."""

    texts: list[str | None]
    max_chunks: int | None = Field(None, ge=1, le=MAX_CHUNKS_LIMIT)
    entities: list[str | None] | None = None  # set: sentiment towards entities[i] in texts[i] (entity head)
    # set: the texts' scores and the sentiment towards each entity text i names (entity_names[i], each entity
    # as the names it goes by), from one pass per chunk (``Scorer.score_documents``)
    entity_names: list[list[list[str]]] | None = None
    evidence: bool = False  # also each text's evidence words (from the same pass)

    @model_validator(mode="after")
    def _entities_align(self) -> "ScoreRequest":
        if self.entities is not None and len(self.entities) != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but {len(self.entities)} entities")
        if self.entity_names is not None and len(self.entity_names) != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but {len(self.entity_names)} entity lists")
        if self.entities is not None and self.entity_names is not None:
            raise ValueError("give entities (pairs) or entity_names (documents), not both")
        return self


def _answer(results: list, requests: list[ScoreRequest], members: list[int], arrays) -> None:
    """Split the arrays of one merged batch back into the answers of its requests (``members``, in order)."""
    offset = 0
    for i in members:
        n = len(requests[i].texts)
        results[i] = arrays.rows(offset, offset + n).to_dict()
        offset += n


class ScorerAPI(ls.LitAPI):
    """LitServe API around ``models.scorer.Scorer``; one instance per inference worker (per device)."""

    def __init__(self, *, model_dir: str | None, max_chunks: int, token_budget: int | None, threads: int | None,
                 max_batch_size: int, batch_timeout: float, precision: str = "auto"):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=SCORE_PATH)
        self.model_dir = model_dir
        self.max_chunks = max_chunks
        self.token_budget = token_budget
        self.threads = threads
        self.precision = precision
        self.scorer = None

    def setup(self, device):
        import torch

        from models.scorer import Scorer

        if str(device).startswith("cpu") and self.threads:
            torch.set_num_threads(self.threads)
        self.scorer = Scorer.load(self.model_dir, device=device, max_chunks=self.max_chunks,
                                  token_budget=self.token_budget, precision=self.precision)
        log.info("scorer %s ready on %s (autocast %s, token budget %d)", self.scorer.version, self.scorer.device,
                 self.scorer.autocast_dtype, self.scorer.token_budget)

    def decode_request(self, request: ScoreRequest) -> ScoreRequest:
        return request

    def batch(self, inputs: list[ScoreRequest]) -> list[ScoreRequest]:
        # Flattening happens in predict, per max_chunks group: requests asking for different K
        # cannot share one Scorer call.
        return list(inputs)

    def predict(self, requests):
        if isinstance(requests, ScoreRequest):  # --max-batch-size 1: LitServe passes the request itself
            return self._score([requests])[0]
        return self._score(requests)

    def _score(self, requests: list[ScoreRequest]) -> list[dict]:
        start = time.perf_counter()
        results: list[dict | None] = [None] * len(requests)
        groups: dict[int, list[int]] = {}
        documents: dict[int, list[int]] = {}
        pairs: list[int] = []
        for index, request in enumerate(requests):
            if request.entities is not None:
                pairs.append(index)
            elif request.entity_names is not None:
                documents.setdefault(request.max_chunks or self.max_chunks, []).append(index)
            else:
                groups.setdefault(request.max_chunks or self.max_chunks, []).append(index)
        ok = chunks = texts = 0
        no_head = f"model {self.scorer.version} has no entity head"
        try:
            for max_chunks, members in documents.items():
                if "entity" not in self.scorer.labels:
                    for i in members:
                        results[i] = {"error": no_head}
                    continue
                flat = [t for i in members for t in requests[i].texts]
                docs, entities = self.scorer.score_documents(
                    flat, [e for i in members for e in requests[i].entity_names], max_chunks=max_chunks,
                    evidence=any(requests[i].evidence for i in members))
                doc_offset = entity_offset = 0
                for i in members:
                    n, m = len(requests[i].texts), sum(len(e) for e in requests[i].entity_names)
                    results[i] = {"documents": docs.rows(doc_offset, doc_offset + n).to_dict(),
                                  "entities": entities.rows(entity_offset, entity_offset + m).to_dict()}
                    doc_offset, entity_offset = doc_offset + n, entity_offset + m
                texts += len(flat)
                ok += int((docs.status == "ok").sum())
                chunks += int(docs.n_chunks.sum())
            if pairs and "entity" not in self.scorer.labels:
                for i in pairs:
                    results[i] = {"error": no_head}
            elif pairs:
                arrays = self.scorer.score_pairs([t for i in pairs for t in requests[i].texts],
                                                 [e for i in pairs for e in requests[i].entities])
                _answer(results, requests, pairs, arrays)
                texts += len(arrays)
                ok += int((arrays.status == "ok").sum())
                chunks += len(arrays)
            for max_chunks, members in groups.items():
                flat = [t for i in members for t in requests[i].texts]
                arrays = self.scorer.score_arrays(flat, max_chunks=max_chunks,
                                                  evidence=any(requests[i].evidence for i in members))
                _answer(results, requests, members, arrays)
                texts += len(flat)
                ok += int((arrays.status == "ok").sum())
                chunks += int(arrays.n_chunks.sum())
        except Exception:
            self.log("error", 1)
            raise
        self.log("batch", {"requests": len(requests), "texts": texts, "ok": ok, "chunks": chunks,
                           "seconds": time.perf_counter() - start})
        trim_heap()  # a server lives for days: its RSS must not creep up batch by batch (finpulse.memory)
        return results

    def unbatch(self, output: list[dict]) -> list[dict]:
        return output

    def encode_response(self, output: dict) -> dict:
        return output


class PrometheusLogger(ls.Logger):
    """Turns the API's ``log("batch", ...)`` events into Prometheus metrics, served at ``/metrics/``.

    LitServe runs ``process`` in a logger process of its own and serves ``/metrics`` from its API
    server processes, so the metrics live in prometheus_client's multiprocess files under
    ``PROMETHEUS_MULTIPROC_DIR`` (set by ``run_server`` before any process starts).
    """

    def __init__(self):
        super().__init__()
        self._metrics = None
        from prometheus_client import CollectorRegistry, make_asgi_app, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
        self.mount(METRICS_PATH, make_asgi_app(registry))

    def __getstate__(self):
        # The mounted ASGI app belongs to the API server; the logger process needs none of it.
        return {"_config": {}, "_metrics": None}

    def _create_metrics(self) -> dict:
        from prometheus_client import Counter, Histogram

        return {
            "requests": Counter("finpulse_model_server_requests", "Score requests answered"),
            "texts": Counter("finpulse_model_server_texts", "Texts received, by status", ["status"]),
            "chunks": Counter("finpulse_model_server_chunks", "Chunks run through the model"),
            "errors": Counter("finpulse_model_server_errors", "Batches that failed"),
            "batch_requests": Histogram("finpulse_model_server_batch_requests",
                                        "Requests merged into one model batch by dynamic batching",
                                        buckets=(1, 2, 4, 8, 16, 32, 64)),
            "batch_seconds": Histogram("finpulse_model_server_batch_seconds", "Model time per merged batch",
                                       buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)),
        }

    def process(self, key, value):
        if self._metrics is None:
            self._metrics = self._create_metrics()
        m = self._metrics
        if key == "error":
            m["errors"].inc()
        elif key == "batch":
            m["requests"].inc(value["requests"])
            m["texts"].labels("ok").inc(value["ok"])
            m["texts"].labels("empty").inc(value["texts"] - value["ok"])
            m["chunks"].inc(value["chunks"])
            m["batch_requests"].observe(value["requests"])
            m["batch_seconds"].observe(value["seconds"])


def build_server(*, device: str, model_dir: str | None, max_batch_size: int, batch_timeout: float,
                 workers_per_device: int, threads: int | None, max_chunks: int, token_budget: int | None,
                 request_timeout: float, precision: str = "auto") -> ls.LitServer:
    """The LitServer, not started. Sets ``PROMETHEUS_MULTIPROC_DIR`` (a fresh temp dir) unless set."""
    import json

    from models.network import CONFIG_FILE, ENTITY_TASK, entity_input, model_languages, model_version, resolve_model_dir

    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="finpulse-model-serve-metrics-")
    folder = resolve_model_dir(model_dir)
    config = json.loads((folder / CONFIG_FILE).read_text())
    metadata = {"model_version": model_version(folder), "model_dir": str(folder), "max_chunks": max_chunks,
                "max_length": config["max_length"], "labels": config["labels"], "max_batch_size": max_batch_size,
                "batch_timeout": batch_timeout,
                # How this model reads (text, entity) pairs: clients send raw pairs, the server builds them.
                "entity_input": entity_input(config) if ENTITY_TASK in config["labels"] else None,
                "languages": list(model_languages(config)), "precision": precision}
    api = ScorerAPI(model_dir=str(folder), max_chunks=max_chunks, token_budget=token_budget, threads=threads,
                    max_batch_size=max_batch_size, batch_timeout=batch_timeout, precision=precision)
    return ls.LitServer(api, accelerator=device, devices="auto", workers_per_device=workers_per_device,
                        timeout=request_timeout, model_metadata=metadata, loggers=PrometheusLogger(),
                        track_requests=True)


def run_server(*, host: str, port: int, log_level: str = "info", **kwargs) -> None:
    """Build and run the server until SIGTERM/Ctrl-C (blocks)."""
    server = build_server(**kwargs)

    def stop(signum, frame):
        # LitServe shuts its worker processes down on KeyboardInterrupt only; without this a
        # SIGTERM (a service manager, `kill PID`) would end the main process and orphan them.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    log.info("serving %s on http://%s:%d%s", server.model_metadata["model_version"], host, port, SCORE_PATH)
    server.run(host=host, port=port, generate_client_file=False, log_level=log_level)


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu`` (what ``--device`` defaults to)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

