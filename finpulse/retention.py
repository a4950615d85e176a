"""Retention: what `finpulse db prune` removes, as a function a service can schedule.

- Document text (``documents.text``) is emptied ``FINPULSE_RETENTION_DOCUMENT_TEXT`` after
  publication and ``text_pruned_at`` set; the row, its title, URL, scores and entity links stay, so
  trends, alerts' evidence and the dashboard's document lists keep working.
- Windows are deleted by width class, ``window_start`` older than the class's age: narrower than
  1 h (``FINPULSE_RETENTION_MINUTE_WINDOWS``, 48 h), 1 h up to 1 d (``..._HOUR_WINDOWS``, 90 d),
  1 d and wider (``..._DAY_WINDOWS``, forever).

Why batched statements and not partitions (pg_partman): text pruning is an UPDATE of old rows,
which dropping partitions cannot do; the tables' primary keys and the foreign keys onto
``documents`` would have to be rebuilt as partitioned tables; and an external Postgres may not
have the extension. Each batch is one short transaction of at most ``FINPULSE_RETENTION_BATCH_SIZE``
rows that skips rows another transaction holds (``FOR UPDATE SKIP LOCKED``: the pipeline's upserts
never wait on prune, prune never waits on them; a skipped row goes at the next run), with a lock
timeout so it never queues behind a migration. Running it again changes nothing (idempotent): the
partial index ``documents_text_kept_idx`` holds only rows that still have text, and deleted windows
are gone, so each run reads only what it prunes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from finpulse.settings import Settings, get_settings, retention_age

HOUR = 3600
DAY = 86400
LOCK_TIMEOUT = "5s"

# (class name, smallest width in seconds, widest width (exclusive) or None, setting field)
WINDOW_CLASSES = (
    ("minute", 0, HOUR, "retention_minute_windows"),
    ("hour", HOUR, DAY, "retention_hour_windows"),
    ("day", DAY, None, "retention_day_windows"),
)

_TEXT_BATCH = """
WITH batch AS (
    SELECT id FROM documents
    WHERE text <> '' AND published_at < :cutoff
    ORDER BY published_at
    LIMIT :n
    FOR UPDATE SKIP LOCKED
)
UPDATE documents d SET text = '', text_pruned_at = now()
FROM batch WHERE d.id = batch.id
"""
_TEXT_COUNT = "SELECT count(*) FROM documents WHERE text <> '' AND published_at < :cutoff"

_WINDOW_BATCH = """
DELETE FROM sentiment_windows WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM sentiment_windows
    WHERE width_seconds = :w AND window_start < :cutoff
    ORDER BY window_start
    LIMIT :n
    FOR UPDATE SKIP LOCKED))
"""
_WINDOW_COUNT = "SELECT count(*) FROM sentiment_windows WHERE width_seconds = :w AND window_start < :cutoff"

# The widths present, by a skip scan of sentiment_windows_width_time_idx (one probe per width,
# never a scan of the table).
_WIDTHS = """
WITH RECURSIVE widths(w) AS (
    SELECT min(width_seconds) FROM sentiment_windows
    UNION ALL
    SELECT (SELECT min(width_seconds) FROM sentiment_windows WHERE width_seconds > widths.w)
    FROM widths WHERE widths.w IS NOT NULL
)
SELECT w FROM widths WHERE w IS NOT NULL
"""


@dataclass
class PruneReport:
    """What one run pruned (or, with dry_run, would prune)."""

    dry_run: bool
    now: str
    text_cutoff: str | None
    documents_text_pruned: int = 0
    window_cutoffs: dict[str, str | None] = field(default_factory=dict)
    windows_deleted: dict[int, int] = field(default_factory=dict)  # width_seconds -> rows
    batches: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        out = asdict(self)
        out["windows_deleted"] = {str(k): v for k, v in self.windows_deleted.items()}
        return out

    def lines(self) -> list[str]:
        verb = "would prune" if self.dry_run else "pruned"
        out = [f"document text: {verb} {self.documents_text_pruned} (published before {self.text_cutoff or 'never'})"]
        for name, _, _, _ in WINDOW_CLASSES:
            cutoff = self.window_cutoffs.get(name)
            out.append(f"{name} windows: kept " + (f"from {cutoff}" if cutoff else "forever"))
        for width, n in sorted(self.windows_deleted.items()):
            out.append(f"  width {width}s: {'would delete' if self.dry_run else 'deleted'} {n}")
        out.append(f"{self.batches} batch(es) in {self.seconds:.1f}s")
        return out


def window_class(width_seconds: int) -> str:
    for name, low, high, _ in WINDOW_CLASSES:
        if width_seconds >= low and (high is None or width_seconds < high):
            return name
    raise ValueError(f"no retention class for width {width_seconds}")  # unreachable: classes cover 0..inf


def _batches(engine: Engine, sql: str, params: dict, batch_size: int,
             on_batch: Callable[[int], None]) -> int:
    """Run ``sql`` (one batch of at most batch_size rows) in its own transaction until it changes nothing."""
    total = 0
    while True:
        with engine.begin() as conn:
            conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            changed = conn.execute(sa.text(sql), {**params, "n": batch_size}).rowcount
        on_batch(changed)
        total += changed
        if changed == 0:
            return total


def prune(engine: Engine, settings: Settings | None = None, *, now: datetime | None = None,
          dry_run: bool = False) -> PruneReport:
    """Apply the retention settings once (idempotent); ``dry_run`` counts instead of changing."""
    settings = settings or get_settings()
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError("prune needs a timezone-aware now")
    started = time.monotonic()
    text_age = retention_age(settings.retention_document_text)
    report = PruneReport(dry_run=dry_run, now=now.isoformat(),
                         text_cutoff=(now - text_age).isoformat() if text_age else None)
    batch_size = settings.retention_batch_size

    def count_batch(_: int) -> None:
        report.batches += 1

    def count(sql: str, params: dict) -> int:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(sql), params).scalar_one())

    if text_age is not None:
        params = {"cutoff": now - text_age}
        report.documents_text_pruned = (count(_TEXT_COUNT, params) if dry_run
                                        else _batches(engine, _TEXT_BATCH, params, batch_size, count_batch))
    cutoffs = {}
    for name, _, _, setting in WINDOW_CLASSES:
        age = retention_age(getattr(settings, setting))
        cutoffs[name] = None if age is None else now - age
        report.window_cutoffs[name] = None if age is None else cutoffs[name].isoformat()
    with engine.connect() as conn:
        widths = [int(w) for w in conn.execute(sa.text(_WIDTHS)).scalars()]
    for width in widths:
        cutoff = cutoffs[window_class(width)]
        if cutoff is None:
            continue
        params = {"w": width, "cutoff": cutoff}
        report.windows_deleted[width] = (count(_WINDOW_COUNT, params) if dry_run
                                         else _batches(engine, _WINDOW_BATCH, params, batch_size, count_batch))
    report.seconds = round(time.monotonic() - started, 3)
    return report
