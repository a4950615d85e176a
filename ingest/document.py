"""Turning a source's raw fields into a contract :class:`~finpulse.contract.Document`."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from finpulse.contract import Document, validate_document
from ingest.normalize import (
    detect_language,
    extract_cashtags,
    merge_tickers,
    normalize_text,
    parse_datetime,
    strip_html,
)

# Feeds lie about time zones; a story dated a few minutes ahead is clock skew, one dated days
# ahead is a wrong zone or a typo, and would sort above everything in a trend for days.
FUTURE_TOLERANCE = timedelta(minutes=15)


def build_document(
    *,
    id: str,
    source: str,
    kind: str,
    fetched_at: datetime,
    url: str | None = None,
    title: str | None = None,
    text: str | None = None,
    html: bool = True,
    author: str | None = None,
    published_raw: Any = None,
    published_at: datetime | None = None,
    tz: tzinfo = timezone.utc,
    tickers: Any = (),
    parent_id: str | None = None,
    lang: str | None = None,
    detect_lang: bool = True,
    clamp_future: bool = True,
    extra: dict[str, Any] | None = None,
) -> Document:
    """Normalise and validate; raise :class:`~finpulse.contract.ContractError` if it is not a document.

    ``published_raw`` is kept verbatim in ``extra["published_at_raw"]`` and parsed (naive times
    in ``tz``) unless ``published_at`` is given, which is then used as is. A missing or
    unparseable date falls back to ``fetched_at`` with ``extra["published_at_missing"]`` or
    ``extra["published_at_invalid"]`` set, so consumers can tell a real time from a guess.
    """
    clean = strip_html if html else normalize_text
    title_n = strip_html(title) if title else None
    text_n = clean(text) if text else ""
    extra = dict(extra or {})
    published = published_at
    if published_raw is not None and str(published_raw).strip():
        extra["published_at_raw"] = str(published_raw)
        if published is None:
            published = parse_datetime(published_raw, default_tz=tz)
            if published is None:
                extra["published_at_invalid"] = True
    elif published is None:
        extra["published_at_missing"] = True
    if published is None:
        published = fetched_at
    elif clamp_future and published > fetched_at + FUTURE_TOLERANCE:
        extra["published_at_clamped"] = True
        published = fetched_at
    body = " ".join(p for p in (title_n, text_n) if p)
    if lang is None and detect_lang:
        lang = detect_language(body)
    # Cashtags already have ticker syntax; only the configured/column tickers need checking.
    all_tickers = list(dict.fromkeys(extract_cashtags(body) + merge_tickers(tickers)))
    message = {
        "id": id,
        "source": source,
        "kind": kind,
        "url": url,
        "title": title_n or None,
        "text": text_n,
        "author": normalize_text(author) or None if author else None,
        "published_at": published,
        "fetched_at": fetched_at,
        "lang": lang,
        "tickers": all_tickers,
        "parent_id": parent_id,
        "extra": extra,
    }
    return validate_document(message)


def get_path(data: Any, path: str | None) -> Any:
    """Value at a dotted path (``"data.items"``, ``"user.name"``, ``"list.0.id"``); None if absent."""
    if path is None:
        return None
    if path in ("", "."):
        return data
    current = data
    for part in path.split("."):
        if isinstance(current, dict):
            current = current.get(part)
        elif isinstance(current, list) and part.lstrip("-").isdigit():
            index = int(part)
            current = current[index] if -len(current) <= index < len(current) else None
        else:
            return None
        if current is None:
            return None
    return current
