"""The :class:`Source` interface.

A source knows how to fetch and map one origin; it does not dedup, publish or count. Its
:meth:`Source.poll` yields, per raw item, either a validated :class:`Document` or a
:class:`Skipped` saying why not. The crawler does the rest.

Delivery guarantee of a source's items: the one stated on :class:`ingest.producer.Sink`, which
publishes them (at least once). Where a source adds duplicates: an item is remembered as seen,
and a feed's conditional-GET validators stored, only after every document of the poll was
acknowledged, so a poll whose delivery failed (or a crash before the seen-store update) meets
its items again next time and publishes them again.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from finpulse.contract import ContractError, Document
from ingest.document import build_document
from ingest.http import FetchResult, PoliteClient
from ingest.normalize import resolve_timezone, utcnow
from ingest.store import SeenStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skipped:
    """An item that will not be published. ``duplicate`` ones are counted apart from failures.

    Every other one becomes a dead letter, with ``raw`` (the raw item as text, or the response
    body when a whole response failed) and ``url`` where they are known.
    """

    source: str
    reason: str
    detail: str = ""
    duplicate: bool = False
    raw: str | bytes | None = field(default=None, repr=False)
    url: str | None = None

    @classmethod
    def from_error(cls, source: str, exc: BaseException) -> Skipped | None:
        """The whole-response failure ``exc`` as a Skipped carrying its body, or None if it has none."""
        raw = getattr(exc, "raw", None)
        if raw is None:
            return None
        return cls(source, getattr(exc, "reason", None) or type(exc).__name__, str(exc), raw=raw,
                   url=getattr(exc, "url", None))


class Source(ABC):
    """Base class: configuration, shared client and store, staged conditional-GET validators."""

    def __init__(self, *, config, client: PoliteClient, store: SeenStore):
        self.config = config
        self.name: str = config.name
        self.kind: str = config.kind
        self.interval: float = config.interval
        self.client = client
        self.store = store
        self.tz = resolve_timezone(config.timezone)
        self._staged: dict[str, tuple[str | None, str | None]] = {}
        if config.rate_limit:
            from urllib.parse import urlsplit

            client.set_host_rate(urlsplit(config.url).netloc.lower(), config.rate_limit)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, url={self.config.url!r})"

    @abstractmethod
    def poll(self) -> Iterator[Document | Skipped]:
        """Fetch once and yield one outcome per raw item. May raise an IngestError for the whole poll."""

    # -- conditional GET ------------------------------------------------------------------
    def fetch_conditional(self, url: str, **kwargs) -> FetchResult:
        """GET with the validators stored for ``url``; new validators are staged, not stored.

        They are stored by :meth:`commit` only once every document of this poll was acked:
        storing them earlier would let a 304 hide items whose delivery failed.
        """
        etag, last_modified = self.store.validators(url)
        result = self.client.get(url, etag=etag, last_modified=last_modified, **kwargs)
        if not result.not_modified and (result.etag or result.last_modified):
            self._staged[url] = (result.etag, result.last_modified)
        return result

    def commit(self) -> None:
        for url, (etag, last_modified) in self._staged.items():
            self.store.set_validators(url, etag, last_modified)
        self._staged.clear()

    def rollback(self) -> None:
        self._staged.clear()

    # -- helpers --------------------------------------------------------------------------
    def known(self, doc_id: str, tickers=()) -> bool:
        """Seen in this poll, or published before with every ticker this source would give it (its configured
        tickers and ``tickers``): nothing to fetch or publish. A story published under fewer tickers is built
        again, and the crawler publishes it with the union."""
        if doc_id in getattr(self, "_this_poll", ()):
            return True
        if not self.store.is_seen(doc_id):
            return False
        before = self.store.seen_tickers(doc_id)
        if before is None:  # recorded before tickers were: treated as known
            return True
        from ingest.normalize import merge_tickers

        return set(merge_tickers(list(self.config.tickers), list(tickers or ()))) <= set(before)

    def skipped(self, reason: str, detail: str = "", *, duplicate: bool = False) -> Skipped:
        return Skipped(self.name, reason, detail, duplicate)

    @staticmethod
    def with_raw(outcome: Document | Skipped, raw: Any, url: str | None = None, *,
                 as_json: bool = False) -> Document | Skipped:
        """Attach the raw item (as text; dicts/lists, or anything with ``as_json``, as JSON) to a failure."""
        if isinstance(outcome, Skipped) and not outcome.duplicate and outcome.raw is None:
            from ingest.deadletter import raw_text

            return replace(outcome, raw=raw_text(raw, as_json=as_json), url=outcome.url or url)
        return outcome

    def document(self, *, fetched_at: datetime | None = None, **fields: Any) -> Document | Skipped:
        """Build a document with this source's defaults; a contract failure becomes a Skipped."""
        item_tickers = fields.pop("tickers", None) or []
        if isinstance(item_tickers, str):
            item_tickers = [item_tickers]
        try:
            return build_document(
                source=self.name,
                kind=self.kind,
                fetched_at=fetched_at or utcnow(),
                tz=self.tz,
                lang=self.config.lang,
                tickers=list(self.config.tickers) + list(item_tickers),
                **fields,
            )
        except ContractError as exc:
            return self.skipped("contract", str(exc))


def source_from_config(config, *, client: PoliteClient, store: SeenStore) -> Source:
    from ingest.sources.jsonapi import JsonApiSource
    from ingest.sources.rss import RssSource

    if config.type in ("rss", "atom", "feed"):
        return RssSource(config=config, client=client, store=store)
    if config.type == "json":
        return JsonApiSource(config=config, client=client, store=store)
    raise ValueError(f"unknown source type {config.type!r}")
