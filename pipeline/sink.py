"""The driver's sink: one micro-batch of processed rows -> one Postgres transaction.

:meth:`PostgresSink.write_batch` writes, in ONE transaction: documents, their scores, their
rule-linked entities, dead letters, the recomputed trend windows (:mod:`pipeline.windows`) and
the ``pipeline_batches`` row that marks the batch committed. Either all of it is visible or
none of it, and a batch already committed changes nothing, so Spark's at-least-once replay of a
batch is harmless.

Which batch: Spark numbers micro-batches per checkpoint, so a batch is (query name, query id,
batch id), the query id being the streaming query's ``id`` that Spark keeps in the checkpoint's
``metadata`` file (a new checkpoint gets a new id; Delta Lake's txnAppId + txnVersion). A lost or
deleted checkpoint therefore starts a new *epoch*: its batch 0 is not the old batch 0, and it is
written (one log line says so: the earlier epochs' offsets and where this one starts). The new
epoch re-reads what Kafka still holds; every write is an idempotent upsert keyed by natural ids and
windows are recomputed from stored rows, so the re-read doubles nothing and skips nothing. Each
batch's offsets (first and last per topic and partition) are stored too: a batch id already
committed under the same query id but with other offsets is a mismatch (the checkpoint and
Postgres disagree); it is logged and the batch is written rather than skipped, for the same reason.

Keys are deduplicated in Python before ``ON CONFLICT`` (Postgres refuses to update one row
twice in one statement, and a replayed Kafka message can sit twice in one batch): per document
id the record with the highest Kafka offset wins, with the union of the tickers and entity links
of every record of that id (the same story under two tickers; across batches the documents upsert
merges ``tickers`` the same way and a producer's ticker link stays while the document carries it); dead letters are unique per (stage, topic,
partition, offset). Writes are ``execute_values`` statements of up to ``PAGE_SIZE`` rows,
never a statement per row.

A document Postgres itself refuses (a data or constraint error: a value no check upstream
caught) would otherwise fail its batch on every retry and stall the stream. So on such an error
the batch is probed document by document (each under a savepoint, all rolled back), the refused
ones become dead letters (stage ``storage``, reason ``rejected``, the Postgres error as detail,
the document as JSON as payload) and the batch is written again without them. Errors of the
server or the connection are not the data's fault. A connection that fails (Postgres down or
restarting: ``psycopg2.OperationalError``/``InterfaceError``) is retried inside the batch, with
exponential backoff, for up to ``outage`` (``FINPULSE_PIPELINE_STORAGE_OUTAGE``, default 5 min), so an
outage of Postgres costs no re-read and no re-scoring: the batch's scored rows wait in the driver. Each
attempt is one transaction, so a retry after a connection lost mid-commit rereads the ledger and skips
a batch that did commit. Past ``outage`` the error propagates and the job restarts the query.

Lateness, per partition: each batch records the highest event time of its documents per Kafka topic
and partition (``pipeline_batches.partition_event_times``; ``max_event_time`` stays the batch's
highest). The watermark is the LOWEST of the partitions' highs over this query's committed batches,
minus ``lateness``: a partition behind in event time (Spark splits ``maxOffsetsPerTrigger`` over the
partitions by backlog, not by time) holds the watermark back, so a partition whose records are in
event-time order never has its own documents late, and the windows do not depend on how the stream
is cut into batches. A partition that delivers its first documents in this batch counts with the
earliest of them. Idle guard: a partition that delivered no document for longer than ``lateness``
(wall clock: the ``started_at`` of the batch being written minus that of the partition's last batch
with documents) no longer counts, until it delivers again, so a partition that went quiet does not
hold the watermark back for ever; batches written before the per-partition record count as one
partition under the same rule. A producer's far-future timestamp is capped at the batch's start (or
now) before it is recorded, so it cannot push the watermark past real time.

A document older than the watermark (a truly late producer) is stored and scored, but the windows
at its new event time are not recomputed by the stream: it is counted in ``n_late`` and noted in
``windows_pending`` (per document and model version, status ``ok`` only) until a recompute covers
it: an on-time re-send, or :func:`pipeline.windows.backfill` over a range holding its event time.
``finpulse pipeline status`` counts those rows and prints the backfill command for their range.
Windows a re-sent document leaves are always recomputed, so it never counts twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import psycopg2
import sqlalchemy as sa
from psycopg2.extras import Json, execute_values
from sqlalchemy.engine import Engine
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from pipeline import windows
from pipeline.rows import PROCESSED_COLUMNS, ROW_DEAD_LETTER, ROW_DOCUMENT, blank_row

log = logging.getLogger(__name__)

PAGE_SIZE = 2000
# Serialises the batches of one query name (two drivers of the same query, or a zombie one):
# the watermark and the committed check are read under it.
_LOCK_NAMESPACE = 0x66_70_62  # "fpb"


@dataclass
class BatchReport:
    """What one ``write_batch`` did. ``skipped``: the batch id was already committed, nothing written."""

    batch_id: int
    skipped: bool
    query_id: str = ""
    new_epoch: bool = False       # the first batch of a query id while earlier query ids committed batches
    offsets_mismatch: bool = False  # committed before under this query id with other offsets: written again
    n_input: int = 0
    n_documents: int = 0      # distinct documents written (after in-batch dedupe)
    n_scored: int = 0         # document rows in the input that were scored
    n_unsupported: int = 0    # document rows not scored: the model does not read their language
    unsupported_by_source: dict[str, int] = field(default_factory=dict)
    n_dead: int = 0           # distinct dead letters in the batch (already stored ones included)
    n_late: int = 0           # documents older than the watermark: stored, windows left to backfill
    n_duplicates: int = 0     # rows dropped by the in-batch dedupe (documents + dead letters)
    n_windows: int = 0        # window rows upserted or deleted
    max_event_time: datetime | None = None
    duration_ms: int = 0


def _utc(value) -> datetime | None:
    if value is None or (not isinstance(value, (list, np.ndarray)) and pd.isna(value)):
        return None
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


def _none(value):
    """pandas/numpy missing values -> None; numpy scalars -> Python scalars."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, dict, bytes, bytearray, np.ndarray)):
        return value
    if pd.isna(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and np.isnan(value):
        return []
    return list(value)


def to_frame(rows) -> pd.DataFrame:
    """A pyarrow Table (``DataFrame.toArrow()``) or pandas frame of processed rows -> pandas."""
    if not isinstance(rows, pd.DataFrame):
        rows = rows.to_pandas()
    missing = [c for c in ("row_type", "kafka_topic", "kafka_partition", "kafka_offset") if c not in rows.columns]
    if missing:
        raise ValueError(f"processed rows lack columns {missing}; expected pipeline.rows.PROCESSED_COLUMNS")
    for column in PROCESSED_COLUMNS:
        if column not in rows.columns:
            rows[column] = None
    unknown = set(rows["row_type"].dropna()) - {ROW_DOCUMENT, ROW_DEAD_LETTER}
    if unknown or rows["row_type"].isna().any():
        raise ValueError(f"unknown row_type values {sorted(unknown)} (or NULL) in processed rows")
    return rows.reset_index(drop=True)


def dedupe_documents(docs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per document id: the one with the highest Kafka offset (a replayed message), carrying the union
    of the tickers and entity links of every row of that id (the same story published under two tickers)."""
    if docs.empty:
        return docs, 0
    order = docs.assign(_off=pd.to_numeric(docs["kafka_offset"], errors="coerce").fillna(-1))
    order = order.sort_values(["_off"], kind="stable")
    kept = order.drop_duplicates("id", keep="last").drop(columns="_off")
    if len(kept) < len(docs):
        repeated = set(order.loc[order["id"].duplicated(keep=False), "id"])
        groups = {doc_id: group for doc_id, group in order[order["id"].isin(repeated)].groupby("id", sort=False)}
        kept = kept.copy()
        for index in kept.index[kept["id"].isin(repeated)]:
            group = groups[kept.at[index, "id"]]
            kept.at[index, "tickers"] = merge_tickers(*group["tickers"])  # first-seen order
            kept.at[index, "entities"] = merge_entities(*group["entities"][::-1])
    return kept, len(docs) - len(kept)


def merge_tickers(*groups) -> list[str]:
    """The union of ticker lists, first-seen order kept (empty and missing lists ignored)."""
    return list(dict.fromkeys(str(t) for group in groups for t in _as_list(group) if t is not None and str(t)))


def merge_entities(winner, *others) -> list[dict]:
    """The winner's entity links plus the producer-ticker links of the other records of its id (the rule the
    upsert applies across batches: text-found links follow the newest text, a producer's tickers accumulate).
    Per (entity, model version) the winner's link wins."""
    out: dict[tuple[str, str], dict] = {}
    for k, group in enumerate((winner, *others)):
        for entity in _as_list(group):
            entity = dict(entity)
            if entity.get("entity") and (k == 0 or entity.get("linked_by") == "producer"):
                out.setdefault((entity["entity"], entity.get("model_version") or ""), entity)
    return list(out.values())


def dedupe_dead_letters(dls: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per (stage, topic, partition, offset); rows without Kafka coordinates are all kept."""
    if dls.empty:
        return dls, 0
    has_coords = dls["kafka_topic"].notna()
    keyed = dls[has_coords].drop_duplicates(["dl_stage", "kafka_topic", "kafka_partition", "kafka_offset"])
    kept = pd.concat([keyed, dls[~has_coords]])
    return kept, len(dls) - len(kept)


def offsets_summary(frame: pd.DataFrame) -> dict[str, dict[str, list[int]]]:
    """{topic: {partition: [first offset, last offset]}} of the batch's records."""
    out: dict[str, dict[str, list[int]]] = {}
    coords = frame[["kafka_topic", "kafka_partition", "kafka_offset"]].dropna()
    for (topic, partition), group in coords.groupby(["kafka_topic", "kafka_partition"]):
        offsets = group["kafka_offset"].astype("int64")
        out.setdefault(str(topic), {})[str(int(partition))] = [int(offsets.min()), int(offsets.max())]
    return out


_DOC_COLUMNS = ["id", "schema_version", "source", "kind", "url", "title", "text", "author", "published_at",
                "fetched_at", "lang", "tickers", "parent_id", "extra", "kafka_topic", "kafka_partition",
                "kafka_offset", "kafka_timestamp", "novelty", "first_story_id", "batch_id"]
# A document id seen again (the same story published under another ticker, a re-sent message) keeps the tickers
# it had and gains the new record's: the union, in first-seen order. Every other column is the new record's.
_TICKERS_UNION = ("ARRAY(SELECT t FROM unnest(documents.tickers || EXCLUDED.tickers) WITH ORDINALITY u(t, n) "
                  "GROUP BY t ORDER BY min(n))")
_DOC_UPSERT = f"""
INSERT INTO documents ({", ".join(_DOC_COLUMNS)}) VALUES %s
ON CONFLICT (id) DO UPDATE SET {", ".join(
    f"{c} = {_TICKERS_UNION}" if c == "tickers" else f"{c} = EXCLUDED.{c}" for c in _DOC_COLUMNS if c != "id")}
"""
_DOC_TEMPLATE = "(" + ", ".join("%s::jsonb" if c == "extra" else "%s" for c in _DOC_COLUMNS) + ")"

_SCORE_COLUMNS = ["document_id", "model_version", "published_at", "sentiment", "p_negative", "p_neutral",
                  "p_positive", "topic", "topic_confidence", "n_chunks", "truncated", "batch_id", "status", "evidence"]
_SCORE_UPSERT = f"""
INSERT INTO document_scores ({", ".join(_SCORE_COLUMNS)}) VALUES %s
ON CONFLICT (document_id, model_version) DO UPDATE SET
{", ".join(f"{c} = EXCLUDED.{c}" for c in _SCORE_COLUMNS[2:])}, scored_at = now()
"""
# A re-sent document may have moved in time: its scores of other model versions follow it.
_SCORE_FOLLOW = """
UPDATE document_scores s SET published_at = d.published_at
FROM documents d
WHERE s.document_id = d.id AND d.id = ANY(%(ids)s) AND s.published_at IS DISTINCT FROM d.published_at
"""

_ENTITY_COLUMNS = ["document_id", "entity", "entity_type", "model_version", "linked_by", "mention", "sentiment",
                   "confidence", "p_negative", "p_neutral", "p_positive"]
# The links a re-sent document replaces: all of its links of these model versions, except a producer's ticker
# that the document still carries (documents.tickers, the union over the records of its id).
_ENTITY_DELETE = """
DELETE FROM document_entities e
USING documents d
WHERE d.id = e.document_id AND e.document_id = ANY(%(ids)s) AND e.model_version = ANY(%(mvs)s)
  AND NOT (e.linked_by = 'producer'
           AND upper(e.entity) IN (SELECT upper(ltrim(t, '$')) FROM unnest(d.tickers) t))
"""
_ENTITY_INSERT = f"""
INSERT INTO document_entities ({", ".join(_ENTITY_COLUMNS)}) VALUES %s
ON CONFLICT (document_id, entity, model_version) DO UPDATE SET
{", ".join(f"{c} = EXCLUDED.{c}" for c in _ENTITY_COLUMNS[3:])}
"""

_DL_COLUMNS = ["stage", "reason", "raw_payload", "raw_key", "source_topic", "source_partition", "source_offset",
               "batch_id", "source", "detail", "url", "rejected_at", "kafka_timestamp"]
_DL_INSERT = f"""
INSERT INTO dead_letters ({", ".join(_DL_COLUMNS)}) VALUES %s
ON CONFLICT (stage, source_topic, source_partition, source_offset) WHERE source_topic IS NOT NULL DO NOTHING
"""

_BATCH_UPSERT = """
INSERT INTO pipeline_batches (query_name, query_id, batch_id, status, n_input, n_scored, n_dead, offsets, model_version,
                              started_at, finished_at, n_late, n_duplicates, max_event_time, duration_ms, scorer,
                              n_unsupported, unsupported_by_source)
VALUES (%(query_name)s, %(query_id)s, %(batch_id)s, 'committed', %(n_input)s, %(n_scored)s, %(n_dead)s, %(offsets)s,
        %(model_version)s, %(started_at)s, now(), %(n_late)s, %(n_duplicates)s, %(max_event_time)s,
        %(duration_ms)s, %(scorer)s, %(n_unsupported)s, %(unsupported_by_source)s)
ON CONFLICT (query_name, query_id, batch_id) DO UPDATE SET
    status = 'committed', n_input = EXCLUDED.n_input, n_scored = EXCLUDED.n_scored, n_dead = EXCLUDED.n_dead,
    offsets = EXCLUDED.offsets, model_version = EXCLUDED.model_version, started_at = EXCLUDED.started_at,
    finished_at = now(), n_late = EXCLUDED.n_late, n_duplicates = EXCLUDED.n_duplicates,
    max_event_time = EXCLUDED.max_event_time, duration_ms = EXCLUDED.duration_ms, scorer = EXCLUDED.scorer,
    n_unsupported = EXCLUDED.n_unsupported, unsupported_by_source = EXCLUDED.unsupported_by_source
"""
_BATCH_PARTITION_TIMES = """
UPDATE pipeline_batches SET partition_event_times = %(times)s
WHERE query_name = %(query_name)s AND query_id = %(query_id)s AND batch_id = %(batch_id)s
"""

# Per topic and partition: the highest event time its documents reached in this query's committed batches, and
# when (the batch's started_at) it last delivered one. Batches written before 0008 count as partition ('', '').
_PARTITION_HIGHS = """
SELECT t.topic, p.part, max(p.ts::timestamptz), max(b.started_at)
FROM pipeline_batches b
CROSS JOIN LATERAL jsonb_each(coalesce(b.partition_event_times,
                                       jsonb_build_object('', jsonb_build_object('', b.max_event_time)))) t(topic, parts)
CROSS JOIN LATERAL jsonb_each_text(t.parts) p(part, ts)
WHERE b.query_name = %s AND b.status = 'committed' AND p.ts IS NOT NULL
GROUP BY t.topic, p.part
"""

# Documents stored and scored but not folded into their windows (late), until a recompute covers them.
_PENDING_UPSERT = """
INSERT INTO windows_pending (document_id, model_version, published_at, query_name, batch_id) VALUES %s
ON CONFLICT (document_id, model_version) DO UPDATE SET
    published_at = EXCLUDED.published_at, query_name = EXCLUDED.query_name, batch_id = EXCLUDED.batch_id,
    noted_at = now()
"""
_PENDING_FOLDED = """
DELETE FROM windows_pending w
USING unnest(%(ids)s::text[], %(mvs)s::text[]) f(document_id, model_version)
WHERE w.document_id = f.document_id AND w.model_version = f.model_version
"""


# Where the earlier epochs of a query name got to: the highest committed offset per topic and partition.
_EARLIER_EPOCHS = """
SELECT count(DISTINCT b.query_id), count(DISTINCT (b.query_id, b.batch_id)), o.topic, p.part,
       max((p.range ->> 1)::bigint)
FROM pipeline_batches b
LEFT JOIN LATERAL jsonb_each(coalesce(b.offsets, '{}'::jsonb)) o(topic, parts) ON true
LEFT JOIN LATERAL jsonb_each(o.parts) p(part, range) ON true
WHERE b.query_name = %s AND b.query_id <> %s AND b.status = 'committed'
GROUP BY GROUPING SETS ((), (o.topic, p.part))
"""


def partition_event_times(docs: pd.DataFrame, published: list[datetime],
                          cap: datetime) -> dict[tuple[str, str], tuple[datetime, datetime]]:
    """{(topic, partition): (earliest, latest event time)} of the batch's documents, each capped at ``cap``."""
    out: dict[tuple[str, str], tuple[datetime, datetime]] = {}
    for topic, partition, pub in zip(docs["kafka_topic"], docs["kafka_partition"], published):
        if pub is None or _none(topic) is None or _none(partition) is None:
            continue
        key, pub = (str(topic), str(int(partition))), min(pub, cap)
        low, high = out.get(key, (pub, pub))
        out[key] = (min(low, pub), max(high, pub))
    return out


def _partition_json(times: dict[tuple[str, str], tuple[datetime, datetime]]) -> dict[str, dict[str, str]]:
    """{topic: {partition: latest event time, ISO 8601}}: what ``partition_event_times`` stores."""
    out: dict[str, dict[str, str]] = {}
    for (topic, partition), (_, high) in sorted(times.items()):
        out.setdefault(topic, {})[partition] = high.isoformat()
    return out


def _normal_offsets(value) -> dict[str, dict[str, list[int]]]:
    if isinstance(value, str):
        value = json.loads(value)
    return {str(t): {str(p): [int(x) for x in r] for p, r in (parts or {}).items()}
            for t, parts in (value or {}).items()}


def _offsets_text(offsets: dict[str, dict[str, Any]]) -> str:
    return "; ".join(f"{topic} " + ",".join(f"{p}:{r}" for p, r in sorted(parts.items(), key=lambda kv: int(kv[0])))
                     for topic, parts in sorted(offsets.items())) or "none"


def _bytes(value) -> bytes | None:
    value = _none(value)
    if value is None:
        return None
    return bytes(value)


# Errors that are the data's fault and come back on every retry (SQLSTATE classes 22 and 23).
STORAGE_ERRORS = (psycopg2.DataError, psycopg2.IntegrityError)
# Errors of a connection that could not be made or was lost: Postgres down or restarting.
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError, sa.exc.OperationalError,
                     sa.exc.InterfaceError)
DEFAULT_OUTAGE = "5m"
OUTAGE_BACKOFF_MAX_S = 5.0  # the longest wait between two attempts: a Postgres back is used within seconds


_DOCUMENT_FIELDS = ("schema_version", "id", "source", "kind", "url", "title", "text", "author", "published_at",
                    "fetched_at", "lang", "tickers", "parent_id", "extra")


def _first_line(exc: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _pg_error(exc: Exception) -> str:
    code = getattr(exc, "pgcode", None)
    message = _first_line(exc)
    return f"{type(exc).__name__} {code}: {message}"[:2000] if code else f"{type(exc).__name__}: {message}"[:2000]


def _document_json(row) -> bytes:
    """A refused document's contract fields as JSON (the raw bytes are not kept for documents)."""
    doc = {}
    for name in _DOCUMENT_FIELDS:
        value = _none(row.get(name))
        if isinstance(value, pd.Timestamp):
            value = value.isoformat()
        elif name == "tickers":
            value = [str(t) for t in _as_list(value)]
        elif name == "extra" and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        elif isinstance(value, np.generic):
            value = value.item()
        doc[name] = value
    return json.dumps(doc, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass")


def _float(value) -> float | None:
    value = _none(value)
    return None if value is None else float(value)


def _int(value) -> int | None:
    value = _none(value)
    return None if value is None else int(value)


def _bool(value) -> bool | None:
    value = _none(value)
    return None if value is None else bool(value)


class PostgresSink:
    """Writes processed micro-batches to Postgres, exactly once per (query_name, query_id, batch_id)."""

    def __init__(self, engine: Engine, *, query_name: str,
                 widths: Sequence[timedelta] | str = windows.DEFAULT_WIDTHS,
                 lateness: timedelta | str | int | float = windows.DEFAULT_LATENESS,
                 outage: timedelta | str | int | float = DEFAULT_OUTAGE):
        self.engine = engine
        self.outage = windows.parse_duration(outage)
        self.query_name = query_name
        self.widths = windows.parse_widths(widths) if isinstance(widths, str) else sorted(widths)
        if not self.widths:
            raise ValueError("PostgresSink needs at least one window width")
        self.lateness = windows.parse_duration(lateness)
        # What was logged already (a batch Postgres refused a row of is written twice: one line still)
        self._announced: set[tuple] = set()

    # -- reading state ------------------------------------------------------------------------

    def watermark(self, cursor, batch: dict[tuple[str, str], tuple[datetime, datetime]] | None = None,
                  now: datetime | None = None) -> datetime | None:
        """The lowest per-partition event-time high minus ``lateness`` (see the module docstring), or None.

        ``batch``: {(topic, partition): (earliest, latest event time)} of the batch about to be written (its
        partitions always count; a new one with its earliest time). ``now``: that batch's start (the idle clock).
        """
        batch = batch or {}
        now = now or datetime.now(timezone.utc)
        cursor.execute(_PARTITION_HIGHS, (self.query_name,))
        highs = {(str(topic), str(part)): (high, seen) for topic, part, high, seen in cursor.fetchall()}
        counted = [high for key, (high, seen) in highs.items()
                   if key in batch or seen is None or now - seen <= self.lateness]
        counted += [low for key, (low, _) in batch.items() if key not in highs]
        return min(counted) - self.lateness if counted else None

    # -- the batch ----------------------------------------------------------------------------

    def write_batch(self, batch_id: int, rows, *, scorer_name: str, started_at: datetime,
                    query_id: str = "") -> BatchReport:
        """Write one micro-batch in one transaction; a batch already committed (same query id, batch id and
        offsets) is skipped.

        ``query_id``: the streaming query's id (its checkpoint's identity, ``pipeline.job.checkpoint_query_id``);
        ``''`` for callers without a checkpoint. Documents Postgres refuses are dead-lettered (see the module
        docstring), never retried for ever.
        """
        frame = to_frame(rows)
        kwargs = {"scorer_name": scorer_name, "started_at": started_at, "query_id": query_id or ""}
        try:
            return self._through_outage(batch_id, lambda: self._write_batch(batch_id, frame, **kwargs))
        except STORAGE_ERRORS as exc:
            log.warning("batch %s of %s: Postgres refused a row (%s); probing its documents one by one",
                        batch_id, self.query_name, _pg_error(exc))
        frame = self._through_outage(batch_id, lambda: self.quarantine(frame, batch_id))
        return self._through_outage(batch_id, lambda: self._write_batch(batch_id, frame, **kwargs))

    def _through_outage(self, batch_id: int, attempt):
        """``attempt()``, retried while Postgres cannot be reached, for up to ``self.outage`` (module docstring)."""
        t0 = time.monotonic()

        def announce(state: RetryCallState) -> None:
            log.warning("batch %s of %s: Postgres unreachable (%s); retrying in %.1fs (for up to %.0fs in all)",
                        batch_id, self.query_name, _first_line(state.outcome.exception())[:300], state.upcoming_sleep,
                        self.outage.total_seconds())

        retrying = Retrying(retry=retry_if_exception_type(CONNECTION_ERRORS), reraise=True,
                            stop=stop_after_delay(self.outage.total_seconds()),
                            wait=wait_exponential(multiplier=0.5, max=OUTAGE_BACKOFF_MAX_S), before_sleep=announce)
        result = retrying(attempt)
        if retrying.statistics.get("attempt_number", 1) > 1:
            log.warning("batch %s of %s: Postgres is back after %.1fs", batch_id, self.query_name,
                        time.monotonic() - t0)
        return result

    def _check_ledger(self, cur, batch_id: int, query_id: str, offsets: dict, report: BatchReport) -> bool:
        """True when this batch is already committed (skip it). Logs a new epoch or an offsets mismatch."""
        cur.execute("SELECT status, offsets FROM pipeline_batches WHERE query_name = %s AND query_id = %s "
                    "AND batch_id = %s", (self.query_name, query_id, batch_id))
        found = cur.fetchone()
        if found is not None and found[0] == "committed":
            committed = _normal_offsets(found[1])
            if committed == _normal_offsets(offsets):
                return True
            report.offsets_mismatch = True
            if ("mismatch", query_id, batch_id) in self._announced:
                return False
            self._announced.add(("mismatch", query_id, batch_id))
            log.warning("batch %s of %s (query id %s) was committed with offsets %s but now reads %s: the "
                        "checkpoint and Postgres disagree; writing it again (every write is an idempotent upsert)",
                        batch_id, self.query_name, query_id or "''", _offsets_text(committed), _offsets_text(offsets))
            return False
        cur.execute("SELECT 1 FROM pipeline_batches WHERE query_name = %s AND query_id = %s LIMIT 1",
                    (self.query_name, query_id))
        if cur.fetchone() is not None:
            return False
        earlier: dict[str, dict[str, int]] = {}
        n_ids = n_batches = 0
        cur.execute(_EARLIER_EPOCHS, (self.query_name, query_id))
        for ids, batches, topic, part, high in cur.fetchall():
            if topic is None and part is None:
                n_ids, n_batches = int(ids), int(batches)
            elif topic is not None and part is not None and high is not None:
                earlier.setdefault(topic, {})[part] = int(high)
        if n_ids == 0:
            return False
        cur.execute("SELECT DISTINCT query_id FROM pipeline_batches WHERE query_name = %s AND query_id <> %s",
                    (self.query_name, query_id))
        earlier_ids = {row[0] for row in cur.fetchall()}
        report.new_epoch = earlier_ids != {""}
        if ("epoch", query_id) in self._announced:
            return False
        self._announced.add(("epoch", query_id))
        if earlier_ids == {""}:
            # Rows written before the ledger recorded query ids (migration 0006): the checkpoint may be the same.
            log.warning("pipeline %s: query id %s is the first the batch ledger records (%d earlier batch(es) "
                        "have none, up to offsets %s); its batches are written whatever those committed, which "
                        "is safe: every write is an idempotent upsert", self.query_name, query_id, n_batches,
                        _offsets_text(earlier))
            return False
        starts = {t: {p: r[0] for p, r in parts.items()} for t, parts in offsets.items()}
        log.warning("pipeline %s: new checkpoint (query id %s, epoch %d): Postgres holds %d committed batch(es) of "
                    "%d earlier checkpoint(s), up to offsets %s, and this one starts at %s; it re-reads what Kafka "
                    "still holds, which is safe: every write is an idempotent upsert by natural ids and windows are "
                    "recomputed from stored rows", self.query_name, query_id or "''", n_ids + 1, n_batches, n_ids,
                    _offsets_text(earlier), _offsets_text(starts))
        return False

    def quarantine(self, frame: pd.DataFrame, batch_id: int) -> pd.DataFrame:
        """``frame`` with each document row Postgres refuses on its own replaced by a ``storage`` dead letter."""
        frame = frame.reset_index(drop=True)
        docs = frame[frame["row_type"] == ROW_DOCUMENT]
        refused: dict[int, str] = {}
        raw = self.engine.raw_connection()
        try:
            with raw.cursor() as cur:
                for index, row in docs.iterrows():
                    one = docs.loc[[index]]
                    published = [_utc(one["published_at"].iloc[0])]
                    cur.execute("SAVEPOINT probe")
                    try:
                        self._write_documents(cur, one, published, batch_id)
                        self._write_scores(cur, one, published, batch_id)
                        self._write_entities(cur, one, [str(row["id"])])
                    except STORAGE_ERRORS as exc:
                        refused[index] = _pg_error(exc)
                    cur.execute("ROLLBACK TO SAVEPOINT probe")
        finally:
            raw.rollback()
            raw.close()
        if not refused:
            return frame  # the error was not one document's: writing again raises it, the batch is retried
        now = pd.Timestamp(datetime.now(timezone.utc))
        records = frame.to_dict("records")
        for index, error in refused.items():
            row = frame.loc[index]
            log.warning("document %r (%s[%s]@%s) refused by Postgres: %s; dead-lettered", row["id"],
                        row["kafka_topic"], row["kafka_partition"], row["kafka_offset"], error)
            dead = blank_row(
                row_type=ROW_DEAD_LETTER, kafka_topic=row["kafka_topic"], kafka_partition=row["kafka_partition"],
                kafka_offset=row["kafka_offset"], kafka_timestamp=row["kafka_timestamp"], raw_key=row["raw_key"],
                raw_payload=_document_json(row), dl_stage="storage", dl_reason="rejected", dl_detail=error,
                dl_rejected_at=now, dl_source=_none(row["source"]), dl_url=_none(row["url"]))
            records[index] = dead
        return pd.DataFrame(records, columns=frame.columns)

    def _write_batch(self, batch_id: int, frame: pd.DataFrame, *, scorer_name: str,
                     started_at: datetime, query_id: str) -> BatchReport:
        t0 = time.monotonic()
        docs = frame[frame["row_type"] == ROW_DOCUMENT]
        dls = frame[frame["row_type"] == ROW_DEAD_LETTER]
        bad = docs["model_version"].isna() | docs["id"].isna() | docs["published_at"].isna()
        if bad.any():
            raise ValueError(f"{int(bad.sum())} document rows lack id, published_at or model_version")
        unsupported = docs[docs["score_status"].fillna("ok") != "ok"]
        n_scored = len(docs) - len(unsupported)
        by_source = {str(k): int(v) for k, v in unsupported["source"].value_counts().sort_index().items()}
        docs, dup_docs = dedupe_documents(docs)
        dls, dup_dls = dedupe_dead_letters(dls)
        report = BatchReport(batch_id=batch_id, skipped=False, query_id=query_id, n_input=len(frame),
                             n_documents=len(docs), n_scored=n_scored, n_dead=len(dls),
                             n_duplicates=dup_docs + dup_dls, n_unsupported=len(unsupported),
                             unsupported_by_source=by_source)
        offsets = offsets_summary(frame)
        published = [_utc(v) for v in docs["published_at"]]
        ids = [str(v) for v in docs["id"]]
        model_versions = sorted({str(v) for v in docs["model_version"]})

        raw = self.engine.raw_connection()
        try:
            with raw.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_NAMESPACE, self.query_name))
                if self._check_ledger(cur, batch_id, query_id, offsets, report):
                    raw.rollback()
                    log.info("batch %s of %s already committed; skipped", batch_id, self.query_name)
                    return BatchReport(batch_id=batch_id, skipped=True, query_id=query_id, n_input=len(frame),
                                       duration_ms=int((time.monotonic() - t0) * 1000))
                # A producer's far-future timestamp must not push the watermark past real time.
                cap = max(started_at, datetime.now(timezone.utc))
                by_partition = partition_event_times(docs, published, cap)
                watermark = self.watermark(cur, by_partition, now=started_at)
                late = [watermark is not None and p < watermark for p in published]
                report.n_late = sum(late)
                if published:
                    report.max_event_time = min(max(published), cap)

                windows.create_points(cur)
                if ids:
                    # Where re-sent documents were before this batch: those windows lose them.
                    cur.execute(windows.POINTS_OF_DOCUMENTS, {"ids": ids, "mvs": model_versions})
                self._write_documents(cur, docs, published, batch_id)
                self._write_scores(cur, docs, published, batch_id)
                self._write_entities(cur, docs, ids)
                self._write_dead_letters(cur, dls, batch_id)
                on_time = [i for i, is_late in zip(ids, late) if not is_late]
                if on_time:
                    cur.execute(windows.POINTS_OF_DOCUMENTS, {"ids": on_time, "mvs": model_versions})
                self._note_pending(cur, docs, ids, published, late, batch_id)
                report.n_windows = windows.recompute(cur, widths=self.widths, batch_id=batch_id)
                report.duration_ms = int((time.monotonic() - t0) * 1000)
                cur.execute(_BATCH_UPSERT, {
                    "query_name": self.query_name, "query_id": query_id, "batch_id": batch_id,
                    "n_input": report.n_input, "n_scored": report.n_scored, "n_dead": report.n_dead,
                    "offsets": Json(offsets), "model_version": ",".join(model_versions) or None,
                    "started_at": started_at, "n_late": report.n_late, "n_duplicates": report.n_duplicates,
                    "max_event_time": report.max_event_time, "duration_ms": report.duration_ms,
                    "scorer": scorer_name, "n_unsupported": report.n_unsupported,
                    "unsupported_by_source": Json(report.unsupported_by_source),
                })
                cur.execute(_BATCH_PARTITION_TIMES, {
                    "query_name": self.query_name, "query_id": query_id, "batch_id": batch_id,
                    "times": Json(_partition_json(by_partition)),
                })
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            raw.close()
        report.duration_ms = int((time.monotonic() - t0) * 1000)
        return report

    def _note_pending(self, cur, docs: pd.DataFrame, ids: list[str], published: list[datetime],
                      late: list[bool], batch_id: int) -> None:
        """Late documents (scored ``ok``) wait in ``windows_pending``; on-time ones were folded: no longer wait."""
        if docs.empty:
            return
        versions = [str(v) for v in docs["model_version"]]
        scored = [(_none(v) or "ok") == "ok" for v in docs["score_status"]]
        folded = [(i, mv) for i, mv, is_late in zip(ids, versions, late) if not is_late]
        if folded:
            cur.execute(_PENDING_FOLDED, {"ids": [i for i, _ in folded], "mvs": [mv for _, mv in folded]})
        waiting = [(i, mv, pub, self.query_name, batch_id)
                   for i, mv, pub, is_late, ok in zip(ids, versions, published, late, scored) if is_late and ok]
        if waiting:
            execute_values(cur, _PENDING_UPSERT, waiting, page_size=PAGE_SIZE)

    # -- the tables ---------------------------------------------------------------------------

    @staticmethod
    def _write_documents(cur, docs: pd.DataFrame, published: list[datetime], batch_id: int) -> None:
        if docs.empty:
            return
        values = []
        for row, pub in zip(docs.itertuples(index=False), published):
            extra = _none(row.extra)
            if isinstance(extra, dict):
                extra = json.dumps(extra)
            values.append((
                row.id, _int(row.schema_version) or 1, row.source, row.kind, _none(row.url), _none(row.title),
                _none(row.text) or "", _none(row.author), pub, _utc(row.fetched_at), _none(row.lang),
                [str(t) for t in _as_list(row.tickers)], _none(row.parent_id), extra or "{}",
                _none(row.kafka_topic), _int(row.kafka_partition), _int(row.kafka_offset),
                _utc(row.kafka_timestamp), _bool(row.novelty), _none(row.first_story_id), batch_id,
            ))
        execute_values(cur, _DOC_UPSERT, values, template=_DOC_TEMPLATE, page_size=PAGE_SIZE)

    @staticmethod
    def _write_scores(cur, docs: pd.DataFrame, published: list[datetime], batch_id: int) -> None:
        if docs.empty:
            return
        values = [
            (row.id, row.model_version, pub, row.sentiment, _float(row.p_negative), _float(row.p_neutral),
             _float(row.p_positive), _none(row.topic), _float(row.topic_confidence), _int(row.n_chunks) or 1,
             bool(_bool(row.truncated)), batch_id, _none(row.score_status) or "ok",
             _none(getattr(row, "evidence", None)))
            for row, pub in zip(docs.itertuples(index=False), published)
        ]
        execute_values(cur, _SCORE_UPSERT, values, page_size=PAGE_SIZE)
        cur.execute(_SCORE_FOLLOW, {"ids": [v[0] for v in values]})

    @staticmethod
    def _write_entities(cur, docs: pd.DataFrame, ids: list[str]) -> None:
        if docs.empty:
            return
        values: dict[tuple[str, str, str], tuple] = {}
        for doc_id, entities in zip(ids, docs["entities"]):
            for entity in _as_list(entities):
                entity = dict(entity)
                name = entity.get("entity")
                if not name:
                    continue
                version = entity.get("model_version") or ""
                values[(doc_id, name, version)] = (
                    doc_id, name, entity.get("entity_type") or "ticker", version,
                    entity.get("linked_by") or "cashtag", _none(entity.get("mention")), _none(entity.get("sentiment")),
                    _float(entity.get("confidence")), _float(entity.get("p_negative")),
                    _float(entity.get("p_neutral")), _float(entity.get("p_positive")),
                )
        # Replace, not merge: a re-sent document whose text no longer names a ticker loses it; a producer's ticker
        # stays while the document carries it (tickers are merged across the records of an id).
        versions = sorted({""} | {key[2] for key in values})
        cur.execute(_ENTITY_DELETE, {"ids": ids, "mvs": versions})
        if values:
            execute_values(cur, _ENTITY_INSERT, list(values.values()), page_size=PAGE_SIZE)

    @staticmethod
    def _write_dead_letters(cur, dls: pd.DataFrame, batch_id: int) -> None:
        if dls.empty:
            return
        values = [
            (row.dl_stage, row.dl_reason, _bytes(row.raw_payload), _bytes(row.raw_key), _none(row.kafka_topic),
             _int(row.kafka_partition), _int(row.kafka_offset), batch_id, _none(row.dl_source),
             _none(row.dl_detail), _none(row.dl_url), _utc(row.dl_rejected_at), _utc(row.kafka_timestamp))
            for row in dls.itertuples(index=False)
        ]
        execute_values(cur, _DL_INSERT, values, page_size=PAGE_SIZE)


def report_dict(report: BatchReport) -> dict[str, Any]:
    """The report as JSON-ready values (for logs and progress files)."""
    out = dict(report.__dict__)
    if report.max_event_time is not None:
        out["max_event_time"] = report.max_event_time.isoformat()
    return out
