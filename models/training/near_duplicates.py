"""Near-duplicates across splits: held-out rows that retell a training row are dropped from the held-out side.

Retail comments are full of templates: bot posts ("$GGAL enters a Downtrend because Momentum Indicator
dropped below the 0 level") and signal services repeat one sentence with another cashtag and another
price. A model that trained on one copy reads the held-out copy like a training row, so held-out figures
flatter it. Two texts are near-duplicates here when the Jaccard similarity of their word bigrams is at
least ``THRESHOLD`` once cashtags and numbers are masked (``$GGAL`` -> ``$tkr``, ``1339.68`` -> ``0``):
13% of the held-out StockTwits comments retell a training comment that way, 3% without the masking.

Candidates come from a MinHash LSH (``BANDS`` bands of ``ROWS`` rows, deterministic hashes, numpy), and
every candidate pair is checked on the exact Jaccard, so the LSH only decides what is compared.

The bundled data has no author or time for its training rows (the StockTwits comments, the news tweets
and the SEntFiN headlines carry neither), so splits cannot be cut by author or time; the only timestamped
set, the 2020 stock-market tweets, is never trained on and serves as the out-of-time evaluation.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

from models.text import model_text

THRESHOLD = 0.5
BANDS, ROWS = 16, 4  # 64 hash functions; a pair at Jaccard 0.5 becomes a candidate with probability ~0.65
_PRIME = (1 << 31) - 1  # a * h + b stays below 2**62: int64 arithmetic, no overflow
_RNG = np.random.default_rng(20261203)
_A = _RNG.integers(1, _PRIME, size=(BANDS * ROWS, 1), dtype=np.int64)
_B = _RNG.integers(0, _PRIME, size=(BANDS * ROWS, 1), dtype=np.int64)
_CASHTAG = re.compile(r"\$[a-z][a-z0-9.]*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[a-z0-9$]+")


def shingles(text: str) -> frozenset[str]:
    """The word bigrams of ``text`` as the model reads it, cashtags and numbers masked (a one-word text: itself)."""
    masked = _NUMBER.sub(" 0 ", _CASHTAG.sub(" $tkr ", model_text(text).lower()))
    words = _WORD.findall(masked)
    if len(words) < 2:
        return frozenset(words)
    return frozenset(f"{a} {b}" for a, b in zip(words, words[1:]))


def _signature(items: frozenset[str]) -> tuple[int, ...]:
    hashes = np.fromiter((zlib.crc32(item.encode("utf-8")) % _PRIME for item in items), dtype=np.int64,
                         count=len(items))
    # (a * h + b) mod p per hash function, minimum over the shingles
    return tuple(((_A * hashes[None, :] + _B) % _PRIME).min(axis=1).tolist())


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


_MEMO: dict[tuple[int, int, float], np.ndarray] = {}  # splits are cut again and again with the same rows


def near_duplicates_of(reference: Sequence[str], texts: Sequence[str], *, threshold: float = THRESHOLD) -> np.ndarray:
    """For each of ``texts``, whether it is a near-duplicate of any text of ``reference`` (a bool array)."""
    key = (hash(tuple(reference)), hash(tuple(texts)), threshold)
    if key not in _MEMO:
        _MEMO[key] = _near_duplicates_of(reference, texts, threshold=threshold)
    return _MEMO[key].copy()


def drop_near_duplicates(held_out, train, *, column: str = "text"):
    """``held_out`` (a frame) without the rows whose ``column`` is a near-duplicate of one in ``train``; the
    number dropped is in ``.attrs["near_duplicates_dropped"]``."""
    found = near_duplicates_of(train[column].tolist(), held_out[column].tolist())
    kept = held_out[~found].reset_index(drop=True)
    kept.attrs["near_duplicates_dropped"] = int(found.sum())
    return kept


def _near_duplicates_of(reference: Sequence[str], texts: Sequence[str], *, threshold: float) -> np.ndarray:
    reference_sets = [shingles(t) for t in reference]
    buckets: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for index, items in enumerate(reference_sets):
        if not items:
            continue
        signature = _signature(items)
        for band in range(BANDS):
            buckets.setdefault((band, signature[band * ROWS:(band + 1) * ROWS]), []).append(index)
    found = np.zeros(len(texts), dtype=bool)
    for position, text in enumerate(texts):
        items = shingles(text)
        if not items:
            continue
        signature = _signature(items)
        candidates = {i for band in range(BANDS)
                      for i in buckets.get((band, signature[band * ROWS:(band + 1) * ROWS]), ())}
        found[position] = any(jaccard(items, reference_sets[i]) >= threshold for i in candidates)
    return found
