"""RSS and Atom feeds (feedparser), with the linked article's main text (trafilatura)."""

from __future__ import annotations

import html.entities
import logging
import re
from collections.abc import Iterator
from urllib.parse import urljoin

import feedparser
import trafilatura

from finpulse.contract import Document
from ingest.errors import FetchError, ParseError
from ingest.normalize import canonical_url, native_id, url_id, utcnow
from ingest.sources.base import Skipped, Source

log = logging.getLogger(__name__)


def extract_article(content: bytes, *, url: str | None = None) -> str | None:
    """Main text of an HTML page (trafilatura decodes the bytes itself, charset sniffing included)."""
    if not content:
        return None
    try:
        text = trafilatura.extract(content, url=url, include_comments=False, include_tables=False)
    except Exception as exc:  # trafilatura/lxml raise a zoo of types on broken markup
        log.debug("extraction failed for %s: %s", url, exc)
        return None
    return text.strip() if text and text.strip() else None


_ENTITY_REF = re.compile(rb"&([A-Za-z][A-Za-z0-9._\-]*);")
_XML_ENTITIES = {b"amp", b"lt", b"gt", b"quot", b"apos"}


def _entity(match: re.Match) -> bytes:
    name = match.group(1)
    if name in _XML_ENTITIES:
        return match.group(0)
    codepoint = html.entities.name2codepoint.get(name.decode("ascii"))
    if codepoint is not None:
        return b"&#%d;" % codepoint  # &eacute; -> &#233;: the same character, and well-formed XML
    # &foo; -> &amp;amp;foo;: escaped twice, because feed text is decoded twice (XML, then as HTML
    # by feedparser's sanitiser and by strip_html); the text then keeps "&foo;" verbatim.
    return b"&amp;amp;" + match.group(0)[1:]


def escape_undefined_entities(content: bytes) -> bytes:
    """Make entity references XML-safe: HTML ones become character references, unknown ones literal text.

    An entity XML does not define (``&eacute;``, ``&foo;``) makes the feed not well-formed;
    feedparser then falls back to its loose parser, which turns ``&foo;`` in HTML content into
    ``&foo`` -- the semicolon is lost. A feed with its own DTD entities (``<!ENTITY``) is left alone.
    """
    if b"&" not in content or b"<!ENTITY" in content:
        return content
    return _ENTITY_REF.sub(_entity, content)


def _entry_url(entry, base: str) -> str:
    link = entry.get("link")
    return urljoin(base, link) if isinstance(link, str) and link else base


class RssSource(Source):
    """An RSS 0.9x/1.0/2.0 or Atom feed.

    The feed is fetched with a conditional GET (a 304 yields nothing). For each entry not seen
    before, the linked article is fetched (robots.txt and rate limit apply) and its main text
    extracted; when that fails or yields nothing, the entry's summary is used instead and
    ``extra["text_from"]`` says which.
    """

    def poll(self) -> Iterator[Document | Skipped]:
        cfg = self.config
        result = self.fetch_conditional(cfg.url, headers=self.config.header_values())
        if result.not_modified:
            log.debug("%s: feed not modified", self.name)
            return
        # feedparser sniffs the encoding from the XML declaration and the HTTP header; hand it both.
        feed = feedparser.parse(
            escape_undefined_entities(result.content),
            response_headers={"content-type": result.content_type or "application/xml", "content-location": result.url},
        )
        if feed.bozo and not feed.entries:
            raise ParseError(f"malformed feed: {feed.get('bozo_exception')!s:.200}", reason="malformed_feed",
                             raw=result.content, url=result.url)
        if not feed.version and not feed.entries:
            # Well-formed XML that is neither RSS nor Atom (an error page, a sitemap): not "no news".
            raise ParseError("not an RSS or Atom feed", reason="not_a_feed", raw=result.content, url=result.url)
        if feed.bozo:
            log.warning("%s: feed is not well-formed (%s); using the %d entries recovered",
                        self.name, feed.get("bozo_exception"), len(feed.entries))
        self._this_poll: set[str] = set()
        for entry in feed.entries[: cfg.max_items]:
            try:
                outcome = self._entry(entry, base=result.url)
            except Exception as exc:  # one odd entry never ends the poll
                log.warning("%s: entry failed (%s: %s)", self.name, type(exc).__name__, exc)
                outcome = self.skipped("item_error", f"{type(exc).__name__}: {exc}")
            # feedparser keeps no XML per entry: the parsed entry (as JSON) is the rawest item there is.
            yield self.with_raw(outcome, entry, _entry_url(entry, result.url))

    def _entry(self, entry, *, base: str) -> Document | Skipped:
        fetched_at = utcnow()
        link = entry.get("link")
        canonical = canonical_url(urljoin(base, link)) if link else None
        guid = entry.get("id") or entry.get("guid")
        if canonical:
            doc_id = url_id(canonical)
        elif guid:
            doc_id = native_id(self.name, guid)
        else:
            return self.skipped("no_url_or_id", f"entry {entry.get('title', '')!r:.80} has neither link nor id")
        if self.known(doc_id):
            # Known story: do not refetch the article (politeness); the crawler counts it.
            return self.skipped("seen", doc_id, duplicate=True)
        self._this_poll.add(doc_id)

        title = entry.get("title")
        summary = entry.get("summary") or ""
        if not summary and entry.get("content"):
            summary = entry["content"][0].get("value", "")
        text, extra = None, {}
        if self.config.fetch_articles and canonical:
            try:
                article = self.client.get(canonical, headers=self.config.header_values())
                text = extract_article(article.content, url=article.url)
                extra["text_from"] = "article" if text else "summary"
            except FetchError as exc:
                log.info("%s: article not fetched (%s): using the summary", self.name, exc)
                extra["text_from"] = "summary"
                extra["article_error"] = exc.reason
        else:
            extra["text_from"] = "summary"
        if not text and not summary and not title:
            return self.skipped("empty", f"entry {doc_id} has no title, summary or article text")
        published_raw = entry.get("published") or entry.get("updated") or entry.get("created")
        if guid:
            extra["guid"] = str(guid)[:500]
        tags = [t.get("term") for t in entry.get("tags", []) if t.get("term")]
        return self.document(
            id=doc_id,
            url=canonical,
            title=title,
            text=text if text else summary,
            html=not text,  # trafilatura already returns plain text; summaries are HTML fragments
            author=entry.get("author"),
            published_raw=published_raw,
            fetched_at=fetched_at,
            extra=extra | ({"tags": tags[:50]} if tags else {}),
        )
