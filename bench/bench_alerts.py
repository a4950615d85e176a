"""Benchmark: one alert evaluation over many scopes x days of hourly windows, and its query plans.

    .venv/bin/finpulse stack up   # the embedded Postgres (or any FINPULSE_* pointing at a running one)
    .venv/bin/python bench/bench_alerts.py --scopes 10000 --days 30 --repeats 5

Builds a scratch database (``--db``, dropped at the end unless ``--keep``; ``--reuse`` skips the
load when it is already filled), loads ``scopes`` tickers + 20 topics + the market of hourly
windows over ``days`` days (server-side ``generate_series``, random counts; every 100th ticker
has a negative surge in its last 3 windows), then times ``Evaluator.run_once`` with the shipped
rules evaluating the newest closed window of each rule (the steady state of a running
service: one new window per rule per evaluation). The repeats are dry runs (rolled back, so
each sees the same state); one real run follows. It also records ``EXPLAIN (ANALYZE,
BUFFERS)`` of each rule's window query and whether any plan scans ``sentiment_windows``
sequentially. Results: ``bench/results/alerts-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alerts import store  # noqa: E402
from alerts.config import load  # noqa: E402
from alerts.engine import Evaluator  # noqa: E402
from finpulse import db  # noqa: E402
from finpulse.settings import Settings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "bench@1"

_LOAD = """
INSERT INTO sentiment_windows (dimension, key, window_start, window_end, model_version, n_docs, n_negative,
    n_neutral, n_positive, mean_score, mean_p_negative, sum_score, sum_p_negative, n_first_stories, n_negative_first)
SELECT :dimension, key, ts, ts + interval '1 hour', :mv, n, neg, n - neg, 0, 0, neg::float8 / greatest(n, 1), 0, 0,
       greatest(n / 2, 1), neg / 2
FROM (
    SELECT key, ts, n,
           CASE WHEN surge AND ts >= :surge_from THEN (n * 0.7)::int ELSE floor(n * (0.12 + random() * 0.1))::int END AS neg
    FROM (
        SELECT k.key, k.surge, ts, (:base + floor(random() * :spread) + 0 * k.i)::int AS n
        FROM (SELECT i, :prefix || lpad(i::text, 5, '0') AS key, (i % 100 = 0) AS surge
              FROM generate_series(:lo, :hi) i) k,
             generate_series(CAST(:t0 AS timestamptz), CAST(:t1 AS timestamptz), interval '1 hour') ts
    ) raw
) w
"""


def load_windows(engine, scopes: int, days: int, end: datetime) -> float:
    t0, t1 = end - timedelta(days=days), end - timedelta(hours=1)
    surge_from = end - timedelta(hours=3)
    started = time.perf_counter()
    batches = [("ticker", "T", lo, min(lo + 999, scopes), 20, 40) for lo in range(1, scopes + 1, 1000)]
    batches += [("topic", "topic", 1, 20, 200, 200), ("all", "*", 1, 1, 5000, 2000)]
    for dimension, prefix, lo, hi, base, spread in batches:
        with engine.begin() as conn:
            sql = _LOAD if dimension != "all" else _LOAD.replace(":prefix || lpad(i::text, 5, '0')", "'*'")
            conn.execute(sa.text(sql), {"dimension": dimension, "prefix": prefix, "lo": lo, "hi": hi, "mv": MODEL,
                                        "t0": t0, "t1": t1, "base": base, "spread": spread, "surge_from": surge_from})
        print(f"  loaded {dimension} {lo}-{hi} ({time.perf_counter() - started:.0f}s)", flush=True)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE sentiment_windows"))
    return time.perf_counter() - started


def seq_scans(plan) -> list[str]:
    found = []
    if isinstance(plan, dict):
        if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") == "sentiment_windows":
            found.append(plan.get("Alias", "sentiment_windows"))
        for value in plan.values():
            found += seq_scans(value)
    elif isinstance(plan, list):
        for value in plan:
            found += seq_scans(value)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scopes", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--db", default="bench_alerts")
    ap.add_argument("--reuse", action="store_true", help="keep an already loaded database")
    ap.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    args = ap.parse_args()

    base = Settings()
    admin = db.engine(base, isolation_level="AUTOCOMMIT")
    url = sa.engine.make_url(base.sqlalchemy_url().get_secret_value()).set(database=args.db)
    settings = base.model_copy(update={"database_url": SecretStr(url.render_as_string(hide_password=False)),
                                       "alerts_settle_seconds": 0.0, "alerts_catchup_windows": 1})
    end = datetime(2026, 11, 1, tzinfo=timezone.utc)
    with admin.connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": args.db}).scalar()
        if exists and not args.reuse:
            conn.execute(sa.text(f"DROP DATABASE {args.db} WITH (FORCE)"))
            exists = False
        if not exists:
            conn.execute(sa.text(f"CREATE DATABASE {args.db}"))
    engine = db.engine(settings)
    db.migrate(engine)
    with engine.connect() as conn:
        n_rows = conn.execute(sa.text("SELECT count(*) FROM sentiment_windows")).scalar()
    load_s = None
    if n_rows == 0:
        print(f"loading {args.scopes} tickers x {args.days} days of hourly windows ...", flush=True)
        load_s = load_windows(engine, args.scopes, args.days, end)
        with engine.connect() as conn:
            n_rows = conn.execute(sa.text("SELECT count(*) FROM sentiment_windows")).scalar()
    with engine.begin() as conn:  # a fresh service state each run of the bench
        conn.execute(sa.text("TRUNCATE alert_outbox, alert_notifications, alert_events, alerts, alert_cursors, "
                             "alert_groups, alert_evaluations CASCADE"))

    config = load(None, settings)  # the shipped rules; receivers: log only
    now = end + timedelta(seconds=1)
    evaluator = Evaluator(engine, config, settings, now=lambda: now)
    evaluator.run_once(dry_run=True)  # warm caches and connections
    runs = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        report = evaluator.run_once(dry_run=True)
        runs.append(time.perf_counter() - started)
    started = time.perf_counter()
    real = evaluator.run_once()
    real_s = time.perf_counter() - started

    plans = {}
    with engine.connect() as conn:
        for rule in config.rules:
            start = end - timedelta(seconds=rule.width)
            params = store.window_params(rule, start, MODEL)
            plan_json = conn.execute(sa.text("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + store.windows_sql(rule)),
                                     params).scalar()
            plan_text = "\n".join(r[0] for r in conn.execute(
                sa.text("EXPLAIN (ANALYZE, BUFFERS) " + store.windows_sql(rule)), params))
            plans[rule.name] = {"seq_scans_of_sentiment_windows": seq_scans(plan_json),
                                "execution_ms": plan_json[0]["Execution Time"], "plan": plan_text}
    result = {
        "bench": "alerts",
        "when": datetime.now(timezone.utc).isoformat(),
        "command": "bench/bench_alerts.py " + " ".join(sys.argv[1:]),
        "scopes": args.scopes, "days": args.days, "window_rows": n_rows, "load_s": load_s,
        "rules": [r.name for r in config.rules],
        "evaluation_s": {"best": min(runs), "median": statistics.median(runs), "runs": runs,
                         "real_run": real_s},
        "windows_per_evaluation": report.windows,
        "transitions_per_evaluation": len(real.transitions),
        "messages_queued": len(real.messages),
        "any_seq_scan": any(p["seq_scans_of_sentiment_windows"] for p in plans.values()),
        "plans": plans,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg": os.getloadavg()},
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"alerts-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"{n_rows} window rows; evaluation best {min(runs):.3f}s median {statistics.median(runs):.3f}s "
          f"(real run {real_s:.3f}s, {len(real.transitions)} transitions); "
          f"seq scan of sentiment_windows: {result['any_seq_scan']}; {out}")
    for name, p in plans.items():
        print(f"--- {name}: {p['execution_ms']:.1f} ms\n{p['plan']}")
    engine.dispose()
    if not args.keep:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {args.db} WITH (FORCE)"))
    admin.dispose()


if __name__ == "__main__":
    main()
