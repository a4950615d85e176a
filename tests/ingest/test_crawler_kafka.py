"""End to end: local HTTP server -> crawler -> real Kafka broker -> consumer."""

from __future__ import annotations

import base64
import json
from collections import Counter
from datetime import datetime, timedelta

from ingest.config import parse_config
from ingest.crawler import Crawler
from ingest.metrics import IngestMetrics
from ingest.normalize import canonical_url, url_id

from tests.ingest import feeds
from tests.ingest.kafka_utils import consume_all, consume_dead_letters
from tests.ingest.test_crawler import check_first_poll_documents, expected_first_poll


def test_crawl_into_kafka_exactly_once_each_and_restart(http_server, stack, unique_topic, tmp_path, monkeypatch):
    monkeypatch.setenv("FP_FORUM_TOKEN", "t0ken")
    feeds.install(http_server)
    config = parse_config(feeds.crawler_config(http_server.base))

    with Crawler.from_settings(config, settings=stack, topic=unique_topic, dead_letter_topic=f"{unique_topic}.dead",
                               state_dir=tmp_path, partitions=3) as crawler:
        crawler.run_once()
        crawler.run_once()  # the flaky feed recovers; everything else is 304 or already seen

    got = consume_all(stack, unique_topic)
    ids = [doc.id for _, doc in got]
    expected = dict(expected_first_poll(http_server))
    expected[url_id(canonical_url(http_server.url("/articles/rates-flaky")))] = "flaky"
    assert Counter(ids) == Counter(expected.keys())  # exactly the expected documents, once each
    assert all(key == doc.id.encode() for key, doc in got)  # keyed by id
    assert {doc.id: doc.source for _, doc in got} == expected
    check_first_poll_documents(http_server, [doc for _, doc in got])

    # A new crawler on the same state dir (the Atom feed and the API have no validators, so
    # they are re-read): nothing is republished.
    good = parse_config(feeds.crawler_config(http_server.base, good_only=True))
    with Crawler.from_settings(good, settings=stack, topic=unique_topic, dead_letter_topic=f"{unique_topic}.dead",
                               state_dir=tmp_path) as again:
        summaries = {s.source: s for s in again.run_once()}
    assert sum(s.published for s in summaries.values()) == 0
    assert summaries["boerse"].duplicate == 2 and summaries["forum"].duplicate == 4
    assert len(consume_all(stack, unique_topic)) == len(got)


def _bad_input_site(server) -> dict[str, bytes]:
    """A feed and an API with one good and some bad items, and two unparseable bodies; returns the bodies."""
    good = feeds.rss_item(title="Good story", guid="good-1", date=feeds.RSS_DATE, summary="A perfectly fine summary.")
    long_author = ('<item><title>Long author</title><guid isPermaLink="false">bad-1</guid>'
                   f"<author>{'x' * 600}</author><description>Some text.</description></item>")
    server.route("/feeds/mixed.rss", (200, {"Content-Type": "application/rss+xml"}, feeds.rss([good, long_author])))
    page = {"data": [
        {"id": 1, "body": "A fine comment", "created_at": "2024-05-01T13:00:00Z"},
        {"id": 2, "body": "", "created_at": "2024-05-01T13:01:00Z"},
        ["a", "list"],
    ]}
    server.route("/api/mixed.json", (200, {"Content-Type": "application/json"}, json.dumps(page).encode()))
    bodies = {
        "truncated": b'{"data": [{"id": 1, "body": "cut',
        "latin1": '{"data": [{"id": 1, "body": "Caf\u00e9"}]}'.encode("latin-1"),
    }
    server.route("/api/truncated.json", (200, {"Content-Type": "application/json"}, bodies["truncated"]))
    server.route("/api/latin1.json", (200, {"Content-Type": "application/json"}, bodies["latin1"]))
    return bodies


def _bad_input_config(base: str) -> dict:
    api = {"type": "json", "kind": "comment", "mapping": {"items": "data", "id": "id", "text": "body", "time": "created_at"}}
    return {"http": dict(feeds.FAST_HTTP), "workers": 4, "sources": [
        {"name": "mixed-rss", "type": "rss", "kind": "news", "url": f"{base}/feeds/mixed.rss", "fetch_articles": False},
        {"name": "mixed-api", "url": f"{base}/api/mixed.json", **api},
        {"name": "truncated-api", "url": f"{base}/api/truncated.json", **api},
        {"name": "latin1-api", "url": f"{base}/api/latin1.json", **api},
    ]}


def test_bad_input_goes_to_the_dead_letter_topic(http_server, stack, unique_topic, tmp_path):
    dead_topic = f"{unique_topic}.dead"
    bodies = _bad_input_site(http_server)
    http_server.route("/robots.txt", (200, {"Content-Type": "text/plain"}, "User-agent: *\nAllow: /\n"))
    config = parse_config(_bad_input_config(http_server.base))
    metrics = IngestMetrics()
    with Crawler.from_settings(config, settings=stack, topic=unique_topic, dead_letter_topic=dead_topic,
                               state_dir=tmp_path, metrics=metrics) as crawler:
        first = {s.source: s for s in crawler.run_once()}
        # Nothing changed: the bad items and bodies are met again but not dead-lettered twice.
        second = {s.source: s for s in crawler.run_once()}

    assert {name: s.dead_lettered for name, s in first.items()} == {
        "mixed-rss": 1, "mixed-api": 2, "truncated-api": 1, "latin1-api": 1}
    assert sum(s.dead_lettered for s in second.values()) == 0
    assert second["mixed-api"].failed == 2  # still counted as failed items each poll
    assert metrics.value("dead_lettered", "mixed-api", "contract") == 1
    assert metrics.value("dead_lettered", "mixed-api") == 2
    assert metrics.value("dead_letter_failed", "mixed-api") == 0
    assert "dead_lettered=2" in first["mixed-api"].line()

    docs = [doc for _, doc in consume_all(stack, unique_topic)]
    assert sorted(d.id for d in docs) == ["mixed-api:1", "mixed-rss:good-1"]  # good ones, once each

    letters = consume_dead_letters(stack, dead_topic)
    assert all(key == env["source"].encode() for key, env in letters)  # keyed by source
    by = {(env["source"], env["reason"]): env for _, env in letters}
    assert len(by) == len(letters) == 5
    for env in by.values():
        assert env["stage"] == "ingest"
        assert datetime.fromisoformat(env["at"]).utcoffset() == timedelta(0)

    rss_bad = by[("mixed-rss", "contract")]
    assert rss_bad["detail"] == "author: String should have at most 500 characters"
    assert json.loads(rss_bad["raw"])["id"] == "bad-1" and json.loads(rss_bad["raw"])["author"] == "x" * 600
    assert rss_bad["url"] == http_server.url("/feeds/mixed.rss") and rss_bad["raw_truncated"] is False

    empty = by[("mixed-api", "contract")]
    assert empty["detail"] == "document: a document needs a non-empty text or title"
    assert empty["raw"] == '{"id": 2, "body": "", "created_at": "2024-05-01T13:01:00Z"}'
    assert empty["url"] == http_server.url("/api/mixed.json")
    not_object = by[("mixed-api", "item_not_object")]
    assert not_object["detail"] == "item is a list" and not_object["raw"] == '["a", "list"]'

    truncated = by[("truncated-api", "malformed_json")]
    assert truncated["detail"] == "malformed JSON: Unterminated string starting at: line 1 column 29 (char 28)"
    assert truncated["raw"] == bodies["truncated"].decode() and "raw_base64" not in truncated
    assert truncated["url"] == http_server.url("/api/truncated.json")

    latin1 = by[("latin1-api", "encoding")]
    assert latin1["detail"] == "JSON body is not UTF-8 and declares no charset"
    assert latin1["raw"] == '{"data": [{"id": 1, "body": "Caf\ufffd"}]}'
    assert base64.b64decode(latin1["raw_base64"]) == bodies["latin1"]
    assert latin1["raw_bytes"] == len(bodies["latin1"]) and latin1["raw_truncated"] is False
