"""The ``finpulse`` command.

Subcommand groups live with the code they drive (``stack``, ``model``, ``ingest`` ...) and
are registered as entry points in the ``finpulse.commands`` group of pyproject.toml. They
are imported only when invoked, so ``finpulse --help`` stays fast and this shared package
never imports the packages that depend on it.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from importlib.metadata import entry_points

import click

from finpulse.settings import EmbeddedPostgresMissing, env_table, get_settings, redact_url

COMMAND_GROUP = "finpulse.commands"


def _plugins() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=COMMAND_GROUP)}


def postgres_unreachable(exc: Exception) -> str | None:
    """One line for an operator when ``exc`` says the database cannot be reached, else None.

    Names the address and the setting to check, never the password.
    """
    import sqlalchemy as sa

    if isinstance(exc, EmbeddedPostgresMissing):
        return str(exc)
    if not isinstance(exc, sa.exc.OperationalError):
        return None
    settings = get_settings()
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc).splitlines()[0]
    try:
        url = sa.engine.make_url(settings.sqlalchemy_url().get_secret_value())
        where = f"{url.host}:{url.port or 5432}/{url.database}"
    except Exception:  # noqa: BLE001 - an unreadable URL still deserves the one-line message
        where = "the configured database"
    setting = ("FINPULSE_DATABASE_URL" if not settings.embedded_postgres
               else "the embedded cluster (`finpulse stack up`, FINPULSE_POSTGRES_PORT)")
    return f"Postgres not reachable at {where} ({reason}); check {setting}"


def operator_line(exc: Exception) -> str | None:
    """One line for an operator when ``exc`` is bad settings, a database outage or a migration problem, else None."""
    from pydantic import ValidationError

    from finpulse.db import MigrationError
    from finpulse.settings import settings_error_line

    if isinstance(exc, ValidationError):
        return settings_error_line(exc)  # names the variables, never their values
    if isinstance(exc, MigrationError):
        return str(exc)
    return postgres_unreachable(exc)


class _LazyGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as exc:  # noqa: BLE001 - only the failures operator_line knows become one line
            line = operator_line(exc)
            if line is None:
                raise
            raise click.ClickException(line) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_plugins()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        ep = _plugins().get(name)
        if ep is None:
            return None
        try:
            return ep.load()  # type: ignore[attr-defined]
        except ImportError as exc:
            # A broken optional component must not take the whole CLI (and `stack down`) with it.
            return _unavailable(name, exc)


def _unavailable(name: str, exc: ImportError) -> click.Command:
    def fail() -> None:
        raise click.ClickException(f"`finpulse {name}` cannot load: {exc}")

    return click.Command(name, callback=fail, help=f"(unavailable: {exc})")


def utc_time(value: str, option: str) -> datetime:
    """An option's ISO 8601 time as timezone-aware UTC (naive = UTC); a bad one is a usage error naming it."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time such as 2026-11-01T00:00Z", param_hint=option) from None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def setup_logging(level: str | None = None) -> None:
    logging.basicConfig(
        level=(level or get_settings().log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # kafka-python logs every connection at INFO; an operator needs its warnings only.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default=None, help="Override FINPULSE_LOG_LEVEL (DEBUG, INFO, WARNING...).")
def main(log_level: str | None) -> None:
    """finpulse: streaming sentiment monitor for financial news and comments."""
    setup_logging(log_level)


def shown_value(value: object) -> str:
    """A setting's value as ``finpulse config`` prints it: secrets masked, URLs reduced to scheme and host."""
    from pydantic import SecretStr

    if value is None:
        return "(unset)"
    if isinstance(value, SecretStr):
        return "**********"
    text = str(value)
    # Webhook (and other) URLs carry credentials in user info, path tokens and query values.
    return redact_url(text) if "://" in text else text


@main.command("config")
def config_command() -> None:
    """Print every setting, its environment variable and its current value (secrets and URL credentials masked)."""
    settings = get_settings()
    for var, _, _ in env_table():
        value = getattr(settings, var.removeprefix("FINPULSE_").lower())
        click.echo(f"{var:42} {shown_value(value)}")


@main.group("db")
def db_group() -> None:
    """Database schema: apply and inspect migrations."""


@db_group.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations from sql/ (idempotent; refuses when it finds no migration files); on the
    embedded cluster, set the analyst's password."""
    from finpulse import db

    settings = get_settings()
    engine = db.engine(settings)
    applied = db.migrate(engine)
    current = db.current_version(engine)
    if applied:
        click.echo(f"applied {', '.join(applied)}; schema at version {current}")
    else:
        click.echo(f"schema up to date at version {current}")
    if settings.embedded_postgres:
        db.ensure_analyst_login(settings)


def _libpq_url(analyst: bool):
    """The libpq form (postgresql://) of the admin or analyst URL, as a SQLAlchemy URL object."""
    import sqlalchemy as sa

    from finpulse import db

    try:
        secret = db.analyst_url() if analyst else get_settings().sqlalchemy_url()
    except db.AnalystUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    return sa.engine.make_url(secret.get_secret_value()).set(drivername="postgresql")


ANALYST_OPTION = click.option(
    "--analyst", is_flag=True, help="As the read-only finpulse_analyst role instead of the owner.")


@db_group.command("url")
@ANALYST_OPTION
@click.option("--show-password", is_flag=True, help="Print the password too (for psql or a BI tool).")
def db_url(analyst: bool, show_password: bool) -> None:
    """Print the database URL in libpq form: psql "$(finpulse db url --show-password)"."""
    click.echo(_libpq_url(analyst).render_as_string(hide_password=not show_password))


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@db_group.command("psql", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@ANALYST_OPTION
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
def db_psql(analyst: bool, psql_args: tuple[str, ...]) -> None:
    """Open psql on the database; arguments after the options go to psql (e.g. -c 'SELECT 1').

    The password travels in a private pgpass file (mode 0600, PGPASSFILE, deleted when psql
    exits), never on psql's command line or in its environment."""
    import os
    import shutil
    import signal
    import subprocess
    import tempfile

    import sqlalchemy as sa

    psql = shutil.which("psql")
    if psql is None:
        raise click.ClickException("psql not found on PATH: install it (apt-get install postgresql-client)")
    url = _libpq_url(analyst)
    line = ":".join(_pgpass_field(str(v)) for v in (url.host or "localhost", url.port or 5432,
                                                      url.database or "*", url.username or "*", url.password or ""))
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    with tempfile.TemporaryDirectory(prefix="finpulse-psql-") as private:
        pgpass = os.path.join(private, "pgpass")
        fd = os.open(pgpass, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(line + "\n")
        env["PGPASSFILE"] = pgpass
        # The URL without its password (URL.set(password=None) keeps it in SQLAlchemy 2.1).
        bare = sa.engine.URL.create("postgresql", username=url.username, host=url.host, port=url.port,
                                    database=url.database, query=url.query)
        argv = [psql, bare.render_as_string(hide_password=False), *psql_args]
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is psql's (cancels its query)
        try:
            code = subprocess.call(argv, env=env)
        finally:
            signal.signal(signal.SIGINT, previous)
    sys.exit(code)


@db_group.command("prune")
@click.option("--dry-run", is_flag=True, help="Count what would be pruned; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def db_prune(dry_run: bool, as_json: bool) -> None:
    """Apply retention (FINPULSE_RETENTION_*): empty old document text, delete old minute/hour windows.

    Batched (short transactions that skip rows in use) and idempotent: run it as often as you like."""
    import json

    from finpulse import db
    from finpulse.retention import prune

    engine = db.engine()
    try:
        report = prune(engine, dry_run=dry_run)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        for line in report.lines():
            click.echo(line)


@db_group.command("status")
def db_status() -> None:
    """Show applied and pending migrations."""
    from finpulse import db

    eng = db.engine()
    applied = set(db.applied_versions(eng))
    for migration in db.discover():
        mark = "applied" if migration.version in applied else "pending"
        click.echo(f"{migration.version:>4}  {mark:8} {migration.name}")


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(as_json: bool) -> None:
    """Every component on one screen: broker, Postgres, pipeline, alerts, model, dashboard, demo receivers.

    Exit 0 when every component is healthy, 1 otherwise."""
    import json

    from finpulse.status import collect

    status = collect()
    if as_json:
        click.echo(json.dumps(status.as_dict(), default=str))
    else:
        for component in status.components:
            click.echo(component.line())
        click.echo("healthy" if status.healthy else
                   "NOT healthy: " + ", ".join(c.name for c in status.components if c.required and not c.healthy))
    sys.exit(0 if status.healthy else 1)


def run_main() -> None:  # pragma: no cover - thin wrapper for `python -m finpulse`
    main(prog_name="finpulse")
