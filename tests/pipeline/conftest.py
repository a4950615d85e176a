"""Shared pieces of the streaming-job tests: a known stream, producing it, running the job, snapshots.

The job always runs as a subprocess (``python -m pipeline run``) on Spark local[2] against the
real test broker and a scratch Postgres database, with its own topics, checkpoint and state dir,
so it can be killed with SIGKILL exactly like a crashed service.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.conftest import scratch_database  # used here and by the job tests

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 3
# All event times lie within two hours, far inside the sink's default 1-day lateness, so no
# document is "late" and the window tables do not depend on how the stream is cut into batches.
BASE_TIME = datetime(2026, 3, 2, 14, 0, tzinfo=timezone.utc)

_WORDS = ["beats estimates", "misses guidance", "raises dividend", "cuts jobs", "announces buyback",
          "faces lawsuit", "reports record revenue", "shares slump", "upgraded by analysts", "recalls cars"]
_CASHTAGS = ["AAPL", "TSLA", "AMD", "NFLX", "KO"]
# Company names that the shipped alias table maps to tickers (pipeline/data/aliases.csv).
_ALIASES = {"Microsoft": "MSFT", "Nvidia": "NVDA", "Pfizer": "PFE"}


@dataclass
class Message:
    topic_role: str  # "documents" or "dead_letters"
    partition: int
    key: bytes | None
    value: bytes | None
    # What the test expects of it: a document id, or the dead letter's (stage, reason).
    doc: dict | None = None
    dead: tuple[str, str] | None = None


@dataclass
class Stream:
    messages: list[Message] = field(default_factory=list)

    @property
    def documents(self) -> list[dict]:
        # The last message of an id wins (a re-sent document is upserted, not doubled).
        by_id = {m.doc["id"]: m.doc for m in self.messages if m.doc is not None}
        return list(by_id.values())

    @property
    def dead(self) -> list[tuple[str, str]]:
        return [m.dead for m in self.messages if m.dead is not None]


def _doc(i: int) -> dict:
    cashtag = _CASHTAGS[i % len(_CASHTAGS)]
    alias = list(_ALIASES)[i % len(_ALIASES)] if i % 4 == 0 else None
    text = f"${cashtag} {_WORDS[i % len(_WORDS)]} in quarter {i % 4 + 1}"
    if alias:
        text += f"; {alias} is mentioned too"
    tickers = {cashtag} | ({_ALIASES[alias]} if alias else set())
    return {
        "schema_version": 1, "id": f"doc-{i:04d}", "source": ["wire-a", "wire-b", "forum"][i % 3],
        "kind": "news" if i % 3 < 2 else "comment", "title": f"Story {i}" if i % 2 else None, "text": text,
        "published_at": (BASE_TIME + timedelta(seconds=47 * i)).isoformat(),
        "fetched_at": (BASE_TIME + timedelta(seconds=47 * i + 5)).isoformat(),
        "lang": "en", "tickers": [cashtag] if i % 5 == 0 else [],
        "extra": {"novelty": i % 7 != 3},
        # not part of the message: what the test expects the linker to find
        "_expected_tickers": sorted(tickers),
    }


def make_stream(n_docs: int = 60, *, bad: bool = True) -> Stream:
    """A deterministic stream: n_docs valid documents (cashtags, aliases), one re-sent, and bad records."""
    stream = Stream()

    def add(role: str, value: bytes | None, *, key: bytes | None = None, doc: dict | None = None,
            dead: tuple[str, str] | None = None) -> None:
        # Explicit partitions: the same stream in another topic lands on the same offsets.
        stream.messages.append(Message(role, len(stream.messages) % PARTITIONS, key, value, doc, dead))

    for i in range(n_docs):
        doc = _doc(i)
        wire = {k: v for k, v in doc.items() if not k.startswith("_")}
        add("documents", json.dumps(wire).encode(), key=doc["id"].encode(), doc=doc)
        if i == 7:  # an at-least-once producer re-sent it: still one document
            add("documents", json.dumps(wire).encode(), key=doc["id"].encode(), doc=doc)
        if bad and i % 10 == 5:
            k = i // 10
            cases = [
                (b"{not json", ("contract", "not_json")),
                (b"\xff\xfe not utf-8", ("contract", "not_utf8")),
                (json.dumps({**wire, "id": f"bad-{i}", "schema_version": 9}).encode(), ("contract", "schema_version")),
                (json.dumps({k2: v for k2, v in wire.items() if k2 != "published_at"} | {"id": f"bad-{i}"}).encode(),
                 ("contract", "invalid")),
                (json.dumps([1, 2, 3]).encode(), ("contract", "not_object")),
                (json.dumps({**wire, "id": f"empty-{i}", "title": None, "text": "https://t.co/abc"}).encode(),
                 ("scoring", "empty_text")),
            ]
            value, dead = cases[k % len(cases)]
            add("documents", value, key=f"bad-{i}".encode(), dead=dead)
    if bad:
        envelope = {"stage": "ingest", "reason": "http_status", "source": "wire-a", "detail": "HTTP 500 from feed",
                    "url": "https://example.com/feed", "raw": "<html>oops</html>", "at": BASE_TIME.isoformat()}
        add("dead_letters", json.dumps(envelope).encode(), dead=("ingest", "http_status"))
        add("dead_letters", b"not an envelope", dead=("contract", "bad_envelope"))
    return stream


@dataclass(frozen=True)
class Topics:
    documents: str
    dead_letters: str


def new_topics(settings) -> Topics:
    from finpulse.kafka import ensure_topics

    tag = uuid.uuid4().hex[:10]
    topics = Topics(f"test.job.{tag}.docs", f"test.job.{tag}.dl")
    ensure_topics([topics.documents, topics.dead_letters], settings=settings, partitions=PARTITIONS)
    return topics


def produce(settings, topics: Topics, messages: list[Message]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5)
    try:
        for m in messages:
            topic = topics.documents if m.topic_role == "documents" else topics.dead_letters
            producer.send(topic, key=m.key, value=m.value, partition=m.partition)
        producer.flush()
    finally:
        producer.close()


def job_env(settings, topics: Topics, workdir: Path, **extra: str) -> dict[str, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "FINPULSE_HOME": str(workdir / "home"),
        "FINPULSE_DATABASE_URL": settings.database_url.get_secret_value(),
        "FINPULSE_TOPIC_DOCUMENTS": topics.documents,
        "FINPULSE_TOPIC_DEAD_LETTERS": topics.dead_letters,
        "FINPULSE_PIPELINE_CHECKPOINT_DIR": str(workdir / "checkpoint"),
        "FINPULSE_PIPELINE_TRIGGER": "1s",
        "FINPULSE_SPARK_MASTER": "local[2]",
        "FINPULSE_LOG_LEVEL": "INFO",
        # Two cores shared by everyone: the model stays on one thread per task.
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        # fp32: replays are compared with an uninterrupted run, and int8's activation scales (what auto
        # picks on a CPU without native bf16) depend on the batch a text is scored in (models/MODEL_CARD.md).
        "FINPULSE_MODEL_PRECISION": "fp32",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


def start_job(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    """``python -m pipeline run ARGS`` in its own process group (so SIGKILL takes the JVM with it)."""
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "pipeline", "run", *args], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def run_job(env: dict[str, str], log: Path, *args: str, timeout: float = 420) -> None:
    finish_job(start_job(env, log, "--until-idle", "6", *args), log, timeout=timeout)


def finish_job(proc: subprocess.Popen, log: Path, *, timeout: float = 420) -> None:
    """Wait for a job started with ``--until-idle`` to go idle and exit 0 (killed and failed past ``timeout``)."""
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"job did not go idle within {timeout}s; log:\n{tail(log)}") from None
    assert rc == 0, f"job exited {rc}; log:\n{tail(log)}"


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def tail(path: Path, n: int = 80) -> str:
    """The log's last lines without JVM stack frames."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join([ln for ln in lines if not ln.lstrip().startswith("at ")][-n:])


def scalar(settings, sql: str):
    """The one value of ``sql`` (an aggregate) in the database of ``settings``."""
    import sqlalchemy as sa

    from finpulse import db

    engine = db.engine(settings)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql)).scalar_one()
    finally:
        engine.dispose()


def committed_batches(settings) -> int:
    return scalar(settings, "SELECT count(*) FROM pipeline_batches WHERE status = 'committed'")


# Columns that legitimately differ between two runs over the same input: when a row was written,
# by which batch, and which topic it came from (each run has its own topics).
VOLATILE = {"ingested_at", "scored_at", "updated_at", "created_at", "batch_id", "kafka_topic", "kafka_timestamp",
            "source_topic", "id@dead_letters", "rejected_at@dead_letters"}
SNAPSHOT_TABLES = {
    "documents": "id",
    "document_scores": "document_id, model_version",
    "document_entities": "document_id, entity, model_version",
    "sentiment_windows": "dimension, key, window_start, window_end, model_version",
    "dead_letters": "stage, reason, source_partition, source_offset",
}


def snapshot(settings) -> dict[str, list[tuple]]:
    """Every pipeline table as sorted tuples, minus the volatile columns."""
    import sqlalchemy as sa

    from finpulse import db

    engine = db.engine(settings)
    out: dict[str, list[tuple]] = {}
    try:
        with engine.connect() as conn:
            for table, order in SNAPSHOT_TABLES.items():
                result = conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY {order}"))
                keep = [i for i, c in enumerate(result.keys()) if c not in VOLATILE and f"{c}@{table}" not in VOLATILE]
                out[table] = [tuple(_norm(row[i]) for i in keep) for row in result]
    finally:
        engine.dispose()
    return out


# Scores are compared to 0.01 (window sums to 1%): with dynamic padding the same text scored in a differently
# composed batch moves its probabilities by ~1e-6 in fp32 and ~1e-3 under bf16. Everything else is exact.
FLOAT_TOLERANCE = 0.01


def snapshot_diff(got: dict[str, list[tuple]], want: dict[str, list[tuple]]) -> str:
    """'' when both snapshots hold the same rows (floats within FLOAT_TOLERANCE), else what differs."""
    lines = []
    for table in want:
        a, b = got.get(table, []), want[table]
        bad = [(x, y) for x, y in zip(a, b) if not _same_row(x, y)]
        if len(a) != len(b) or bad:
            lines.append(f"{table}: {len(a)} rows vs {len(b)} expected, {len(bad)} differ")
            lines += [f"  got  {x}\n  want {y}" for x, y in bad[:3]]
    return "\n".join(lines)


def _same_row(x: tuple, y: tuple) -> bool:
    if len(x) != len(y):
        return False
    for u, v in zip(x, y):
        if isinstance(u, float) and isinstance(v, float):
            # Relative for window sums, which add up the jitter of every document in them.
            if abs(u - v) > FLOAT_TOLERANCE * max(1.0, abs(v)):
                return False
        elif u != v:
            return False
    return True


def _norm(value):
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


def expected_windows(docs: list[dict], width_s: int, by=lambda d: ["*"]) -> Counter:
    """(key, window_start) -> document count, computed from the produced documents alone."""
    counts: Counter = Counter()
    for d in docs:
        at = datetime.fromisoformat(d["published_at"])
        epoch = int(at.timestamp())
        start = datetime.fromtimestamp(epoch - epoch % width_s, tz=timezone.utc)
        for key in by(d):
            counts[(key, start)] += 1
    return counts


@pytest.fixture(scope="session")
def stream():
    return make_stream()


@pytest.fixture(scope="session")
def reference(stack, stream, tmp_path_factory):
    """Settings of a database filled by one uninterrupted run over ``stream``, its snapshot and log."""
    with scratch_database(stack) as settings:
        topics = new_topics(stack)
        produce(stack, topics, stream.messages)
        workdir = tmp_path_factory.mktemp("reference")
        log = workdir / "job.log"
        run_job(job_env(settings, topics, workdir), log, "--query-name", "reference")
        yield {"settings": settings, "snapshot": snapshot(settings), "log": log, "topics": topics}
