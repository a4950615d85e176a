from __future__ import annotations

from datetime import datetime, timezone

from finpulse.contract import Document
from ingest.dedup import Deduplicator
from ingest.store import SeenStore

NOW = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)

STORY = (
    "Acme Corporation reported third quarter revenue of 4.2 billion dollars on Tuesday, beating analyst "
    "estimates as demand for its cloud software grew faster than expected, and the company raised its "
    "full year outlook while announcing a new share buyback program worth two billion dollars."
)
REWORDED = STORY.replace("on Tuesday", "late Tuesday").replace("grew faster", "rose faster")
REWORDED_AGAIN = REWORDED.replace("two billion", "2 billion").replace("new share", "fresh share")
OTHER = (
    "Central bank officials signalled that interest rates would stay on hold through the summer, citing "
    "sticky services inflation and a labour market that remains tighter than policymakers would like."
)


def _doc(i: str, text: str, kind: str = "news", **kw) -> Document:
    return Document(id=i, source="s", kind=kind, text=text, published_at=NOW, fetched_at=NOW, **kw)


def _publish(dedup: Deduplicator, doc: Document):
    verdict = dedup.check(doc)
    if verdict.duplicate is None:
        dedup.reserve(doc, verdict)
        dedup.confirm([(doc, verdict)])
    return verdict


def test_exact_and_near_duplicates_with_chain(tmp_path):
    dedup = Deduplicator(SeenStore(tmp_path / "s.db"))
    first = _publish(dedup, _doc("a", STORY))
    assert first.duplicate is None and first.novelty is True and first.first_story_id == "a"
    assert _publish(dedup, _doc("a", "anything")).duplicate == "id"
    assert _publish(dedup, _doc("b", STORY.upper() + "!!")).duplicate == "content"
    near = _publish(dedup, _doc("c", REWORDED))
    assert near.duplicate is None and near.novelty is False and near.first_story_id == "a"
    assert near.similarity >= 0.6
    chained = _publish(dedup, _doc("d", REWORDED_AGAIN))
    assert chained.novelty is False and chained.first_story_id == "a"  # the chain's first story, not "c"
    other = _publish(dedup, _doc("e", OTHER))
    assert other.novelty is True and other.first_story_id == "e"


def test_state_survives_restart(tmp_path):
    path = tmp_path / "s.db"
    dedup = Deduplicator(SeenStore(path))
    _publish(dedup, _doc("a", STORY))
    dedup.store.close()

    again = Deduplicator(SeenStore(path))
    assert again.check(_doc("a", STORY)).duplicate == "id"
    assert again.check(_doc("z", STORY)).duplicate == "content"
    near = again.check(_doc("c", REWORDED))
    assert near.duplicate is None and near.novelty is False and near.first_story_id == "a"


def test_unconfirmed_documents_are_not_remembered(tmp_path):
    path = tmp_path / "s.db"
    dedup = Deduplicator(SeenStore(path))
    doc = _doc("a", STORY)
    verdict = dedup.check(doc)
    dedup.reserve(doc, verdict)
    assert dedup.check(doc).duplicate == "id"  # reserved: a second copy in the same poll is held back
    dedup.release([(doc, verdict)])
    assert dedup.check(doc).duplicate is None
    assert dedup.check(_doc("c", REWORDED)).novelty is True  # released from the LSH too
    dedup.reserve(doc, verdict)  # reserved but never acked: a restart must not know it
    assert Deduplicator(SeenStore(path)).check(doc).duplicate is None


def test_comment_content_hash_includes_author(tmp_path):
    dedup = Deduplicator(SeenStore(tmp_path / "s.db"))
    _publish(dedup, _doc("c1", "to the moon", kind="comment", author="alice"))
    assert _publish(dedup, _doc("c2", "to the moon", kind="comment", author="bob")).duplicate is None
    assert _publish(dedup, _doc("c3", "To the moon!", kind="comment", author="alice")).duplicate == "content"


def test_window_is_bounded(tmp_path):
    dedup = Deduplicator(SeenStore(tmp_path / "s.db"), max_items=1)
    _publish(dedup, _doc("a", STORY))
    _publish(dedup, _doc("e", OTHER))  # evicts "a" from the near-duplicate index
    assert dedup.check(_doc("c", REWORDED)).novelty is True
    assert len(list(dedup.store.signatures(since=0, limit=10))) == 2
    assert len(list(Deduplicator(SeenStore(tmp_path / "s.db"), max_items=1)._index)) == 1
