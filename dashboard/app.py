"""The analysts' dashboard: a Dash app on the read-only analyst role.

Pages (the address holds their state, so a page can be bookmarked and shared):

- ``/`` market: negative share and volume of all documents at 1m / 1h / 1d, the scopes whose
  negative share rose most in the last 24 h against the week before, the firing alerts;
- ``/scope?dimension=ticker&key=ACME&width=1h``: one ticker's, topic's or source's trend with its
  alert episodes shaded, for a ticker the sentiment towards the company, its latest documents with
  scores, topic, evidence words and source links;
- ``/alerts`` (``?episode=ID`` for one episode's events and deliveries): the alert history;
- ``/inbox``: what the demo receivers (stack/receivers.py) caught, mail and webhooks.

Each page is rendered whole by the router callback on arrival (one round trip) and then refreshed
in place by its own interval every FINPULSE_DASHBOARD_REFRESH_SECONDS (figures keep their zoom).
Every script and stylesheet is served by this process (Dash's own bundles and ``assets/``): the
page needs no internet.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import dash
import sqlalchemy as sa
from dash import Dash, Input, Output, State, dcc, html

from dashboard import queries as q
from dashboard.figures import towards_figure, trend_figure
from finpulse import db
from finpulse.inbox import read_inbox
from finpulse.settings import Settings, get_settings

log = logging.getLogger(__name__)
ASSETS = Path(__file__).resolve().parent / "assets"
DOCUMENTS_SHOWN = 20
# The newest episodes shown; older ones are in the alert_history view (a long table is slower to draw).
EPISODES_SHOWN = 50


# --- formatting ---------------------------------------------------------------------------------

def fmt_time(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def fmt_share(value: float | None) -> str:
    return "" if value is None else f"{100 * float(value):.1f}%"


def fmt_change(value: float | None) -> str:
    return "" if value is None else f"{100 * float(value):+.1f} pts"


def fmt_p(value: float | None) -> str:
    return "" if value is None else f"{float(value):.2g}"


def scope_href(dimension: str, key: str, width: str | None = None) -> str:
    params = {"dimension": dimension, "key": key, **({"width": width} if width else {})}
    return "/scope?" + urlencode(params)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


class Markdown(str):
    """A table cell that is markdown already; every other cell is text, and escaped."""


def md(text: Any) -> Markdown:
    """Text shown literally in a markdown cell (document titles are not ours: nothing in them is markup)."""
    return Markdown(_MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split())))


def md_link(text: Any, href: str | None) -> Markdown:
    return Markdown(f"[{md(text)}](<{href}>)") if href else md(text)


def scope_link(dimension: str, key: str) -> Markdown:
    return md_link("market" if dimension == "all" else f"{dimension} {key}", scope_href(dimension, key))


def source_link(title: str | None, url: str | None) -> Markdown:
    return md_link(title or url or "(no title)", url)


EMPHASISED = {"negative", "firing", "NO"}  # cells drawn bold: what a reader scans a table for


def table(header: list[str], rows: list[list[Any]], *, empty: str, table_id: str, new_tab: bool = False) -> Any:
    """A table as one markdown component: the browser's Dash renderer builds one component, where a
    table of html components costs one per cell (measured on the shared 2-core machine: 50 alert rows
    drew in 5-8 s as html components, under 1 s as one component; bench/README.md). Raw HTML in
    markdown stays off; every cell that is not Markdown already is escaped."""
    if not rows:
        return html.P(empty, className="empty", id=table_id)

    def cell(value: Any) -> str:
        if value is None or value == "":
            return " "
        if isinstance(value, Markdown):
            return value
        text = md(value)
        return f"**{text}**" if str(value).split(" ")[0] in EMPHASISED else text

    lines = ["| " + " | ".join(md(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return dcc.Markdown("\n".join(lines), id=table_id, className="grid", link_target="_blank" if new_tab else None,
                        dangerously_allow_html=False)


def width_links(path: str, params: dict[str, str], current: str) -> Any:
    links = []
    for name in q.WIDTHS:
        href = f"{path}?" + urlencode({**params, "width": name})
        links.append(html.Span(name, className="current") if name == current else dcc.Link(name, href=href))
    return html.Div(["window: ", *links], className="widths")


# --- pages ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Page:
    """One page: ``render`` reads Postgres and returns the value of each output, in order; ``layout``
    places them. The router and the refresh callback both call ``render``."""

    name: str
    path: str
    title: str
    outputs: tuple[tuple[str, str], ...]  # (component id, property)
    render: Callable[[sa.engine.Connection, dict[str, str], Settings], list[Any]]
    layout: Callable[[dict[str, str], list[Any]], list[Any]]


def _width(params: dict[str, str]) -> str:
    width = params.get("width", "1h")
    return width if width in q.WIDTHS else "1h"


def _no_data() -> str:
    return "No windows yet: the pipeline has written nothing to sentiment_windows."


MOVERS_TTL_SECONDS = 60.0  # movers sum 24 hourly windows of every scope: a minute old is fresh enough
_movers: dict[tuple[str, str], tuple[float, list[q.Row]]] = {}
_movers_lock = threading.Lock()


def cached_movers(conn, model_version: str) -> list[q.Row]:
    """q.movers, computed at most once a minute per database: it aggregates every scope's last day
    (~0.2 M windows at 8.5 k scopes), the one query of a page that grows with the number of scopes."""
    key = (conn.engine.url.render_as_string(hide_password=True), model_version)
    with _movers_lock:
        hit = _movers.get(key)
    if hit is not None and time.monotonic() - hit[0] < MOVERS_TTL_SECONDS:
        return hit[1]
    rows = q.movers(conn, model_version=model_version)
    with _movers_lock:
        _movers[key] = (time.monotonic(), rows)
    return rows


def render_market(conn, params, settings) -> list[Any]:
    width = _width(params)
    now = datetime.now(timezone.utc)
    mv = q.latest_model(conn)
    if mv is None:
        return [trend_figure([], [], title="Market", revision="market"), _no_data(), ""]
    since = now - q.SPANS[width]
    rows = q.trend(conn, dimension="all", key="*", width=q.WIDTHS[width], since=since, until=now + timedelta(days=1),
                   model_version=mv)
    spans = q.episodes(conn, since=since, until=now + timedelta(days=1), dimension="all")
    figure = trend_figure(rows, spans, title=f"All documents, {width} windows (model {mv})", revision=f"market-{width}")
    movers = table(
        ["scope", "docs 24 h", "negative 24 h", "negative 7 d before", "change"],
        [[scope_link(r["dimension"], r["key"]), r["docs_24h"], fmt_share(r["negative_share_24h"]),
          fmt_share(r["negative_share_baseline_7d"]), fmt_change(r["negative_share_change"])]
         for r in cached_movers(conn, mv)],
        empty="No scope with 20 documents in the last 24 hours and a baseline.", table_id="movers-table")
    firing = table(
        ["rule", "scope", "severity", "firing since", "p-value", "negative", "baseline", "delivered"],
        [[md_link(r["rule"], f"/alerts?episode={r['episode_id']}"), scope_link(r["dimension"], r["key"]),
          r["severity"], fmt_time(r["fired_at"]), fmt_p(r["p_value"]), fmt_share(r["negative_share"]),
          fmt_share(r["baseline_share"]), f"{r['n_delivered']}/{r['n_notifications']}"] for r in q.firing(conn)],
        empty="No alert is firing.", table_id="firing-table")
    return [figure, movers, firing]


def layout_market(params, values) -> list[Any]:
    figure, movers, firing = values
    return [html.H2("Market"), width_links("/", {}, _width(params)),
            dcc.Graph(id="market-trend", figure=figure, config={"displaylogo": False}),
            html.Div([html.Div([html.H3("Movers: negative share, last 24 h against the 7 days before"),
                                html.Div(movers, id="market-movers")], className="half"),
                      html.Div([html.H3("Firing alerts"), html.Div(firing, id="market-firing")], className="half")],
                     className="row")]


def _scope(params) -> tuple[str, str]:
    dimension = params.get("dimension", "ticker")
    if dimension not in q.DIMENSIONS:
        dimension = "ticker"
    key = "*" if dimension == "all" else params.get("key", "").strip()
    if dimension == "ticker":
        key = key.upper()
    return dimension, key


def _document_rows(rows: list[q.Row], ticker: bool) -> list[list[Any]]:
    out = []
    for r in rows:
        text = "(text pruned by retention)" if r["text_pruned_at"] else r["text_start"]
        cells = [fmt_time(r["published_at"]),
                 Markdown(f"{source_link(r['title'], r['url'])} — *{md(text)}*") if text
                 else source_link(r["title"], r["url"]),
                 r["source"], r["topic"] or ""]
        if ticker:
            cells.append((r["towards"] or "") + ("" if r["entity_level"] else " (document's)"))
        cells += [r["sentiment"], f"{float(r['p_negative']):.2f}",
                  ", ".join(q.evidence_words(r["evidence"])) or "-"]
        out.append(cells)
    return out


def render_scope(conn, params, settings) -> list[Any]:
    dimension, key = _scope(params)
    width = _width(params)
    now = datetime.now(timezone.utc)
    mv = q.latest_model(conn)
    if not key:
        return [trend_figure([], [], title="", revision="scope"), "Choose a ticker, topic or source above.", ""]
    if mv is None:
        return [trend_figure([], [], title="", revision="scope"), _no_data(), ""]
    since = now - q.SPANS[width]
    rows = q.trend(conn, dimension=dimension, key=key, width=q.WIDTHS[width], since=since,
                   until=now + timedelta(days=1), model_version=mv)
    spans = q.episodes(conn, since=since, until=now + timedelta(days=1), dimension=dimension, key=key)
    label = "all documents" if dimension == "all" else f"{dimension} {key}"
    figure = trend_figure(rows, spans, title=f"{label}, {width} windows" + ("" if rows else ": no windows"),
                          revision=f"scope-{dimension}-{key}-{width}")
    ticker = dimension == "ticker"
    week = datetime.fromtimestamp((int(now.timestamp()) // 86400 - 6) * 86400, timezone.utc)
    towards = (dcc.Graph(figure=towards_figure(q.towards(conn, ticker=key, model_version=mv, since=week),
                                               ticker=key, revision=f"towards-{key}"), config={"displaylogo": False})
               if ticker else "")
    docs = q.documents(conn, dimension=dimension, key=key, model_version=mv, limit=DOCUMENTS_SHOWN)
    header = ["published", "document", "source", "topic"] + (["towards " + key] if ticker else []) + \
        ["document sentiment", "p(negative)", "evidence words"]
    documents = table(header, _document_rows(docs, ticker), empty="No documents.", table_id="documents-table",
                      new_tab=True)
    return [figure, documents, towards]


def layout_scope(params, values) -> list[Any]:
    figure, documents, towards = values
    dimension, key = _scope(params)
    form = html.Form([
        dcc.Dropdown(id="scope-dimension", options=list(q.DIMENSIONS), value=dimension, clearable=False,
                     className="dimension-select"),
        dcc.Input(id="scope-key", type="text", value="" if key == "*" else key, placeholder="ACME, earnings, wire...",
                  debounce=True),
        dcc.Link("show", id="scope-go", href=scope_href(dimension, key, _width(params)), className="button"),
    ], className="scope-form", id="scope-form")
    return [html.H2("market" if dimension == "all" else f"{dimension} {key}" if key else "Ticker, topic or source"),
            form, width_links("/scope", {"dimension": dimension, "key": key}, _width(params)),
            dcc.Graph(id="scope-trend", figure=figure, config={"displaylogo": False}),
            html.Div(towards, id="scope-towards"),
            html.H3("Latest documents"), html.Div(documents, id="scope-documents")]


def _evidence_documents(docs: Any) -> Any:
    if not isinstance(docs, list) or not docs:
        return "-"
    lines = []
    for d in docs[:3]:
        where = md(f"({d.get('source', '')}, p(neg) {d.get('p_negative', '')})")
        lines.append(f"{source_link(d.get('title'), d.get('url'))} {where}")
    return Markdown("; ".join(lines))


def render_alerts(conn, params, settings) -> list[Any]:
    now = datetime.now(timezone.utc)
    status = params.get("status") or None
    history = q.episodes(conn, since=now - timedelta(days=90), until=now + timedelta(days=1), status=status,
                         limit=EPISODES_SHOWN)
    rows = [[r["status"], r["severity"],
             md_link(r["rule"], f"/alerts?episode={r['episode_id']}"), scope_link(r["dimension"], r["key"]),
             fmt_time(r["starts_at"]), fmt_time(r["fired_at"]), fmt_time(r["ends_at"]), fmt_p(r["p_value"]),
             f"{fmt_share(r['negative_share'])} vs {fmt_share(r['baseline_share'])}" if r["negative_share"] is not None else "",
             f"{r['n_delivered']}/{r['n_notifications']}" + (f", {r['n_dead']} dead" if r["n_dead"] else ""),
             _evidence_documents(r["evidence_documents"])] for r in history]
    table_ = table(["state", "severity", "rule", "scope", "starts", "fired", "ended", "p-value",
                    "negative vs baseline", "delivered", "evidence"], rows,
                   empty="No alert episode in the last 90 days.", table_id="alerts-table")
    if len(history) == EPISODES_SHOWN:
        table_ = [table_, html.P(f"The {EPISODES_SHOWN} newest; choose a state above, or query alert_history.",
                                 className="status-line")]
    episode = params.get("episode")
    detail: Any = ""
    if episode:
        events = q.episode_events(conn, episode)
        deliveries = q.episode_deliveries(conn, episode)
        summary = next((r for r in history if r["episode_id"] == episode), None)
        heading = f"Episode {episode}" + (
            f": {summary['rule']} on {summary['dimension']} {summary['key']}, {summary['status']}; "
            f"{summary['test'] or 'test'} p = {fmt_p(summary['p_value'])}" if summary else "")
        detail = [html.H3(heading, id="episode-heading"),
                  table(["event", "window", "at", "p-value", "negative share"],
                        [[e["event"], fmt_time(e["window_start"]), fmt_time(e["at"]), fmt_p(e["p_value"]),
                          fmt_share(e["negative_share"])] for e in events], empty="No events.", table_id="events-table"),
                  html.H3("Deliveries"),
                  table(["receiver", "channel", "notice", "message", "state", "attempt", "ok", "response", "error", "at"],
                        [[d["receiver"], d["channel"], f"{d['notified_status']} #{d['seq']}", d["message_id"],
                          d["message_state"], d["attempt"] or "-", "" if d["ok"] is None else ("yes" if d["ok"] else "no"),
                          d["response_code"] or "", d["error"] or "", fmt_time(d["attempted_at"])] for d in deliveries],
                        empty="Not notified (pending, cancelled, silenced or inhibited).", table_id="deliveries-table")]
    return [table_, detail]


def layout_alerts(params, values) -> list[Any]:
    table_, detail = values
    filters = html.Div(["show: ", *[dcc.Link(s or "all", href="/alerts" + (f"?status={s}" if s else ""))
                                    for s in ("", "firing", "pending", "resolved", "cancelled")]], className="widths")
    return [html.H2("Alerts"), filters, html.Div(detail, id="alerts-detail"), html.H3("History (last 90 days, newest first)"),
            html.Div(table_, id="alerts-history")]


def render_inbox(conn, params, settings) -> list[Any]:
    items = read_inbox(settings)
    rows = [[i.kind, fmt_time(i.received_at), i.error or i.subject, i.recipients,
             "-" if i.verified is None else ("yes" if i.verified else "NO"), i.path.name] for i in items]
    return [table(["kind", "received", "subject", "recipients", "signature verified", "file"], rows,
                  empty=f"Nothing received under {settings.receivers_dir} yet.", table_id="inbox-table")]


def layout_inbox(params, values) -> list[Any]:
    return [html.H2("Inbox of the demo receivers"), html.Div(values[0], id="inbox-list")]


PAGES = (
    Page("market", "/", "Market", (("market-trend", "figure"), ("market-movers", "children"),
                                   ("market-firing", "children")), render_market, layout_market),
    Page("scope", "/scope", "Ticker / topic", (("scope-trend", "figure"), ("scope-documents", "children"),
                                               ("scope-towards", "children")), render_scope, layout_scope),
    Page("alerts", "/alerts", "Alerts", (("alerts-history", "children"), ("alerts-detail", "children")),
         render_alerts, layout_alerts),
    Page("inbox", "/inbox", "Inbox", (("inbox-list", "children"),), render_inbox, layout_inbox),
)


# --- the app --------------------------------------------------------------------------------------

def _params(search: str | None) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs((search or "").lstrip("?")).items()}


def _problem(exc: Exception) -> str | None:
    """One line for a reader when Postgres cannot answer (never the password), else None."""
    if isinstance(exc, db.AnalystUnavailable):
        return str(exc)
    if isinstance(exc, sa.exc.OperationalError):
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        return f"Postgres is not answering: {reason}"
    return None


def create_app(settings: Settings | None = None, engine: sa.engine.Engine | None = None) -> Dash:
    """The Dash app; its Flask server is ``app.server``. Reads Postgres as the analyst role only."""
    settings = settings or get_settings()
    engine = engine or db.analyst_engine(settings, pool_size=4, max_overflow=4, pool_recycle=300)
    app = Dash(__name__, title="finpulse", assets_folder=str(ASSETS), serve_locally=True, update_title=None,
               suppress_callback_exceptions=True)
    # Debug tools off, and no call from the browser to plotly's version server (no internet assumed).
    app.enable_dev_tools(debug=False, dev_tools_disable_version_check=True)
    app.layout = html.Div([
        dcc.Location(id="url"),
        html.Header([html.Span("finpulse", className="brand"),
                     html.Nav([dcc.Link(p.title, href=p.path) for p in PAGES])]),
        html.Main(id="page"),
    ])
    interval_ms = int(settings.dashboard_refresh_seconds * 1000)

    @app.server.route("/healthz")
    def healthz():
        """200 when Postgres answers the analyst role (with the model version shown), else 503 and why."""
        import flask

        try:
            with engine.connect() as conn:
                role = conn.execute(sa.text("SELECT current_user")).scalar()
                model_version = q.latest_model(conn)
        except Exception as exc:  # noqa: BLE001 - the reason goes to the caller, never a traceback
            return flask.jsonify(healthy=False, detail=_problem(exc) or type(exc).__name__), 503
        return flask.jsonify(healthy=True, role=role, model_version=model_version)

    def render(page: Page, params: dict[str, str]) -> list[Any]:
        with engine.connect() as conn:
            return page.render(conn, params, settings)

    def stamp(page: Page) -> str:
        return f"updated {datetime.now(timezone.utc):%H:%M:%S} UTC, every {settings.dashboard_refresh_seconds:g} s"

    @app.callback(Output("page", "children"), Input("url", "pathname"), Input("url", "search"))
    def route(pathname: str | None, search: str | None):
        page = next((p for p in PAGES if p.path == (pathname or "/")), None)
        if page is None:
            return [html.H2("Not found"), html.P(f"No page at {pathname}.")]
        params = _params(search)
        try:
            values = render(page, params)
        except Exception as exc:  # noqa: BLE001 - a database outage is shown on the page, anything else raises
            problem = _problem(exc)
            if problem is None:
                raise
            return [html.H2(page.title), html.P(problem, className="error", id="page-error")]
        return [*page.layout(params, values),
                html.P(stamp(page), id=f"{page.name}-status", className="status-line"),
                dcc.Interval(id=f"{page.name}-tick", interval=interval_ms)]

    for page in PAGES:
        _register_refresh(app, page, render, stamp)

    @app.callback(Output("scope-go", "href"), Input("scope-dimension", "value"), Input("scope-key", "value"),
                  State("url", "search"), prevent_initial_call=True)
    def scope_choice(dimension: str, key: str | None, search: str | None):
        return scope_href(dimension, (key or "").strip(), _width(_params(search)))

    return app


def _register_refresh(app: Dash, page: Page, render, stamp) -> None:
    outputs = [Output(i, prop) for i, prop in page.outputs] + [Output(f"{page.name}-status", "children")]

    @app.callback(*outputs, Input(f"{page.name}-tick", "n_intervals"), State("url", "search"), prevent_initial_call=True)
    def refresh(_n, search):
        try:
            return [*render(page, _params(search)), stamp(page)]
        except Exception as exc:  # noqa: BLE001 - keep what is shown, say why it is stale
            problem = _problem(exc)
            if problem is None:
                raise
            log.warning("refresh of %s failed: %s", page.name, problem)
            return [dash.no_update] * len(page.outputs) + [f"not refreshed at {datetime.now(timezone.utc):%H:%M:%S} UTC: {problem}"]
