from __future__ import annotations

import pytest

from finpulse.contract import Document
from ingest.config import RssConfig
from ingest.errors import ParseError
from ingest.sources import RssSource

@pytest.fixture
def make(source_factory):
    def factory(path: str, **cfg) -> RssSource:
        return source_factory(RssConfig, path, name="t", type="rss", kind="news", fetch_articles=False, **cfg)

    return factory


def _feed(encoding: str, title: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="{encoding}"?><rss version="2.0"><channel><title>x</title>'
        f"<item><title>{title}</title><link>http://127.0.0.1/a</link>"
        "<pubDate>Wed, 01 May 2024 12:00:00 +0200</pubDate></item></channel></rss>"
    ).encode("latin-1")


def test_declared_latin1_feed_is_decoded(http_server, make):
    http_server.route("/l1.rss", (200, {"Content-Type": "application/rss+xml"}, _feed("iso-8859-1", "Caf\u00e9 cr\u00e8me")))
    [doc] = list(make("/l1.rss").poll())
    assert isinstance(doc, Document) and doc.title == "Caf\u00e9 cr\u00e8me"
    assert doc.published_at.isoformat() == "2024-05-01T10:00:00+00:00"


def test_feed_lying_about_its_encoding_is_still_read(http_server, make):
    # Declares UTF-8, is Latin-1: feedparser falls back; the item is published, not dropped.
    http_server.route("/liar.rss", (200, {"Content-Type": "application/rss+xml"}, _feed("utf-8", "Caf\u00e9")))
    [doc] = list(make("/liar.rss").poll())
    # Not "Caf\ufffd" (the bytes dropped) nor "CafÃ©" (decoded twice): the letter the feed meant.
    assert isinstance(doc, Document) and doc.title == "Caf\u00e9"


def test_truncated_feed_keeps_recovered_entries(http_server, make):
    body = _feed("utf-8", "Complete item")[:-30] + b"<item><title>half"
    http_server.route("/cut.rss", (200, {"Content-Type": "application/rss+xml"}, body))
    items = list(make("/cut.rss").poll())
    assert any(isinstance(i, Document) and i.title == "Complete item" for i in items)


def test_html_page_instead_of_feed_is_a_parse_error(http_server, make):
    body = b"<html><body><p>Not a feed</p></body></html>"
    http_server.route("/page", (200, {"Content-Type": "text/html"}, body))
    with pytest.raises(ParseError) as err:
        list(make("/page").poll())
    # the crawler dead-letters the whole body with this reason and URL
    assert err.value.reason == "malformed_feed" and err.value.raw == body and err.value.url.endswith("/page")


def test_well_formed_xml_that_is_no_feed_is_a_parse_error(http_server, make):
    body = b'<?xml version="1.0"?><page><p>Not a feed</p></page>'
    http_server.route("/page.xml", (200, {"Content-Type": "application/xml"}, body))
    with pytest.raises(ParseError) as err:
        list(make("/page.xml").poll())
    assert err.value.reason == "not_a_feed" and err.value.raw == body


def test_an_empty_feed_is_no_error(http_server, make):
    body = b'<?xml version="1.0"?><rss version="2.0"><channel><title>x</title></channel></rss>'
    http_server.route("/empty.rss", (200, {"Content-Type": "application/rss+xml"}, body))
    assert list(make("/empty.rss").poll()) == []


def test_max_items_bounds_a_poll(http_server, make):
    entries = "".join(f"<item><title>n{i}</title><guid>g{i}</guid></item>" for i in range(10))
    body = f'<?xml version="1.0"?><rss version="2.0"><channel><title>x</title>{entries}</channel></rss>'.encode()
    http_server.route("/many.rss", (200, {}, body))
    assert len(list(make("/many.rss", max_items=3).poll())) == 3


def test_undefined_entity_keeps_its_semicolon(http_server, make):
    body = (b'<?xml version="1.0"?><rss version="2.0"><channel><title>x</title><item><title>AT&amp;T &foo; up</title>'
            b"<description>Q3 &foo; beat &eacute;tait &amp;amp; more</description><guid>g1</guid></item>"
            b"</channel></rss>")
    http_server.route("/ent.rss", (200, {"Content-Type": "application/rss+xml"}, body))
    [doc] = list(make("/ent.rss").poll())
    assert doc.title == "AT&T &foo; up"
    assert doc.text == "Q3 &foo; beat \u00e9tait & more"
