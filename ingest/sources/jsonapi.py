"""A generic JSON API source (comments, posts) with a field mapping and pagination."""

from __future__ import annotations

import codecs
import json
import logging
from collections.abc import Iterator
from typing import Any

from finpulse.contract import Document
from ingest.document import get_path
from ingest.errors import ParseError
from ingest.normalize import canonical_url, native_id, url_id, utcnow
from ingest.sources.base import Skipped, Source

log = logging.getLogger(__name__)


def decode_json(content: bytes, charset: str | None = None) -> Any:
    """Parse JSON bytes: UTF-8/16/32 (BOM-sniffed by json), else the declared charset."""
    if not content.strip():
        raise ParseError("empty response body", reason="malformed_json")
    try:
        return json.loads(content)
    except UnicodeDecodeError:
        if not charset:
            raise ParseError("JSON body is not UTF-8 and declares no charset", reason="encoding") from None
        try:
            codecs.lookup(charset)
            return json.loads(content.decode(charset))
        except (LookupError, UnicodeDecodeError) as exc:
            raise ParseError(f"JSON body not decodable as {charset}: {exc}", reason="encoding") from None
        except json.JSONDecodeError as exc:
            raise ParseError(f"malformed JSON: {exc}", reason="malformed_json") from None
    except json.JSONDecodeError as exc:
        raise ParseError(f"malformed JSON: {exc}", reason="malformed_json") from None


class JsonApiSource(Source):
    """Items from a JSON API, mapped by dotted paths.

    Pagination: ``cursor`` (next cursor read at ``cursor_path`` and sent as ``cursor_param``) or
    ``page`` (``page_param`` counting from ``start_page`` until an empty page), at most
    ``max_pages`` per poll. Every poll starts from the first page; the seen-store drops what was
    already published, so a lost cursor can never lose comments.
    """

    def poll(self) -> Iterator[Document | Skipped]:
        cfg = self.config
        pag = cfg.pagination
        cursor: str | None = None
        seen_cursors: set[str] = set()
        self._this_poll: set[str] = set()
        for page_no in range(pag.max_pages):
            params = dict(cfg.params)
            if pag.type == "cursor" and cursor is not None:
                params[pag.cursor_param] = cursor
            elif pag.type == "page":
                params[pag.page_param] = str(pag.start_page + page_no)
            if page_no == 0:
                # Only the first page is fetched conditionally: a 304 there means nothing new.
                from httpx import URL

                first = str(URL(cfg.url).copy_merge_params(params)) if params else cfg.url
                result = self.fetch_conditional(first, headers=cfg.header_values())
                if result.not_modified:
                    return
            else:
                result = self.client.get(cfg.url, params=params, headers=cfg.header_values())
            try:
                page = decode_json(result.content, result.charset)
            except ParseError as exc:
                exc.raw, exc.url = result.content, result.url  # the body goes to the dead letters
                raise
            items = get_path(page, cfg.mapping.items)
            if items is None and cfg.mapping.items:
                raise ParseError(f"no list at {cfg.mapping.items!r} on page {page_no + 1}", reason="malformed_json",
                                 raw=result.content, url=result.url)
            if not isinstance(items, list):
                raise ParseError(f"{cfg.mapping.items or 'body'!r} is a {type(items).__name__}, not a list",
                                 reason="malformed_json", raw=result.content, url=result.url)
            for item in items:
                try:
                    outcome = self._item(item)
                except Exception as exc:
                    log.warning("%s: item failed (%s: %s)", self.name, type(exc).__name__, exc)
                    outcome = self.skipped("item_error", f"{type(exc).__name__}: {exc}")
                yield self.with_raw(outcome, item, result.url, as_json=True)  # the item as the API sent it
            if pag.type == "cursor":
                nxt = get_path(page, pag.cursor_path)
                if nxt in (None, "", False) or str(nxt) in seen_cursors:
                    return  # end of the list, or a server handing the same cursor back (loop)
                cursor = str(nxt)
                seen_cursors.add(cursor)
            elif pag.type == "page":
                if not items:
                    return
            else:
                return

    def _item(self, item: Any) -> Document | Skipped:
        m = self.config.mapping
        if not isinstance(item, dict):
            return self.skipped("item_not_object", f"item is a {type(item).__name__}")
        fetched_at = utcnow()
        raw_url = get_path(item, m.url)
        canonical = canonical_url(str(raw_url)) if isinstance(raw_url, str) else None
        raw_id = get_path(item, m.id)
        if raw_id not in (None, ""):
            doc_id = native_id(self.name, raw_id)
        elif canonical:
            doc_id = url_id(canonical)
        else:
            return self.skipped("no_url_or_id", "item has neither an id nor a URL")
        tickers = get_path(item, m.tickers)
        if isinstance(tickers, str):
            tickers = [tickers]
        elif not isinstance(tickers, list):
            tickers = []
        if self.known(doc_id, [str(t) for t in tickers if t is not None]):
            return self.skipped("seen", doc_id, duplicate=True)
        self._this_poll.add(doc_id)
        text = get_path(item, m.text)
        title = get_path(item, m.title)
        parent = get_path(item, m.parent_id)
        author = get_path(item, m.author)
        return self.document(
            id=doc_id,
            url=canonical,
            title=str(title) if title is not None else None,
            text=str(text) if text is not None else None,
            author=str(author) if author is not None else None,
            published_raw=get_path(item, m.time),
            parent_id=native_id(self.name, parent) if parent not in (None, "") else None,
            tickers=[str(t) for t in tickers if t is not None],
            fetched_at=fetched_at,
            extra={"native_id": str(raw_id)} if raw_id not in (None, "") else {},
        )
