"""Executor side of the job: Kafka records -> processed rows (parse, validate, score, link).

:func:`process_records` turns one Arrow batch of Kafka records (as pandas) into exactly one
:mod:`pipeline.rows` row per record, in input order:

- a record of the documents topic that satisfies the contract and whose text the model can
  read becomes a ``document`` row with its score and entity links;
- one whose language (``pipeline.language``, by script) the model does not read
  (``Scorer.languages``) becomes a ``document`` row of ``score_status`` ``unsupported_language``:
  stored with its rule-found links, never scored (no sentiment, no probabilities), in no window;
- anything else becomes a ``dead_letter`` row with the raw bytes, the Kafka coordinates, a
  stage, a short machine reason and a human detail:

  ====================  ===========  ======================================================
  stage                 reason       when
  ====================  ===========  ======================================================
  contract              empty_value  the record has no value (a tombstone)
  contract              oversize     the value is over ``max_message_bytes`` (never parsed)
  contract              not_utf8     the value is not UTF-8
  contract              not_json     the value is not JSON
  contract              not_object   the JSON is not an object
  contract              schema_version  ``schema_version`` is not one this build reads
  contract              invalid      a field is missing or wrong (the detail names it)
  contract              unstorable_text  U+0000 or an unpaired surrogate, which Postgres cannot store
  scoring               empty_text   nothing left to score after the model's text cleaning
  (envelope's stage)    (envelope's) a dead letter that ingest published on the dead-letter topic
  contract              bad_envelope a dead-letter-topic record that is not ingest's envelope
  storage               rejected     Postgres refused the document (written by the sink, see
                                     ``pipeline.sink``)
  ====================  ===========  ======================================================

A scorer failure (an exception, ``models.remote.ScorerUnavailable``) is neither a dead letter
nor a default score: it propagates, so Spark fails the task and the batch is retried.

:func:`make_processor` wraps it for ``DataFrame.mapInPandas``; the scorer and the alias table
are built once per Python worker and reused across batches and tasks.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from finpulse.contract import SCHEMA_VERSION, ContractError, Document, validate_document
from pipeline.entities import EntityLinker
from pipeline.language import UNSUPPORTED_LANGUAGE, unsupported_language
from pipeline.rows import PROCESSED_COLUMNS, ROW_DEAD_LETTER, ROW_DOCUMENT, blank_row

log = logging.getLogger(__name__)

STAGE_CONTRACT = "contract"
STAGE_SCORING = "scoring"
# The broker's default message.max.bytes; a bigger record was produced past a raised limit.
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
_DETAIL_CHARS = 2000
MAX_ID_CHARS = 512  # the contract's id length; first_story_id names one and is indexed


@dataclass(frozen=True)
class ProcessorConfig:
    """Everything an executor needs, picklable (no clients, no model): shipped with the function."""

    documents_topic: str
    dead_letter_topic: str
    max_chunks: int = 4
    scorer_url: str | None = None
    model_dir: str | None = None
    precision: str = "auto"  # FINPULSE_MODEL_PRECISION: models.scorer.resolve_precision
    aliases_files: tuple[str, ...] = ()
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        files = self.aliases_files
        if isinstance(files, str):  # a comma-separated setting
            files = tuple(p.strip() for p in files.split(",") if p.strip())
        object.__setattr__(self, "aliases_files", tuple(str(p) for p in (files or ())))
        if self.max_chunks < 1:
            raise ValueError(f"max_chunks must be >= 1 (got {self.max_chunks})")
        if self.max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be >= 1 (got {self.max_message_bytes})")


class Rejected(Exception):
    """A record that becomes a dead letter."""

    def __init__(self, reason: str, detail: str, stage: str = STAGE_CONTRACT):
        super().__init__(f"{stage}/{reason}: {detail}")
        self.stage, self.reason, self.detail = stage, reason, storable(detail[:_DETAIL_CHARS])


def storable(text: str) -> str:
    """``text`` with U+0000 and unpaired surrogates replaced (U+FFFD), so a Postgres text column takes it."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def _bytes_or_none(value) -> bytes | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return bytes(value)


def _kafka_time(value) -> pd.Timestamp | None:
    if value is None or pd.isna(value):
        return None
    ts = pd.Timestamp(value)
    # Spark hands timestamps to pandas as naive values in the session time zone, which the job sets to UTC.
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def parse_document(value: bytes | None, *, max_message_bytes: int) -> Document:
    """The contract's Document from a record value, or :class:`Rejected` with a reason and detail."""
    if value is None or len(value) == 0:
        raise Rejected("empty_value", "the record has no value (null or zero bytes)")
    if len(value) > max_message_bytes:
        raise Rejected("oversize", f"value is {len(value)} bytes; the limit is {max_message_bytes} "
                                   "(FINPULSE_PIPELINE_MAX_MESSAGE_BYTES); not parsed, not scored")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected("not_utf8", f"document: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        message = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError, and NaN / Infinity (not JSON; jsonb refuses them)
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise Rejected("not_json", f"document: not JSON ({getattr(exc, 'msg', exc)}{where})") from None
    if not isinstance(message, dict):
        raise Rejected("not_object", f"document: must be a JSON object, got {type(message).__name__}")
    version = message.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise Rejected("schema_version", f"schema_version: unsupported {version!r}; this build reads {SCHEMA_VERSION}")
    try:
        document = validate_document(message)
    except ContractError as exc:
        raise Rejected("invalid", str(exc)) from None
    # JSON cannot carry a raw NUL or a lone surrogate in a string, only their escapes, so the scan
    # runs only when an escape is there. Postgres text/jsonb cannot store either: the batch would
    # fail on every retry.
    if "\\u" in text:
        bad = [name for name, val in message.items() if _unstorable(name) or _unstorable(val)]
        if bad:
            raise Rejected("unstorable_text", f"{', '.join(bad)}: contains U+0000 or an unpaired surrogate "
                                              "(\\u0000, \\ud800...), which Postgres text cannot store")
    first_story = document.extra.get("first_story_id")
    if isinstance(first_story, str) and len(first_story) > MAX_ID_CHARS:
        raise Rejected("invalid", f"extra.first_story_id: longer than {MAX_ID_CHARS} characters (a document id)")
    return document


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _unstorable(value: Any) -> bool:
    if isinstance(value, str):
        if "\x00" in value:
            return True
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_unstorable(v) for v in value)
    return False


def parse_envelope(value: bytes | None) -> dict[str, Any]:
    """Ingest's dead-letter envelope (``ingest.deadletter``) -> dead-letter columns; :class:`Rejected` if unreadable."""
    if value is None or len(value) == 0:
        raise Rejected("bad_envelope", "dead-letter topic record has no value")
    try:
        envelope = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Rejected("bad_envelope", f"dead-letter envelope is not UTF-8 JSON ({exc})") from None
    if not isinstance(envelope, dict):
        raise Rejected("bad_envelope", f"dead-letter envelope must be a JSON object, got {type(envelope).__name__}")
    missing = [k for k in ("stage", "reason") if not isinstance(envelope.get(k), str) or not envelope[k].strip()]
    if missing:
        raise Rejected("bad_envelope", f"dead-letter envelope lacks {', '.join(missing)}")
    raw: bytes | None
    if envelope.get("raw_base64"):
        try:
            raw = base64.b64decode(envelope["raw_base64"], validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise Rejected("bad_envelope", f"raw_base64: not base64 ({exc})") from None
    elif isinstance(envelope.get("raw"), str):
        raw = envelope["raw"].encode("utf-8", "surrogatepass")
    else:
        raw = None
    at = None
    if envelope.get("at"):
        try:
            at = pd.Timestamp(envelope["at"])
            at = at.tz_localize("UTC") if at.tzinfo is None else at.tz_convert("UTC")
        except (ValueError, TypeError):
            at = None
    def text(name: str) -> str | None:
        value = envelope.get(name)
        return storable(value) if isinstance(value, str) else None

    detail = text("detail") or ""
    if envelope.get("raw_truncated"):
        detail += f" [raw truncated by ingest: {envelope.get('raw_bytes')} bytes originally]"
    return {
        "dl_stage": text("stage"), "dl_reason": text("reason"), "dl_detail": detail[:_DETAIL_CHARS * 4],
        "dl_source": text("source"), "dl_url": text("url"),
        "dl_rejected_at": at, "raw_payload": raw,
    }


def _score_columns(scores, i: int) -> dict[str, Any]:
    return {
        "model_version": scores.model_version,
        "sentiment": scores.sentiment[i],
        "p_negative": float(scores.p_negative[i]), "p_neutral": float(scores.p_neutral[i]),
        "p_positive": float(scores.p_positive[i]),
        "topic": scores.topic[i],
        "topic_confidence": None if pd.isna(scores.topic_confidence[i]) else float(scores.topic_confidence[i]),
        "n_chunks": int(scores.n_chunks[i]), "truncated": bool(scores.truncated[i]),
        "evidence": _evidence_json(scores.evidence[i]),
    }


def _evidence_json(words) -> str | None:
    """The scorer's evidence words ([[word, share], ...], strongest first; computed from the pass it ran anyway)
    as the JSON document_scores.evidence holds: [{"word", "weight"}, ...]."""
    if words is None:
        return None
    return json.dumps([{"word": str(w), "weight": round(float(share), 3)} for w, share in words])


def _document_columns(doc: Document) -> dict[str, Any]:
    novelty = doc.extra.get("novelty")
    first_story = doc.extra.get("first_story_id")
    return {
        "id": doc.id, "schema_version": doc.schema_version, "source": doc.source, "kind": doc.kind, "url": doc.url,
        "title": doc.title, "text": doc.text, "author": doc.author,
        "published_at": pd.Timestamp(doc.published_at), "fetched_at": pd.Timestamp(doc.fetched_at),
        "lang": doc.lang, "tickers": list(doc.tickers), "parent_id": doc.parent_id,
        "extra": json.dumps(doc.extra, ensure_ascii=False),
        "novelty": novelty if isinstance(novelty, bool) else None,
        "first_story_id": first_story if isinstance(first_story, str) and first_story else None,
    }


def process_records(records: pd.DataFrame, *, scorer, linker: EntityLinker, config: ProcessorConfig) -> pd.DataFrame:
    """One processed row per Kafka record (columns ``rows.PROCESSED_COLUMNS``), in input order.

    ``records``: the Kafka source columns key, value, topic, partition, offset, timestamp.
    Scorer exceptions propagate (the batch is retried); nothing is turned into a default score.
    """
    now = pd.Timestamp(datetime.now(timezone.utc))
    out: list[dict[str, Any]] = []
    pending: list[tuple[int, Document]] = []  # (row index in out, document) awaiting the scorer
    for record in records.itertuples(index=False):
        value = _bytes_or_none(record.value)
        base = {
            "kafka_topic": record.topic, "kafka_partition": int(record.partition), "kafka_offset": int(record.offset),
            "kafka_timestamp": _kafka_time(record.timestamp), "raw_key": _bytes_or_none(record.key),
        }
        try:
            if record.topic == config.dead_letter_topic:
                columns = parse_envelope(value)
                out.append(blank_row(row_type=ROW_DEAD_LETTER, **base, **columns))
                continue
            document = parse_document(value, max_message_bytes=config.max_message_bytes)
        except Rejected as rejected:
            out.append(blank_row(row_type=ROW_DEAD_LETTER, **base, dl_stage=rejected.stage, dl_reason=rejected.reason,
                                 dl_detail=rejected.detail, dl_rejected_at=now, raw_payload=value))
            continue
        pending.append((len(out), document))
        out.append(blank_row(row_type=ROW_DOCUMENT, **base, raw_payload=value, **_document_columns(document)))

    if pending:
        pending = set_aside_unsupported(scorer, linker, pending, out)
    if pending:
        score_documents(scorer, linker, pending, out, config=config, now=now)
    return to_processed_frame(out)


def set_aside_unsupported(scorer, linker: EntityLinker, pending: list[tuple[int, Document]],
                          out: list[dict]) -> list[tuple[int, Document]]:
    """Mark the documents the model cannot read ``unsupported_language`` (no score); the others, to score."""
    from models.network import DEFAULT_LANGUAGES

    languages = tuple(getattr(scorer, "languages", None) or DEFAULT_LANGUAGES)
    readable = []
    for row_index, document in pending:
        detected = unsupported_language(document.content, languages)
        if detected is None:
            readable.append((row_index, document))
            continue
        links = linker.link(title=document.title, text=document.text, tickers=document.tickers)
        out[row_index].update(
            model_version=scorer.version, score_status=UNSUPPORTED_LANGUAGE, detected_lang=detected,
            sentiment=None, p_negative=None, p_neutral=None, p_positive=None, topic=None, topic_confidence=None,
            n_chunks=1, truncated=False, raw_payload=None,
            entities=[_entity_columns(link, None, 0) for link in links])
    return readable


def score_documents(scorer, linker: EntityLinker, pending: list[tuple[int, Document]], out: list[dict], *,
                    config: ProcessorConfig, now: pd.Timestamp) -> None:
    """Link and score the batch's documents in one scorer call, filling their rows in ``out``.

    With an entity head, each document's pass also reads the sentiment towards every ticker it is linked
    to (``Scorer.score_documents``: one encoder pass per chunk, however many entities); a link whose ticker
    the model does not find in the text it read keeps no entity-level score (its windows then count the
    document's). Scorer exceptions propagate (the batch is retried); nothing becomes a default score.
    """
    links = [linker.link(title=document.title, text=document.text, tickers=document.tickers)
             for _, document in pending]
    contents = [document.content for _, document in pending]
    entity_arrays = None
    from models.scorer import has_entity_head

    if has_entity_head(scorer):
        # One call per Arrow batch: the scorer sorts and batches chunks by length itself.
        scores, entity_arrays = scorer.score_documents(contents, [[link.names for link in doc] for doc in links],
                                                       max_chunks=config.max_chunks, evidence=True)
        n_links = sum(len(doc) for doc in links)
        if len(entity_arrays) != n_links:
            raise RuntimeError(f"scorer returned {len(entity_arrays)} entity scores for {n_links} links")
    else:
        scores = scorer.score_arrays(contents, max_chunks=config.max_chunks, evidence=True)
    if len(scores) != len(pending):
        raise RuntimeError(f"scorer returned {len(scores)} results for {len(pending)} texts")
    entity_index = 0
    for i, (row_index, document) in enumerate(pending):
        row = out[row_index]
        first_link, entity_index = entity_index, entity_index + len(links[i])
        status = scores.status[i]
        if status == "empty":
            row.update(blank_row(
                row_type=ROW_DEAD_LETTER, kafka_topic=row["kafka_topic"], kafka_partition=row["kafka_partition"],
                kafka_offset=row["kafka_offset"], kafka_timestamp=row["kafka_timestamp"], raw_key=row["raw_key"],
                raw_payload=row["raw_payload"], dl_stage=STAGE_SCORING, dl_reason="empty_text",
                dl_detail="title, text: nothing left to score after the model's text cleaning",
                dl_rejected_at=now, dl_source=document.source, dl_url=document.url,
            ))
            continue
        if status != "ok":
            raise RuntimeError(f"scorer status {status!r} for document {document.id!r}: expected ok or empty")
        columns = _score_columns(scores, i)
        if any(math.isnan(columns[p]) for p in ("p_negative", "p_neutral", "p_positive")) or not columns["sentiment"]:
            raise RuntimeError(f"scorer returned status ok without probabilities for document {document.id!r}")
        row.update(columns)
        row["score_status"] = "ok"
        row["raw_payload"] = None  # the document's columns hold it; dead letters keep the raw bytes
        row["entities"] = [_entity_columns(link, entity_arrays, first_link + k) for k, link in enumerate(links[i])]


def _entity_columns(link, arrays, index: int) -> dict[str, Any]:
    """A link's row: its entity-level score when the model read one (status ok), else NULLs."""
    row = {"entity": link.entity, "entity_type": "ticker", "linked_by": link.linked_by, "mention": link.mention,
           "model_version": "", "sentiment": None, "confidence": None, "p_negative": None, "p_neutral": None,
           "p_positive": None}
    if arrays is not None and arrays.status[index] == "ok":
        row.update(model_version=arrays.model_version, sentiment=arrays.sentiment[index],
                   confidence=float(arrays.confidence[index]), p_negative=float(arrays.p_negative[index]),
                   p_neutral=float(arrays.p_neutral[index]), p_positive=float(arrays.p_positive[index]))
    return row


_TIMESTAMPS = ("kafka_timestamp", "published_at", "fetched_at", "dl_rejected_at")


def to_processed_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Row dicts -> the mapInPandas frame: PROCESSED_COLUMNS, UTC timestamps, NULLs as None (not NaN)."""
    frame = pd.DataFrame(rows, columns=PROCESSED_COLUMNS)
    frame = frame.astype(object).where(frame.notna(), None) if len(frame) else frame.astype(object)
    for column in _TIMESTAMPS:
        frame[column] = pd.to_datetime(frame[column], utc=True)
    for column in ("p_negative", "p_neutral", "p_positive", "topic_confidence"):
        frame[column] = frame[column].astype("float32")
    return frame


# -- per worker --------------------------------------------------------------------------------

_cache_lock = threading.Lock()
_scorers: dict[tuple, Any] = {}
_linkers: dict[tuple[str, ...], EntityLinker] = {}


def task_resources() -> tuple[str, int | None]:
    """(device, threads) of the running Spark task: its GPU address if it has one, and its CPUs."""
    try:
        from pyspark import TaskContext
    except ImportError:  # pragma: no cover - pyspark is a dependency; tests may run without a task
        return "cpu", None
    context = TaskContext.get()
    if context is None:
        return "cpu", None
    device = "cpu"
    gpu = context.resources().get("gpu")
    if gpu is not None and gpu.addresses:
        device = f"cuda:{gpu.addresses[0]}"
    return device, context.cpus()


def worker_scorer(config: ProcessorConfig):
    """The scorer of this Python worker: remote when ``scorer_url`` is set, else in-process on the task's device."""
    device, threads = task_resources()
    key = (("remote", config.scorer_url) if config.scorer_url
           else ("local", config.model_dir, device, threads, config.precision))
    with _cache_lock:
        scorer = _scorers.get(key)
        if scorer is None:
            if config.scorer_url:
                from models.remote import RemoteScorer

                scorer = RemoteScorer(config.scorer_url)
            else:
                from models.scorer import get_scorer

                scorer = get_scorer(config.model_dir, device, threads=threads, precision=config.precision)
            _scorers[key] = scorer
    return scorer


def worker_linker(config: ProcessorConfig) -> EntityLinker:
    with _cache_lock:
        linker = _linkers.get(config.aliases_files)
        if linker is None:
            linker = _linkers[config.aliases_files] = EntityLinker.load(config.aliases_files)
    return linker


def make_warm_up(config: ProcessorConfig) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """For ``df.mapInPandas(fn, "pid long")``: load this Python worker's scorer and alias table (and answer
    its pid), so the first batch with data does not wait for a model load."""

    def warm(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import os

        worker_scorer(config)
        worker_linker(config)
        for _ in batches:
            pass
        yield pd.DataFrame({"pid": [os.getpid()]})

    return warm


def make_processor(config: ProcessorConfig) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The function for ``df.mapInPandas(fn, rows.PROCESSED_DDL)``; pickles only ``config``."""

    def process(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from finpulse.memory import trim_heap

        scorer = worker_scorer(config)
        linker = worker_linker(config)
        for records in batches:
            yield process_records(records, scorer=scorer, linker=linker, config=config)
            trim_heap()  # a worker lives for days: its RSS must not creep up batch by batch (finpulse.memory)

    return process
