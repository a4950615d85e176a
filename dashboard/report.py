"""`finpulse report`: one static HTML page with PNG charts, for people who get it by mail.

The folder it writes holds ``report.html`` and the PNGs it links by relative name (attach the
folder, or publish it): the market trend with its alert episodes shaded, the top tickers and
topics by volume (bar length = negative share), one trend per scope that had an alert episode in
the period (shaded), the episodes, and the most negative documents with the start of their text
and their links. Charts come from finpulse.charts, data from the analysts' views (dashboard.queries).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jinja2
from sqlalchemy.engine import Connection

from dashboard import queries as q
from finpulse.charts import Span, bars_png, trend_png

TEMPLATES = Path(__file__).resolve().parent / "templates"
EPISODE_CHARTS = 5
TOP_DOCUMENTS = 10


class ReportError(ValueError):
    """The report cannot be made as asked (an empty or inverted period, no data at all)."""


@dataclass(frozen=True)
class Chart:
    file: str
    title: str


def report_width(since: datetime, until: datetime) -> str:
    """The window width a period is drawn at: minutes up to 6 h, hours up to 14 days, else days."""
    span = until - since
    return "1m" if span <= timedelta(hours=6) else "1h" if span <= timedelta(days=14) else "1d"


def _trend(conn: Connection, out: Path, file: str, *, dimension: str, key: str, since, until, width: str, mv: str,
           episodes: list[q.Row], title: str) -> Chart:
    rows = q.trend(conn, dimension=dimension, key=key, width=q.WIDTHS[width], since=since, until=until, model_version=mv)
    spans = [Span(max(e["starts_at"], since), min(e["shaded_until"], until), e["rule"]) for e in episodes]
    png = trend_png([r["window_start"] for r in rows], [r["negative_share"] for r in rows], [r["n_docs"] for r in rows],
                    title=title, spans=spans, width=8.0, height=2.8)
    (out / file).write_bytes(png)
    return Chart(file, title)


def _bars(out: Path, file: str, rows: list[q.Row], title: str) -> Chart | None:
    if not rows:
        return None
    png = bars_png([f"{r['key']} ({r['n_docs']})" for r in rows], [100.0 * (r["negative_share"] or 0.0) for r in rows],
                   title=title, value_label="negative share, % (documents in brackets)", width=8.0)
    (out / file).write_bytes(png)
    return Chart(file, title)


def build_report(conn: Connection, *, since: datetime, until: datetime, out: Path) -> Path:
    """Write report.html and its PNGs into ``out``; return the page's path."""
    if since.tzinfo is None or until.tzinfo is None:
        raise ReportError("--since and --until must be timezone-aware (UTC)")
    if until <= since:
        raise ReportError(f"--until {until.isoformat()} is not after --since {since.isoformat()}")
    mv = q.latest_model(conn)
    if mv is None:
        raise ReportError("no windows in sentiment_windows: the pipeline has written nothing to report on")
    out.mkdir(parents=True, exist_ok=True)
    width = report_width(since, until)
    episodes = q.episodes(conn, since=since, until=until)
    charts = [_trend(conn, out, "market.png", dimension="all", key="*", since=since, until=until, width=width, mv=mv,
                     episodes=[e for e in episodes if e["dimension"] == "all"],
                     title=f"All documents, {width} windows (alert episodes shaded)")]
    tickers = q.top_scopes(conn, dimension="ticker", since=since, until=until, model_version=mv)
    topics = q.top_scopes(conn, dimension="topic", since=since, until=until, model_version=mv)
    charts += [c for c in (_bars(out, "tickers.png", tickers, "Top tickers by volume"),
                           _bars(out, "topics.png", topics, "Top topics by volume")) if c is not None]
    scopes: dict[tuple[str, str], list[q.Row]] = {}
    for e in episodes:
        if e["dimension"] != "all" and e["status"] != "cancelled":
            scopes.setdefault((e["dimension"], e["key"]), []).append(e)
    for i, ((dimension, key), scope_episodes) in enumerate(list(scopes.items())[:EPISODE_CHARTS]):
        charts.append(_trend(conn, out, f"episode-{i + 1}.png", dimension=dimension, key=key, since=since, until=until,
                             width=width, mv=mv, episodes=scope_episodes,
                             title=f"{dimension} {key}, {width} windows (alert episodes shaded)"))
    documents = q.documents(conn, dimension="all", key="*", model_version=mv, since=since, until=until,
                            most_negative=True, limit=TOP_DOCUMENTS)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.get_template("report.html.j2").render(
        since=since, until=until, width=width, model_version=mv, charts=charts, episodes=episodes,
        documents=[{**d, "words": q.evidence_words(d["evidence"])} for d in documents],
        generated=datetime.now(timezone.utc))
    page = out / "report.html"
    page.write_text(html, encoding="utf-8")
    return page
