"""The streaming job: Kafka (documents + dead-letter topics) -> processor -> Postgres, exactly once.

Spark's native Kafka source reads both topics; each micro-batch goes through ``foreachBatch``:
the executors parse, link and score the records (``mapInPandas`` with the processor of
``pipeline.process``), the driver collects the processed rows once as Arrow and the sink writes
them in one Postgres transaction keyed by the query's id and the batch id. Spark commits a batch
to its checkpoint only after ``foreachBatch`` returned, and the sink skips a batch it already
committed, so a crash anywhere replays the batch without doubling it.

The query id is the checkpoint's identity: Spark writes ``<checkpoint>/metadata`` (``{"id": ...}``)
when the query is created, before its first batch, and keeps it for the checkpoint's life. The
batch function reads it from there (:func:`checkpoint_query_id`; the active query's
``StreamingQuery.id`` when the file cannot be read), and the start line logs it after checking it
against ``StreamingQuery.id``. A deleted checkpoint (``finpulse pipeline reset``) gets a new id: a
new epoch, see :mod:`pipeline.sink`.

The job runs the same in ``finpulse pipeline run`` (master from settings) and under
``spark-submit`` (master and jars from spark-submit; see ``pipeline/submit.py``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from finpulse import durations
from finpulse.kafka import end_offsets, spark_source_options
from finpulse.settings import Settings, get_settings

log = logging.getLogger("pipeline.job")

# How long the job waits before restarting a query that failed (a batch that raised), doubling
# up to the cap: a model server that is down must not make the job spin.
RESTART_BACKOFF_S = (2.0, 60.0)
# Spark stops a Python worker that has been idle for a minute, and the next batch would pay the model's
# load again (seconds): while the stream is quiet, the job runs a tiny task per slot this often so its
# workers stay warm.
WARM_EVERY_S = 40.0


class JobError(RuntimeError):
    """The job cannot start (bad option, unreachable dependency). One line for the operator."""


def parse_trigger(text: str) -> float:
    """'2s' -> 2.0, '500ms' -> 0.5, '1m' -> 60.0 (seconds; the grammar of finpulse.durations)."""
    try:
        return durations.parse_seconds(text, positive=True, what="trigger")
    except ValueError as exc:
        raise JobError(str(exc)) from None


def checkpoint_query_id(checkpoint: Path) -> str | None:
    """The streaming query id that Spark keeps in ``<checkpoint>/metadata`` (``{"id": "..."}``), or None."""
    try:
        text = (Path(checkpoint) / "metadata").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        value = _offsets(line.strip()) if line.strip().startswith("{") else None
        if value and isinstance(value.get("id"), str) and value["id"]:
            return value["id"]
    return None


def checkpoint_root(settings: Settings) -> Path:
    root = settings.pipeline_checkpoint_dir or settings.home / "pipeline" / "checkpoint"
    return Path(os.path.abspath(os.path.expanduser(root)))


@dataclass(frozen=True)
class JobOptions:
    query_name: str
    trigger_s: float
    max_offsets_per_trigger: int | None
    until_idle_s: float | None
    scorer_url: str | None
    master: str | None
    checkpoint: Path

    @classmethod
    def from_settings(cls, settings: Settings, *, trigger: str | None = None,
                      max_offsets_per_trigger: int | None = None, until_idle_s: float | None = None,
                      scorer_url: str | None = None, master: str | None = None,
                      query_name: str | None = None) -> JobOptions:
        name = query_name or settings.pipeline_query_name
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,100}", name):
            raise JobError(f"query name {name!r}: letters, digits, '.', '_' or '-' only (it names a folder)")
        return cls(
            query_name=name,
            trigger_s=parse_trigger(trigger or settings.pipeline_trigger),
            max_offsets_per_trigger=max_offsets_per_trigger or settings.pipeline_max_offsets_per_trigger,
            until_idle_s=until_idle_s,
            scorer_url=scorer_url or settings.pipeline_scorer_url,
            master=master,
            checkpoint=checkpoint_root(settings) / name,
        )


def task_slots(spark) -> int:
    """Tasks the cluster runs at once (local[*]: the cores): how many parts a batch is cut into."""
    return max(1, int(spark.sparkContext.defaultParallelism))


def balanced(batch_df, slots: int):
    """The batch in ``slots`` equal parts (round robin) when there is more than one slot.

    Spark reads one task per Kafka partition: 3 partitions on 2 slots leave the third running alone while
    a core waits, and a busy partition holds up the batch. Scoring is the batch's cost, so the records
    are spread evenly first; the shuffle of a few thousand small records costs milliseconds.
    """
    return batch_df.repartition(slots) if slots > 1 else batch_df


def under_spark_submit() -> bool:
    """True when spark-submit started this driver: its JVM already has master and jars."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def build_spark(settings: Settings, *, master: str | None = None, app_name: str = "finpulse-pipeline"):
    """The job's SparkSession: small shuffle, UTC, Arrow, reused Python workers, quiet logs."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if not under_spark_submit():
        # Python workers run this interpreter (the project's venv), not whatever `python3` is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.master(master or settings.spark_master)
        # spark-submit hands the connector with --jars/--packages; locally the stack resolved it.
        from stack import spark_jars  # lazily: only the local driver needs Maven

        builder = builder.config("spark.jars", ",".join(spark_jars(settings)))
        builder = builder.config("spark.ui.enabled", str(settings.spark_ui).lower())
    conf = {
        "spark.sql.shuffle.partitions": str(settings.pipeline_shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.python.worker.reuse": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.streaming.stopGracefullyOnShutdown": "true",
        "spark.ui.showConsoleProgress": "false",  # a progress bar in a service log is noise
        # The job writes its own progress line per batch; Spark's per-trigger INFO chatter is noise.
        "spark.sql.streaming.noDataProgressEventInterval": "10000",
    }
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


@dataclass
class _State:
    """What the driver's threads share: the stop request, whether a batch is running, idle clock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    stop_requested: bool = False
    in_batch: bool = False
    last_activity: float = field(default_factory=time.monotonic)
    reports: dict[int, dict[str, Any]] = field(default_factory=dict)
    failures: int = 0
    # what this process committed so far (the progress file's "totals": `finpulse run` shows docs/s and an ETA)
    totals: dict[str, Any] = field(default_factory=lambda: {"batches": 0, "n_input": 0, "n_scored": 0})


def progress_lag(progress: dict[str, Any] | None) -> int | None:
    """Records behind the latest offsets when the batch was planned, summed over topics and partitions."""
    if not progress:
        return None
    total = 0
    seen = False
    for source in progress.get("sources") or []:
        latest, end = _offsets(source.get("latestOffset")), _offsets(source.get("endOffset"))
        if latest is None or end is None:
            continue
        for topic, parts in latest.items():
            for part, offset in parts.items():
                total += max(0, int(offset) - int(end.get(topic, {}).get(part, 0)))
                seen = True
    return total if seen else None


def batch_end_offsets(progress: dict[str, Any] | None) -> dict[str, dict[str, int]]:
    """{topic: {partition: offset}} up to which a batch read (Spark's ``endOffset``), over its sources."""
    out: dict[str, dict[str, int]] = {}
    for source in (progress or {}).get("sources") or []:
        for topic, parts in (_offsets(source.get("endOffset")) or {}).items():
            out.setdefault(topic, {}).update({str(k): int(v) for k, v in parts.items()})
    return out


def _offsets(value: Any) -> dict[str, dict[str, int]] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return value if isinstance(value, dict) else None


class PipelineJob:
    """One streaming query; ``run()`` blocks until stopped (signal, --until-idle) or fatally broken."""

    def __init__(self, options: JobOptions, *, settings: Settings | None = None,
                 on_progress: Callable[[dict[str, Any]], None] | None = None):
        self.options = options
        self.settings = settings or get_settings()
        self.state = _State()
        self.on_progress = on_progress
        self.status_file = self.settings.pipeline_progress_file(options.query_name)
        self._logged_batches: set[int] = set()
        self.slots = 1
        self._last_warm: float | None = None  # when the Python workers last loaded or used the model
        from pipeline.metrics import PipelineMetrics

        self.metrics = PipelineMetrics()  # served by `pipeline run` (pipeline.cli), updated per committed batch
        self._warm_config = None
        self._spark = None

    # -- set-up -------------------------------------------------------------------------------

    def _processor_config(self):
        from pipeline.process import ProcessorConfig

        s = self.settings
        aliases = tuple(p.strip() for p in (s.pipeline_aliases_files or "").split(",") if p.strip())
        return ProcessorConfig(
            documents_topic=s.topic_documents,
            dead_letter_topic=s.topic_dead_letters,
            max_chunks=s.pipeline_max_chunks,
            scorer_url=self.options.scorer_url,
            model_dir=str(s.model_dir) if s.model_dir else None,
            precision=s.model_precision,
            aliases_files=aliases,
            max_message_bytes=s.pipeline_max_message_bytes,
        )

    def _sink(self):
        from finpulse import db
        from pipeline.sink import PostgresSink

        s = self.settings
        return PostgresSink(db.engine(s), query_name=self.options.query_name, widths=s.pipeline_windows,
                            lateness=s.pipeline_lateness, outage=s.pipeline_storage_outage)

    def _stream(self, spark):
        s, o = self.settings, self.options
        reader = (
            spark.readStream.format("kafka")
            .options(**spark_source_options(s))
            .option("subscribe", f"{s.topic_documents},{s.topic_dead_letters}")
            .option("startingOffsets", "earliest")
            # Retention deleting records the job never read is reported, not fatal to the service.
            .option("failOnDataLoss", "false")
        )
        if o.max_offsets_per_trigger:
            reader = reader.option("maxOffsetsPerTrigger", str(o.max_offsets_per_trigger))
        return reader.load().select("key", "value", "topic", "partition", "offset", "timestamp")

    # -- the batch ----------------------------------------------------------------------------

    def _query_id(self, spark) -> str:
        """This query's id: from the checkpoint's metadata, else from the active query of this name."""
        query_id = checkpoint_query_id(self.options.checkpoint)
        if query_id is None and spark is not None:
            for query in spark.streams.active:
                if query.name == self.options.query_name:
                    query_id = str(query.id)
        if not query_id:
            # Never write under an unknown identity: the batch fails and is retried.
            raise RuntimeError(f"cannot read the streaming query id from {self.options.checkpoint / 'metadata'}")
        return query_id

    def _batch_function(self, processor, sink, scorer_name: str, spark=None):
        from pipeline.rows import PROCESSED_DDL

        state = self.state

        def process_batch(batch_df, batch_id: int) -> None:
            with state.lock:
                state.in_batch = True
            started_at = datetime.now(timezone.utc)
            t0 = time.monotonic()
            try:
                # Collected once: the scored frame is never computed twice (a second action on it
                # would score every record again).
                query_id = self._query_id(spark)
                rows = balanced(batch_df, self.slots).mapInPandas(processor, PROCESSED_DDL).toArrow()
                report = sink.write_batch(batch_id, rows, scorer_name=scorer_name, started_at=started_at,
                                          query_id=query_id)
                elapsed = time.monotonic() - t0
                figures = _report_dict(report)
                figures["wall_s"] = round(elapsed, 3)
                figures["started_at"] = started_at.isoformat()
                with state.lock:
                    state.reports[batch_id] = figures
                    if figures.get("n_input", rows.num_rows):
                        state.last_activity = time.monotonic()
                    state.failures = 0
            finally:
                with state.lock:
                    state.in_batch = False

        return process_batch

    # -- the loop -----------------------------------------------------------------------------

    def request_stop(self, reason: str = "") -> None:
        with self.state.lock:
            if not self.state.stop_requested:
                log.info("stop requested%s: finishing the batch in hand", f" ({reason})" if reason else "")
            self.state.stop_requested = True

    def install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            self.request_stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self, spark=None) -> int:
        """Run until stopped; returns the number of batches this process committed."""
        from pipeline.process import make_processor

        o = self.options
        own_spark = spark is None
        spark = spark or build_spark(self.settings, master=o.master)
        self._spark = spark  # PySpark's StreamingQuery has no handle on its session; keep-warm needs one
        config = self._processor_config()
        processor = make_processor(config)
        self.slots = task_slots(spark)
        if not o.scorer_url:
            self._warm_config = config
            self._warm_workers(spark, config)
        sink = self._sink()
        scorer_name = o.scorer_url or "in-process"
        o.checkpoint.mkdir(parents=True, exist_ok=True)
        self.status_file.parent.mkdir(parents=True, exist_ok=True)
        backoff = RESTART_BACKOFF_S[0]
        log.info("pipeline %s: topics %s + %s, trigger %.1fs, max %s records/batch, scorer %s, checkpoint %s",
                 o.query_name, self.settings.topic_documents, self.settings.topic_dead_letters, o.trigger_s,
                 o.max_offsets_per_trigger or "all", scorer_name, o.checkpoint)
        try:
            while True:
                query = (
                    self._stream(spark).writeStream.queryName(o.query_name)
                    .foreachBatch(self._batch_function(processor, sink, scorer_name, spark))
                    .option("checkpointLocation", str(o.checkpoint))
                    .trigger(processingTime=f"{int(o.trigger_s * 1000)} milliseconds")
                    .start()
                )
                self._log_query_id(query)
                with self.state.lock:
                    self.state.last_activity = time.monotonic()
                    committed_before = len(self.state.reports)
                self._write_status(query, state="running")
                failure = self._watch(query)
                if failure is None:
                    break
                # A failed batch was not committed: the restarted query replays it with the same
                # batch id from the checkpoint.
                with self.state.lock:
                    self.state.failures += 1
                    stop = self.state.stop_requested
                    if len(self.state.reports) > committed_before:
                        backoff = RESTART_BACKOFF_S[0]  # it had recovered: a new failure starts over
                log.error("batch failed, query stopped: %s; restarting in %.0fs", _one_line(failure), backoff)
                self._write_status(None, state="failed", error=_one_line(failure))
                if stop or self._sleep_unless_stopped(backoff):
                    break
                backoff = min(backoff * 2, RESTART_BACKOFF_S[1])
                with self.state.lock:
                    self.state.last_activity = time.monotonic()
        finally:
            self._write_status(None, state="stopped")
            sink_engine = getattr(sink, "engine", None)
            if sink_engine is not None:
                sink_engine.dispose()
            if own_spark:
                spark.stop()
        return len(self.state.reports)

    def _log_query_id(self, query) -> None:
        query_id, stored = str(query.id), checkpoint_query_id(self.options.checkpoint)
        if stored != query_id:
            log.warning("query id %s differs from %s in %s; the batches are keyed on the checkpoint's", query_id,
                        stored, self.options.checkpoint / "metadata")
        else:
            log.info("pipeline %s: query id %s (checkpoint %s)", self.options.query_name, query_id,
                     self.options.checkpoint)

    def _warm_workers(self, spark, config) -> None:
        """Load the scorer in one Python worker per task slot before the query starts (see ``WARM_EVERY_S``)."""
        from pipeline.process import make_warm_up

        t0 = time.monotonic()
        try:
            pids = {row.pid for row in spark.range(0, self.slots, numPartitions=self.slots)
                    .mapInPandas(make_warm_up(config), "pid long").collect()}
        except Exception as exc:  # noqa: BLE001 - a model that cannot load fails the first batch with its error
            log.warning("warming the Python workers failed (%s); the first batch loads the model", _one_line(str(exc)))
            return
        first = self._last_warm is None
        self._last_warm = time.monotonic()
        log.log(logging.INFO if first else logging.DEBUG, "%d Python worker(s) %s the model in %.1fs", len(pids),
                "loaded" if first else "kept", time.monotonic() - t0)

    def _sleep_unless_stopped(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.state.stop_requested:
                return True
            time.sleep(0.2)
        return self.state.stop_requested

    def _watch(self, query) -> str | None:
        """Poll the query; stop it between batches when asked or idle. Returns the failure, if any."""
        idle = self.options.until_idle_s
        while True:
            try:
                if query.awaitTermination(0.5):
                    exc = query.exception()
                    self._log_progress(query)
                    return str(exc) if exc is not None else None
            except Exception as exc:  # noqa: BLE001 - StreamingQueryException: the batch raised
                self._log_progress(query)
                return str(exc)
            self._log_progress(query)
            with self.state.lock:
                in_batch = self.state.in_batch
                stop = self.state.stop_requested
                quiet_for = time.monotonic() - self.state.last_activity
            if not stop and not in_batch and self._warm_config is not None:
                last_used = max(self.state.last_activity, self._last_warm or 0.0)
                if time.monotonic() - last_used >= WARM_EVERY_S:
                    self._warm_workers(self._spark, self._warm_config)
            if not stop and idle is not None and not in_batch and quiet_for >= idle:
                # Idle means nothing left to read, not merely "no batch lately": Spark can take
                # longer than S to plan its first batch.
                lag = self._committed_lag()
                if lag == 0:
                    log.info("no new input for %.0fs and nothing left in the topics: stopping", quiet_for)
                    self.request_stop("idle")
                    stop = True
                else:
                    with self.state.lock:
                        self.state.last_activity = time.monotonic()
            if stop and not in_batch:
                # Between batches: Spark has committed the last one. Should a new batch start in
                # this instant, stopping interrupts it before its commit and it is replayed (and
                # skipped by the sink if its transaction had committed) on the next start.
                query.stop()
                self._log_progress(query)
                return None

    def _committed_lag(self) -> int | None:
        s = self.settings
        try:
            return kafka_lag(s, self.options.checkpoint, [s.topic_documents, s.topic_dead_letters])["lag"]
        except Exception as exc:  # noqa: BLE001 - Kafka briefly unreachable: not idle, ask again later
            log.warning("cannot read Kafka end offsets: %s", exc)
            return None

    def _log_progress(self, query) -> None:
        """One line per committed batch, with the lag from Spark's progress report."""
        try:
            progresses = query.recentProgress
        except Exception:  # noqa: BLE001 - the query is shutting down
            return
        for progress in progresses:
            batch_id = progress.get("batchId")
            with self.state.lock:
                report = self.state.reports.get(batch_id)
            if batch_id is None or report is None or batch_id in self._logged_batches:
                continue
            self._logged_batches.add(batch_id)
            lag = progress_lag(progress)
            report = {**report, "lag": lag, "at": datetime.now(timezone.utc).isoformat()}
            records = progress.get("numInputRows")
            if records is not None and not report.get("skipped") and records != report.get("n_input"):
                # One processed row per Kafka record is the processor's contract; say so loudly.
                log.error("batch %d: %d Kafka records in, %s processed rows out", batch_id, records,
                          report.get("n_input"))
            with self.state.lock:
                self.state.reports[batch_id] = report
            seconds = max(report["wall_s"], 0.001)  # the whole batch: read, score, write
            by_source = report.get("unsupported_by_source") or {}
            log.info(
                "batch %d: %d input, %d scored (%.0f/s), %d unsupported language%s, %d dead letters, %d late, "
                "%d duplicates, %.2fs, lag %s%s",
                batch_id, report.get("n_input", 0), report.get("n_scored", 0),
                report.get("n_scored", 0) / seconds, report.get("n_unsupported", 0),
                " (" + ", ".join(f"{k} {v}" for k, v in sorted(by_source.items())) + ")" if by_source else "",
                report.get("n_dead", 0), report.get("n_late", 0),
                report.get("n_duplicates", 0), report["wall_s"], "?" if lag is None else lag,
                " (already committed: skipped)" if report.get("skipped") else
                " (new epoch)" if report.get("new_epoch") else
                " (offsets differ from the committed batch: written again)" if report.get("offsets_mismatch") else "",
            )
            self.metrics.observe_batch(report, lag)
            committed = batch_end_offsets(progress)
            with self.state.lock:
                totals = self.state.totals
                totals["batches"] += 1
                totals["n_input"] += int(report.get("n_input") or 0)
                totals["n_scored"] += int(report.get("n_scored") or 0)
                totals.setdefault("first_batch_started_at", report.get("started_at") or report["at"])
            self._write_status(query, state="running", last_batch=report,
                               extra={"committed_offsets": committed, "totals": dict(totals)})
            if self.on_progress:
                self.on_progress(report)

    def _write_status(self, query, *, state: str, last_batch: dict | None = None, error: str | None = None,
                      extra: dict | None = None) -> None:
        previous = {}
        try:
            previous = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            pass
        status = {
            **previous,
            "query_name": self.options.query_name,
            "state": state,
            "pid": os.getpid(),
            "updated_at": datetime.now(timezone.utc).isoformat(),
            "checkpoint": str(self.options.checkpoint),
            "scorer": self.options.scorer_url or "in-process",
        }
        if last_batch is not None:
            status["last_batch"] = last_batch
        status.update(extra or {})
        if error is not None:
            status["last_error"] = error
        tmp = self.status_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(status, default=str, indent=1))
            tmp.replace(self.status_file)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.status_file, exc)


def _report_dict(report: Any) -> dict[str, Any]:
    if hasattr(report, "__dataclass_fields__"):
        data = asdict(report)
    elif hasattr(report, "_asdict"):
        data = report._asdict()
    elif isinstance(report, dict):
        data = dict(report)
    else:
        data = {k: v for k, v in vars(report).items() if not k.startswith("_")}
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in data.items()}


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    # Spark wraps the Python error in JVM and PySpark frames; the last "module.Type: message"
    # line that is not Spark's own wrapper names what went wrong.
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*: \S", line) and not line.startswith(("pyspark.", "py4j.", "org.apache.", "java.")):
            return line[:500]
    return (lines[0] if lines else "unknown error")[:500]


def read_checkpoint_offsets(checkpoint: Path) -> tuple[int | None, dict[str, dict[str, int]]]:
    """(last committed batch id, its end offsets per topic and partition) from a Spark checkpoint."""
    commits = sorted((int(p.name) for p in (checkpoint / "commits").glob("[0-9]*") if p.name.isdigit()),
                     reverse=True)
    for batch_id in commits:
        path = checkpoint / "offsets" / str(batch_id)
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        offsets: dict[str, dict[str, int]] = {}
        for line in lines[2:]:  # "v1", batch metadata, then one line per source
            value = _offsets(line)
            if value:
                for topic, parts in value.items():
                    offsets.setdefault(topic, {}).update({str(k): int(v) for k, v in parts.items()})
        return batch_id, offsets
    return None, {}


def kafka_lag(settings: Settings, checkpoint: Path, topics: list[str]) -> dict[str, Any]:
    """Records in ``topics`` not yet committed by the query whose checkpoint is ``checkpoint``."""
    from kafka import TopicPartition

    batch_id, committed = read_checkpoint_offsets(checkpoint)
    ends = {TopicPartition(topic, int(part)): offset
            for topic, parts in end_offsets(settings, topics).items() for part, offset in parts.items()}
    per_topic: dict[str, int] = {}
    for tp, end in ends.items():
        done = committed.get(tp.topic, {}).get(str(tp.partition), 0)
        per_topic[tp.topic] = per_topic.get(tp.topic, 0) + max(0, end - done)
    return {"checkpoint_batch": batch_id, "lag": sum(per_topic.values()), "lag_per_topic": per_topic,
            "end_offsets": sum(ends.values())}
