from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from finpulse.contract import ContractError
from ingest.document import build_document, get_path
from ingest.normalize import resolve_timezone

FETCHED = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def _build(**kw):
    base = dict(id="s:1", source="s", kind="news", fetched_at=FETCHED, title="Acme &amp; Co beat estimates")
    base.update(kw)
    return build_document(**base)


def test_normalises_fields_and_keeps_raw_time():
    doc = _build(
        text="<p>Revenue rose; $acme and $TSLA moved.</p>",
        published_raw="2024-05-01 07:30:00",
        tz=resolve_timezone("America/New_York"),
        tickers=["MSFT"],
        author="  Jane   Doe ",
    )
    assert doc.title == "Acme & Co beat estimates"
    assert doc.text == "Revenue rose; $acme and $TSLA moved."
    assert doc.published_at == datetime(2024, 5, 1, 11, 30, tzinfo=timezone.utc)
    assert doc.extra["published_at_raw"] == "2024-05-01 07:30:00"
    assert doc.tickers == ["ACME", "TSLA", "MSFT"]
    assert doc.author == "Jane Doe"
    assert doc.lang == "en"


def test_missing_and_invalid_dates_fall_back_to_fetched_at_with_a_flag():
    missing = _build(text="x")
    assert missing.published_at == FETCHED and missing.extra["published_at_missing"] is True
    invalid = _build(text="x", published_raw="not a date")
    assert invalid.published_at == FETCHED and invalid.extra["published_at_invalid"] is True
    assert invalid.extra["published_at_raw"] == "not a date"


def test_far_future_dates_are_clamped():
    future = (FETCHED + timedelta(days=2)).isoformat()
    doc = _build(text="x", published_raw=future)
    assert doc.published_at == FETCHED and doc.extra["published_at_clamped"] is True
    near = _build(text="x", published_raw=(FETCHED + timedelta(minutes=5)).isoformat())
    assert "published_at_clamped" not in near.extra


def test_contract_failures_raise():
    with pytest.raises(ContractError) as err:
        _build(title="   ", text="<p> </p>")
    assert any("non-empty" in reason for _, reason in err.value.problems)
    with pytest.raises(ContractError):
        _build(text="x", url="javascript:alert(1)")


def test_get_path():
    data = {"data": {"items": [{"id": 1, "user": {"name": "a"}}]}}
    assert get_path(data, "data.items.0.user.name") == "a"
    assert get_path(data, "data.items.5.id") is None
    assert get_path(data, "data.missing.x") is None
    assert get_path(data, "") is data
