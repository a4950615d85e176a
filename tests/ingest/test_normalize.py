from __future__ import annotations

from datetime import datetime, timezone

import pytest

from ingest.normalize import (
    canonical_url,
    content_key,
    detect_language,
    extract_cashtags,
    merge_tickers,
    native_id,
    normalize_text,
    parse_datetime,
    resolve_timezone,
    strip_html,
    url_id,
)
from ingest.errors import ConfigError


def test_strip_html_drops_tags_scripts_and_unescapes():
    html = "<p>Shares of <b>Acme</b> &amp; Co rose</p><script>var x = '<b>';</script><div>5%&nbsp;today</div>"
    assert strip_html(html) == "Shares of Acme & Co rose 5% today"
    assert strip_html("AT&amp;amp;T   jumps\n\n  higher") == "AT&T jumps higher"


def test_normalize_text_collapses_whitespace_and_entities():
    assert normalize_text("  a\t\tb\r\n c &lt;3 &#36;AAPL ") == "a b c <3 $AAPL"
    assert normalize_text(None) == ""
    # NFC: a decomposed e + combining acute becomes one code point
    assert normalize_text("cafe\u0301") == "caf\u00e9"


def test_canonical_url_removes_tracking_and_sorts_query():
    a = canonical_url("HTTPS://News.Example.COM:443/markets/story?utm_source=tw&b=2&a=1&fbclid=x#comments")
    b = canonical_url("https://news.example.com/markets/story?a=1&b=2&gclid=abc")
    assert a == b == "https://news.example.com/markets/story?a=1&b=2"
    assert canonical_url("http://example.com") == "http://example.com/"
    assert canonical_url("http://example.com:8080/x") == "http://example.com:8080/x"
    assert canonical_url("ftp://example.com/x") is None
    assert canonical_url("not a url") is None
    assert canonical_url("http://user:pw@example.com/") is None


def test_ids_are_stable_and_distinct():
    u1 = canonical_url("https://example.com/a?utm_medium=email")
    u2 = canonical_url("https://EXAMPLE.com/a#top")
    assert url_id(u1) == url_id(u2)
    assert len(url_id(u1)) == 64
    assert url_id(u1) != url_id(canonical_url("https://example.com/b"))
    assert native_id("reddit", 123) == "reddit:123"
    assert native_id("reddit", " a\nb ") == "reddit:a b"
    long = native_id("src", "x" * 600)
    assert long.startswith("src:sha256:") and len(long) <= 512


def test_cashtags():
    text = "$HEXO target price is $2.21 vs US$5; watching $tsla, $BRK.B and $AAPL again ($AAPL)"
    assert extract_cashtags(text) == ["HEXO", "TSLA", "BRK.B", "AAPL"]
    assert extract_cashtags("no tags, $ 5 and $12k") == []
    assert merge_tickers(["aapl"], "$TSLA $MSFT", ["AAPL", "bad ticker!"], None) == ["AAPL", "TSLA", "MSFT"]


def test_language_detection_is_deterministic():
    en = "Apple shares rallied after the company reported record quarterly revenue and raised guidance."
    de = "Die Aktie von Siemens ist nach den Quartalszahlen deutlich gestiegen, sagen die Analysten."
    assert detect_language(en) == "en"
    assert detect_language(de) == "de"
    assert [detect_language(en) for _ in range(3)] == ["en"] * 3
    assert detect_language("$AAPL $TSLA") is None  # cashtags only: nothing to judge
    assert detect_language("") is None


def test_language_detection_on_short_financial_texts_including_chinese():
    import csv
    from pathlib import Path

    from ingest.normalize import detect_languages

    with (Path(__file__).parent / "data" / "lang_short_financial.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))  # 12 short headlines in each of 10 languages, written for this test
    from ingest import normalize

    got = detect_languages([r["text"] for r in rows], batch_size=7)  # batched scoring, several batches
    ident = normalize._identifier()
    reference = []  # py3langid's own per-text classify: the batching must not change any answer
    for r in rows:
        lang, confidence = ident.classify(normalize._lang_input(r["text"]))
        reference.append(lang if confidence >= normalize.LANG_MIN_CONFIDENCE else None)
    assert got == reference
    wrong = [(r["lang"], g, r["text"]) for r, g in zip(rows, got) if g is not None and g != r["lang"]]
    unknown = [r["text"] for r, g in zip(rows, got) if g is None]
    # Measured: 118 of 120 right, 1 wrong (a Russian headline read as Uzbek), 1 left unknown.
    assert len(wrong) <= 1 and len(unknown) <= 2, (wrong, unknown)
    for lang in ("zh", "ja"):  # langdetect, the detector before, read Chinese headlines as Korean
        assert all(g == lang for r, g in zip(rows, got) if r["lang"] == lang)


@pytest.mark.parametrize(
    ("raw", "tz", "expected"),
    [
        ("2024-05-01T12:00:00Z", "UTC", datetime(2024, 5, 1, 12, tzinfo=timezone.utc)),
        ("2024-05-01T14:00:00+02:00", "UTC", datetime(2024, 5, 1, 12, tzinfo=timezone.utc)),
        ("Wed, 01 May 2024 08:00:00 EDT", "UTC", datetime(2024, 5, 1, 12, tzinfo=timezone.utc)),
        ("Wed, 01 May 2024 12:00:00 GMT", "America/New_York", datetime(2024, 5, 1, 12, tzinfo=timezone.utc)),
        # naive: interpreted in the source's zone, with DST (EDT in May, EST in January)
        ("2024-05-01 08:00:00", "America/New_York", datetime(2024, 5, 1, 12, tzinfo=timezone.utc)),
        ("2024-01-15 08:00:00", "America/New_York", datetime(2024, 1, 15, 13, tzinfo=timezone.utc)),
        ("2024-05-01 08:00:00", "UTC", datetime(2024, 5, 1, 8, tzinfo=timezone.utc)),
        ("May 1, 2024 5:00 PM", "Asia/Tokyo", datetime(2024, 5, 1, 8, tzinfo=timezone.utc)),
        (1714564800, "UTC", datetime(2024, 5, 1, 12, tzinfo=timezone.utc)),
        ("1714564800000", "UTC", datetime(2024, 5, 1, 12, tzinfo=timezone.utc)),
    ],
)
def test_parse_datetime_to_utc(raw, tz, expected):
    parsed = parse_datetime(raw, default_tz=resolve_timezone(tz))
    assert parsed == expected
    assert parsed.tzinfo == timezone.utc


@pytest.mark.parametrize("raw", ["", "   ", "yesterday-ish", "31/31/2024 99:99", None])
def test_parse_datetime_rejects_garbage(raw):
    assert parse_datetime(raw) is None


def test_unknown_timezone_is_a_config_error():
    with pytest.raises(ConfigError):
        resolve_timezone("Mars/Olympus_Mons")


def test_content_key_ignores_case_and_punctuation():
    assert content_key("Acme Beats!", "Shares  up 5%.") == content_key("acme beats", "shares up 5")
