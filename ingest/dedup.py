"""Exact duplicates and near-duplicates (first-story detection).

* Exact: the same id (canonical URL or ``source:native_id``) or the same normalised-content
  hash was already published. Such a document is not republished.
* Near: MinHash over word shingles, indexed in an LSH (datasketch). A document whose estimated
  Jaccard similarity to an earlier one reaches the threshold is a near-duplicate: it *is*
  published, with ``extra["novelty"] = False`` and ``extra["first_story_id"]`` = the first
  story of that chain; first stories get ``novelty = True`` (RavenPack-style first-story flag).

The LSH lives in memory and is rebuilt at start from the signatures kept in the seen-store,
bounded to a recent window (``window_days`` / ``max_items``): novelty is about recent news.

Nothing is written to the store here until :meth:`Deduplicator.confirm` (called once the
broker acked), but the in-memory state is updated at :meth:`reserve`, so two copies of a story
inside one poll are still caught.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash, MinHashLSH

from finpulse.contract import Document
from ingest.normalize import content_hash, content_key
from ingest.store import SeenRecord, SeenStore

log = logging.getLogger(__name__)

_WORD = re.compile(r"[\w$]+")
# Pinned, so signatures stored by one datasketch version stay comparable after an upgrade.
SCHEME = "affine32"


@dataclass(frozen=True)
class Verdict:
    """Outcome of :meth:`Deduplicator.check`."""

    duplicate: str | None  # None, "id" or "content"
    content_hash: str
    novelty: bool = True
    first_story_id: str | None = None
    similarity: float | None = None
    signature: MinHash | None = None


class Deduplicator:
    """Exact + near-duplicate detection backed by a :class:`SeenStore`. Not thread-safe: one caller."""

    def __init__(
        self,
        store: SeenStore,
        *,
        threshold: float = 0.6,
        num_perm: int = 128,
        shingle_size: int = 3,
        min_words: int = 8,
        window_days: float = 7.0,
        max_items: int = 50_000,
        content_dedup_min_chars: int = 40,
    ):
        self.store = store
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.min_words = min_words
        self.window_s = window_days * 86_400
        self.max_items = max_items
        self.content_dedup_min_chars = content_dedup_min_chars
        # The LSH only proposes candidates; it is tuned below the threshold for recall (at J just
        # above the threshold a banded LSH misses a fair share), and each candidate is then
        # confirmed with the signatures' Jaccard estimate against the real threshold.
        self._lsh = MinHashLSH(threshold=max(0.05, threshold - 0.2), num_perm=num_perm)
        # id -> (first_story_id, signature), oldest first, so the window can be trimmed from the left.
        self._index: OrderedDict[str, tuple[str, MinHash]] = OrderedDict()
        self._pending_ids: set[str] = set()
        self._pending_hashes: set[str] = set()
        self._rebuild()

    # -- LSH maintenance ------------------------------------------------------------------
    def _rebuild(self) -> None:
        since = time.time() - self.window_s
        self.store.prune_signatures(before=since)
        loaded = 0
        for doc_id, first, blob in self.store.signatures(since=since, limit=self.max_items):
            values = np.frombuffer(blob, dtype=np.uint64)
            if len(values) != self.num_perm:
                continue  # written with another num_perm; ignore rather than mis-compare
            self._insert(doc_id, first, MinHash(num_perm=self.num_perm, hashvalues=values, scheme=SCHEME))
            loaded += 1
        if loaded:
            log.info("near-duplicate index rebuilt from %d stored signatures", loaded)

    def _insert(self, doc_id: str, first: str, sig: MinHash) -> None:
        if doc_id in self._index:
            return
        self._lsh.insert(doc_id, sig)
        self._index[doc_id] = (first, sig)
        while len(self._index) > self.max_items:
            old, _ = self._index.popitem(last=False)
            self._lsh.remove(old)

    def _remove(self, doc_id: str) -> None:
        if self._index.pop(doc_id, None) is not None:
            self._lsh.remove(doc_id)

    def signature(self, text: str) -> MinHash | None:
        """MinHash of the word shingles of ``text``, or None when it is too short to judge."""
        words = _WORD.findall(text.lower())
        if len(words) < self.min_words:
            return None
        k = self.shingle_size
        shingles = {" ".join(words[i : i + k]).encode("utf-8") for i in range(max(1, len(words) - k + 1))}
        sig = MinHash(num_perm=self.num_perm, scheme=SCHEME)
        sig.update_batch(list(shingles))
        return sig

    # -- the API the crawler uses ----------------------------------------------------------
    def content_hash_of(self, doc: Document) -> str:
        # Comments are short and repetitive ("+1", "to the moon"): the same words from another
        # author or under another parent are another comment, so they are part of the key.
        key = content_key(doc.title, doc.text)
        if doc.kind == "comment":
            return content_hash("comment", doc.source, doc.author, doc.parent_id, key)
        return content_hash("news", key)

    def check(self, doc: Document) -> Verdict:
        chash = self.content_hash_of(doc)
        if doc.id in self._pending_ids or self.store.is_seen(doc.id):
            return Verdict(duplicate="id", content_hash=chash)
        # A short news item ("Market update", title only) says too little for equal content to
        # mean the same story; comments carry author and parent in their hash, so they qualify.
        long_enough = doc.kind == "comment" or len(content_key(doc.title, doc.text)) >= self.content_dedup_min_chars
        if long_enough and (chash in self._pending_hashes or self.store.seen_content(chash)):
            return Verdict(duplicate="content", content_hash=chash)
        sig = self.signature(doc.content)
        if sig is None:
            return Verdict(duplicate=None, content_hash=chash, novelty=True, first_story_id=doc.id)
        best: tuple[float, str] | None = None
        for candidate in self._lsh.query(sig):
            first, other = self._index[candidate]
            similarity = sig.jaccard(other)  # LSH yields candidates; confirm with the estimate
            if similarity >= self.threshold and (best is None or similarity > best[0]):
                best = (similarity, first)
        if best is None:
            return Verdict(duplicate=None, content_hash=chash, novelty=True, first_story_id=doc.id, signature=sig)
        return Verdict(
            duplicate=None, content_hash=chash, novelty=False, first_story_id=best[1],
            similarity=round(best[0], 3), signature=sig,
        )

    def reserve(self, doc: Document, verdict: Verdict) -> None:
        """Hold a document that is about to be published (visible to later checks in this process)."""
        self._pending_ids.add(doc.id)
        self._pending_hashes.add(verdict.content_hash)
        if verdict.signature is not None:
            self._insert(doc.id, verdict.first_story_id or doc.id, verdict.signature)

    def confirm(self, pairs: list[tuple[Document, Verdict]]) -> None:
        """The broker acked these documents: remember them for good."""
        records = []
        for doc, verdict in pairs:
            sig = verdict.signature
            records.append(
                SeenRecord(
                    id=doc.id,
                    source=doc.source,
                    url=doc.url,
                    content_hash=verdict.content_hash,
                    first_story_id=verdict.first_story_id,
                    signature=None if sig is None else np.asarray(sig.hashvalues, dtype=np.uint64).tobytes(),
                )
            )
        self.store.mark_seen(records)
        for doc, verdict in pairs:
            self._pending_ids.discard(doc.id)
            self._pending_hashes.discard(verdict.content_hash)

    def release(self, pairs: list[tuple[Document, Verdict]]) -> None:
        """Delivery failed: forget the reservation so the next poll (or restart) tries again."""
        for doc, verdict in pairs:
            self._pending_ids.discard(doc.id)
            self._pending_hashes.discard(verdict.content_hash)
            self._remove(doc.id)

    def reset_pending(self) -> None:
        """Forget every reservation (after an error left some neither confirmed nor released)."""
        self._pending_ids.clear()
        self._pending_hashes.clear()
