from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from finpulse.contract import Document
from ingest.config import JsonApiConfig
from ingest.errors import ParseError
from ingest.sources import JsonApiSource
from ingest.sources.jsonapi import decode_json

@pytest.fixture
def make(source_factory):
    def factory(path: str, **cfg) -> JsonApiSource:
        return source_factory(JsonApiConfig, path, name="api", type="json", kind="comment", **cfg)

    return factory


def _query(request, key):
    return parse_qs(urlsplit(request.path).query).get(key, [None])[0]


def test_page_number_pagination_until_empty_page(http_server, make):
    def pages(request):
        page = int(_query(request, "p"))
        items = [{"id": f"{page}-{i}", "msg": f"page {page} item {i}", "ts": "2024-05-01T12:00:00Z"} for i in range(2)]
        return (200, {"Content-Type": "application/json"}, json.dumps({"results": items if page <= 3 else []}).encode())

    http_server.route("/paged", pages)
    source = make("/paged", mapping={"items": "results", "text": "msg", "time": "ts"},
                  pagination={"type": "page", "page_param": "p", "start_page": 1, "max_pages": 10},
                  params={"symbol": "AAPL"})
    docs = list(source.poll())
    assert [d.id for d in docs] == [f"api:{p}-{i}" for p in (1, 2, 3) for i in (0, 1)]
    assert [_query(r, "p") for r in http_server.hits("/paged")] == ["1", "2", "3", "4"]
    assert all(_query(r, "symbol") == "AAPL" for r in http_server.hits("/paged"))


def test_max_pages_and_cursor_loops_are_bounded(http_server, make):
    body = json.dumps({"items": [{"id": 1, "text": "x y z"}], "next": "same"}).encode()
    http_server.route("/loop", (200, {"Content-Type": "application/json"}, body))
    source = make("/loop", mapping={"items": "items"},
                  pagination={"type": "cursor", "cursor_path": "next", "max_pages": 50})
    items = list(source.poll())
    assert len(http_server.hits("/loop")) == 2  # first page + the one cursor; a repeated cursor ends it
    assert len([i for i in items if isinstance(i, Document)]) == 1  # the same item twice is one document


def test_wrong_shape_is_a_parse_error(http_server, make):
    http_server.route("/obj", (200, {}, b'{"items": {"not": "a list"}}'))
    with pytest.raises(ParseError):
        list(make("/obj", mapping={"items": "items"}).poll())


def test_decode_json_charsets():
    assert decode_json('{"t": "caf\u00e9"}'.encode("utf-16")) == {"t": "caf\u00e9"}
    assert decode_json('{"t": "caf\u00e9"}'.encode("latin-1"), "iso-8859-1") == {"t": "caf\u00e9"}
    with pytest.raises(ParseError):
        decode_json(b"   ")
    with pytest.raises(ParseError):
        decode_json('{"t": "caf\u00e9"}'.encode("latin-1"))
