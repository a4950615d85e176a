"""Replay a recorded stream (CSV or JSONL, optionally gzip'd) into the documents topic in event-time order.

Used by the demo, tests and backfills. Rows are mapped to documents by a column mapping,
sorted by their timestamp (stable, so equal times keep file order), optionally shifted so the
last (or first) event is "now", and published as fast as possible, at ``rate`` documents per
second, or at ``speedup`` times the recorded pace.

Nothing is lost or changed silently. Every row read ends up in exactly one bucket of the
account printed at the end (``rows read = published + dead-lettered + skipped``):

* published: acknowledged by the broker;
* dead-lettered: rejected, with its physical line number, a reason and the row exactly as it was
  in the file (bytes kept in ``raw_base64`` when they are not UTF-8) -- an unclosed quote, more or
  fewer fields than the header, invalid UTF-8 (unless ``encoding_errors="repair"``), no text, no
  or an unparseable time, a contract failure;
* skipped: only with ``--resume``, rows a previous run already delivered.

A file that cannot be replayed at all (missing, empty, header only, binary, no text column)
raises :class:`~ingest.errors.ConfigError` from :func:`check_file`, before any topic exists.

Delivery: see :class:`ingest.producer.Sink`. With ``state_dir`` the position up
to which every row was acknowledged (documents) or dead-lettered is saved as the run goes, and
``resume=True`` continues from it; rows sent after the last saved position may be published
twice (at most ``checkpoint_every`` plus the sends still unacknowledged at the crash).
Ids are stable across runs (``source:id-column`` or a hash of time and text), so replaying the
same file twice produces the same ids and idempotent consumers see no duplicates.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import itertools
import json
import logging
import os
import sys
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, Literal

from finpulse.contract import ContractError, Document
from ingest.deadletter import DeadLetter, DeadLetterSink
from ingest.document import build_document, get_path
from ingest.errors import ConfigError, PublishError
from ingest.normalize import canonical_url, detect_languages, native_id, parse_datetime, utcnow
from ingest.producer import Sink

log = logging.getLogger(__name__)

_TIME_GUESSES = ("created_at", "published_at", "timestamp", "time", "date", "datetime")
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
# A quoted CSV field may span lines (a tweet with a line break), but one that runs on for this
# many lines is an unclosed quote swallowing the rows after it.
MAX_LINES_PER_ROW = 200
EncodingErrors = Literal["strict", "repair"]


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
    """The account of one replay: every row read is published, dead-lettered or skipped."""

    rows: int = 0
    published: int = 0
    invalid: Counter = field(default_factory=Counter)  # rejected rows by reason (each one is dead-lettered)
    skipped: Counter = field(default_factory=Counter)  # rows not sent, by reason (resume)
    dead_lettered: int = 0
    dead_letter_failed: int = 0
    not_delivered: int = 0
    repaired: int = 0  # published with invalid bytes replaced (encoding_errors="repair")
    seconds: float = 0.0
    time_column: str | None = None
    shift: timedelta | None = None
    first_event: datetime | None = None
    last_event: datetime | None = None
    resumed_from: int = 0

    @property
    def rejected(self) -> int:
        return sum(self.invalid.values())

    @property
    def rate(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0

    @property
    def balanced(self) -> bool:
        return self.rows == (self.published + self.dead_lettered + self.dead_letter_failed
                             + sum(self.skipped.values()) + self.not_delivered)

    def line(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.invalid.items())) or "none"
        skipped = sum(self.skipped.values())
        skip_reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        text = (f"rows read {self.rows} = published {self.published} + dead-lettered {self.dead_lettered} "
                f"({reasons}) + skipped {skipped} ({skip_reasons})")
        if self.dead_letter_failed:
            text += f" + {self.dead_letter_failed} DEAD LETTER(S) NOT DELIVERED"
        if self.not_delivered:
            text += f" + {self.not_delivered} DOCUMENT(S) NOT DELIVERED"
        if not self.balanced:
            text += " -- ACCOUNT DOES NOT BALANCE"
        text += f"; {self.seconds:.2f}s, {self.rate:,.0f} docs/s"
        if self.repaired:
            text += f"; {self.repaired} published with invalid bytes replaced (extra.encoding_repaired)"
        return text


@dataclass(frozen=True)
class Row:
    """One row as read: its first physical line, the mapped fields or why there are none, the raw text."""

    line: int
    data: dict[str, Any] | None
    raw: str | bytes
    reason: str | None = None
    detail: str | None = None
    repaired: bool = False


@dataclass(frozen=True)
class Event:
    """One row with its parsed event time, before it becomes a document."""

    at: datetime
    row: dict[str, Any]
    index: int  # position among the rows read (0-based)
    line: int = 0  # physical line in the file (1-based)
    raw: str | bytes = ""
    repaired: bool = False


@dataclass(frozen=True)
class FileInfo:
    """What :func:`check_file` learnt: format, the CSV header, the time column to use."""

    fmt: str
    header: list[str] | None
    time_column: str | None


# --------------------------------------------------------------------------- reading


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in ("csv", "jsonl"):
            raise ConfigError(f"unknown replay format {fmt!r} (csv or jsonl)")
        return fmt
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return "jsonl" if name.endswith(_JSONL_SUFFIXES) else "csv"


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the name says
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ConfigError(f"{path}: corrupt gzip data ({exc})") from None
    return data


def _read_head(path: Path, limit: int = 1 << 20) -> tuple[bytes, bool]:
    """The first ``limit`` bytes of the (decompressed) file, and whether that is all of it."""
    try:
        with path.open("rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gz else path.open("rb")) as fh:
            head = fh.read(limit + 1)
    except (OSError, EOFError, zlib.error) as exc:
        what = "corrupt gzip data" if isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile)) else "cannot read"
        raise ConfigError(f"{path}: {what} ({getattr(exc, 'strerror', None) or exc})") from None
    return head[:limit], len(head) <= limit


def _lines(data: bytes) -> tuple[list[str], set[int]]:
    """Physical lines (ends kept) and the indexes of those that are not valid UTF-8 (decoded with U+FFFD)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        # Split on \n only: str.splitlines would also split inside fields on \x1c, \u2028...
        parts = text.split("\n")
        lines = [p + "\n" for p in parts[:-1]]
        if parts[-1]:
            lines.append(parts[-1])
        return lines, set()
    lines, bad = [], set()
    for i, raw in enumerate(data.splitlines(keepends=True) if b"\r" not in data else _split_lf(data)):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(raw.decode("utf-8", errors="replace"))
            bad.add(i)
    return lines, bad


def _split_lf(data: bytes) -> list[bytes]:
    parts = data.split(b"\n")
    out = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


class _Feed:
    """Hands physical lines to csv.reader one at a time, so each record's line span is known."""

    def __init__(self, lines: list[str], pos: int, limit: int):
        self.lines, self.pos, self.limit = lines, pos, limit
        self.start = pos

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines) or self.pos - self.start >= self.limit:
            raise StopIteration
        line = self.lines[self.pos]
        self.pos += 1
        return line


def _raw_of(lines: list[str], raw_bytes: list[bytes] | None, start: int, end: int) -> str | bytes:
    if raw_bytes is not None:
        return b"".join(raw_bytes[start:end]).rstrip(b"\r\n")
    return "".join(lines[start:end]).rstrip("\r\n")


def _looks_like_a_row(line: str, width: int, time_index: int) -> bool:
    """Whether ``line`` alone is a complete row: the header's field count and a parseable time where it goes.

    The field count alone would also match a legitimate multi-line tweet with commas in it.
    """
    try:
        fields = next(csv.reader([line], strict=True), [])
    except csv.Error:
        return False
    if len(fields) != width:
        return False
    value = fields[time_index]
    # dateutil reads " 10" as a day of this month; a recorded timestamp has a date's worth of digits.
    return sum(c.isdigit() for c in value) >= 6 and parse_datetime(value) is not None


def _csv_rows(data: bytes, *, encoding_errors: EncodingErrors, max_lines: int,
              time_column: str | None = None) -> Iterator[Row]:
    lines, bad = _lines(data)
    raw_bytes = None
    if bad:
        body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
        raw_bytes = _split_lf(body)
    if not lines:
        return
    header = next(csv.reader([lines[0]]))
    width = len(header)
    time_index = header.index(time_column) if time_column in header else None
    pos = 1
    while pos < len(lines):
        feed = _Feed(lines, pos, max_lines)
        reader = csv.reader(feed, strict=True)
        while feed.pos < len(lines):
            start = feed.start = feed.pos
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                if feed.pos - start >= max_lines:
                    detail = f"unclosed quote: the row runs on for more than {max_lines} lines"
                elif "end of data" in str(exc) or "EOF" in str(exc):
                    detail = "unclosed quote: the row runs to the end of the file"
                elif feed.pos - start > 1:
                    detail = (f"unclosed quote: the quoted field ran into the next {feed.pos - start - 1} line(s) "
                              f"({exc})")
                else:
                    detail = f"malformed CSV ({exc})"
                reason = "unclosed_quote" if detail.startswith("unclosed") else "malformed_csv"
                # Only the line that opened the bad row is rejected; reading resumes on the next
                # line, so the rows it would have swallowed are read on their own.
                yield Row(start + 1, None, _raw_of(lines, raw_bytes, start, start + 1), reason,
                          f"line {start + 1}: {detail}")
                pos = start + 1
                break
            end = feed.pos
            if not fields or (len(fields) == 1 and not fields[0].strip() and end - start == 1):
                continue  # a blank line is not a row
            line = start + 1
            if end - start > 1 and len(fields) == width and time_index is not None and any(
                    _looks_like_a_row(lines[k], width, time_index) for k in range(start + 1, end)):
                # The quoted field swallowed lines that are rows of their own (the right field
                # count and a time): a stray quote whose field count happens to come out right.
                yield Row(line, None, _raw_of(lines, raw_bytes, start, start + 1), "unclosed_quote",
                          f"line {line}: unclosed quote: the quoted field swallowed line(s) that are rows "
                          f"of their own ({line + 1}..{end})")
                pos = start + 1
                break
            if len(fields) != width:
                if end - start > 1:
                    # A multi-line row with the wrong field count: a quote opened in the first line
                    # closed somewhere in a later row. Reject the first line, re-read the rest.
                    yield Row(line, None, _raw_of(lines, raw_bytes, start, start + 1), "unclosed_quote",
                              f"line {line}: unclosed quote: the quoted field ran into the next "
                              f"{end - start - 1} line(s)")
                    pos = start + 1
                    break
                many = len(fields) > width
                yield Row(line, None, _raw_of(lines, raw_bytes, start, end),
                          "extra_fields" if many else "missing_fields",
                          f"line {line}: {len(fields)} fields, the header has {width}")
                continue
            broken = bad.intersection(range(start, end)) if bad else ()
            if broken and encoding_errors == "strict":
                yield Row(line, None, _raw_of(lines, raw_bytes, start, end), "bad_encoding",
                          f"line {min(broken) + 1}: invalid UTF-8 bytes (replay with --encoding-errors repair "
                          "to publish them replaced by U+FFFD, flagged extra.encoding_repaired)")
                continue
            yield Row(line, dict(zip(header, fields)), _raw_of(lines, raw_bytes, start, end), repaired=bool(broken))
        else:
            pos = len(lines)


def _jsonl_rows(data: bytes, *, encoding_errors: EncodingErrors) -> Iterator[Row]:
    lines, bad = _lines(data)
    raw_bytes = _split_lf(data[3:] if data.startswith(b"\xef\xbb\xbf") else data) if bad else None
    for i, text in enumerate(lines):
        if not text.strip():
            continue
        line = i + 1
        raw = _raw_of(lines, raw_bytes, i, i + 1)
        if i in bad and encoding_errors == "strict":
            yield Row(line, None, raw, "bad_encoding", f"line {line}: invalid UTF-8 bytes")
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Row(line, None, raw, "malformed_row", f"line {line}: malformed JSON ({exc.msg})")
            continue
        if not isinstance(value, dict):
            yield Row(line, None, raw, "malformed_row", f"line {line}: not an object")
            continue
        yield Row(line, value, raw, repaired=i in bad)


def read_rows(path: Path | str, *, fmt: str | None = None, encoding_errors: EncodingErrors = "strict",
              max_lines_per_row: int = MAX_LINES_PER_ROW, time_column: str | None = None) -> Iterator[Row]:
    """Every row of a CSV (header line) or JSONL file, gzip'd or not, as a :class:`Row`."""
    path = Path(path)
    fmt = _format_of(path, fmt)
    data = _read_bytes(path)
    if fmt == "csv":
        csv.field_size_limit(10 * 1024 * 1024)
        yield from _csv_rows(data, encoding_errors=encoding_errors, max_lines=max_lines_per_row,
                             time_column=time_column)
    else:
        yield from _jsonl_rows(data, encoding_errors=encoding_errors)


def check_file(path: Path | str, *, fmt: str | None = None, columns: Columns = Columns()) -> FileInfo:
    """Raise ConfigError (one line) unless ``path`` is a replayable file; cheap, touches no broker."""
    path = Path(path)
    fmt = _format_of(path, fmt)
    data, complete = _read_head(path)  # the head is enough to judge; replay reads the whole file once
    if not data.strip() and complete:
        raise ConfigError(f"{path}: the file is empty")
    head = data[:65536]
    nul = head.find(b"\x00")
    if nul >= 0:
        raise ConfigError(f"{path}: binary data, not {fmt.upper()} text (NUL byte at offset {nul})")
    if fmt == "csv":
        first = data.split(b"\n", 1)[0].removeprefix(b"\xef\xbb\xbf")
        try:
            header_line = first.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: the header line is not UTF-8 text (binary file?)") from None
        header = next(csv.reader([header_line]), [])
        if not any(h.strip() for h in header) or not header_line.rstrip("\r\n").isprintable():
            raise ConfigError(f"{path}: the first line is not a CSV header (control characters or no names)")
        rest = data.split(b"\n", 1)[1] if b"\n" in data else b""
        if not rest.strip() and complete:
            raise ConfigError(f"{path}: a header but no data rows")
        shown = ", ".join(header[:20])
        if columns.text not in header and (columns.title is None or columns.title not in header):
            raise ConfigError(f"{path}: text column {columns.text!r} is not in the header ({shown}); "
                              "pass --text-column")
        time_column = columns.time or guess_time_column(header)
        if time_column is None:
            raise ConfigError(f"{path}: no time column found in the header ({shown}); pass --time-column")
        if time_column not in header:
            raise ConfigError(f"{path}: time column {time_column!r} is not in the header ({shown})")
        return FileInfo(fmt, header, time_column)
    objects = []
    for row in _jsonl_rows(data, encoding_errors="repair"):
        if row.data is not None:
            objects.append(row.data)
            if len(objects) >= 100:
                break
    if not objects:
        raise ConfigError(f"{path}: no line is a JSON object")
    if all(_value(o, columns.text) is None and _value(o, columns.title) is None for o in objects):
        keys = ", ".join(sorted(objects[0])[:20])
        raise ConfigError(f"{path}: text field {columns.text!r} is in none of the first {len(objects)} objects "
                          f"(keys: {keys}); pass --text-column")
    time_column = columns.time or guess_time_column(objects[0].keys())
    if time_column is None:
        raise ConfigError(f"{path}: no time field found among ({', '.join(sorted(objects[0])[:20])}); "
                          "pass --time-column")
    return FileInfo(fmt, None, time_column)


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


@dataclass(frozen=True)
class _Rejected:
    """A row that is not published: ``reason`` for the stats, ``detail`` (starts with its line), ``raw`` as read."""

    reason: str
    detail: str
    line: int
    raw: str | bytes | None = None


def load_events(
    rows: Iterable[Row],
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

    def reject(reason: str, row: Row, detail: str) -> None:
        stats.invalid[reason] += 1
        if rejected is not None:
            rejected.append(_Rejected(reason, detail, row.line, row.raw))

    for index, row in enumerate(rows):
        stats.rows += 1
        if row.data is None:
            reject(row.reason or "malformed_row", row, row.detail or f"line {row.line}: unreadable")
            continue
        data = row.data
        if time_column is None:
            time_column = guess_time_column(data.keys())
            if time_column is None:
                raise ConfigError(f"no time column found among {sorted(data)[:20]}; pass --time-column")
        if _value(data, columns.text) is None and _value(data, columns.title) is None:
            # Known unpublishable before the shift is computed, so "last event = now" refers to
            # a document that is actually published.
            reject("no_text", row, f"line {row.line}: text: empty (column {columns.text!r})")
            continue
        raw = _value(data, time_column)
        at = parse_datetime(raw, default_tz=tz) if raw is not None else None
        if at is None:
            if missing_time == "skip":
                if raw is None:
                    reject("no_time", row, f"line {row.line}: time: empty (column {time_column!r})")
                else:
                    reject("bad_time", row,
                           f"line {row.line}: time: unparseable {str(raw)[:80]!r} (column {time_column!r})")
                continue
            at = now  # "now": treated as arriving live, i.e. after every recorded event
            data = dict(data, __missing_time__=True)
        events.append(Event(at, data, index, row.line, row.raw, row.repaired))
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
    if event.repaired:
        extra["encoding_repaired"] = True
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


# --------------------------------------------------------------------------- progress (--resume)


class Progress:
    """The acknowledged position of a replay, saved under ``state_dir`` so a rerun can resume.

    ``done`` is the number of events (in publish order) of which every one was acknowledged by
    the broker or dead-lettered. A state file belongs to one (file, source, topic, options)
    combination and records the file's size, mtime and a hash of its head, so a changed file is
    never resumed at a stale position.
    """

    def __init__(self, state_dir: Path, *, path: Path, source: str, topic: str, options: dict[str, Any]):
        self.path = Path(path).resolve()
        key = hashlib.sha256(f"{self.path}\x1f{source}\x1f{topic}".encode()).hexdigest()[:16]
        self.file = Path(state_dir) / f"replay-{key}.json"
        stat = self.path.stat()
        with self.path.open("rb") as fh:
            head = hashlib.sha256(fh.read(1 << 20)).hexdigest()
        self.identity = {"file": str(self.path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "head": head,
                         "source": source, "topic": topic, "options": options}

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None; ConfigError if it belongs to another version of the file or options."""
        try:
            state = json.loads(self.file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"unreadable replay state {self.file} ({exc}); delete it to start over") from None
        for key, value in self.identity.items():
            if state.get(key) != value:
                raise ConfigError(f"cannot resume: the {key} changed since the saved progress ({self.file}); "
                                  "replay without --resume to start over")
        return state

    def save(self, **fields: Any) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.identity, **fields, "saved_at": utcnow().isoformat()}))
        os.replace(tmp, self.file)  # atomic: a kill -9 leaves the old or the new state, never half


# --------------------------------------------------------------------------- replay


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
    encoding_errors: EncodingErrors = "strict",
    state_dir: Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 1_000,
    checkpoint_seconds: float = 1.0,
    stats: ReplayStats | None = None,
) -> ReplayStats:
    """Publish the rows of ``path`` in event-time order, rejected rows to ``dead_letters``; return the account.

    Raises ConfigError for a file that cannot be replayed (before anything is sent) and
    PublishError if documents or dead letters cannot be delivered after retries. ``stats``, when
    given, is filled as the replay goes: after an interrupt it holds the account so far
    (``published`` counts the acknowledgements harvested up to then).
    """
    path = Path(path)
    info = check_file(path, fmt=fmt, columns=columns)
    if columns.time is None and info.time_column is not None:
        columns = Columns(**{**columns.__dict__, "time": info.time_column})
    stats = ReplayStats() if stats is None else stats
    started = time.perf_counter()
    rows: Iterable[Row] = read_rows(path, fmt=info.fmt, encoding_errors=encoding_errors, time_column=columns.time)
    if limit is not None:
        rows = itertools.islice(rows, limit)
    options = {"columns": columns.__dict__, "fmt": info.fmt, "limit": limit, "missing_time": missing_time,
               "encoding_errors": encoding_errors, "tz": str(tz), "shift_to_now": shift_to_now, "anchor": anchor}
    tracker, state = _open_progress(state_dir, resume, path=path, source=source, sink=sink, options=options)
    run = _ReplayRun(sink=sink, dead_letters=dead_letters, stats=stats, source=source, origin=path.resolve().as_uri(),
                     tracker=tracker, checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds,
                     max_in_flight=max_in_flight)
    events = load_events(rows, columns=columns, tz=tz, missing_time=missing_time, stats=stats, rejected=run.rejected)
    run.settle_load_rejects(state)
    shift = run.choose_shift(events, state, shift_to_now=shift_to_now, anchor=anchor)
    todo = run.skip_delivered(events, state)
    params = dict(source=source, kind=kind, columns=columns, time_column=stats.time_column, shift=shift, lang=lang,
                  detect_lang=detect_lang, html=html)
    pacer = Pacer(rate=rate, speedup=speedup, first_event=todo[0].at if todo else None)
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="doc", desc=f"replay {source}", file=sys.stderr,
               disable=(not sys.stderr.isatty()) if progress is None else not progress)
    try:
        run.send_all(_built(todo, params, workers), pacer, bar)
        run.resend_failed()
        bar.update(len(todo) - bar.n)
    finally:
        run.finish()  # also on the way out of an interrupted or failed run
        bar.close()
        stats.seconds = time.perf_counter() - started
    run.report_rejections()
    return stats


def _open_progress(state_dir: Path | None, resume: bool, *, path: Path, source: str, sink: Sink,
                   options: dict[str, Any]) -> tuple[Progress | None, dict[str, Any] | None]:
    """The position tracker of this (file, source, topic, options) and, with ``resume``, its saved state."""
    if state_dir is None:
        if resume:
            raise ConfigError("--resume needs a state directory")
        return None, None
    tracker = Progress(state_dir, path=path, source=source, topic=getattr(sink, "topic", "?"), options=options)
    state = None
    if resume:
        state = tracker.load()
        if state is None:
            log.warning("no saved progress in %s: replaying from the start", tracker.file)
    return tracker, state


class _Positions:
    """Which events (positions in publish order) are finished: acknowledged by the broker or dead-lettered.

    The saved position is the longest prefix of events all finished; sends complete out of
    order, so positions whose outcome is not known yet are kept until the prefix reaches them.
    """

    def __init__(self, start: int = 0):
        self.start = start
        self.outstanding: deque[int] = deque()
        self.finished: set[int] = set()
        self._position_of: dict[int, int] = {}  # id(document or rejection) -> position

    def track(self, item: object, position: int) -> None:
        self.outstanding.append(position)
        self._position_of[id(item)] = position

    def finish(self, item: object) -> None:
        position = self._position_of.pop(id(item), None)
        if position is not None:
            self.finished.add(position)

    def all_finished(self) -> bool:
        return not self.outstanding or all(p in self.finished for p in self.outstanding)

    def watermark(self, handled: int) -> int:
        """The saved position: the first unfinished event, else ``start + handled`` (all handled so far)."""
        while self.outstanding and self.outstanding[0] in self.finished:
            self.finished.discard(self.outstanding.popleft())
        return self.outstanding[0] if self.outstanding else self.start + handled


class _ReplayRun:
    """The sending half of one :func:`replay`: the account, dead letters, acknowledgements and checkpoints."""

    # Rejections are rare and small: they go out in blocking batches of at most this many.
    DEAD_LETTER_BATCH = 1_000

    def __init__(self, *, sink: Sink, dead_letters: DeadLetterSink, stats: ReplayStats, source: str, origin: str,
                 tracker: Progress | None, checkpoint_every: int, checkpoint_seconds: float, max_in_flight: int):
        self.sink, self.dead_letters, self.stats = sink, dead_letters, stats
        self.source, self.origin, self.tracker = source, origin, tracker
        self.checkpoint_every, self.checkpoint_seconds = checkpoint_every, checkpoint_seconds
        self.max_in_flight = max_in_flight
        self.rejected: list[_Rejected] = []  # waiting for their dead letter
        self.examples: dict[str, str] = {}  # one detail per rejection reason, for the log
        self.failed: list = []  # documents the broker did not acknowledge, resent at the end
        self.positions = _Positions()
        self.events = 0
        self.shift: timedelta | None = None
        self.load_rejects_delivered = True
        self.handled = 0  # events sent or rejected in this run

    # -- before sending ----------------------------------------------------------------------
    def settle_load_rejects(self, state: dict[str, Any] | None) -> None:
        """Dead-letter the rows rejected while reading, unless the run that saved ``state`` did."""
        stats = self.stats
        if state and state.get("load_rejects_delivered") and self.rejected:
            stats.skipped["resume_already_dead_lettered"] += len(self.rejected)
            for r in self.rejected:
                stats.invalid[r.reason] -= 1
            stats.invalid = +stats.invalid
            self.rejected.clear()
        else:
            self.publish_dead_letters(self.rejected)
        # A later --resume must dead-letter them again unless they were all delivered now.
        self.load_rejects_delivered = stats.dead_letter_failed == 0

    def choose_shift(self, events: list[Event], state: dict[str, Any] | None, *, shift_to_now: bool,
                     anchor: Literal["last", "first"]) -> timedelta | None:
        if state and state.get("shift_seconds") is not None:
            shift: timedelta | None = timedelta(seconds=state["shift_seconds"])  # the first run's, so times agree
        else:
            shift = shift_for(events, anchor=anchor) if shift_to_now else None
        self.shift = self.stats.shift = shift
        return shift

    def skip_delivered(self, events: list[Event], state: dict[str, Any] | None) -> list[Event]:
        """The events still to send: those after the saved position when resuming, else all."""
        stats = self.stats
        done_before = int(state.get("done", 0)) if state else 0
        self.events = len(events)
        stats.resumed_from = min(done_before, len(events))
        self.positions.start = stats.resumed_from
        if stats.resumed_from:
            stats.skipped["resume_already_delivered"] += stats.resumed_from
            log.info("resuming after %d of %d events (%s)", stats.resumed_from, len(events), self.tracker.file)
        return events[stats.resumed_from:]

    # -- sending -----------------------------------------------------------------------------
    def send_all(self, built: Iterable[tuple[Event, Document | Encoded | _Rejected]], pacer: Pacer, bar) -> None:
        """Send each document (or queue its rejection) on schedule, checkpointing as acks come in."""
        sent = 0
        last_checkpoint = time.monotonic()
        for i, (event, outcome) in enumerate(built):
            position = self.stats.resumed_from + i
            self.handled = i + 1
            pacer.wait(i, event.at)
            if isinstance(outcome, _Rejected):
                self.queue_rejection(outcome, position)
                continue
            self.sink.send(outcome)
            self.stats.repaired += event.repaired
            self.positions.track(outcome, position)
            sent += 1
            if sent % self.checkpoint_every == 0 or (self.tracker is not None and sent % 64 == 0 and
                                                     time.monotonic() - last_checkpoint >= self.checkpoint_seconds):
                self.harvest_and_checkpoint()
                if self.tracker is not None:
                    last_checkpoint = time.monotonic()
            if i % 256 == 0:
                bar.update(i - bar.n)
        self.count_acks(self.sink.drain())

    def queue_rejection(self, rejection: _Rejected, position: int) -> None:
        self.stats.invalid[rejection.reason] += 1
        self.examples.setdefault(rejection.reason, rejection.detail)
        self.rejected.append(rejection)
        self.positions.track(rejection, position)
        if len(self.rejected) >= self.DEAD_LETTER_BATCH:
            self.dead_letter_queued()

    def harvest_and_checkpoint(self) -> None:
        # Harvest acks without waiting, so the producer never idles at a barrier; block only when
        # too much is outstanding (back-pressure on a slow broker).
        self.count_acks(self.sink.drain() if self.sink.in_flight >= self.max_in_flight else self.sink.collect())
        if self.tracker is not None:
            if self.rejected:
                self.dead_letter_queued()
            self.checkpoint()

    def count_acks(self, result) -> None:
        self.stats.published += len(result.acked)
        for doc in result.acked:
            self.positions.finish(doc)
        self.failed.extend(doc for doc, _ in result.failed)

    def resend_failed(self) -> None:
        """Resend what the broker did not acknowledge (see Sink.publish); PublishError if some still fail."""
        if not self.failed:
            return
        retry = self.sink.publish(self.failed)
        self.stats.published += len(retry.acked)
        for doc in retry.acked:
            self.positions.finish(doc)
        self.stats.not_delivered = len(retry.failed)
        if retry.failed:
            raise PublishError(f"{len(retry.failed)} document(s) not delivered after retries: {retry.failed[0][1]}")

    # -- dead letters and checkpoints --------------------------------------------------------
    def publish_dead_letters(self, batch: list[_Rejected]) -> list[_Rejected]:
        """Publish and clear ``batch``; return the rejections whose dead letter was acknowledged."""
        letters = [DeadLetter(stage="replay", source=self.source, reason=r.reason.split(":", 1)[0], detail=r.detail,
                              raw=r.raw, url=f"{self.origin}#line={r.line}") for r in batch]
        result = self.dead_letters.publish(letters)
        self.stats.dead_lettered += len(result.acked)
        self.stats.dead_letter_failed += len(result.failed)
        acked = {id(letter) for letter in result.acked}
        delivered = [r for r, letter in zip(batch, letters) if id(letter) in acked]
        batch.clear()
        return delivered

    def dead_letter_queued(self) -> None:
        for rejection in self.publish_dead_letters(self.rejected):
            # only a delivered dead letter moves the saved position past its row
            self.positions.finish(rejection)

    def checkpoint(self, *, complete: bool = False) -> None:
        done = self.positions.watermark(self.handled)
        if self.tracker is not None:
            self.tracker.save(done=done, events=self.events, load_rejects_delivered=self.load_rejects_delivered,
                              shift_seconds=None if self.shift is None else self.shift.total_seconds(),
                              complete=complete)

    def finish(self) -> None:
        """Dead-letter what is queued and save the final position (also after an interrupt or failure)."""
        self.dead_letter_queued()
        if self.tracker is not None:
            self.checkpoint(complete=self.positions.all_finished())

    def report_rejections(self) -> None:
        for reason, example in self.examples.items():
            log.warning("rejected rows (%s), e.g. %s", reason, example[:300])
        if self.stats.dead_letter_failed:
            raise PublishError(f"{self.stats.dead_letter_failed} dead letter(s) not delivered after retries; "
                               f"{self.stats.line()}")


@dataclass(frozen=True)
class Encoded:
    """A document validated and serialised in a worker process: what a Sink needs of a Document."""

    id: str
    payload: bytes

    def to_json(self) -> bytes:
        return self.payload


def _build_one(event: Event, params: dict) -> Document | _Rejected:
    try:
        return to_document(event, fetched_at=utcnow(), **params)
    except ContractError as exc:
        reason = "contract:" + ",".join(sorted({f for f, _ in exc.problems}))
        return _Rejected(reason, f"line {event.line}: {exc}", event.line, event.raw)


def _with_languages(events: list[Event], params: dict) -> list[dict]:
    """Per-event build parameters, languages detected for the whole chunk in one batch call."""
    if params["lang"] is not None or not params["detect_lang"]:
        return [params] * len(events)
    columns: Columns = params["columns"]
    texts = []
    for event in events:
        title, text = _value(event.row, columns.title), _value(event.row, columns.text)
        texts.append(" ".join(str(p) for p in (title, text) if p is not None))
    langs = detect_languages(texts)
    return [dict(params, lang=code, detect_lang=False) for code in langs]


def _build_chunk(job: tuple[list[Event], dict]) -> list[tuple[Event, Encoded | _Rejected]]:
    events, params = job
    out = []
    for event, p in zip(events, _with_languages(events, params)):
        built = _build_one(event, p)
        out.append((event, built if isinstance(built, _Rejected) else Encoded(built.id, built.to_json())))
    return out


def _built(events: list[Event], params: dict, workers: int) -> Iterator[tuple[Event, Document | Encoded | _Rejected]]:
    """(event, document or rejection) in event order; built in ``workers`` processes if > 1.

    Languages are detected per chunk in one batch call. Normalisation + contract validation is
    pure Python, so one process tops out at ~25k docs/s; workers build (and serialise) chunks in
    parallel and ``imap`` hands them back in order, so the publish order is still event-time order.
    """
    size = 2_000 if workers > 1 else 512
    if workers <= 1:
        for i in range(0, len(events), size):
            chunk = events[i : i + size]
            for event, p in zip(chunk, _with_languages(chunk, params)):
                yield event, _build_one(event, p)
        return
    import multiprocessing

    jobs = ((events[i : i + size], params) for i in range(0, len(events), size))
    # spawn, not fork: the parent already runs producer I/O threads, and forking a threaded
    # process can copy a held lock into the child.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for chunk in pool.imap(_build_chunk, jobs):
            yield from chunk
