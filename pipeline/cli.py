"""``finpulse pipeline``: run the streaming job, manage it as a background service, backfill windows.

Nothing here imports Spark at module level, so ``finpulse pipeline --help`` is instant.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

SERVICE = "pipeline"


@click.group("pipeline")
def cli() -> None:
    """The Spark streaming job: Kafka -> score -> Postgres (documents, scores, entities, windows)."""


def _job_options(fn):
    fn = click.option("--query-name", default=None,
                      help="Streaming query name: its checkpoint folder and pipeline_batches rows "
                           "(default FINPULSE_PIPELINE_QUERY_NAME).")(fn)
    fn = click.option("--master", default=None,
                      help="Spark master (default FINPULSE_SPARK_MASTER; ignored under spark-submit).")(fn)
    fn = click.option("--scorer", "scorer_url", default=None, metavar="URL",
                      help="Score through a model server (`finpulse model serve`) instead of in-process.")(fn)
    fn = click.option("--max-offsets-per-trigger", type=click.IntRange(min=1), default=None,
                      help="Most Kafka records per micro-batch (default FINPULSE_PIPELINE_MAX_OFFSETS_PER_TRIGGER).")(fn)
    fn = click.option("--trigger", default=None, help="Micro-batch interval, e.g. 2s, 500ms (default FINPULSE_PIPELINE_TRIGGER).")(fn)
    return fn


@cli.command("run")
@_job_options
@click.option("--until-idle", type=click.FloatRange(min=0), default=None, metavar="S",
              help="Stop once no new input arrived for S seconds (tests, backfills, demos).")
def run_command(trigger, max_offsets_per_trigger, scorer_url, master, query_name, until_idle) -> None:
    """Run the job in the foreground until SIGTERM/Ctrl-C (it stops between batches) or --until-idle."""
    from pipeline.job import JobError, JobOptions, PipelineJob

    try:
        options = JobOptions.from_settings(_settings(), trigger=trigger, max_offsets_per_trigger=max_offsets_per_trigger,
                                           until_idle_s=until_idle, scorer_url=scorer_url, master=master,
                                           query_name=query_name)
    except JobError as exc:
        raise click.ClickException(str(exc)) from None
    job = PipelineJob(options)
    _serve_metrics(job)
    job.install_signal_handlers()
    batches = job.run()
    click.echo(f"pipeline {options.query_name} stopped after {batches} batch(es) in this run", err=True)


def _serve_metrics(job) -> None:
    """The job's /metrics (pipeline.metrics) unless FINPULSE_PIPELINE_METRICS_PORT is 0; a taken port is one line
    naming the setting."""
    from finpulse.metrics import MetricsPortError, serve_metrics

    s = job.settings
    try:
        served = serve_metrics(job.metrics.registry, host=s.pipeline_metrics_host, port=s.pipeline_metrics_port,
                               setting="FINPULSE_PIPELINE_METRICS_PORT")
    except MetricsPortError as exc:
        raise click.ClickException(str(exc)) from None
    if served is not None:
        click.echo(f"pipeline metrics on http://{s.pipeline_metrics_host}:{s.pipeline_metrics_port}/metrics", err=True)


def _settings():
    from finpulse.settings import get_settings

    return get_settings()


def _service(args: list[str] | None = None):
    from finpulse.service import ManagedService, python_module_argv

    return ManagedService(SERVICE, python_module_argv("pipeline", "run", *(args or [])), settings=_settings())


def _progress_file(query_name: str | None) -> Path:
    settings = _settings()
    return settings.pipeline_progress_file(query_name)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@cli.command("start")
@_job_options
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for the query to start.")
def start_command(trigger, max_offsets_per_trigger, scorer_url, master, query_name, timeout) -> None:
    """Start the job as a background service (idempotent); log and pid under FINPULSE_HOME/pipeline/."""
    from finpulse.service import ServiceError

    args: list[str] = []
    for flag, value in (("--trigger", trigger), ("--max-offsets-per-trigger", max_offsets_per_trigger),
                        ("--scorer", scorer_url), ("--master", master), ("--query-name", query_name)):
        if value is not None:
            args += [flag, str(value)]
    service = _service(args)
    if service.status().running:
        click.echo(f"{service.status().line()} (already running)")
        return
    progress = _progress_file(query_name)
    started = datetime.now(timezone.utc)

    def ready() -> bool:
        # Ready once the streaming query has started (Spark up, model loadable, topics subscribed).
        status = _read_json(progress)
        return status.get("state") == "running" and status.get("updated_at", "") >= started.isoformat()

    try:
        status = service.start(ready=ready, timeout=timeout)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(status.line())


@cli.command("stop")
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Seconds to let the batch in hand finish before SIGKILL.")
def stop_command(timeout: float) -> None:
    """Stop the background job (SIGTERM: it finishes the batch in hand first)."""
    service = _service()
    if service.stop(timeout=timeout):
        click.echo("pipeline stopped")
    else:
        click.echo("pipeline was not running")


def _last_committed(query_name: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The query's last committed batch (or None) and the documents waiting for a backfill (finpulse.pending)."""
    import sqlalchemy as sa

    from finpulse import db
    from finpulse.pending import pending_backfill

    engine = db.engine(_settings())
    try:
        with engine.connect() as conn:
            pending = pending_backfill(conn)
            row = conn.execute(sa.text(
                "SELECT * FROM pipeline_batches WHERE query_name = :q AND status = 'committed' "
                # batch ids start again at 0 in each epoch (a new checkpoint): the newest by time
                "ORDER BY finished_at DESC NULLS LAST, batch_id DESC LIMIT 1"), {"q": query_name}).mappings().first()
    finally:
        engine.dispose()
    if row is None:
        return None, pending
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}, pending


@cli.command("status")
@click.option("--query-name", default=None, help="Default FINPULSE_PIPELINE_QUERY_NAME.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(query_name: str | None, as_json: bool) -> None:
    """Pid, the last committed batch (time and figures), the documents waiting for a backfill (and the command
    that folds them in) and the lag in records behind Kafka."""
    from finpulse.pending import line as pending_line
    from pipeline.job import checkpoint_root, kafka_lag

    settings = _settings()
    name = query_name or settings.pipeline_query_name
    service = _service().status()
    report: dict[str, Any] = {"running": service.running, "pid": service.pid, "log": str(service.log),
                              "query_name": name}
    progress = _read_json(_progress_file(name))
    report["state"] = progress.get("state") if service.running else "stopped"
    report["last_error"] = progress.get("last_error")
    try:
        report["last_batch"], report["backfill"] = _last_committed(name)
    except Exception as exc:  # noqa: BLE001 - status must answer even when Postgres does not
        report["last_batch"], report["backfill"] = None, None
        report["database_error"] = str(exc).splitlines()[0][:200]
    try:
        report.update(kafka_lag(settings, checkpoint_root(settings) / name, [settings.topic_documents, settings.topic_dead_letters]))
    except Exception as exc:  # noqa: BLE001 - same for Kafka
        report["lag"] = None
        report["kafka_error"] = str(exc).splitlines()[0][:200]
    if as_json:
        click.echo(json.dumps(report, default=str))
        return
    click.echo(service.line())
    batch = report["last_batch"]
    if batch:
        click.echo(f"last committed batch {batch['batch_id']} at {batch.get('finished_at')}: "
                   f"{batch.get('n_input')} input, {batch.get('n_scored')} scored, {batch.get('n_dead')} dead letters, "
                   f"{batch.get('n_late', 0)} late, {batch.get('duration_ms')} ms, scorer {batch.get('scorer')}")
    else:
        click.echo("no committed batch yet" + (f" ({report['database_error']})" if report.get("database_error") else ""))
    if report["backfill"] and report["backfill"]["documents"]:
        click.echo(pending_line(report["backfill"]))
    lag = report.get("lag")
    click.echo(f"lag: {lag} record(s) behind Kafka" if lag is not None else f"lag: unknown ({report.get('kafka_error')})")
    if report.get("last_error"):
        click.echo(f"last error: {report['last_error']}")
    sys.exit(0 if service.running else 3)


def _pid_alive(pid) -> bool:
    import os

    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


@cli.command("reset")
@click.option("--query-name", default=None, help="Default FINPULSE_PIPELINE_QUERY_NAME.")
def reset_command(query_name: str | None) -> None:
    """Delete the query's Spark checkpoint (and progress file), so the next start begins a new epoch.

    Refuses while the pipeline service runs (stop it first: `finpulse pipeline stop`), and while
    a foreground `finpulse pipeline run` of the query is alive. Postgres keeps every row. The next
    start gets a new streaming query id, re-reads the topics from the earliest offsets Kafka still
    holds and writes every batch again: safe, because every write is an idempotent upsert keyed by
    natural ids and windows are recomputed from stored rows (nothing doubles, nothing is skipped).
    """
    import shutil

    from pipeline.job import JobError, JobOptions, checkpoint_query_id

    settings = _settings()
    try:
        options = JobOptions.from_settings(settings, query_name=query_name)
    except JobError as exc:
        raise click.ClickException(str(exc)) from None
    service = _service().status()
    if service.running:
        raise click.ClickException(f"the pipeline service is running (pid {service.pid}); stop it first with "
                                   "`finpulse pipeline stop`, then reset")
    progress_path = _progress_file(options.query_name)
    progress = _read_json(progress_path)
    if progress.get("state") in ("running", "failed") and progress.get("pid") and _pid_alive(progress["pid"]):
        raise click.ClickException(f"pipeline {options.query_name} is running in the foreground (pid "
                                   f"{progress['pid']}, {progress_path}); stop it first, then reset")
    checkpoint = options.checkpoint
    if checkpoint.exists():
        query_id = checkpoint_query_id(checkpoint)
        shutil.rmtree(checkpoint)
        click.echo(f"pipeline {options.query_name}: deleted the checkpoint {checkpoint}"
                   + (f" (query id {query_id})" if query_id else ""))
    else:
        click.echo(f"pipeline {options.query_name}: no checkpoint at {checkpoint}; nothing to delete")
    if progress_path.exists():
        progress_path.unlink()
        click.echo(f"pipeline {options.query_name}: deleted the progress file {progress_path}")
    click.echo("Postgres keeps every row. The next start begins a new epoch (a new query id): it re-reads the topics "
               "from the earliest offsets Kafka holds and writes every batch again, which is safe because every "
               "write is an idempotent upsert and windows are recomputed from stored rows.")


def _utc(value: str, name: str) -> datetime:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time such as 2026-01-31T00:00Z", param_hint=name) from None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


@cli.command("backfill")
@click.option("--since", required=True, help="Start of the range (ISO 8601; naive = UTC).")
@click.option("--until", "until", required=True, help="End of the range (ISO 8601; naive = UTC).")
@click.option("--widths", default=None, help="Window widths, e.g. 1m,1h,1d (default: the job's).")
def backfill_command(since: str, until: str, widths: str | None) -> None:
    """Recompute the trend windows of a time range from the stored documents and scores."""
    from finpulse import db
    from pipeline.windows import DEFAULT_WIDTHS, backfill, parse_widths

    start, end = _utc(since, "--since"), _utc(until, "--until")
    if end <= start:
        raise click.BadParameter("--until must be after --since", param_hint="--until")
    settings = _settings()
    spec = widths or settings.pipeline_windows or DEFAULT_WIDTHS
    try:
        kwargs: dict[str, Any] = {"widths": parse_widths(spec) if isinstance(spec, str) else spec}
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--widths") from None
    engine = db.engine(settings)
    t0 = time.monotonic()
    try:
        result = backfill(engine, since=start, until=end, **kwargs)
    finally:
        engine.dispose()
    click.echo(f"backfill {start.isoformat()} .. {end.isoformat()}: {result} window(s) written in {time.monotonic() - t0:.1f}s")
