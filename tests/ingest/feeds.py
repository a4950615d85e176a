"""Fixture content for the local HTTP server: feeds, article pages, a comments API."""

from __future__ import annotations

import json
from email.utils import format_datetime
from datetime import datetime, timezone

from tests.ingest.httpfixture import FixtureServer, Request, hang, stream_bytes

STORY = (
    "Acme Corporation reported third quarter revenue of 4.2 billion dollars on Tuesday, beating analyst "
    "estimates as demand for its cloud software grew faster than expected. The company raised its full "
    "year outlook and announced a new share buyback program worth two billion dollars. Chief executive "
    "Jane Smith said enterprise customers signed larger contracts than a year ago, and that margins "
    "improved in every region. Shares of $ACME rose eight percent in extended trading after the report."
)
STORY_REWORDED = STORY.replace("on Tuesday", "late on Tuesday").replace("grew faster", "rose faster").replace(
    "eight percent", "almost eight percent"
)
STORY_REWORDED_AGAIN = STORY_REWORDED.replace("two billion", "2 billion").replace("Chief executive", "CEO")
OTHER_STORY = (
    "Central bank officials signalled on Wednesday that interest rates would stay on hold through the "
    "summer, citing sticky services inflation and a labour market that remains tighter than policymakers "
    "would like. Bond yields climbed after the statement, and futures markets pushed back the expected "
    "timing of the first cut. Several officials noted that housing costs were easing more slowly than hoped."
)
GERMAN_STORY = (
    "Die Aktie von Siemens ist nach den Quartalszahlen deutlich gestiegen. Der Konzern meldete einen "
    "höheren Auftragseingang im Geschäft mit der Industrieautomatisierung und bestätigte die Prognose für "
    "das laufende Geschäftsjahr. Analysten lobten vor allem die Entwicklung der Margen im digitalen Geschäft."
)


def article_page(title: str, body: str) -> bytes:
    paragraphs = "".join(f"<p>{sentence.strip()}.</p>" for sentence in body.split(". ") if sentence.strip())
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title></head>
<body><nav><a href="/">Home</a> | <a href="/markets">Markets</a></nav>
<article><h1>{title}</h1>{paragraphs}</article>
<footer>Copyright Example News. All rights reserved.</footer></body></html>""".encode()


def rss(items: list[str]) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Example Markets</title>'
        "<link>http://example.invalid/</link><description>fixture</description>" + "".join(items) + "</channel></rss>"
    ).encode()


def rss_item(*, title=None, link=None, guid=None, date=None, summary=None) -> str:
    parts = []
    if title is not None:
        parts.append(f"<title>{title}</title>")
    if link is not None:
        parts.append(f"<link>{link.replace('&', '&amp;')}</link>")
    if guid is not None:
        parts.append(f'<guid isPermaLink="false">{guid}</guid>')
    if date is not None:
        parts.append(f"<pubDate>{date}</pubDate>")
    if summary is not None:
        parts.append(f"<description><![CDATA[{summary}]]></description>")
    return "<item>" + "".join(parts) + "</item>"


RSS_DATE = format_datetime(datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc), usegmt=True)


def install(server: FixtureServer) -> dict[str, str]:
    """Register every fixture route; return the expected-outcome facts the tests check against."""
    base = server.base
    server.route("/robots.txt", (200, {"Content-Type": "text/plain"}, "User-agent: *\nDisallow: /private/\n"))
    server.route("/articles/acme", (200, {"Content-Type": "text/html; charset=utf-8"}, article_page("Acme beats", STORY)))
    server.route("/articles/acme-copy", (200, {"Content-Type": "text/html"}, article_page("Acme tops forecasts", STORY_REWORDED)))
    server.route("/articles/acme-copy-2", (200, {"Content-Type": "text/html"}, article_page("Acme: CEO upbeat", STORY_REWORDED_AGAIN)))
    server.route("/articles/rates", (200, {"Content-Type": "text/html"}, article_page("Rates on hold", OTHER_STORY)))
    # /articles/gone is not routed: 404, the summary is used instead.

    items = [
        rss_item(title="Acme beats estimates", link=f"{base}/articles/acme?utm_source=rss&utm_medium=feed",
                 date=RSS_DATE, summary="<p>Acme &amp; co beat.</p>"),
        rss_item(title="Acme tops forecasts", link=f"{base}/articles/acme-copy", date="Wed, 01 May 2024 08:05:00 EDT",
                 summary="Acme tops."),
        rss_item(title="Acme CEO upbeat", link=f"{base}/articles/acme-copy-2", date="2024-05-01T12:10:00",
                 summary="CEO upbeat."),
        # the same story again via another campaign link: exact duplicate by canonical URL
        rss_item(title="Acme beats estimates", link=f"{base}/articles/acme#top?fbclid=1", date=RSS_DATE),
        rss_item(title="Secret memo", link=f"{base}/private/memo", date=RSS_DATE,
                 summary="Robots.txt forbids the page; the summary is all we publish."),
        rss_item(title="Rates on hold", link=f"{base}/articles/rates", summary="Rates."),  # no date
        rss_item(title="Gone story", link=f"{base}/articles/gone", date=RSS_DATE, summary="Only a summary."),
        rss_item(summary="An entry with neither link nor guid."),
        rss_item(link=f"{base}/articles/empty", date=RSS_DATE),  # no title, no summary, 404 page: empty
        rss_item(title="Bad date", guid="bad-date-1", date="the day after tomorrow", summary="Undated text."),
    ]
    body = rss(items)

    def news_feed(request: Request):
        if request.headers.get("if-none-match") == '"v1"':
            return (304, {"ETag": '"v1"'}, b"")
        return (200, {"Content-Type": "application/rss+xml; charset=utf-8", "ETag": '"v1"'}, body)

    server.route("/feeds/news.rss", news_feed)

    atom = f"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Boerse</title><id>urn:fixture:atom</id>
<updated>2024-05-01T10:00:00Z</updated>
<entry><title>Siemens legt zu</title><id>urn:fixture:siemens</id>
<link href="{base}/articles/siemens"/><updated>2024-05-01T09:00:00</updated>
<summary type="html">&lt;p&gt;{GERMAN_STORY}&lt;/p&gt;</summary></entry>
<entry><title>Notiz ohne Link</title><id>urn:fixture:no-link</id><updated>2024-05-01T09:30:00+02:00</updated>
<summary>Eine kurze Notiz ohne Link, aber mit einer stabilen Kennung und einem Datum.</summary></entry>
</feed>""".encode()
    # No validators on the Atom feed: a restarted crawler re-reads it and must rely on the seen-store.
    server.route("/feeds/boerse.atom", (200, {"Content-Type": "application/atom+xml"}, atom))
    # /articles/siemens -> 404 -> summary (German, HTML-escaped in the feed)

    pages = {
        None: {"data": [
            {"id": 101, "body": "<b>Buying more</b> $TSLA &amp; $NVDA", "user": {"name": "alice"},
             "created_at": "2024-05-01T13:00:00Z", "symbols": ["TSLA"]},
            {"id": 102, "body": "Agreed, $TSLA looks cheap here", "user": {"name": "bob"},
             "created_at": 1714568460, "parent": 101},
        ], "meta": {"next": "c2"}},
        "c2": {"data": [
            {"id": 103, "body": "", "user": {"name": "carol"}, "created_at": "2024-05-01T13:02:00Z"},  # empty
            "not an object",
            {"body": "comment without an id", "user": {"name": "dave"}},
            {"id": 104, "body": "Numbers tomorrow, careful", "user": {"name": "erin"}, "created_at": "2024-05-01 09:03:00"},
        ], "meta": {"next": "c3"}},
        "c3": {"data": [
            {"id": 105, "body": "Last page comment", "user": {"name": "frank"}, "created_at": "2024-05-01T13:04:00Z"},
        ], "meta": {"next": None}},
    }

    def comments(request: Request):
        from urllib.parse import parse_qs, urlsplit

        cursor = parse_qs(urlsplit(request.path).query).get("cursor", [None])[0]
        if request.headers.get("authorization") != "Bearer t0ken":
            return (401, {"Content-Type": "application/json"}, b'{"error": "unauthorized"}')
        page = pages.get(cursor)
        if page is None:
            return (400, {"Content-Type": "application/json"}, b'{"error": "bad cursor"}')
        return (200, {"Content-Type": "application/json"}, json.dumps(page).encode())

    server.route("/api/comments", comments)

    # --- bad input ---
    flaky_state = {"n": 0}
    flaky_body = rss([rss_item(title="Recovered feed item", link=f"{base}/articles/rates-flaky", date=RSS_DATE,
                               summary="Served after the 500s.")])

    def flaky(request: Request):
        flaky_state["n"] += 1
        if flaky_state["n"] <= 4:  # poll 1: 3 attempts fail; poll 2: one more 500, then success
            return (500, {"Content-Type": "text/plain"}, b"upstream exploded")
        return (200, {"Content-Type": "application/rss+xml"}, flaky_body)

    server.route("/feeds/flaky.rss", flaky)
    server.route("/feeds/hang.rss", hang(5.0))
    server.route("/feeds/loop-a.rss", (302, {"Location": "/feeds/loop-b.rss"}, b""))
    server.route("/feeds/loop-b.rss", (302, {"Location": "/feeds/loop-a.rss"}, b""))
    server.route("/feeds/huge.rss", stream_bytes(50 * 1024 * 1024, declare_length=False))
    server.route("/feeds/huge-declared.rss", stream_bytes(50 * 1024 * 1024, declare_length=True))
    server.route("/feeds/garbage.rss", (200, {"Content-Type": "application/rss+xml"}, b"\x00\x01 this is {{ not xml"))
    server.route("/api/broken.json", (200, {"Content-Type": "application/json"}, b'{"data": [{"id": 1, "body": '))
    server.route("/api/latin1.json", (200, {"Content-Type": "application/json"},
                                      '{"data": [{"id": 1, "body": "Caf\u00e9 cr\u00e8me"}]}'.encode("latin-1")))
    server.route("/private/feed.rss", (200, {"Content-Type": "application/rss+xml"}, rss([])))
    return {"flaky_calls": flaky_state}


FAST_HTTP = {
    "connect_timeout": 2,
    "read_timeout": 0.5,
    "total_timeout": 5,
    "max_bytes": 1024 * 1024,
    "max_redirects": 3,
    "retries": 2,
    "backoff_base": 0.01,
    "backoff_max": 0.05,
    "rate_per_host": 1000,
    "burst": 100,
}


def crawler_config(base: str, *, good_only: bool = False) -> dict:
    sources = [
        {"name": "wire", "type": "rss", "kind": "news", "url": f"{base}/feeds/news.rss",
         "timezone": "America/New_York", "tickers": ["SPY"]},
        {"name": "boerse", "type": "atom", "kind": "news", "url": f"{base}/feeds/boerse.atom", "timezone": "Europe/Berlin"},
        {"name": "forum", "type": "json", "kind": "comment", "url": f"{base}/api/comments",
         "timezone": "America/New_York",
         "headers": {"Authorization": "Bearer ${ENV:FP_FORUM_TOKEN}"},
         "mapping": {"items": "data", "id": "id", "text": "body", "author": "user.name", "time": "created_at",
                     "parent_id": "parent", "tickers": "symbols"},
         "pagination": {"type": "cursor", "cursor_path": "meta.next", "cursor_param": "cursor", "max_pages": 5}},
    ]
    if not good_only:
        sources += [
            {"name": "flaky", "type": "rss", "kind": "news", "url": f"{base}/feeds/flaky.rss", "fetch_articles": False},
            {"name": "hang", "type": "rss", "kind": "news", "url": f"{base}/feeds/hang.rss"},
            {"name": "loop", "type": "rss", "kind": "news", "url": f"{base}/feeds/loop-a.rss"},
            {"name": "huge", "type": "rss", "kind": "news", "url": f"{base}/feeds/huge.rss"},
            {"name": "huge-declared", "type": "rss", "kind": "news", "url": f"{base}/feeds/huge-declared.rss"},
            {"name": "garbage", "type": "rss", "kind": "news", "url": f"{base}/feeds/garbage.rss"},
            {"name": "broken-json", "type": "json", "kind": "comment", "url": f"{base}/api/broken.json",
             "mapping": {"items": "data", "text": "body"}},
            {"name": "latin1-json", "type": "json", "kind": "comment", "url": f"{base}/api/latin1.json",
             "mapping": {"items": "data", "text": "body"}},
            {"name": "forbidden", "type": "rss", "kind": "news", "url": f"{base}/private/feed.rss"},
        ]
    return {"http": dict(FAST_HTTP), "workers": 8, "sources": sources}
