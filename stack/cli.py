"""`finpulse stack up | down | status`."""

from __future__ import annotations

import sys
import time

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


@click.command("run")
def run() -> None:
    """Start the local stack, migrate the schema, create the topics, then run the main job."""
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
    click.echo(
        "The stack keeps running in the background; `make stop` (finpulse stack down) stops it.\n"
        f"  kcat -b {settings.bootstrap_servers[0]} -L\n"
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
