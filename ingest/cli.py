"""``finpulse ingest``: crawl configured sources, or replay a recorded stream."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click

log = logging.getLogger(__name__)


@click.group("ingest")
def cli() -> None:
    """Crawlers and replay: documents into the documents topic (delivery: see ingest.producer.Sink)."""


def _install_signal_handlers(stop) -> None:
    # First SIGTERM/SIGINT: finish and publish the poll in hand, flush, exit. The producer is
    # flushed by close() in the caller's finally block.
    def handler(signum, _frame):
        log.info("received %s: stopping after the current poll", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


@cli.command("crawl")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Sources YAML (see ingest/sources.example.yaml).")
@click.option("--once", is_flag=True, help="Poll every source once, publish, and exit.")
@click.option("--topic", default=None, help="Topic to publish to (default FINPULSE_TOPIC_DOCUMENTS).")
@click.option("--partitions", type=int, default=None, help="Partitions if the topic is created (default FINPULSE_TOPIC_PARTITIONS).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Seen-store directory (default FINPULSE_HOME/ingest).")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on 127.0.0.1:PORT.")
@click.option("--dead-letter-topic", default=None, help="Topic for rejected items (default FINPULSE_TOPIC_DEAD_LETTERS).")
def crawl(config_path: Path, once: bool, topic: str | None, partitions: int | None, state_dir: Path | None,
          metrics_port: int | None, dead_letter_topic: str | None) -> None:
    """Poll the sources of --config on their intervals and publish new documents."""
    from finpulse.metrics import MetricsPortError, serve_metrics
    from finpulse.settings import get_settings
    from ingest.config import load_config
    from ingest.crawler import Crawler
    from ingest.errors import ConfigError
    from ingest.metrics import IngestMetrics

    from ingest.errors import BrokerUnavailable
    from ingest.producer import require_broker

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    settings = get_settings()
    try:
        require_broker(settings)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    metrics = IngestMetrics()
    try:
        if serve_metrics(metrics.registry, host="127.0.0.1", port=metrics_port or 0, setting="--metrics-port"):
            log.info("metrics on http://127.0.0.1:%d/metrics", metrics_port)
    except MetricsPortError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        crawler = Crawler.from_settings(config, settings=settings, topic=topic, state_dir=state_dir,
                                        metrics=metrics, partitions=partitions, dead_letter_topic=dead_letter_topic)
    except Exception as exc:  # noqa: BLE001 - e.g. the broker went away between the check and the producer
        raise click.ClickException(f"cannot start the crawler: {_kafka_error(exc, settings)}") from None
    _install_signal_handlers(crawler.stop)
    try:
        crawler.run(once=once)
    finally:
        crawler.close()
    click.echo("crawler stopped", err=True)


@cli.command("replay")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--rate", type=float, default=None, help="Documents per second.")
@click.option("--speedup", type=float, default=None, help="Replay the recorded gaps X times faster.")
@click.option("--shift-to-now", is_flag=True, help="Shift timestamps so the anchor event is now.")
@click.option("--anchor", type=click.Choice(["last", "first"]), default="last", show_default=True,
              help="Which event --shift-to-now moves to now.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default=None, help="Default: from the extension.")
@click.option("--source", default=None, help="Source name on the documents (default: file stem).")
@click.option("--kind", type=click.Choice(["news", "comment"]), default="comment", show_default=True)
@click.option("--text-column", default="text", show_default=True)
@click.option("--time-column", default=None, help="Default: created_at, timestamp, ... (guessed).")
@click.option("--id-column", default=None, help="Native id column (default: hash of time and text).")
@click.option("--ticker-column", default=None, help="Column with tickers/cashtags (added to those in the text).")
@click.option("--title-column", default=None)
@click.option("--author-column", default=None)
@click.option("--url-column", default=None)
@click.option("--timezone", "tz_name", default="UTC", show_default=True, help="Zone of naive timestamps.")
@click.option("--lang", default="detect", show_default=True,
              help="'detect' (py3langid, batched), 'none', or a fixed code such as 'en'.")
@click.option("--missing-time", type=click.Choice(["skip", "now"]), default="skip", show_default=True,
              help="Rows without a timestamp: skip (counted) or publish as arriving now.")
@click.option("--html", is_flag=True, help="The text column is HTML: strip tags (entities are always unescaped).")
@click.option("--limit", type=int, default=None, help="Read at most N rows.")
@click.option("--topic", default=None, help="Topic (default FINPULSE_TOPIC_DOCUMENTS).")
@click.option("--partitions", type=int, default=None, help="Partitions if the topic is created.")
@click.option("--dead-letter-topic", default=None,
              help="Topic for rejected rows, with the raw row (default FINPULSE_TOPIC_DEAD_LETTERS).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--producer", type=click.Choice(["auto", "kafka-python", "confluent"]), default="auto", show_default=True,
              help="Kafka client; auto = confluent (librdkafka, several times faster per message) when the "
                   "optional confluent-kafka package is installed, else kafka-python.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Processes that normalise/validate rows in parallel (publish order stays event order).")
@click.option("--encoding-errors", type=click.Choice(["strict", "repair"]), default="strict", show_default=True,
              help="Rows with invalid UTF-8: strict = dead-lettered with their line number; repair = published "
                   "with the bad bytes replaced by U+FFFD and extra.encoding_repaired = true.")
@click.option("--resume", is_flag=True,
              help="Continue after the position a previous run of this file/source/topic saved (see --state-dir).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the acknowledged position is saved as the replay goes (default FINPULSE_HOME/ingest/replay).")
def replay_command(file: Path, rate, speedup, shift_to_now, anchor, fmt, source, kind, text_column, time_column,
                   id_column, ticker_column, title_column, author_column, url_column, tz_name, lang, missing_time,
                   html, limit, topic, partitions, dead_letter_topic, progress, producer, workers, encoding_errors,
                   resume, state_dir) -> None:
    """Publish FILE (CSV or JSONL, optionally .gz) in event-time order; print the account of every row."""
    from finpulse.settings import get_settings
    from ingest.deadletter import DeadLetterSink
    from ingest.errors import BrokerUnavailable, ConfigError, PublishError
    from ingest.normalize import resolve_timezone
    from ingest.producer import make_sink, require_broker
    from ingest.replay import Columns, ReplayStats, check_file, replay

    if rate is not None and speedup is not None:
        raise click.UsageError("give --rate or --speedup, not both")
    columns = Columns(text=text_column, time=time_column, id=id_column, ticker=ticker_column, title=title_column,
                      author=author_column, url=url_column)
    try:
        tz = resolve_timezone(tz_name)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--timezone") from None
    detect = lang == "detect"
    fixed = None if lang in ("detect", "none") else lang
    settings = get_settings()
    # Everything that can be known without the broker is checked first: a bad file creates no topic.
    try:
        check_file(file, fmt=fmt, columns=columns)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        require_broker(settings)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    try:
        sink = make_sink(producer, settings=settings, topic=topic, partitions=partitions)
        dead_letters = DeadLetterSink.kafka(settings=settings, topic=dead_letter_topic, partitions=partitions)
    except ImportError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - e.g. the broker went away between the check and the producer
        raise click.ClickException(f"cannot start the producer: {_kafka_error(exc, settings)}") from None

    def on_signal(signum, _frame):
        raise KeyboardInterrupt  # unwinds to the finally below, which flushes

    signal.signal(signal.SIGTERM, on_signal)
    stats = ReplayStats()  # filled as the replay goes, so an interrupt can still say how far it got
    state_dir = state_dir or settings.home / "ingest" / "replay"
    try:
        replay(file, sink=sink, source=source or file.stem.replace(" ", "_"), kind=kind, columns=columns,
                fmt=fmt, tz=tz, rate=rate, speedup=speedup, shift_to_now=shift_to_now, anchor=anchor,
                lang=fixed, detect_lang=detect, missing_time=missing_time, html=html, limit=limit,
                progress=progress, workers=workers, dead_letters=dead_letters,
                encoding_errors=encoding_errors, resume=resume, state_dir=state_dir, stats=stats)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except PublishError as exc:
        raise click.ClickException(f"delivery failed: {exc}") from None
    except KeyboardInterrupt:
        click.echo(f"interrupted: of {stats.rows} rows read, {stats.published} published (acknowledged so far), "
                   f"{stats.dead_lettered} dead-lettered; flushing what was sent. `--resume` continues after the "
                   f"acknowledged position saved in {state_dir}", err=True)
        sys.exit(130)
    finally:
        try:
            sink.close()  # flushes: whatever was sent before an interrupt still reaches the broker
        finally:
            dead_letters.close()
    click.echo(stats.line())
    if not stats.balanced:
        raise click.ClickException("the replay account does not balance (a bug): see the line above")
    if stats.time_column:
        click.echo(f"time column: {stats.time_column}; events {stats.first_event} .. {stats.last_event}"
                   + (f"; shifted by {stats.shift}" if stats.shift is not None else ""))


def _kafka_error(exc: BaseException, settings) -> str:
    from finpulse.kafka import KafkaSecurityError, security_summary

    if isinstance(exc, KafkaSecurityError):
        return str(exc)  # already one line naming address, user and settings
    where = ",".join(settings.bootstrap_servers)
    setting = "FINPULSE_KAFKA_BOOTSTRAP" if settings.kafka_bootstrap else "FINPULSE_KAFKA_PORT (embedded broker)"
    return f"{type(exc).__name__}: {str(exc)[:200]} (broker {where}, {security_summary(settings)}, from {setting})"


# The bundled sample stream (`finpulse ingest demo`) lives with its data in ingest/demo.py.
from ingest.demo import demo_command  # noqa: E402

cli.add_command(demo_command)
