"""Prometheus metrics of the alert service, served on ``FINPULSE_ALERTS_METRICS_HOST:PORT`` (/metrics).

Each :class:`Metrics` has its own ``CollectorRegistry`` (not the global default), so a process --
or a test -- can build many services without "duplicated timeseries" errors.

- ``finpulse_alerts_evaluations_total{result}``: evaluation ticks by result: ``evaluated``,
  ``skipped`` (nothing to evaluate, or another evaluation held the lock), ``standby`` (this
  instance does not lead), ``error`` (it raised; the next tick runs again).
- ``finpulse_alerts_evaluation_duration_seconds``: how long an evaluation that ran took.
- ``finpulse_alerts_last_evaluation_timestamp_seconds``: when the last one that ran ended (Unix time).
- ``finpulse_alerts_transitions_total{event}``: pending, firing, resolved, cancelled, rule_removed.
- ``finpulse_alerts_messages_total{receiver,event}``: ``queued`` (written to the outbox), ``sent``,
  ``failed`` (one failed attempt; the message is retried) and ``dead`` (given up).
- ``finpulse_alerts_outbox_pending{receiver}``: messages waiting to be sent (leader only; a
  standby reports none).
- ``finpulse_alerts_delivery_duration_seconds{receiver}``: one delivery attempt, failed or not.
- ``finpulse_alerts_is_leader``: 1 while this instance leads, else 0.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_DELIVERY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.evaluations = Counter("finpulse_alerts_evaluations", "Evaluation ticks by result.", ["result"], registry=r)
        self.evaluation_duration = Histogram("finpulse_alerts_evaluation_duration_seconds",
                                             "Duration of an evaluation that ran.", registry=r)
        self.last_evaluation = Gauge("finpulse_alerts_last_evaluation_timestamp_seconds",
                                     "Unix time at which the last evaluation that ran ended.", registry=r)
        self.transitions = Counter("finpulse_alerts_transitions", "Episode status changes by event.", ["event"],
                                   registry=r)
        self.messages = Counter("finpulse_alerts_messages", "Outbox messages by receiver and event "
                                "(queued, sent, failed attempt, dead).", ["receiver", "event"], registry=r)
        self.outbox_pending = Gauge("finpulse_alerts_outbox_pending", "Messages waiting to be sent, by receiver.",
                                    ["receiver"], registry=r)
        self.delivery_duration = Histogram("finpulse_alerts_delivery_duration_seconds",
                                           "Duration of one delivery attempt.", ["receiver"],
                                           buckets=_DELIVERY_BUCKETS, registry=r)
        self.is_leader = Gauge("finpulse_alerts_is_leader", "1 while this instance leads, else 0.", registry=r)

    def message(self, receiver: str, event: str) -> None:
        self.messages.labels(receiver, event).inc()

    def set_pending(self, counts: dict[str, int]) -> None:
        for receiver, n in counts.items():
            self.outbox_pending.labels(receiver).set(n)

    def clear_pending(self) -> None:
        self.outbox_pending.clear()
