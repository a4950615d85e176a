"""Prometheus metrics of the streaming job, served by ``finpulse pipeline run`` on
``FINPULSE_PIPELINE_METRICS_HOST:PORT`` (/metrics; default 127.0.0.1:9110, 0 = off).

Updated on the driver once per committed micro-batch, from the batch figures the sink returns and
the lag Spark's progress report gives (one registry per job, not the global default, so tests can
build many):

- ``finpulse_pipeline_batches_total{result}``: ``committed``, or ``skipped`` (already committed by an
  earlier run of the same query: a replayed batch);
- ``finpulse_pipeline_records_total{outcome}``: Kafka records by what became of them: ``scored``,
  ``dead_letter``, ``duplicate`` (a document id already stored), ``late`` (stored and scored, behind the
  lateness bound: left to ``pipeline backfill``);
- ``finpulse_pipeline_batch_duration_seconds``: read, score and write of one batch;
- ``finpulse_pipeline_last_batch_docs_per_second``: documents scored per second in the last batch;
- ``finpulse_pipeline_lag_records``: records in Kafka behind the last committed batch (Spark's figure);
- ``finpulse_pipeline_last_batch_timestamp_seconds``: when the last batch was committed (Unix time).
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BATCH_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
_OUTCOMES = {"scored": "n_scored", "dead_letter": "n_dead", "duplicate": "n_duplicates", "late": "n_late"}


class PipelineMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.batches = Counter("finpulse_pipeline_batches", "Micro-batches by result (committed, skipped).",
                               ["result"], registry=r)
        self.records = Counter("finpulse_pipeline_records", "Kafka records by outcome (scored, dead_letter, "
                               "duplicate, late).", ["outcome"], registry=r)
        self.batch_duration = Histogram("finpulse_pipeline_batch_duration_seconds",
                                        "Read, score and write of one micro-batch.", buckets=_BATCH_BUCKETS, registry=r)
        self.docs_per_second = Gauge("finpulse_pipeline_last_batch_docs_per_second",
                                     "Documents scored per second in the last micro-batch.", registry=r)
        self.lag = Gauge("finpulse_pipeline_lag_records", "Kafka records behind the last committed batch.", registry=r)
        self.last_batch = Gauge("finpulse_pipeline_last_batch_timestamp_seconds",
                                "Unix time at which the last micro-batch was committed.", registry=r)

    def observe_batch(self, report: dict[str, Any], lag: int | None) -> None:
        """One batch's figures (``pipeline.job``'s batch report: n_scored, n_dead, ..., wall_s)."""
        if report.get("skipped"):
            self.batches.labels("skipped").inc()
        else:
            self.batches.labels("committed").inc()
            for outcome, key in _OUTCOMES.items():
                self.records.labels(outcome).inc(int(report.get(key) or 0))
            seconds = float(report.get("wall_s") or 0.0)
            self.batch_duration.observe(seconds)
            self.docs_per_second.set(int(report.get("n_scored") or 0) / max(seconds, 0.001))
        if lag is not None:
            self.lag.set(lag)
        self.last_batch.set(time.time())
