import json
from datetime import datetime, timedelta, timezone

import pytest

from finpulse.contract import ContractError, Document, validate_document


def good(**overrides):
    doc = {
        "schema_version": 1,
        "id": "reuters:abc123",
        "source": "reuters-rss",
        "kind": "news",
        "url": "https://www.reuters.com/markets/abc",
        "title": "Shares of $AAPL rise after earnings beat",
        "text": "Apple beat estimates.",
        "author": "Jane Doe",
        "published_at": "2024-05-01T12:00:00+02:00",
        "fetched_at": "2024-05-01T10:05:00Z",
        "lang": "en",
        "tickers": ["aapl", "$MSFT", "AAPL"],
        "parent_id": None,
        "extra": {"feed": "markets"},
    }
    doc.update(overrides)
    return doc


def problems_of(message):
    with pytest.raises(ContractError) as info:
        validate_document(message)
    return dict(info.value.problems), str(info.value)


def test_accepts_a_good_document_and_normalises_it():
    doc = validate_document(json.dumps(good()).encode())
    assert doc.published_at == datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)
    assert doc.published_at.utcoffset() == timedelta(0)
    assert doc.tickers == ["AAPL", "MSFT"]
    assert doc.content.startswith("Shares of $AAPL")


def test_round_trips_through_the_wire_form():
    doc = validate_document(good())
    assert validate_document(doc.to_json()) == doc


def test_comment_with_parent_and_minimal_fields():
    doc = validate_document(good(kind="comment", url=None, title=None, author=None, lang=None,
                                 tickers=[], extra={}, parent_id="reuters:parent"))
    assert doc.kind == "comment" and doc.parent_id == "reuters:parent"


@pytest.mark.parametrize(
    "overrides, field, fragment",
    [
        ({"published_at": "2024-05-01T12:00:00"}, "published_at", "timezone-aware"),
        ({"fetched_at": "yesterday"}, "fetched_at", "datetime"),
        ({"kind": "tweet"}, "kind", "'news' or 'comment'"),
        ({"id": "   "}, "id", "blank"),
        ({"id": ""}, "id", "at least 1"),
        ({"source": "a\nb"}, "source", "control characters"),
        ({"url": "ftp://example.com/x"}, "url", "http(s) URL"),
        ({"lang": "English"}, "lang", "ISO 639"),
        ({"tickers": ["$$$ not a ticker"]}, "tickers", "not a ticker"),
        ({"schema_version": 2}, "schema_version", "unsupported schema_version 2"),
        ({"sentiment": "positive"}, "sentiment", "unknown field"),
        ({"text": "", "title": None}, "document", "non-empty text or title"),
        ({"parent_id": "reuters:abc123"}, "document", "parent_id must differ"),
        ({"extra": {"when": {1, 2}}}, "extra.when", "not a valid JSON value"),
    ],
)
def test_rejects_each_kind_of_bad_document_with_a_precise_message(overrides, field, fragment):
    problems, message = problems_of(good(**overrides))
    assert field in problems, problems
    assert fragment in problems[field]
    assert message.startswith(f"{field}: ") or f"; {field}: " in message


def test_missing_required_field_is_named():
    doc = good()
    del doc["published_at"]
    problems, _ = problems_of(doc)
    assert problems == {"published_at": "Field required"}


@pytest.mark.parametrize(
    "raw, fragment",
    [(b"\xff\xfe{", "not UTF-8"), (b"{not json", "not JSON"), (b"[1, 2]", "must be a JSON object")],
)
def test_rejects_undecodable_payloads(raw, fragment):
    problems, _ = problems_of(raw)
    assert fragment in problems["document"]


def test_document_is_immutable():
    from pydantic import ValidationError

    doc = validate_document(good())
    before = doc.text
    with pytest.raises(ValidationError) as info:
        doc.text = "changed"  # type: ignore[misc]
    assert [e["type"] for e in info.value.errors()] == ["frozen_instance"]
    assert doc.text == before and isinstance(doc, Document)
