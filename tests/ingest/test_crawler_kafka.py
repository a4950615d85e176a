"""End to end: local HTTP server -> crawler -> real Kafka broker -> consumer."""

from __future__ import annotations

from collections import Counter

from ingest.config import parse_config
from ingest.crawler import Crawler
from ingest.normalize import canonical_url, url_id

from tests.ingest import feeds
from tests.ingest.kafka_utils import consume_all
from tests.ingest.test_crawler import check_first_poll_documents, expected_first_poll


def test_crawl_into_kafka_exactly_once_each_and_restart(http_server, stack, unique_topic, tmp_path, monkeypatch):
    monkeypatch.setenv("FP_FORUM_TOKEN", "t0ken")
    feeds.install(http_server)
    config = parse_config(feeds.crawler_config(http_server.base))

    with Crawler.from_settings(config, settings=stack, topic=unique_topic, state_dir=tmp_path, partitions=3) as crawler:
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
    with Crawler.from_settings(good, settings=stack, topic=unique_topic, state_dir=tmp_path) as again:
        summaries = {s.source: s for s in again.run_once()}
    assert sum(s.published for s in summaries.values()) == 0
    assert summaries["boerse"].duplicate == 2 and summaries["forum"].duplicate == 4
    assert len(consume_all(stack, unique_topic)) == len(got)
