"""`finpulse dashboard` (serve, start, stop, status) and `finpulse report`."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import click

from finpulse.status import probe_dashboard

SERVICE = "dashboard"


def _settings(host: str | None = None, port: int | None = None):
    from finpulse.settings import get_settings

    settings = get_settings()
    update = {k: v for k, v in (("dashboard_host", host), ("dashboard_port", port)) if v is not None}
    return settings.model_copy(update=update) if update else settings


HOST_OPTION = click.option("--host", default=None, help="Address to listen on (default FINPULSE_DASHBOARD_HOST, 127.0.0.1).")
PORT_OPTION = click.option("--port", type=int, default=None, help="Port (default FINPULSE_DASHBOARD_PORT, 8050).")


@click.group(SERVICE, invoke_without_command=True)
@HOST_OPTION
@PORT_OPTION
@click.pass_context
def dashboard(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the analysts' dashboard in the foreground (start | stop | status: as a background service)."""
    if ctx.invoked_subcommand is not None:
        return
    import waitress

    from dashboard.app import create_app

    settings = _settings(host, port)
    app = create_app(settings)
    try:
        server = waitress.create_server(app.server, host=settings.dashboard_host, port=settings.dashboard_port,
                                        threads=8, ident="finpulse-dashboard")
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {settings.dashboard_host}:{settings.dashboard_port} ({exc.strerror}): "
                                   "choose another with --port or FINPULSE_DASHBOARD_PORT") from None
    click.echo(f"dashboard on {settings.dashboard_url} (reading Postgres as finpulse_analyst); Ctrl-C stops it",
               err=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def _service(settings):
    from finpulse.service import ManagedService, python_module_argv

    return ManagedService(SERVICE, python_module_argv("finpulse", "dashboard", "--host", settings.dashboard_host,
                                                      "--port", str(settings.dashboard_port)), settings=settings)


@dashboard.command("start")
@HOST_OPTION
@PORT_OPTION
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait until it answers.")
def start(host: str | None, port: int | None, timeout: float) -> None:
    """Start the dashboard in the background (idempotent; pid and log under FINPULSE_HOME/dashboard/)."""
    from finpulse.service import ServiceError

    settings = _settings(host, port)
    service = _service(settings)
    try:
        status = service.start(ready=lambda: probe_dashboard(settings.dashboard_url, timeout=1.0)["answers"], timeout=timeout)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{status.line()} {settings.dashboard_url}")


@dashboard.command("stop")
def stop() -> None:
    """Stop the background dashboard."""
    click.echo("dashboard stopped" if _service(_settings()).stop(timeout=20) else "dashboard was not running")


@dashboard.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Whether the dashboard runs and answers (exit 0), or not (exit 3)."""
    settings = _settings()
    service = _service(settings).status()
    report = {"running": service.running, "pid": service.pid, "log": str(service.log), "url": settings.dashboard_url,
              **probe_dashboard(settings.dashboard_url)}
    if as_json:
        click.echo(json.dumps(report, default=str))
    else:
        click.echo(f"{service.line()}\n{settings.dashboard_url}: "
                   + ("answers" if report["answers"] else "does not answer")
                   + (f" ({report['detail']})" if report.get("detail") else ""))
    sys.exit(0 if report["healthy"] else 3)


@click.command("report")
@click.option("--since", default=None, help="Start (ISO 8601; naive = UTC). Default: 24 hours before --until.")
@click.option("--until", "until", default=None, help="End (ISO 8601; naive = UTC). Default: now.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write report.html and its PNG charts into (made if missing).")
def report(since: str | None, until: str | None, out: Path) -> None:
    """One HTML page with PNG charts (market, top tickers and topics, alert episodes shaded) and the most
    negative documents of a period, for mail. Reads Postgres as the analyst role."""
    from datetime import timedelta

    from dashboard.report import ReportError, build_report
    from finpulse import db

    from finpulse.cli import utc_time

    end = utc_time(until, "--until") if until else datetime.now(timezone.utc)
    start = utc_time(since, "--since") if since else end - timedelta(hours=24)
    try:
        engine = db.analyst_engine()
    except db.AnalystUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    try:
        with engine.connect() as conn:
            page = build_report(conn, since=start, until=end, out=out)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(str(page))
