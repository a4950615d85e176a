"""The persistent seen-store: what was published, HTTP validators, near-duplicate signatures.

One SQLite file under ``settings.home / "ingest"``. It is what makes dedup survive restarts:
an id or content hash is recorded only *after* the broker acknowledged the document, so a
crash between fetch and ack republishes (see :class:`ingest.producer.Sink`) instead of losing a story.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    id            TEXT PRIMARY KEY,
    source        TEXT NOT NULL,
    url           TEXT,
    content_hash  TEXT,
    first_story_id TEXT,
    seen_at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_content ON seen(content_hash);
CREATE INDEX IF NOT EXISTS seen_url ON seen(url);
CREATE TABLE IF NOT EXISTS http_validators (
    url           TEXT PRIMARY KEY,
    etag          TEXT,
    last_modified TEXT,
    updated_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS signatures (
    id             TEXT PRIMARY KEY,
    first_story_id TEXT NOT NULL,
    signature      BLOB NOT NULL,
    seen_at        REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS signatures_time ON signatures(seen_at);
"""
# Added after the first release: the story terms a reworded copy is confirmed on (space-joined).
_MIGRATIONS = ["ALTER TABLE signatures ADD COLUMN terms TEXT"]
# Added later: the tickers a published document carried (space-joined; NULL for rows written before), so the same
# story seen again under another ticker is published again with the union (see ingest.crawler).
_SEEN_MIGRATIONS = ["ALTER TABLE seen ADD COLUMN tickers TEXT"]


@dataclass(frozen=True)
class SeenRecord:
    """What is remembered about one acknowledged document."""

    id: str
    source: str
    url: str | None
    content_hash: str | None
    first_story_id: str | None = None
    signature: bytes | None = None
    terms: str | None = None
    tickers: tuple[str, ...] = ()


class SeenStore:
    """Thread-safe SQLite store (one connection behind a lock; sources read it from worker threads)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(signatures)")}
        if "terms" not in columns:
            for statement in _MIGRATIONS:
                self._db.execute(statement)
        if "tickers" not in {row[1] for row in self._db.execute("PRAGMA table_info(seen)")}:
            for statement in _SEEN_MIGRATIONS:
                self._db.execute(statement)

    @classmethod
    def for_home(cls, home: Path) -> SeenStore:
        return cls(Path(home) / "ingest" / "seen.sqlite3")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- seen ---------------------------------------------------------------------------
    def is_seen(self, doc_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM seen WHERE id = ?", (doc_id,)).fetchone() is not None

    def seen_tickers(self, doc_id: str) -> tuple[str, ...] | None:
        """The tickers the published document ``doc_id`` carried; None when not seen or not recorded (older rows)."""
        with self._lock:
            row = self._db.execute("SELECT tickers FROM seen WHERE id = ?", (doc_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        return tuple(t for t in row[0].split(" ") if t)

    def first_story_of(self, doc_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT first_story_id FROM seen WHERE id = ?", (doc_id,)).fetchone()
        return None if row is None else row[0]

    def seen_url(self, url: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM seen WHERE url = ?", (url,)).fetchone() is not None

    def seen_content(self, content_hash: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM seen WHERE content_hash = ?", (content_hash,)).fetchone()
            return row is not None

    def mark_seen(self, records: Iterable[SeenRecord]) -> int:
        """Record acknowledged documents (one transaction). Returns how many rows were written."""
        now = time.time()
        rows = list(records)
        if not rows:
            return 0
        with self._lock:
            self._db.execute("BEGIN")
            try:
                # A document published again with more tickers (the same story under another ticker) keeps its
                # first record and gains the tickers.
                self._db.executemany(
                    "INSERT INTO seen(id, source, url, content_hash, first_story_id, seen_at, tickers)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET tickers = excluded.tickers",
                    [(r.id, r.source, r.url, r.content_hash, r.first_story_id, now, " ".join(r.tickers)) for r in rows],
                )
                self._db.executemany(
                    "INSERT OR IGNORE INTO signatures(id, first_story_id, signature, terms, seen_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(r.id, r.first_story_id or r.id, r.signature, r.terms, now) for r in rows if r.signature is not None],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(rows)

    def count_seen(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM seen").fetchone()[0]

    # -- HTTP validators (conditional GET) ---------------------------------------------------
    def validators(self, url: str) -> tuple[str | None, str | None]:
        with self._lock:
            row = self._db.execute(
                "SELECT etag, last_modified FROM http_validators WHERE url = ?", (url,)
            ).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def set_validators(self, url: str, etag: str | None, last_modified: str | None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO http_validators(url, etag, last_modified, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(url) DO UPDATE SET etag = excluded.etag,"
                " last_modified = excluded.last_modified, updated_at = excluded.updated_at",
                (url, etag, last_modified, time.time()),
            )

    # -- near-duplicate signatures --------------------------------------------------------
    def signatures(self, *, since: float, limit: int) -> Iterator[tuple[str, str, bytes, str | None]]:
        """(id, first_story_id, signature, terms) of the newest ``limit`` signatures since ``since``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, first_story_id, signature, terms FROM ("
                " SELECT id, first_story_id, signature, terms, seen_at, rowid AS r FROM signatures"
                " WHERE seen_at >= ? ORDER BY seen_at DESC, r DESC LIMIT ?) ORDER BY seen_at, r",
                (since, limit),
            ).fetchall()
        yield from rows

    def prune_signatures(self, *, before: float) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM signatures WHERE seen_at < ?", (before,)).rowcount
