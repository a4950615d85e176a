"""``finpulse run`` (what ``make run`` calls): the whole system on one machine, with real data flowing.

It brings up the embedded stack (``finpulse stack up``), migrates the schema, creates the topics,
starts the pipeline and the alert service as background services, replays the bundled sample once
(``finpulse ingest demo``), waits until the pipeline has committed every record of its topics and
prints what landed. Each component runs as its own CLI process: this shared package starts them
and never imports them.
"""

from __future__ import annotations

import json
import os
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


def _read_progress(settings) -> dict:
    """The streaming job's progress file (rewritten after every batch), or {} before its first."""
    try:
        return json.loads(settings.pipeline_progress_file().read_text())
    except (OSError, ValueError):
        return {}


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def records_to_go(ends: dict[str, dict[str, int]], committed: dict[str, dict[str, int]]) -> int:
    """Records in the topics beyond what the job committed, summed over partitions."""
    return sum(max(0, end - int(committed.get(topic, {}).get(part, 0)))
               for topic, parts in ends.items() for part, end in parts.items())


def progress_line(done: int, to_go: int, rate: float | None) -> str:
    """'1,240 records scored, 3,760 to go (148/s, about 25 s left)'."""
    if rate is None or rate <= 0:
        return f"{done:,} records scored, {to_go:,} to go (the first batch loads the model)"
    return f"{done:,} records scored, {to_go:,} to go ({rate:,.0f}/s, about {to_go / rate:,.0f} s left)"


def _wait_consumed(settings, timeout: float, *, since: dict, every: float = 5.0) -> bool:
    """Wait until the pipeline has committed every record of its topics, printing progress at least every
    ``every`` seconds: records scored since ``since`` (the progress file's totals then), the rate, an ETA."""
    from finpulse.kafka import EndOffsets

    reader = EndOffsets(settings, [settings.topic_documents, settings.topic_dead_letters])
    base = int((since.get("totals") or {}).get("n_input", 0))
    base_pid = since.get("pid")
    first_seen: tuple[float, int] | None = None  # (when, records) of the first batch committed while waiting
    deadline = time.monotonic() + timeout
    last_print = 0.0
    try:
        while time.monotonic() < deadline:
            status = _read_progress(settings)
            if status.get("pid") != base_pid:
                base, base_pid = 0, status.get("pid")  # a restarted job counts from zero
            done = int((status.get("totals") or {}).get("n_input", 0)) - base
            to_go = records_to_go(reader.read(), status.get("committed_offsets") or {})
            now = time.monotonic()
            if done > 0 and first_seen is None:
                first_seen = (now, done)
            rate = None
            if first_seen is not None and now - first_seen[0] >= 1.0:
                rate = (done - first_seen[1]) / (now - first_seen[0]) or None
            if to_go == 0 and status.get("state") == "running":
                click.echo(f"  pipeline: {done:,} records scored, none to go")
                return True
            if status.get("state") in ("stopped", None) and not _alive(status.get("pid")):
                click.echo(f"  the pipeline is not running; see {settings.home / 'pipeline' / 'pipeline.log'}", err=True)
                return False
            if now - last_print >= every:
                failed = f" (last batch failed: {status.get('last_error')}; retrying)" if status.get("state") == "failed" else ""
                click.echo(f"  pipeline: {progress_line(done, to_go, rate)}{failed}")
                last_print = now
            time.sleep(1.0)
    finally:
        reader.close()
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
    from finpulse.pending import line, pending_backfill

    engine = db.engine(settings)
    try:
        with engine.connect() as conn:
            counts = {name: conn.execute(sa.text(sql)).scalar_one() for name, sql in _SUMMARY_SQL.items()}
            top = conn.execute(sa.text(TOP_TICKERS_SQL)).all()
            pending = pending_backfill(conn)
    finally:
        engine.dispose()
    click.echo("In Postgres now: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if top:
        click.echo("Top tickers: " + ", ".join(f"{r.entity} {r.n} ({r.mean_score:+.2f})" for r in top))
    if pending["documents"]:
        click.echo(line(pending))
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

    before = _read_progress(settings)
    if demo:
        proc = subprocess.run(finpulse_argv("ingest", "demo", *(["--limit", str(demo_limit)] if demo_limit else [])),
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            click.echo(f"error: the sample replay failed: {_last_line(proc)}", err=True)
            sys.exit(1)
        click.echo("  " + proc.stdout.strip().replace("\n", "\n  "))

    click.echo("waiting for the pipeline to consume its topics ...")
    if not _wait_consumed(settings, wait, since=before):
        click.echo("the pipeline has not caught up yet; `finpulse pipeline status` shows its progress", err=True)
    _print_summary(settings)
    click.echo(
        "\nThe stack, the pipeline and alerts keep running in the background; `make stop` stops them.\n"
        f"  kcat -b {settings.bootstrap_servers[0]} -L\n"
        "  .venv/bin/finpulse pipeline status\n"
        "  psql \"$(.venv/bin/finpulse db url --show-password)\""
    )
