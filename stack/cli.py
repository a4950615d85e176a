"""`finpulse stack up | down | status`."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from stack import LocalStack, StackError


@click.group("stack")
def cli() -> None:
    """The local stack: Kafka broker (KRaft), Postgres and Spark's Kafka jars under FINPULSE_HOME."""


def _fail(exc: StackError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


@cli.command()
def up() -> None:
    """Start every embedded component (idempotent) and wait until each answers."""
    started = time.monotonic()
    try:
        statuses = LocalStack().up()
    except StackError as exc:
        _fail(exc)
    for status in statuses:
        click.echo(status.line())
    click.echo(f"stack up in {time.monotonic() - started:.1f}s")


@cli.command()
@click.option("--purge", is_flag=True, help="Also delete Kafka and Postgres data under FINPULSE_HOME.")
def down(purge: bool) -> None:
    """Stop the embedded components; data is kept unless --purge."""
    try:
        LocalStack().down(purge=purge)
    except StackError as exc:
        _fail(exc)
    click.echo("stack down" + (" (data purged)" if purge else ""))


@cli.command()
def status() -> None:
    """Print each component, its address, pid and health; exit 1 if any is down."""
    statuses = LocalStack().status()
    for s in statuses:
        click.echo(s.line())
    sys.exit(0 if all(s.healthy for s in statuses) else 1)


DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEMO_FILE = DEMO_DIR / "stock_market_tweets_2020.csv.gz"
DEMO_SOURCE = "stock_market_tweets_2020"
# The bundled demo stream's columns, as `finpulse ingest replay` options.
DEMO_REPLAY_ARGS = ["--source", DEMO_SOURCE, "--kind", "comment", "--text-column", "text",
                    "--time-column", "created_at", "--id-column", "id", "--ticker-column", "cashtags",
                    "--lang", "en", "--shift-to-now", "--no-progress"]


def _finpulse(*args: str) -> list[str]:
    # stack never imports pipeline/alerts: they run as their own CLI processes.
    return [sys.executable, "-m", "finpulse", *args]


def _call(args: list[str], *, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(_finpulse(*args), capture_output=True, text=True, timeout=timeout, check=False)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr or "").strip().splitlines() + (proc.stdout or "").strip().splitlines()
    errors = [ln for ln in lines if ln.lower().startswith(("error", "usage"))]
    return (errors or lines or ["no output"])[-1].strip()


def _demo_csv(settings) -> Path:
    """The bundled sample, decompressed once under HOME (replay reads plain CSV)."""
    out = settings.home / "demo" / DEMO_FILE.name.removesuffix(".gz")
    if not out.exists() or out.stat().st_mtime < DEMO_FILE.stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        with gzip.open(DEMO_FILE, "rb") as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(out)
    return out


def _pipeline_status() -> dict:
    proc = _call(["pipeline", "status", "--json"], timeout=60)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}


def _wait_consumed(timeout: float) -> bool:
    """Wait until the pipeline has committed every record in its topics; print progress."""
    deadline = time.monotonic() + timeout
    last_print = 0.0
    while time.monotonic() < deadline:
        status = _pipeline_status()
        lag = status.get("lag")
        if lag == 0:
            return True
        if not status.get("running"):
            click.echo(f"  the pipeline is not running; see {status.get('log', 'its log')}", err=True)
            return False
        if time.monotonic() - last_print > 15:
            batch = status.get("last_batch") or {}
            click.echo(f"  pipeline: {lag if lag is not None else '?'} record(s) to go, "
                       f"last batch {batch.get('batch_id', '-')}")
            last_print = time.monotonic()
        time.sleep(3)
    return False


_SUMMARY_SQL = {
    "documents": "SELECT count(*) FROM documents",
    "scores": "SELECT count(*) FROM document_scores",
    "entity links": "SELECT count(*) FROM document_entities",
    "dead letters": "SELECT count(*) FROM dead_letters",
    "windows": "SELECT count(*) FROM sentiment_windows",
    "batches": "SELECT count(*) FROM pipeline_batches WHERE status = 'committed'",
}
# Per ticker, the entity head's score where the model has one (else the document's), per model version.
_TOP_TICKERS = """
SELECT e.entity, count(*) AS n,
       avg(CASE WHEN e.p_negative IS NOT NULL THEN e.p_positive - e.p_negative ELSE s.score END) AS mean_score
FROM document_entities e
JOIN document_scores s ON s.document_id = e.document_id AND e.model_version IN ('', s.model_version)
WHERE e.entity_type = 'ticker'
GROUP BY e.entity ORDER BY n DESC, e.entity LIMIT 10
"""
PSQL_EXAMPLES = """\
Query it (psql "$(.venv/bin/finpulse db url --show-password)"):
  -- the latest scored documents
  SELECT d.published_at, d.source, s.sentiment, round(s.score::numeric, 2), left(d.text, 80)
    FROM document_sentiment s JOIN documents d USING (id) ORDER BY d.published_at DESC LIMIT 20;
  -- daily sentiment of one ticker
  SELECT window_start::date, n_docs, round(mean_score::numeric, 3) FROM sentiment_windows
    WHERE dimension = 'ticker' AND key = 'AAPL' AND width_seconds = 86400 ORDER BY window_start;
  -- the last hour, per topic
  SELECT key, sum(n_docs), round(avg(mean_score)::numeric, 3) FROM sentiment_windows
    WHERE dimension = 'topic' AND width_seconds = 60 AND window_start > now() - interval '1 hour'
    GROUP BY key ORDER BY 2 DESC;
  -- the sentiment towards each company a document names (the model's entity head)
  SELECT d.published_at, e.entity, e.sentiment, round(e.confidence::numeric, 2), left(coalesce(d.title, d.text), 60)
    FROM document_entities e JOIN documents d ON d.id = e.document_id
    WHERE e.sentiment IS NOT NULL ORDER BY d.published_at DESC LIMIT 20;
  -- what was rejected, and why
  SELECT stage, reason, count(*) FROM dead_letters GROUP BY 1, 2 ORDER BY 3 DESC;"""


def _print_summary(settings) -> None:
    import sqlalchemy as sa

    from finpulse import db

    engine = db.engine(settings)
    try:
        with engine.connect() as conn:
            counts = {name: conn.execute(sa.text(sql)).scalar_one() for name, sql in _SUMMARY_SQL.items()}
            top = conn.execute(sa.text(_TOP_TICKERS)).all()
    finally:
        engine.dispose()
    click.echo("In Postgres now: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if top:
        click.echo("Top tickers: " + ", ".join(f"{r.entity} {r.n} ({r.mean_score:+.2f})" for r in top))
    click.echo(PSQL_EXAMPLES)


@click.command("run")
@click.option("--demo/--no-demo", default=True, show_default=True,
              help="Replay the bundled sample stream once (a marker under FINPULSE_HOME remembers it).")
@click.option("--demo-limit", type=click.IntRange(min=1), default=None,
              help="Replay only the first N rows of the sample (a quick check).")
@click.option("--wait", type=float, default=1800.0, show_default=True,
              help="Seconds to wait for the pipeline to consume the sample.")
def run(demo: bool, demo_limit: int | None, wait: float) -> None:
    """Stack up, migrate, create topics, start the pipeline and alerts, replay the sample once, report."""
    from finpulse import db
    from finpulse.kafka import ensure_topics
    from finpulse.settings import get_settings

    settings = get_settings()
    try:
        statuses = LocalStack(settings).up()
    except StackError as exc:
        _fail(exc)
    for status in statuses:
        click.echo(status.line())
    engine = db.engine(settings)
    applied = db.migrate(engine)
    click.echo(f"schema at version {db.current_version(engine)}"
               + (f" (applied {', '.join(applied)})" if applied else ""))
    engine.dispose()
    created = ensure_topics([settings.topic_documents, settings.topic_dead_letters], settings=settings)
    click.echo(f"topics ready: {settings.topic_documents}, {settings.topic_dead_letters}"
               + (f" (created {', '.join(created)})" if created else ""))

    click.echo("starting the pipeline (Spark; the first start takes a minute) ...")
    proc = _call(["pipeline", "start"], timeout=600)
    if proc.returncode != 0:
        click.echo(f"error: the pipeline did not start: {_last_line(proc)}", err=True)
        sys.exit(1)
    click.echo(proc.stdout.strip())
    proc = _call(["alerts", "start"], timeout=300)
    if proc.returncode == 0:
        click.echo(proc.stdout.strip())
    else:
        click.echo(f"alerts: not started ({_last_line(proc)}); going on without them", err=True)

    marker = settings.home / "demo" / f"{DEMO_SOURCE}.replayed"
    if demo and not marker.exists():
        csv_path = _demo_csv(settings)
        click.echo(f"replaying the sample stream {DEMO_FILE.name} ({demo_limit or 5000} tweets, CC BY 4.0; see "
                   f"stack/demo/ATTRIBUTION.md), timestamps shifted to end now ...")
        limit = ["--limit", str(demo_limit)] if demo_limit else []
        proc = subprocess.run(_finpulse("ingest", "replay", str(csv_path), *DEMO_REPLAY_ARGS, *limit),
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            click.echo(f"error: replay failed: {_last_line(proc)}", err=True)
            sys.exit(1)
        click.echo("  " + proc.stdout.strip().replace("\n", "\n  "))
        # Written only after every record was acked: a failed replay runs again next time, and
        # its stable ids make the documents upsert rather than double.
        marker.write_text(datetime.now(timezone.utc).isoformat() + "\n")
    elif demo:
        click.echo(f"sample stream already replayed ({marker}); not again")

    click.echo("waiting for the pipeline to consume its topics ...")
    if not _wait_consumed(wait):
        click.echo("the pipeline has not caught up yet; `finpulse pipeline status` shows its progress", err=True)
    _print_summary(settings)
    click.echo(
        "\nThe stack, the pipeline and alerts keep running in the background; `make stop` stops them.\n"
        f"  kcat -b {settings.bootstrap_servers[0]} -L\n"
        "  .venv/bin/finpulse pipeline status\n"
        "  psql \"$(.venv/bin/finpulse db url --show-password)\""
    )


@cli.command()
@click.option("--sep", default=",", show_default=True, help="Separator (',' for spark-submit --jars).")
def jars(sep: str) -> None:
    """Print Spark's Kafka connector jars for `spark-submit --jars` (resolved with Maven if needed)."""
    from stack import spark_jars

    try:
        click.echo(sep.join(spark_jars()))
    except StackError as exc:
        _fail(exc)
