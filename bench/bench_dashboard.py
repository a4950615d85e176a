"""Benchmark: the analysts' views and the dashboard's pages at scale.

    . /tmp/dash_env.sh   # FINPULSE_* of a running Postgres, e.g. the test stack's
    .venv/bin/python bench/bench_dashboard.py --documents 1000000 --days 30 --tickers 8400

Fills a scratch database (finpulse.db.scratch_database, dropped at the end) with COPY, in time
order as the pipeline writes (so a time range sits in neighbouring pages, as in production):
``--documents`` documents over ``--days`` days (each with its score, half with evidence words,
one ticker link drawn from a Zipf law over ``--tickers`` tickers, 70% of the links scored by the
entity head) and the windows a ~10 M documents/day stream leaves after retention: hourly and
daily windows of every scope (the market, 20 topics, 60 sources and every ticker: ~8.5 k scopes)
for ``--days`` days, minute windows of the market, topics, sources and the 500 busiest tickers
for the last 48 hours, and 500 alert episodes with their events. Then, as the analyst role:

- ``EXPLAIN (ANALYZE, BUFFERS)`` of a 30-day hourly ticker trend (the busiest ticker and a median
  one), of the movers (scope_leaderboard) and of a ticker's latest documents (aim: <= 100 ms);
- the movers query with and without sentiment_windows_width_time_idx (0004), side by side in
  the same run (the index dropped inside a rolled-back transaction);
- each dashboard page rendered server-side (dashboard.app.PAGES' render: queries + figures), best
  and median of ``--repeats``;
- each page loaded in headless Chromium (when chromium and chromedriver are installed) through
  the real app served by waitress: from navigation until the page's content is drawn (aim: <= 1 s).

Results: ``bench/results/dashboard-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dashboard import queries as q  # noqa: E402
from dashboard.app import PAGES, create_app  # noqa: E402
from finpulse import db  # noqa: E402
from finpulse.settings import Settings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MV = "bench-model@1"
TOPICS = [f"topic_{i:02d}" for i in range(20)]
SOURCES = [f"source_{i:02d}" for i in range(60)]
DOCS_PER_DAY = 10_000_000  # the stream the windows stand for


def _copy(engine, table: str, columns: list[str], frame) -> float:
    """COPY a DataFrame into ``table``; seconds taken."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False, na_rep="\\N")
    buffer.seek(0)
    started = time.perf_counter()
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv, NULL '\\N')", buffer)
        raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - started


def zipf_weights(n: int, s: float = 1.1) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** s
    return weights / weights.sum()


def load_documents(engine, n: int, days: int, tickers: list[str], now: datetime, rng) -> dict[str, float]:
    import pandas as pd

    seconds = {}
    chunk = 200_000
    weights = zipf_weights(len(tickers))
    start = now - timedelta(days=days)
    for offset in range(0, n, chunk):
        size = min(chunk, n - offset)
        ids = [f"bench-{i}" for i in range(offset, offset + size)]
        # In arrival (time) order, as the pipeline writes them: chunk k holds the k-th slice of the period.
        lo, hi = offset / n * days * 86400, (offset + size) / n * days * 86400
        published = pd.to_datetime(start.timestamp() + np.sort(rng.uniform(lo, hi, size)), unit="s", utc=True)
        ticker = np.array(tickers)[rng.choice(len(tickers), size, p=weights)]
        source = np.array(SOURCES)[rng.integers(0, len(SOURCES), size)]
        docs = pd.DataFrame({
            "id": ids, "schema_version": 1, "source": source, "kind": "news",
            "url": [f"https://news.example/{i}" for i in ids], "title": [f"{t} headline {i}" for t, i in zip(ticker, ids)],
            "text": [f"{t} shares moved after the company said something about its quarter. " * 3 for t in ticker],
            "published_at": published, "fetched_at": published, "tickers": ["{" + t + "}" for t in ticker],
            "novelty": rng.random(size) < 0.8})
        seconds["documents"] = seconds.get("documents", 0) + _copy(engine, "documents", list(docs.columns), docs)
        p_neg = rng.beta(2, 5, size)
        p_pos = (1 - p_neg) * rng.beta(2, 3, size)
        p_neu = 1 - p_neg - p_pos
        sentiment = np.array(["negative", "neutral", "positive"])[np.argmax(np.stack([p_neg, p_neu, p_pos]), axis=0)]
        evidence = np.where(rng.random(size) < 0.5, '[{"word": "fell", "weight": 0.4}, {"word": "quarter", "weight": 0.1}]', None)
        scores = pd.DataFrame({
            "document_id": ids, "model_version": MV, "published_at": published, "sentiment": sentiment,
            "p_negative": p_neg.round(4), "p_neutral": p_neu.round(4), "p_positive": p_pos.round(4),
            "topic": np.array(TOPICS)[rng.integers(0, len(TOPICS), size)], "topic_confidence": 0.8,
            "evidence": evidence})
        seconds["document_scores"] = seconds.get("document_scores", 0) + _copy(
            engine, "document_scores", list(scores.columns), scores)
        scored = rng.random(size) < 0.7
        e_neg = np.where(scored, rng.beta(2, 5, size).round(4), np.nan)
        entities = pd.DataFrame({
            "document_id": ids, "entity": ticker, "model_version": np.where(scored, MV, ""),
            "sentiment": np.where(scored, np.where(e_neg > 0.5, "negative", "neutral"), None),
            "confidence": np.where(scored, 0.7, np.nan), "linked_by": "cashtag", "mention": ticker,
            "p_negative": e_neg, "p_neutral": np.where(scored, (1 - e_neg) / 2, np.nan).round(4),
            "p_positive": np.where(scored, (1 - e_neg) / 2, np.nan).round(4)})
        seconds["document_entities"] = seconds.get("document_entities", 0) + _copy(
            engine, "document_entities", list(entities.columns), entities)
        print(f"  documents {offset + size:,}/{n:,}", flush=True)
    return seconds


def _windows_frame(scopes: list[tuple[str, str, float]], starts: np.ndarray, width: int, rng):
    """Every scope's windows at ``starts``, time-major (all scopes of one window, then the next): the order
    the pipeline writes them in, so a time range of windows sits in neighbouring pages as in production."""
    import pandas as pd

    dims = np.tile([d for d, _, _ in scopes], len(starts))
    keys = np.tile([k for _, k, _ in scopes], len(starts))
    rate = np.tile([r for _, _, r in scopes], len(starts)) * width / 86400
    n = np.maximum(1, rng.poisson(rate))
    neg = rng.binomial(n, 0.2)
    pos = rng.binomial(n - neg, 0.4)
    begin = pd.to_datetime(np.repeat(starts, len(scopes)), unit="s", utc=True)
    return pd.DataFrame({
        "dimension": dims, "key": keys, "window_start": begin, "window_end": begin + pd.Timedelta(seconds=width),
        "model_version": MV, "n_docs": n, "n_negative": neg, "n_neutral": n - neg - pos, "n_positive": pos,
        "mean_score": ((pos - neg) / n).round(4), "mean_p_negative": (neg / n).round(4),
        "sum_score": (pos - neg).astype(float), "sum_p_negative": neg.astype(float),
        "n_first_stories": n, "n_negative_first": neg})


def load_windows(engine, tickers: list[str], days: int, now: datetime, rng,
                 minute_tickers: int) -> tuple[float, dict[str, int]]:
    weights = zipf_weights(len(tickers))
    scopes = ([("all", "*", DOCS_PER_DAY)] + [("topic", t, DOCS_PER_DAY / len(TOPICS)) for t in TOPICS]
              + [("source", s, DOCS_PER_DAY / len(SOURCES)) for s in SOURCES]
              + [("ticker", t, DOCS_PER_DAY * w) for t, w in zip(tickers, weights)])
    hour = int(now.timestamp()) // 3600 * 3600
    day = int(now.timestamp()) // 86400 * 86400
    minute = int(now.timestamp()) // 60 * 60
    plan = {3600: (scopes, np.arange(hour - (days * 24 - 1) * 3600, hour + 1, 3600)),
            86400: (scopes, np.arange(day - (days - 1) * 86400, day + 1, 86400)),
            60: (scopes[:1 + len(TOPICS) + len(SOURCES) + minute_tickers], np.arange(minute - (48 * 60 - 1) * 60, minute + 1, 60))}
    seconds, rows = 0.0, {}
    for width, (chosen, starts) in plan.items():
        per = max(1, 600_000 // len(chosen))
        for i in range(0, len(starts), per):
            frame = _windows_frame(chosen, starts[i:i + per], width, rng)
            seconds += _copy(engine, "sentiment_windows", list(frame.columns), frame)
            rows[str(width)] = rows.get(str(width), 0) + len(frame)
        print(f"  windows of {width}s: {rows[str(width)]:,}", flush=True)
    return seconds, rows


def load_alerts(engine, tickers: list[str], now: datetime, n: int = 500) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("""
            INSERT INTO alerts (id, fingerprint, rule, dimension, key, width_seconds, severity, status, starts_at,
                                fired_at, ends_at, last_window, evidence)
            SELECT 'ep-' || i, 'fp-' || i, 'ticker-negative-share', 'ticker', (:tickers)[1 + i % :k], 3600, 'warning',
                   CASE WHEN i % 25 = 0 THEN 'firing' WHEN i % 5 = 0 THEN 'cancelled' ELSE 'resolved' END,
                   :now - make_interval(hours => i), :now - make_interval(hours => i) + interval '2 hours',
                   CASE WHEN i % 25 = 0 THEN NULL ELSE :now - make_interval(hours => i) + interval '5 hours' END,
                   :now - make_interval(hours => i) + interval '4 hours',
                   jsonb_build_object('test', 'one-sided exact binomial', 'window',
                       jsonb_build_object('p_value', 1e-5, 'figures', jsonb_build_object('share', 0.5, 'baseline_share', 0.2)),
                       'documents', jsonb_build_array(jsonb_build_object('title', 'bench ' || i, 'url', 'https://x/' || i)))
            FROM generate_series(1, :n) AS i"""), {"tickers": tickers, "now": now, "n": n, "k": min(300, len(tickers))})
        conn.execute(sa.text("""
            INSERT INTO alert_events (alert_id, event, window_start, detail)
            SELECT a.id, e, a.starts_at, '{"p_value": 1e-5}'::jsonb FROM alerts a, unnest(ARRAY['pending', 'firing', 'notified']) e"""))


def explain(conn, sql: str, params: dict) -> dict:
    plan = conn.execute(sa.text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}"), params).scalar()[0]
    nodes, stack = [], [plan["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(f"{node['Node Type']}" + (f" on {node['Relation Name']}" if "Relation Name" in node else "")
                     + (f" using {node['Index Name']}" if "Index Name" in node else ""))
        stack.extend(node.get("Plans", []))
    return {"execution_ms": round(plan["Execution Time"], 2), "planning_ms": round(plan["Planning Time"], 2),
            "nodes": nodes, "seq_scan_on_windows": any(n.startswith("Seq Scan on sentiment_windows") for n in nodes)}


TREND_SQL = """
SELECT window_start, window_end, n_docs, n_negative, negative_share, mean_score
FROM sentiment_trend
WHERE width_seconds = 3600 AND dimension = 'ticker' AND key = :k AND model_version = :mv
  AND window_start >= now() - interval '30 days'
ORDER BY window_start"""
MOVERS_SQL = """
SELECT dimension, key, docs_24h, negative_share_24h, negative_share_baseline_7d, negative_share_change
FROM scope_leaderboard WHERE model_version = :mv AND dimension <> 'all' AND docs_24h >= 20
  AND negative_share_change IS NOT NULL ORDER BY negative_share_change DESC LIMIT 15"""
DOCS_SQL = """
SELECT d.id, d.published_at, d.title, m.sentiment, d.evidence FROM ticker_mentions m
JOIN document_detail d ON d.id = m.document_id AND d.model_version = m.model_version
WHERE m.ticker = :k AND m.model_version = :mv ORDER BY m.published_at DESC LIMIT 20"""


def movers_side_by_side(engine, repeats: int) -> dict:
    """The movers query with 0004's width/time index and without it (dropped in a rolled-back transaction)."""
    def best(conn) -> float:
        return min(explain(conn, MOVERS_SQL, {"mv": MV})["execution_ms"] for _ in range(repeats))

    out = {}
    with engine.connect() as conn:
        out["with_index_ms"] = best(conn)
        conn.rollback()
        conn.execute(sa.text("DROP INDEX sentiment_windows_width_time_idx"))
        out["without_index_ms"] = best(conn)
        conn.rollback()  # the index is back
        out["with_index_again_ms"] = best(conn)
    out["ratio_without_over_with"] = round(out["without_index_ms"] / out["with_index_ms"], 2)
    return out


def render_pages(settings: Settings, engine, params_by_page: dict[str, dict], repeats: int) -> dict:
    out = {}
    for label, (page_name, params) in params_by_page.items():
        page = next(p for p in PAGES if p.name == page_name)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            with engine.connect() as conn:
                page.render(conn, params, settings)
            times.append(time.perf_counter() - started)
        # The first render computes the movers; the later ones find them cached (a minute).
        out[label] = {"first_s": round(times[0], 3), "best_s": round(min(times), 3),
                      "median_s": round(statistics.median(times), 3)}
        print(f"  render {label}: first {times[0]:.3f}s best {min(times):.3f}s median {statistics.median(times):.3f}s",
              flush=True)
    return out


def browser_loads(settings: Settings, urls: dict[str, str], repeats: int) -> dict | str:
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_bin):
        return "chromium or chromedriver not installed: not measured"
    import waitress
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.conftest import free_port

    settings = settings.model_copy(update={"dashboard_refresh_seconds": 3600})
    server = waitress.create_server(create_app(settings).server, host="127.0.0.1", port=free_port(), threads=8)
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{server.effective_port}"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_bin))
    out: dict = {"full_load": {}, "in_app": {}}

    def drawn(page_name: str) -> None:
        WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.ID, f"{page_name}-status"))
        # The charts drawn too, not only the HTML.
        WebDriverWait(driver, 120).until(lambda d: d.execute_script(
            "return Array.from(document.querySelectorAll('.dash-graph')).every(g => g.querySelector('.main-svg'))"))

    def navigate(path: str) -> None:
        # What a dcc.Link does: push the address, tell dash's Location.
        driver.execute_script("window.history.pushState({}, '', arguments[0]);"
                              "window.dispatchEvent(new CustomEvent('_dashprivate_pushstate'));", path)

    try:
        driver.get(base + "/inbox")  # the first load fetches and caches the scripts, as a returning reader has them
        drawn("inbox")
        for label, (page_name, path) in urls.items():
            loads, moves = [], []
            for _ in range(repeats):
                started = time.perf_counter()
                driver.get(base + path)  # a reload: scripts from the cache, parsed again
                drawn(page_name)
                loads.append(time.perf_counter() - started)
                navigate("/alerts?status=none")  # another page first, so the link below renders anew
                drawn("alerts")
                started = time.perf_counter()
                navigate(path)  # a click on a link inside the dashboard
                drawn(page_name)
                moves.append(time.perf_counter() - started)
            out["full_load"][label] = {"best_s": round(min(loads), 3), "median_s": round(statistics.median(loads), 3)}
            out["in_app"][label] = {"best_s": round(min(moves), 3), "median_s": round(statistics.median(moves), 3)}
            print(f"  browser {label}: reload best {min(loads):.3f}s median {statistics.median(loads):.3f}s; "
                  f"link best {min(moves):.3f}s median {statistics.median(moves):.3f}s", flush=True)
    finally:
        driver.quit()
        server.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--documents", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--tickers", type=int, default=8400)
    ap.add_argument("--minute-tickers", type=int, default=500, help="the busiest tickers that have minute windows")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    now = datetime.now(timezone.utc)
    tickers = [f"T{i:04d}" for i in range(1, args.tickers + 1)]
    result: dict = {"command": "bench/bench_dashboard.py " + " ".join(sys.argv[1:]), "args": vars(args),
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "started": now.isoformat()}
    with db.scratch_database(Settings(), prefix="bench_dashboard") as settings:
        owner = db.engine(settings)
        print(f"loading {args.documents:,} documents over {args.days} days ...", flush=True)
        load = load_documents(owner, args.documents, args.days, tickers, now, rng)
        windows_s, window_rows = load_windows(owner, tickers, args.days, now, rng, args.minute_tickers)
        load["sentiment_windows"] = windows_s
        load_alerts(owner, tickers, now)
        started = time.perf_counter()
        with owner.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
        load["vacuum_analyze"] = time.perf_counter() - started
        result["load_seconds"] = {k: round(v, 1) for k, v in load.items()}
        result["rows"] = {"documents": args.documents, "windows": window_rows,
                          "scopes": 1 + len(TOPICS) + len(SOURCES) + len(tickers)}
        with owner.connect() as conn:
            result["table_bytes"] = dict(conn.execute(sa.text(
                "SELECT relname, pg_total_relation_size(oid) FROM pg_class WHERE relname IN "
                "('documents', 'document_scores', 'document_entities', 'sentiment_windows')")).all())
            median_ticker = tickers[len(tickers) // 2]
            links = dict(conn.execute(sa.text("SELECT entity, count(*) FROM document_entities WHERE entity = ANY(:t) "
                                              "GROUP BY entity"), {"t": [tickers[0], median_ticker]}).all())
        result["ticker_links"] = links
        analyst = db.analyst_engine(settings)
        with analyst.connect() as conn:
            conn.execute(sa.text("SELECT 1 FROM sentiment_trend LIMIT 1"))  # warm the connection
            result["explain"] = {
                "ticker_trend_30d_busiest": explain(conn, TREND_SQL, {"k": tickers[0], "mv": MV}),
                "ticker_trend_30d_median": explain(conn, TREND_SQL, {"k": median_ticker, "mv": MV}),
                "movers": explain(conn, MOVERS_SQL, {"mv": MV}),
                "ticker_documents_busiest": explain(conn, DOCS_SQL, {"k": tickers[0], "mv": MV}),
                "ticker_documents_median": explain(conn, DOCS_SQL, {"k": median_ticker, "mv": MV}),
            }
        for name, e in result["explain"].items():
            print(f"  EXPLAIN {name}: {e['execution_ms']} ms", flush=True)
        result["movers_index"] = movers_side_by_side(owner, 3)
        print(f"  movers with/without the width-time index: {result['movers_index']}", flush=True)
        pages = {
            "market_1h": ("market", {"width": "1h"}), "market_1m": ("market", {"width": "1m"}),
            "market_1d": ("market", {"width": "1d"}),
            "ticker_busiest_1h": ("scope", {"dimension": "ticker", "key": tickers[0], "width": "1h"}),
            "ticker_median_1h": ("scope", {"dimension": "ticker", "key": median_ticker, "width": "1h"}),
            "topic_1h": ("scope", {"dimension": "topic", "key": TOPICS[0], "width": "1h"}),
            "alerts": ("alerts", {}), "alerts_episode": ("alerts", {"episode": "ep-25"}),
            "inbox_baseline": ("inbox", {}),  # no query, no chart: what Dash and the browser cost alone
        }
        result["load_average_before_render"] = os.getloadavg()
        result["render"] = render_pages(settings, analyst, pages, args.repeats)
        urls = {label: (page, {"market": "/", "scope": "/scope", "alerts": "/alerts", "inbox": "/inbox"}[page]
                        + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else ""))
                for label, (page, params) in pages.items()}
        result["load_average_before_browser"] = os.getloadavg()
        result["browser"] = browser_loads(settings, urls, 3)
        result["load_average_after"] = os.getloadavg()
        analyst.dispose()
        owner.dispose()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"dashboard-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
