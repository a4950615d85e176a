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
from pathlib import Path
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
def analyst_examples_file() -> Path:
    """The analysts' example queries (README "For analysts" embeds the same file; a test runs each)."""
    from finpulse.db import SQL_DIR

    return SQL_DIR / "examples" / "for_analysts.sql"


def analyst_examples() -> str:
    """What the summary prints of the examples: how to connect, then the file as it is."""
    path = analyst_examples_file()
    head = 'Query it (psql "$(.venv/bin/finpulse db url --analyst --show-password)"), e.g. ' + str(path) + ":"
    try:
        return head + "\n" + "\n".join("  " + line if line else "" for line in path.read_text().strip().splitlines())
    except OSError:
        return head + " (not found in this installation; see README, For analysts)"


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


DEMO_EMAIL_TO = "analysts@finpulse.localhost"


def demo_alert_env(settings, environ=None) -> dict[str, str]:
    """The alert settings ``finpulse run`` gives its child processes (the alert service, the receivers) so
    the demo's alerts land in the local receivers: SMTP to the mail catcher without STARTTLS or login, the
    webhook receiver's URL, signed with a secret generated once into ``$FINPULSE_HOME/demo/webhook-secret``
    (mode 600, never in the repository). What the operator configured already is left as it is: email
    when FINPULSE_ALERTS_SMTP_HOST is set, the webhook when FINPULSE_ALERTS_WEBHOOK_URL is set."""
    from finpulse.inbox import demo_webhook_secret

    environ = os.environ if environ is None else environ
    host = settings.receivers_host
    env: dict[str, str] = {}
    if not environ.get("FINPULSE_ALERTS_SMTP_HOST"):
        env.update({"FINPULSE_ALERTS_SMTP_HOST": host, "FINPULSE_ALERTS_SMTP_PORT": str(settings.receivers_smtp_port),
                    "FINPULSE_ALERTS_SMTP_STARTTLS": "false", "FINPULSE_ALERTS_SMTP_USER": "",
                    "FINPULSE_ALERTS_SMTP_PASSWORD": "",
                    "FINPULSE_ALERTS_EMAIL_TO": environ.get("FINPULSE_ALERTS_EMAIL_TO") or DEMO_EMAIL_TO})
    if not environ.get("FINPULSE_ALERTS_WEBHOOK_URL"):
        env.update({"FINPULSE_ALERTS_WEBHOOK_URL": demo_webhook_url(settings),
                    "FINPULSE_ALERTS_WEBHOOK_SECRET": demo_webhook_secret(settings, create=True)})
    return env


def demo_webhook_url(settings) -> str:
    return f"http://{settings.receivers_host}:{settings.receivers_webhook_port}/finpulse/alerts"


def _call_env(args: list[str], env: dict[str, str], *, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **env})


def _service_step(argv: list[str], env: dict[str, str], *, what: str, timeout: float) -> bool:
    """Start an optional background service; say so and go on when it cannot start."""
    try:
        proc = _call_env(argv, env, timeout=timeout)
    except subprocess.TimeoutExpired:
        click.echo(f"{what}: not started (no answer within {timeout:.0f}s); going on without it", err=True)
        return False
    if proc.returncode == 0:
        if proc.stdout.strip():
            click.echo(proc.stdout.strip())
        return True
    click.echo(f"{what}: not started ({_last_line(proc)}); going on without it", err=True)
    return False


def _alert_figures(engine, since) -> dict:
    import sqlalchemy as sa

    with engine.connect() as conn:
        ev = conn.execute(sa.text("SELECT at, windows FROM alert_evaluations WHERE at >= :t"), {"t": since}).first()
        outbox = dict(conn.execute(sa.text(
            "SELECT state, count(*) FROM alert_outbox WHERE created_at >= :t GROUP BY state"), {"t": since}).all())
    return {"evaluated": ev is not None, "windows": ev.windows if ev else 0, "outbox": outbox}


def _wait_alerts(settings, since, timeout: float) -> dict:
    """Wait for the alert service's first evaluation after ``since`` and for what it queued to be delivered
    (nothing pending any more), at most ``timeout`` seconds; returns the last figures seen."""
    from finpulse import db

    engine = db.engine(settings)
    deadline = time.monotonic() + timeout
    figures: dict = {"evaluated": False, "windows": 0, "outbox": {}}
    try:
        while time.monotonic() < deadline:
            try:
                figures = _alert_figures(engine, since)
            except Exception:  # noqa: BLE001 - the tables may be busy; the next look decides
                pass
            if figures["evaluated"] and not figures["outbox"].get("pending"):
                return figures
            time.sleep(1.0)
    finally:
        engine.dispose()
    return figures


def _demo_range(settings):
    import sqlalchemy as sa

    from finpulse import db

    engine = db.engine(settings)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT min(published_at), max(published_at) FROM documents")).one()
    finally:
        engine.dispose()


def _write_report(settings, since, until) -> str | None:
    out = settings.home / "report"
    proc = subprocess.run(finpulse_argv("report", "--since", since.isoformat(), "--until", until.isoformat(),
                                        "--out", str(out)), capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode == 0 and proc.stdout.strip():
        return proc.stdout.strip().splitlines()[-1]
    click.echo(f"report: not written ({_last_line(proc)})", err=True)
    return None


def _short(text: str | None, n: int = 70) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def window_figures(evaluation: dict | None) -> str:
    """An alert window's figures, rounded: 'share 31% vs 12%, p = 2e-06, 140 documents, 43 negative' or
    '14 negative vs 2.0 per window (7.0x), p = 3e-07'."""
    fig = (evaluation or {}).get("figures") or {}
    p = (evaluation or {}).get("p_value")
    p_text = f", p = {p:.1g}" if isinstance(p, (int, float)) else ""
    if "share" in fig:
        return (f"share {fig['share']:.0%} vs {fig.get('baseline_share') or 0:.0%}{p_text}, "
                f"{fig.get('n_docs', 0):,} documents, {fig.get('n_negative', 0):,} negative")
    if "ratio" in fig:
        return (f"{fig.get('n_negative', 0):,} negative vs {fig.get('baseline_rate') or 0:.1f} per window "
                f"({fig['ratio']:.1f}x){p_text}, {fig.get('n_docs', 0):,} documents")
    return "no figures"


def alerts_summary(settings) -> list[str]:
    """Lines on every alert episode that fired: rule, scope, rounded figures, the start of its evidence
    documents; or one line saying plainly that none did."""
    import sqlalchemy as sa

    from finpulse import db

    engine = db.engine(settings)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT rule, dimension, key, status, fired_at, evidence FROM alerts "
                "WHERE fired_at IS NOT NULL ORDER BY fired_at, rule, key")).all()
    finally:
        engine.dispose()
    if not rows:
        return ["Alerts: none fired. No window of the replayed stream met the shipped rules (alerts/rules.yaml) "
                "against its baseline, so nothing was mailed or posted."]
    lines = [f"Alerts: {len(rows)} fired"]
    for r in rows:
        evidence = r.evidence or {}
        what = "the whole market" if r.dimension == "all" else f"{r.dimension} {r.key}"
        lines.append(f"  {r.rule} ({what}, {r.status}, fired {r.fired_at:%Y-%m-%d %H:%M} UTC): "
                     f"{window_figures(evidence.get('window'))}")
        for d in (evidence.get("documents") or [])[:3]:
            lines.append(f"    - {_short(d.get('title') or d.get('excerpt'))}")
    return lines


def receivers_summary(settings) -> list[str]:
    from finpulse.inbox import mail_dir, webhook_dir

    def count(folder, suffix):
        return sum(1 for _ in folder.glob(f"*{suffix}")) if folder.is_dir() else 0

    return [f"Mail caught: {count(mail_dir(settings), '.eml')} message(s) in {mail_dir(settings)}",
            f"Webhooks received: {count(webhook_dir(settings), '.json')} in {webhook_dir(settings)} "
            f"(check one: .venv/bin/finpulse alerts verify --saved FILE)",
            f"Both on the dashboard's Inbox page: {settings.dashboard_url}inbox"]


@click.command("run")
@click.option("--demo/--no-demo", default=True, show_default=True,
              help="Replay the bundled sample stream once (a marker under FINPULSE_HOME remembers it).")
@click.option("--demo-limit", type=click.IntRange(min=1), default=None,
              help="Replay only the first N rows of the sample (a quick check).")
@click.option("--wait", type=float, default=1800.0, show_default=True,
              help="Seconds to wait for the pipeline to consume the sample.")
@click.option("--alerts-wait", type=float, default=180.0, show_default=True,
              help="Seconds to wait for the alert service's first evaluation and its deliveries.")
def run(demo: bool, demo_limit: int | None, wait: float, alerts_wait: float) -> None:
    """Stack up, migrate, create topics, start the receivers, dashboard, pipeline and alerts, replay the
    sample once, report."""
    from datetime import datetime, timezone

    from finpulse import db
    from finpulse.kafka import ensure_topics
    from finpulse.service import python_module_argv

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

    alert_env = demo_alert_env(settings)
    # The receivers check the webhooks' signatures with the same secret the alert service signs with.
    _service_step(python_module_argv("stack.receivers", "start"), alert_env, what="the demo receivers", timeout=60)
    _service_step(finpulse_argv("dashboard", "start"), {}, what="the dashboard", timeout=120)
    click.echo("starting the pipeline (Spark; the first start takes a minute) ...")
    _step(["pipeline", "start"], what="the pipeline", timeout=600)

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
    # Started once the sample's windows are in: its first evaluation catches up over the recent closed
    # windows, and a window it evaluated before its documents landed would not be looked at again.
    alerts_since = datetime.now(timezone.utc)
    alerts_up = _service_step(finpulse_argv("alerts", "start"), alert_env, what="alerts", timeout=300)
    figures = None
    if alerts_up:
        click.echo("waiting for the alert service's first evaluation and its deliveries ...")
        figures = _wait_alerts(settings, alerts_since, alerts_wait)
    _print_summary(settings)
    if figures is not None:
        if not figures["evaluated"]:
            click.echo(f"Alerts: no evaluation within {alerts_wait:.0f}s; `finpulse alerts status` shows it")
        else:
            click.echo(f"Alert evaluation: {figures['windows']} window(s); messages "
                       + (", ".join(f"{n} {state}" for state, n in sorted(figures["outbox"].items())) or "none"))
        for line in alerts_summary(settings):
            click.echo(line)
    for line in receivers_summary(settings):
        click.echo(line)
    first, last = _demo_range(settings)
    if first is not None:
        page = _write_report(settings, first, max(last, datetime.now(timezone.utc)))
        if page:
            click.echo(f"Report ({first:%Y-%m-%d %H:%M} .. now): {page}")
    click.echo(f"Dashboard: {settings.dashboard_url}")
    click.echo(analyst_examples())
    click.echo(
        "\nThe stack, the pipeline, alerts, the receivers and the dashboard keep running in the background; "
        "`make stop` stops them.\n"
        f"  kcat -b {settings.bootstrap_servers[0]} -L\n"
        "  .venv/bin/finpulse status\n"
        "  psql \"$(.venv/bin/finpulse db url --show-password)\""
    )

