"""`finpulse stack up | down | status | jars`: the embedded local stack."""

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
        deleted = LocalStack().down(purge=purge)
    except StackError as exc:
        _fail(exc)
    for path, what in deleted:
        click.echo(f"deleted {path} ({what})")
    click.echo("stack down" + (" (data purged)" if purge else ""))


@cli.command()
def status() -> None:
    """Print each component, its address, pid and health; exit 1 if any is down."""
    statuses = LocalStack().status()
    for s in statuses:
        click.echo(s.line())
    sys.exit(0 if all(s.healthy for s in statuses) else 1)


@cli.command()
@click.option("--sep", default=",", show_default=True, help="Separator (',' for spark-submit --jars).")
def jars(sep: str) -> None:
    """Print Spark's Kafka connector jars for `spark-submit --jars` (resolved with Maven if needed)."""
    from stack import spark_jars

    try:
        click.echo(sep.join(spark_jars()))
    except StackError as exc:
        _fail(exc)
