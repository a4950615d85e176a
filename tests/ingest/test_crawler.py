"""The crawler against a real local HTTP server, publishing into an in-memory sink.

(The same scenario against the real Kafka broker is in test_crawler_kafka.py.)
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from ingest.config import parse_config
from ingest.crawler import Crawler
from ingest.deadletter import MemoryDeadLetterSink
from ingest.metrics import IngestMetrics
from ingest.normalize import canonical_url, url_id
from ingest.producer import MemorySink
from ingest.store import SeenStore

from tests.ingest import feeds


@pytest.fixture
def site(http_server, monkeypatch):
    monkeypatch.setenv("FP_FORUM_TOKEN", "t0ken")
    feeds.install(http_server)
    return http_server


def make_crawler(site, state_dir, sink, *, good_only=False, metrics=None, dead_letters=None):
    config = parse_config(feeds.crawler_config(site.base, good_only=good_only))
    return Crawler(config=config, sink=sink, dead_letters=dead_letters or MemoryDeadLetterSink(),
                   store=SeenStore(state_dir / "seen.sqlite3"), metrics=metrics)


def uid(site, path):
    return url_id(canonical_url(site.url(path)))


def expected_first_poll(site) -> dict[str, str]:
    """id -> source of every document the first poll must publish."""
    wire = ["/articles/acme", "/articles/acme-copy", "/articles/acme-copy-2", "/private/memo", "/articles/rates",
            "/articles/gone"]
    ids = {uid(site, p): "wire" for p in wire}
    ids["wire:bad-date-1"] = "wire"
    ids[uid(site, "/articles/siemens")] = "boerse"
    ids["boerse:urn:fixture:no-link"] = "boerse"
    ids.update({f"forum:{n}": "forum" for n in (101, 102, 104, 105)})
    return ids


def check_first_poll_documents(site, docs):
    by_id = {d.id: d for d in docs}
    acme, copy1, copy2 = (by_id[uid(site, p)] for p in ("/articles/acme", "/articles/acme-copy", "/articles/acme-copy-2"))
    # first story and its chain
    assert acme.extra["novelty"] is True and acme.extra["first_story_id"] == acme.id
    assert copy1.extra["novelty"] is False and copy1.extra["first_story_id"] == acme.id
    assert copy2.extra["novelty"] is False and copy2.extra["first_story_id"] == acme.id
    assert acme.url == site.url("/articles/acme")  # utm_* removed
    assert acme.extra["text_from"] == "article" and "buyback program" in acme.text
    assert "Copyright" not in acme.text and "Home" not in acme.text  # boilerplate dropped by trafilatura
    assert acme.tickers == ["ACME", "SPY"]
    assert acme.published_at == datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert copy1.published_at == datetime(2024, 5, 1, 12, 5, tzinfo=timezone.utc)  # EDT
    assert copy2.published_at == datetime(2024, 5, 1, 16, 10, tzinfo=timezone.utc)  # naive, New York
    assert copy2.extra["published_at_raw"] == "2024-05-01T12:10:00"
    assert all(d.lang == "en" for d in (acme, copy1, copy2))
    # fallbacks
    memo = by_id[uid(site, "/private/memo")]
    assert memo.extra["article_error"] == "robots" and memo.text.startswith("Robots.txt forbids")
    assert site.hits("/private/memo") == []
    gone = by_id[uid(site, "/articles/gone")]
    assert gone.extra["article_error"] == "http_404" and gone.text == "Only a summary."
    rates = by_id[uid(site, "/articles/rates")]
    assert rates.extra["published_at_missing"] is True and rates.published_at == rates.fetched_at
    assert rates.extra["novelty"] is True
    bad_date = by_id["wire:bad-date-1"]
    assert bad_date.extra["published_at_invalid"] is True and bad_date.url is None
    # Atom, German, naive Berlin time, HTML-escaped summary
    siemens = by_id[uid(site, "/articles/siemens")]
    assert siemens.lang == "de" and siemens.text.startswith("Die Aktie von Siemens")
    assert siemens.published_at == datetime(2024, 5, 1, 7, 0, tzinfo=timezone.utc)
    assert by_id["boerse:urn:fixture:no-link"].published_at == datetime(2024, 5, 1, 7, 30, tzinfo=timezone.utc)
    # comments API
    c101, c102, c104 = by_id["forum:101"], by_id["forum:102"], by_id["forum:104"]
    assert c101.text == "Buying more $TSLA & $NVDA" and c101.author == "alice" and c101.kind == "comment"
    assert c101.tickers == ["TSLA", "NVDA"]
    assert c102.parent_id == "forum:101" and c102.published_at == datetime(2024, 5, 1, 13, 1, tzinfo=timezone.utc)
    assert c104.published_at == datetime(2024, 5, 1, 13, 3, tzinfo=timezone.utc)  # naive, New York (EDT)


def test_crawl_publishes_each_story_once_and_survives_bad_input(site, tmp_path):
    sink = MemorySink()
    metrics = IngestMetrics()
    dead = MemoryDeadLetterSink()
    with make_crawler(site, tmp_path, sink, metrics=metrics, dead_letters=dead) as crawler:
        summaries = {s.source: s for s in crawler.run_once()}
        published = [d.id for d in sink.documents]
        # every failed item and unparseable body is a dead letter; fetch failures (no body) and duplicates are not
        assert sorted((e["source"], e["reason"]) for e in dead.envelopes) == [
            ("broken-json", "malformed_json"), ("forum", "contract"), ("forum", "item_not_object"),
            ("forum", "no_url_or_id"), ("garbage", "malformed_feed"), ("latin1-json", "encoding"),
            ("wire", "empty"), ("wire", "no_url_or_id"),
        ]
        garbage = next(e for e in dead.envelopes if e["source"] == "garbage")
        assert garbage["raw"] == "\x00\x01 this is {{ not xml" and garbage["url"] == site.url("/feeds/garbage.rss")
        assert metrics.value("dead_lettered", "forum") == 3
        assert sorted(published) == sorted(expected_first_poll(site))
        assert len(published) == len(set(published))
        check_first_poll_documents(site, sink.documents)

        # per-source accounting
        wire = summaries["wire"]
        assert (wire.fetched, wire.published, wire.near_duplicate, wire.duplicate, wire.failed) == (10, 7, 2, 1, 2)
        forum = summaries["forum"]
        assert (forum.fetched, forum.published, forum.failed) == (7, 4, 3)
        for name, reason in [("flaky", "http_500"), ("hang", "timeout"), ("loop", "redirects"),
                             ("huge", "too_large"), ("huge-declared", "too_large"), ("garbage", "malformed_feed"),
                             ("broken-json", "malformed_json"), ("latin1-json", "encoding"), ("forbidden", "robots")]:
            assert summaries[name].error and summaries[name].error.startswith(reason), (name, summaries[name].error)
            assert summaries[name].published == 0
            assert metrics.value("failed", name) == 1
        assert metrics.value("published", "wire") == 7
        assert metrics.value("near_duplicate", "wire") == 2
        assert metrics.value("duplicate", "wire") == 1
        assert metrics.value("fetched", "forum") == 7
        assert len(site.hits("/api/comments")) == 3  # three pages via the cursor

        # second poll: nothing new, the feed answers 304, the flaky feed has recovered
        second = {s.source: s for s in crawler.run_once()}
        assert second["wire"].fetched == 0
        assert site.hits("/feeds/news.rss")[-1].headers.get("if-none-match") == '"v1"'
        assert second["boerse"].duplicate == 2 and second["boerse"].published == 0
        assert second["forum"].duplicate == 4 and second["forum"].published == 0
        assert second["flaky"].published == 1 and second["flaky"].error is None
        assert [d.source for d in sink.documents[len(published):]] == ["flaky"]
        assert len(site.hits("/articles/acme")) == 1  # a known story's page is never fetched again

    # restart with the same state dir: nothing is republished
    before = len(sink.documents)
    with make_crawler(site, tmp_path, sink, good_only=True) as again:
        restarted = {s.source: s for s in again.run_once()}
    assert len(sink.documents) == before
    assert restarted["boerse"].duplicate == 2 and restarted["forum"].duplicate == 4


def test_failed_delivery_is_not_marked_seen(site, tmp_path):
    # Every send fails (including the Sink's own retries): nothing may be remembered.
    sink = MemorySink(fail_next=10_000)
    sink.retries = 1
    with make_crawler(site, tmp_path, sink, good_only=True) as crawler:
        first = {s.source: s for s in crawler.run_once()}
        assert sink.documents == []
        assert first["wire"].published == 0 and first["wire"].failed >= 7
        sink.fail_next = 0
        second = {s.source: s for s in crawler.run_once()}
    # the feed's ETag was not stored after the failed poll, so no 304 hid the stories
    assert second["wire"].published == 7
    assert sorted(d.id for d in sink.documents) == sorted(expected_first_poll(site))


def run_until_first_poll_published(crawler, sink, site):
    """Run the daemon loop until the first poll's documents are in the sink, then stop it."""
    import threading

    done = threading.Event()

    def stop_when_published():
        while len(sink.documents) < len(expected_first_poll(site)):
            if done.wait(0.05):
                return
        crawler.stop()

    threading.Thread(target=stop_when_published, daemon=True).start()
    try:
        crawler.run()
    finally:
        done.set()


def test_run_loop_stops_on_request(site, tmp_path):
    sink = MemorySink()
    with make_crawler(site, tmp_path, sink, good_only=True) as crawler:
        for source in crawler.sources:
            source.interval = 0.05
        run_until_first_poll_published(crawler, sink, site)
    assert sorted(d.id for d in sink.documents) == sorted(expected_first_poll(site))


def test_an_error_while_processing_one_poll_does_not_end_the_daemon(site, tmp_path, monkeypatch):
    sink = MemorySink()
    with make_crawler(site, tmp_path, sink, good_only=True) as crawler:
        for source in crawler.sources:
            source.interval = 0.05
        real_check = crawler.dedup.check
        calls = {"n": 0}

        def broken_once(doc):
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("simulated store failure")
            return real_check(doc)

        monkeypatch.setattr(crawler.dedup, "check", broken_once)
        run_until_first_poll_published(crawler, sink, site)
        internal = sum(crawler.metrics.value("failed", s.name, "internal") for s in crawler.sources)
        assert internal == 1
    assert sorted(d.id for d in sink.documents) == sorted(expected_first_poll(site))


def test_undelivered_dead_letters_are_counted_and_retried_next_poll(site, tmp_path):
    # The dead-letter sink fails for good on the first poll: the crawler carries on, counts the
    # loss, and does not store the feed's validators, so the next poll meets the bad items again.
    dead = MemoryDeadLetterSink(fail_next=10_000)
    dead.sink.retries = 0
    metrics = IngestMetrics()
    sink = MemorySink()
    with make_crawler(site, tmp_path, sink, good_only=True, metrics=metrics, dead_letters=dead) as crawler:
        first = {s.source: s for s in crawler.run_once()}
        assert first["wire"].published == 7 and first["wire"].dead_lettered == 0
        assert metrics.value("dead_letter_failed", "wire") == 2 and metrics.value("dead_letter_failed", "forum") == 3
        dead.sink.fail_next = 0
        second = {s.source: s for s in crawler.run_once()}
    assert site.hits("/feeds/news.rss")[-1].headers.get("if-none-match") is None  # no 304 hid the bad items
    assert second["wire"].dead_lettered == 2 and second["forum"].dead_lettered == 3
    assert sorted((e["source"], e["reason"]) for e in dead.envelopes) == [
        ("forum", "contract"), ("forum", "item_not_object"), ("forum", "no_url_or_id"),
        ("wire", "empty"), ("wire", "no_url_or_id"),
    ]
    assert len(sink.documents) == len(expected_first_poll(site))  # documents were not published twice


def test_daemon_polls_through_apscheduler_one_job_per_source(site, tmp_path, monkeypatch):
    from apscheduler.schedulers.background import BackgroundScheduler

    jobs = []
    real_add_job = BackgroundScheduler.add_job

    def recording_add_job(self, func, trigger=None, **kwargs):
        jobs.append((kwargs["id"], trigger, kwargs["seconds"]))
        return real_add_job(self, func, trigger, **kwargs)

    monkeypatch.setattr(BackgroundScheduler, "add_job", recording_add_job)
    sink = MemorySink()
    with make_crawler(site, tmp_path, sink, good_only=True) as crawler:
        for source in crawler.sources:
            source.interval = 0.05
        run_until_first_poll_published(crawler, sink, site)
    assert sorted(jobs) == sorted((s.name, "interval", 0.05) for s in crawler.sources)
    assert sorted(d.id for d in sink.documents) == sorted(expected_first_poll(site))


def test_a_dead_broker_costs_one_blocked_send_per_poll_not_one_per_document(site, tmp_path):
    from finpulse.settings import Settings
    from ingest.producer import KafkaSink

    # Nothing listens on port 1: metadata never arrives, so the first send of a batch blocks for
    # max_block_ms. The rest of that batch must fail at once instead of blocking one by one.
    sink = KafkaSink(settings=Settings(kafka_bootstrap="127.0.0.1:1"), topic="t", ensure_topic=False,
                     max_block_ms=200, api_version=(2, 6))
    calls = {"n": 0}
    real_send = sink._producer.send

    def counting_send(*args, **kwargs):
        calls["n"] += 1
        return real_send(*args, **kwargs)

    sink._producer.send = counting_send
    with make_crawler(site, tmp_path, sink, good_only=True) as crawler:
        summaries = {s.source: s for s in crawler.run_once()}
        assert all(s.published == 0 for s in summaries.values())
        assert summaries["forum"].failed == 4 + 3  # 4 documents not delivered + 3 bad items (dead letters)
        with_documents = sum(1 for s in summaries.values() if s.failed)
        assert calls["n"] == with_documents == 3  # one blocked send per poll with documents
        assert crawler.store.count_seen() == 0  # nothing marked seen: the next poll tries again


def _feed(*items: tuple[str, str, str]) -> str:
    entries = "".join(f"<item><title>{title}</title><link>{link}</link><description>{text}</description>"
                      f"<pubDate>Wed, 01 May 2024 12:00:00 GMT</pubDate></item>" for title, link, text in items)
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{entries}</channel></rss>'


def test_the_same_story_under_two_tickers_is_one_document_with_both(http_server, tmp_path):
    """Two per-ticker feeds carry the same article (one id, its canonical URL). Ingest's dedup by id used to drop
    the second feed's tickers; the story is now published again with the union (consumers upsert by id)."""
    base = http_server.base
    story = ("Apple and Microsoft sign cloud deal", f"{base}/articles/deal",
             "The two companies agreed a ten-year cloud partnership worth billions of dollars.")
    other = ("Rates on hold", f"{base}/articles/rates", "The central bank kept its policy rate unchanged again.")
    http_server.route("/robots.txt", (200, {"Content-Type": "text/plain"}, "User-agent: *\n"))
    http_server.route("/feeds/aapl.rss", (200, {"Content-Type": "application/rss+xml"}, _feed(story)))
    http_server.route("/feeds/msft.rss", (200, {"Content-Type": "application/rss+xml"}, _feed(story, story, other)))
    sources = [{"name": "aapl-feed", "type": "rss", "kind": "news", "url": f"{base}/feeds/aapl.rss",
                "tickers": ["AAPL"], "fetch_articles": False},
               {"name": "msft-feed", "type": "rss", "kind": "news", "url": f"{base}/feeds/msft.rss",
                "tickers": ["MSFT"], "fetch_articles": False}]
    config = parse_config({"http": dict(feeds.FAST_HTTP), "workers": 1, "sources": sources})
    sink = MemorySink()
    store = SeenStore(tmp_path / "seen.sqlite3")
    with Crawler(config=config, sink=sink, dead_letters=MemoryDeadLetterSink(), store=store) as crawler:
        crawler.run_once([s for s in crawler.sources if s.name == "aapl-feed"])
        crawler.run_once([s for s in crawler.sources if s.name == "msft-feed"])
        deal = uid(http_server, "/articles/deal")
        published = [d for d in sink.documents if d.id == deal]
        assert [sorted(d.tickers) for d in published] == [["AAPL"], ["AAPL", "MSFT"]]
        assert published[1].extra["novelty"] is True and published[1].extra["first_story_id"] == deal
        assert store.seen_tickers(deal) == ("AAPL", "MSFT")
        # Polled again: nothing new to add, nothing published.
        before = len(sink.documents)
        crawler.run_once()
        assert len(sink.documents) == before


def test_two_records_of_one_id_in_one_poll_are_one_document_with_both_tickers(http_server, tmp_path):
    from ingest.crawler import PollSummary
    from ingest.document import build_document

    now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    config = parse_config({"http": dict(feeds.FAST_HTTP), "workers": 1, "sources": [
        {"name": "s", "type": "rss", "kind": "news", "url": f"{http_server.base}/feeds/none.rss"}]})
    docs = [build_document(id="story-1", source="s", kind="news", fetched_at=now, published_at=now,
                           title="Apple and Microsoft sign cloud deal", text="A ten-year cloud partnership.",
                           tickers=[t], detect_lang=False) for t in ("AAPL", "MSFT")]
    with Crawler(config=config, sink=MemorySink(), dead_letters=MemoryDeadLetterSink(),
                 store=SeenStore(tmp_path / "seen.sqlite3")) as crawler:
        batch = crawler._novel(docs, PollSummary("s"))
    assert [(d.id, sorted(d.tickers)) for d, _ in batch] == [("story-1", ["AAPL", "MSFT"])]
