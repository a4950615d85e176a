"""``finpulse run`` (what ``make run`` calls): the whole system on one machine, with real data flowing.

It brings up the embedded stack (``finpulse stack up``), migrates the schema, creates the topics,
starts the pipeline and the alert service as background services, replays the bundled sample once
(``finpulse ingest demo``), waits until the pipeline has committed every record of its topics and
prints what landed. Each component runs as its own CLI process: this shared package starts them
and never imports them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import click

from finpulse.settings import get_settings


def finpulse_argv(*args: str) -> list[str]:
    """argv of a ``finpulse`` subcommand run by this interpreter (the project's venv)."""
    return [sys.executable, "-m", "finpulse", *args]


def _call(args: list[str], *, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(finpulse_argv(*args), capture_output=True, text=True, timeout=timeout, check=False)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr or "").strip().splitlines() + (proc.stdout or "").strip().splitlines()
    errors = [ln for ln in lines if ln.lower().startswith(("error", "usage"))]
    return (errors or lines or ["no output"])[-1].strip()


def _step(args: list[str], *, what: str, timeout: float, required: bool = True) -> bool:
    """Run one ``finpulse`` step, echo its output; a required step that fails ends the run."""
    proc = _call(args, timeout=timeout)
    if proc.returncode == 0:
        if proc.stdout.strip():
            click.echo(proc.stdout.strip())
        return True
    if required:
        click.echo(f"error: {what} failed: {_last_line(proc)}", err=True)
        sys.exit(1)
    click.echo(f"{what}: not started ({_last_line(proc)}); going on without it", err=True)
    return False


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
TOP_TICKERS_SQL = """
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
            top = conn.execute(sa.text(TOP_TICKERS_SQL)).all()
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

    settings = get_settings()
    _step(["stack", "up"], what="the local stack", timeout=900)
    engine = db.engine(settings)
    applied = db.migrate(engine)
    click.echo(f"schema at version {db.current_version(engine)}"
               + (f" (applied {', '.join(applied)})" if applied else ""))
    engine.dispose()
    created = ensure_topics([settings.topic_documents, settings.topic_dead_letters], settings=settings)
    click.echo(f"topics ready: {settings.topic_documents}, {settings.topic_dead_letters}"
               + (f" (created {', '.join(created)})" if created else ""))

    click.echo("starting the pipeline (Spark; the first start takes a minute) ...")
    _step(["pipeline", "start"], what="the pipeline", timeout=600)
    _step(["alerts", "start"], what="alerts", timeout=300, required=False)

    if demo:
        proc = subprocess.run(finpulse_argv("ingest", "demo", *(["--limit", str(demo_limit)] if demo_limit else [])),
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            click.echo(f"error: the sample replay failed: {_last_line(proc)}", err=True)
            sys.exit(1)
        click.echo("  " + proc.stdout.strip().replace("\n", "\n  "))

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
