"""Replay a recorded stream (CSV or JSONL) into the documents topic in event-time order.

Used by the demo, tests and backfills. Rows are mapped to documents by a column mapping,
sorted by their timestamp (stable, so equal times keep file order), optionally shifted so the
last (or first) event is "now", and published as fast as possible, at ``rate`` documents per
second, or at ``speedup`` times the recorded pace.

Delivery: at least once (failed sends are retried; the run fails loudly if they keep failing).
Rows that cannot become documents (malformed line, no text, no or unparseable time, contract
failure) are counted and published as dead letters with the raw row (as JSON; a malformed JSONL
line as it was), also at least once: a dead letter still undelivered after retries fails the run
(:class:`PublishError`) once every document is delivered.
Ids are stable across runs (``source:id-column`` or a hash of time and text), so replaying the
same file twice produces the same ids and idempotent consumers see no duplicates.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, Literal

from finpulse.contract import ContractError, Document
from ingest.deadletter import DeadLetter, DeadLetterSink
from ingest.document import build_document, get_path
from ingest.errors import ConfigError, PublishError
from ingest.normalize import canonical_url, native_id, parse_datetime, utcnow
from ingest.producer import Sink

log = logging.getLogger(__name__)

_TIME_GUESSES = ("created_at", "published_at", "timestamp", "time", "date", "datetime")


@dataclass(frozen=True)
class Columns:
    """Which column holds what (dotted paths for JSONL)."""

    text: str = "text"
    time: str | None = None  # None: guess (created_at, timestamp, ... or a column containing "created")
    id: str | None = None
    ticker: str | None = None
    title: str | None = None
    author: str | None = None
    url: str | None = None


@dataclass
class ReplayStats:
    rows: int = 0
    published: int = 0
    invalid: Counter = field(default_factory=Counter)
    dead_lettered: int = 0
    dead_letter_failed: int = 0
    seconds: float = 0.0
    time_column: str | None = None
    shift: timedelta | None = None
    first_event: datetime | None = None
    last_event: datetime | None = None

    @property
    def rejected(self) -> int:
        return sum(self.invalid.values())

    @property
    def rate(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in self.invalid.most_common()) or "none"
        return (
            f"replayed {self.published} of {self.rows} rows in {self.seconds:.2f}s ({self.rate:,.0f} docs/s); "
            f"rejected {self.rejected} ({reasons}); dead-lettered {self.dead_lettered}"
            + (f", {self.dead_letter_failed} DEAD LETTER(S) NOT DELIVERED" if self.dead_letter_failed else "")
        )


@dataclass(frozen=True)
class Event:
    """One row with its parsed event time, before it becomes a document."""

    at: datetime
    row: dict[str, Any]
    index: int


def read_rows(path: Path | str, *, fmt: str | None = None) -> Iterator[dict[str, Any]]:
    """Rows of a CSV (header line) or JSONL file as dicts. Undecodable bytes are replaced, not fatal."""
    path = Path(path)
    fmt = fmt or ("jsonl" if path.suffix.lower() in (".jsonl", ".ndjson", ".json") else "csv")
    with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as fh:
        if fmt == "csv":
            csv.field_size_limit(10 * 1024 * 1024)
            yield from csv.DictReader(fh)
        elif fmt == "jsonl":
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield {"__invalid__": f"line {lineno}: malformed JSON ({exc.msg})", "__raw__": line.rstrip("\r\n")}
                    continue
                if not isinstance(value, dict):
                    value = {"__invalid__": f"line {lineno}: not an object", "__raw__": line.rstrip("\r\n")}
                yield value
        else:
            raise ConfigError(f"unknown replay format {fmt!r} (csv or jsonl)")


def _value(row: dict[str, Any], column: str | None) -> Any:
    if column is None:
        return None
    if column in row:
        value = row[column]
    else:
        value = get_path(row, column)
    if isinstance(value, str) and not value.strip():
        return None
    return value


def guess_time_column(names: Iterable[str]) -> str | None:
    names = list(names)
    for guess in _TIME_GUESSES:
        if guess in names:
            return guess
    for name in names:
        lowered = name.lower()
        if "created" in lowered or "time" in lowered or "date" in lowered:
            return name
    return None


def load_events(
    rows: Iterable[dict[str, Any]],
    *,
    columns: Columns,
    tz: tzinfo = timezone.utc,
    missing_time: Literal["skip", "now"] = "skip",
    stats: ReplayStats,
    rejected: list[_Rejected] | None = None,
) -> list[Event]:
    """Parse each row's time and return the events sorted by it (stable: ties keep file order).

    Rows left out are counted in ``stats.invalid`` and, with ``rejected``, appended to it.
    """
    events: list[Event] = []
    time_column = columns.time
    now = utcnow()

    def reject(reason: str, index: int, detail: str, row: dict[str, Any]) -> None:
        stats.invalid[reason] += 1
        if rejected is not None:
            rejected.append(_Rejected(reason, f"row {index + 1}: {detail}", index, _raw_row(row)))

    for index, row in enumerate(rows):
        stats.rows += 1
        if "__invalid__" in row:
            log.debug("skipping %s", row["__invalid__"])
            reject("malformed_row", index, row["__invalid__"], row)
            continue
        if time_column is None:
            time_column = guess_time_column(row.keys())
            if time_column is None:
                raise ConfigError(f"no time column found among {sorted(row)[:20]}; pass --time-column")
            if columns.text not in row and get_path(row, columns.text) is None:
                raise ConfigError(f"text column {columns.text!r} not found among {sorted(row)[:20]}")
        if _value(row, columns.text) is None and _value(row, columns.title) is None:
            # Known unpublishable before the shift is computed, so "last event = now" refers to
            # a document that is actually published.
            reject("no_text", index, f"text: empty (column {columns.text!r})", row)
            continue
        raw = _value(row, time_column)
        at = parse_datetime(raw, default_tz=tz) if raw is not None else None
        if at is None:
            if missing_time == "skip":
                if raw is None:
                    reject("no_time", index, f"time: empty (column {time_column!r})", row)
                else:
                    reject("bad_time", index, f"time: unparseable {str(raw)[:80]!r} (column {time_column!r})", row)
                continue
            at = now  # "now": treated as arriving live, i.e. after every recorded event
            row = dict(row, __missing_time__=True)
        events.append(Event(at, row, index))
    stats.time_column = time_column
    events.sort(key=lambda e: e.at)  # list.sort is stable
    if events:
        stats.first_event, stats.last_event = events[0].at, events[-1].at
    return events


def shift_for(events: list[Event], *, anchor: Literal["last", "first"] = "last", now: datetime | None = None) -> timedelta:
    """The offset that moves the last (or first) event to ``now``."""
    if not events:
        return timedelta(0)
    now = now or utcnow()
    reference = events[-1].at if anchor == "last" else events[0].at
    return now - reference


def row_id(source: str, row: dict[str, Any], columns: Columns, at_raw: Any, text: Any) -> str:
    native = _value(row, columns.id)
    if native is not None:
        return native_id(source, native)
    # No id column: a stable hash of what identifies the row, so a re-run yields the same ids.
    digest = hashlib.sha256(f"{at_raw}\x1f{text}".encode("utf-8", errors="replace")).hexdigest()[:32]
    return f"{source}:{digest}"


def to_document(
    event: Event,
    *,
    source: str,
    kind: str,
    columns: Columns,
    time_column: str | None,
    shift: timedelta | None,
    lang: str | None,
    detect_lang: bool,
    fetched_at: datetime,
    html: bool = False,
) -> Document:
    row = event.row
    text = _value(row, columns.text)
    at_raw = _value(row, time_column)
    published = event.at + shift if shift is not None else event.at
    extra: dict[str, Any] = {"replay": True}
    if shift is not None:
        extra["published_at_original"] = event.at.isoformat()
    if row.get("__missing_time__"):
        extra["published_at_missing"] = True
    tickers = _value(row, columns.ticker)
    if isinstance(tickers, list):
        tickers = [str(t) for t in tickers]
    url = _value(row, columns.url)

    return build_document(
        id=row_id(source, row, columns, at_raw, text),
        source=source,
        kind=kind,
        fetched_at=fetched_at,
        url=canonical_url(str(url)) if url is not None else None,
        title=_str(_value(row, columns.title)),
        text=_str(text),
        html=html,
        author=_str(_value(row, columns.author)),
        published_raw=at_raw,
        published_at=published,
        tickers=tickers or (),
        lang=lang,
        detect_lang=detect_lang,
        clamp_future=False,  # shifted or recorded times are what they are
        extra=extra,
    )


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


class Pacer:
    """Sleeps so the i-th document goes out on schedule: fixed rate or recorded gaps / speedup."""

    def __init__(self, *, rate: float | None = None, speedup: float | None = None, first_event: datetime | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if rate is not None and speedup is not None:
            raise ConfigError("give --rate or --speedup, not both")
        if (rate is not None and rate <= 0) or (speedup is not None and speedup <= 0):
            raise ConfigError("--rate and --speedup must be positive")
        self.rate, self.speedup, self.first_event = rate, speedup, first_event
        self.clock, self.sleep = clock, sleep
        self.start: float | None = None

    def due(self, index: int, at: datetime) -> float:
        """Seconds after the start at which document ``index`` (event time ``at``) is due."""
        if self.rate is not None:
            return index / self.rate
        if self.speedup is not None and self.first_event is not None:
            return max(0.0, (at - self.first_event).total_seconds() / self.speedup)
        return 0.0

    def wait(self, index: int, at: datetime) -> float:
        if self.rate is None and self.speedup is None:
            return 0.0
        if self.start is None:
            self.start = self.clock()
        delay = self.start + self.due(index, at) - self.clock()
        if delay > 0.001:  # below a millisecond the sleep overhead is larger than the error
            self.sleep(delay)
            return delay
        return 0.0


def replay(
    path: Path | str,
    *,
    sink: Sink,
    source: str,
    kind: Literal["news", "comment"] = "comment",
    columns: Columns = Columns(),
    fmt: str | None = None,
    tz: tzinfo = timezone.utc,
    rate: float | None = None,
    speedup: float | None = None,
    shift_to_now: bool = False,
    anchor: Literal["last", "first"] = "last",
    lang: str | None = None,
    detect_lang: bool = True,
    missing_time: Literal["skip", "now"] = "skip",
    html: bool = False,
    limit: int | None = None,
    max_in_flight: int = 100_000,
    progress: bool | None = None,
    workers: int = 1,
    dead_letters: DeadLetterSink,
) -> ReplayStats:
    """Publish the rows of ``path`` in event-time order, rejected rows to ``dead_letters``; return counts.

    Raises PublishError if documents or dead letters cannot be delivered after retries.
    """
    stats = ReplayStats()
    started = time.perf_counter()
    rows = read_rows(path, fmt=fmt)
    if limit is not None:
        import itertools

        rows = itertools.islice(rows, limit)
    rejected: list[_Rejected] = []
    origin = Path(path).resolve().as_uri()

    def dead_letter(batch: list[_Rejected]) -> None:
        # Rejections are rare and small, so they go out in blocking batches; the rows stay in
        # memory only until then.
        letters = [DeadLetter(stage="replay", source=source, reason=r.reason.split(":", 1)[0], detail=r.example,
                              raw=r.raw, url=f"{origin}#row={r.index + 1}") for r in batch]
        result = dead_letters.publish(letters)
        stats.dead_lettered += len(result.acked)
        stats.dead_letter_failed += len(result.failed)
        batch.clear()

    events = load_events(rows, columns=columns, tz=tz, missing_time=missing_time, stats=stats, rejected=rejected)
    dead_letter(rejected)
    shift = shift_for(events, anchor=anchor) if shift_to_now else None
    stats.shift = shift
    pacer = Pacer(rate=rate, speedup=speedup, first_event=events[0].at if events else None)
    examples: dict[str, str] = {}

    from tqdm import tqdm

    bar = tqdm(total=len(events), unit="doc", desc=f"replay {source}", file=sys.stderr,
               disable=(not sys.stderr.isatty()) if progress is None else not progress)
    params = dict(source=source, kind=kind, columns=columns, time_column=stats.time_column, shift=shift, lang=lang,
                  detect_lang=detect_lang, html=html)
    failed: list = []
    sent = 0
    try:
        for i, (at, outcome) in enumerate(_built(events, params, workers)):
            pacer.wait(i, at)
            if isinstance(outcome, _Rejected):
                stats.invalid[outcome.reason] += 1
                examples.setdefault(outcome.reason, outcome.example)
                rejected.append(outcome)
                if len(rejected) >= 1_000:
                    dead_letter(rejected)
                continue
            sink.send(outcome)
            sent += 1
            if sent % 5_000 == 0:
                # Harvest acks without waiting, so the producer never idles at a barrier; block
                # only when too much is outstanding (back-pressure on a slow broker).
                done = sink.drain() if sink.in_flight >= max_in_flight else sink.collect()
                stats.published += len(done.acked)
                failed.extend(doc for doc, _ in done.failed)
            if i % 256 == 0:
                bar.update(i - bar.n)
        done = sink.drain()
        stats.published += len(done.acked)
        failed.extend(doc for doc, _ in done.failed)
        if failed:
            retry = sink.publish(failed)  # resend with backoff
            stats.published += len(retry.acked)
            if retry.failed:
                raise PublishError(
                    f"{len(retry.failed)} document(s) not delivered after retries: {retry.failed[0][1]}"
                )
        bar.update(len(events) - bar.n)
    finally:
        dead_letter(rejected)  # also on the way out of an interrupted or failed run
        bar.close()
        stats.seconds = time.perf_counter() - started
    for reason, example in examples.items():
        log.warning("rejected rows (%s), e.g. %s", reason, example[:300])
    if stats.dead_letter_failed:
        raise PublishError(f"{stats.dead_letter_failed} dead letter(s) not delivered after retries; "
                           f"{stats.line()}")
    return stats


@dataclass(frozen=True)
class Encoded:
    """A document validated and serialised in a worker process: what a Sink needs of a Document."""

    id: str
    payload: bytes

    def to_json(self) -> bytes:
        return self.payload


@dataclass(frozen=True)
class _Rejected:
    """A row that is not published: ``reason`` for the stats, ``example`` its detail, ``raw`` the row as text."""

    reason: str
    example: str
    index: int = -1
    raw: str | None = None


def _raw_row(row: dict[str, Any]) -> str:
    """The row as it was read: a malformed JSONL line verbatim, else the row as JSON (without our markers)."""
    if "__raw__" in row:
        return row["__raw__"]
    return json.dumps({k: v for k, v in row.items() if k != "__missing_time__"}, ensure_ascii=False, default=str)


def _build_one(event: Event, params: dict) -> Document | _Rejected:
    try:
        return to_document(event, fetched_at=utcnow(), **params)
    except ContractError as exc:
        reason = "contract:" + ",".join(sorted({f for f, _ in exc.problems}))
        return _Rejected(reason, f"row {event.index + 1}: {exc}", event.index, _raw_row(event.row))


def _build_chunk(job: tuple[list[Event], dict]) -> list[tuple[datetime, Encoded | _Rejected]]:
    events, params = job
    out = []
    for event in events:
        built = _build_one(event, params)
        out.append((event.at, built if isinstance(built, _Rejected) else Encoded(built.id, built.to_json())))
    return out


def _built(events: list[Event], params: dict, workers: int) -> Iterator[tuple[datetime, Document | Encoded | _Rejected]]:
    """(event time, document or rejection) in event order; built in ``workers`` processes if > 1.

    Normalisation + contract validation is the most expensive step of a replay and pure Python,
    so one process tops out at ~25k docs/s; workers build (and serialise) chunks in parallel and
    ``imap`` hands them back in order, so the publish order is still event-time order.
    """
    if workers <= 1:
        for event in events:
            yield event.at, _build_one(event, params)
        return
    import multiprocessing

    size = 2_000
    jobs = ((events[i : i + size], params) for i in range(0, len(events), size))
    # spawn, not fork: the parent already runs producer I/O threads, and forking a threaded
    # process can copy a held lock into the child.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for chunk in pool.imap(_build_chunk, jobs):
            yield from chunk


