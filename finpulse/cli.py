"""The ``finpulse`` command.

Subcommand groups live with the code they drive (``stack``, ``model``, ``ingest`` ...) and
are registered as entry points in the ``finpulse.commands`` group of pyproject.toml. They
are imported only when invoked, so ``finpulse --help`` stays fast and this shared package
never imports the packages that depend on it.
"""

from __future__ import annotations

import logging
import sys
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
    """Apply pending migrations from sql/ (idempotent); refuses when it finds no migration files."""
    from finpulse import db

    engine = db.engine()
    applied = db.migrate(engine)
    current = db.current_version(engine)
    if applied:
        click.echo(f"applied {', '.join(applied)}; schema at version {current}")
    else:
        click.echo(f"schema up to date at version {current}")


@db_group.command("url")
@click.option("--show-password", is_flag=True, help="Print the password too (for psql or a BI tool).")
def db_url(show_password: bool) -> None:
    """Print the database URL in libpq form: psql "$(finpulse db url --show-password)"."""
    import sqlalchemy as sa

    url = sa.engine.make_url(get_settings().sqlalchemy_url().get_secret_value()).set(drivername="postgresql")
    click.echo(url.render_as_string(hide_password=not show_password))


@db_group.command("status")
def db_status() -> None:
    """Show applied and pending migrations."""
    from finpulse import db

    eng = db.engine()
    applied = set(db.applied_versions(eng))
    for migration in db.discover():
        mark = "applied" if migration.version in applied else "pending"
        click.echo(f"{migration.version:>4}  {mark:8} {migration.name}")


def run_main() -> None:  # pragma: no cover - thin wrapper for `python -m finpulse`
    main(prog_name="finpulse")
