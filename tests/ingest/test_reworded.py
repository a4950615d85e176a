"""Reworded copies of a story are linked to the first story; other stories about the company are not.

The pair set (tests/ingest/data/reworded_pairs.jsonl) was written for this test: 24 rewrites of
one story as another outlet would write it, 26 different stories about the same company on the
same day. It is small and written by one person; the figures it gives are a guide.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from finpulse.contract import Document
from ingest.dedup import Deduplicator, overlap, story_terms
from ingest.store import SeenStore

PAIRS = [json.loads(line) for line in (Path(__file__).parent / "data" / "reworded_pairs.jsonl").open()]
NOW = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)


def _doc(i: str, text: str, source: str) -> Document:
    return Document(id=i, source=source, kind="news", text=text, published_at=NOW, fetched_at=NOW)


def _linked(tmp_path, i: int, pair: dict) -> bool:
    """Publish ``a``, then check ``b`` from another outlet: is it linked to ``a`` as a copy?"""
    dedup = Deduplicator(SeenStore(tmp_path / f"s{i}.db"))
    first = _doc(f"a{i}", pair["a"], "wire")
    verdict = dedup.check(first)
    dedup.reserve(first, verdict)
    dedup.confirm([(first, verdict)])
    second = dedup.check(_doc(f"b{i}", pair["b"], "other-outlet"))
    assert second.duplicate is None  # a rewrite is published, never dropped as an exact duplicate
    return second.novelty is False and second.first_story_id == f"a{i}"


def test_precision_and_recall_on_the_pair_set(tmp_path):
    assert (sum(p["label"] == "same" for p in PAIRS), sum(p["label"] == "different" for p in PAIRS)) == (24, 26)
    linked = [_linked(tmp_path, i, p) for i, p in enumerate(PAIRS)]
    same = [p["label"] == "same" for p in PAIRS]
    tp = sum(link and s for link, s in zip(linked, same))
    precision = tp / sum(linked)
    recall = tp / sum(same)
    # Measured: 23/24 rewrites linked, 1 of 26 different stories linked (precision 0.958, recall 0.958).
    assert (tp, sum(linked)) == (23, 24), (precision, recall)
    assert precision >= 0.95 and recall >= 0.95


def test_story_terms_agree_across_rewording():
    a = story_terms("Shares of Boeing fell 6% after the planemaker cut its delivery forecast")
    b = story_terms("Boeing stock slid 6 percent as the aircraft maker lowered its delivery target")
    assert {"boeing", "6", "delivery"} <= a & b
    assert story_terms("revenue of $4,200.5 million") == story_terms("Revenue: 4200.5 millions")
    assert overlap(frozenset({"a", "b"}), frozenset({"a", "b", "c", "d"})) == 1.0
    assert overlap(frozenset(), frozenset({"a"})) == 0.0


def test_terms_survive_a_restart(tmp_path):
    pair = next(p for p in PAIRS if p["label"] == "same")
    path = tmp_path / "s.db"
    dedup = Deduplicator(SeenStore(path))
    first = _doc("a", pair["a"], "wire")
    verdict = dedup.check(first)
    dedup.reserve(first, verdict)
    dedup.confirm([(first, verdict)])
    dedup.store.close()
    again = Deduplicator(SeenStore(path)).check(_doc("b", pair["b"], "other"))
    assert again.novelty is False and again.first_story_id == "a"
