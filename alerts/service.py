"""The alert service: APScheduler runs leader election + evaluation, and outbox delivery.

Two interval jobs, both ``coalesce=True`` (a backlog of missed runs collapses into one),
``max_instances=1`` (a slow run is never overlapped by the next) and a misfire grace time of
one interval:

- ``evaluate`` every ``alerts_interval_seconds``: poll the leader lock; the leader evaluates.
- ``deliver`` every ``alerts_delivery_interval_seconds``: the leader claims due outbox
  messages and hands them to worker threads (it does not wait for them).

An exception in a job is logged and the job runs again next time: the service never dies
on one bad evaluation or one bad receiver. SIGTERM stops the scheduler, lets in-flight
sends finish (bounded by their timeout) and releases the lock.

Prometheus metrics (``alerts.metrics``) are served on ``alerts_metrics_host:alerts_metrics_port``
unless the port is 0; a port already taken stops the start with one line naming the setting.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import datetime, timezone

from apscheduler.schedulers.blocking import BlockingScheduler

from alerts.config import Config
from alerts.delivery import Dispatcher
from alerts.engine import Evaluator
from alerts.leader import Leader
from alerts.metrics import Metrics
from finpulse import db
from finpulse.metrics import serve_metrics
from finpulse.settings import Settings

log = logging.getLogger("alerts.service")


class AlertService:
    def __init__(self, config: Config, settings: Settings):
        config.check_signing()  # never send unsigned by accident, whoever builds the service
        self.config = config
        self.settings = settings
        self.metrics = Metrics()
        self.engine = db.engine(settings, pool_size=settings.alerts_delivery_workers + 2)
        self.leader = Leader(settings.sqlalchemy_url().get_secret_value())
        self.evaluator = Evaluator(self.engine, config, settings, holder=self.leader.holder)
        self.dispatcher = Dispatcher(self.engine, config, settings, holder=self.leader.holder,
                                     is_leader=lambda: self.leader.is_leader, metrics=self.metrics)
        self.scheduler = BlockingScheduler(timezone="UTC")
        self._metrics_server = None

    def evaluate(self) -> None:
        try:
            leading = self.leader.poll()
            self.metrics.is_leader.set(1 if leading else 0)
            if not leading:
                self.metrics.evaluations.labels("standby").inc()
                self.metrics.clear_pending()
                log.debug("%s is a standby", self.leader.holder)
                return
            started = time.monotonic()
            report = self.evaluator.run_once()
            self.metrics.evaluation_duration.observe(time.monotonic() - started)
            self.metrics.last_evaluation.set(time.time())
            for event, *_ in report.transitions:
                self.metrics.transitions.labels(event).inc()
            for message in report.messages:
                self.metrics.message(message.receiver, "queued")
            if report.skipped:
                self.metrics.evaluations.labels("skipped").inc()
                log.info("evaluation skipped: %s", report.skipped)
            else:
                self.metrics.evaluations.labels("evaluated").inc()
                log.info("evaluated %d window(s): %d transition(s), %d message(s) queued, %d muted",
                         report.windows, len(report.transitions), len(report.messages), len(report.muted))
        except Exception:
            self.metrics.evaluations.labels("error").inc()
            log.exception("evaluation failed; next run in %.0fs", self.settings.alerts_interval_seconds)

    def deliver(self) -> None:
        try:
            if self.leader.is_leader:
                self.dispatcher.dispatch()
        except Exception:
            log.exception("outbox dispatch failed; retrying next run")

    def serve_metrics(self) -> None:
        """Start /metrics (unless the port is 0); a taken port is a MetricsPortError naming the setting."""
        s = self.settings
        self._metrics_server = serve_metrics(self.metrics.registry, host=s.alerts_metrics_host,
                                             port=s.alerts_metrics_port, setting="FINPULSE_ALERTS_METRICS_PORT")
        if self._metrics_server is None:
            log.info("metrics off (FINPULSE_ALERTS_METRICS_PORT=0)")
        else:
            log.info("metrics on http://%s:%d/metrics", s.alerts_metrics_host, s.alerts_metrics_port)

    def run(self) -> None:
        s = self.settings
        # APScheduler logs every job run at INFO: twice a second of noise; its warnings still show.
        logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))
        for name, why in self.config.unconfigured.items():
            log.info("receiver %s is off (%s)", name, why)
        for r in self.config.receivers.values():
            if r.type == "webhook" and r.secret is None:
                log.info("webhook receiver %s sends unsigned (it allows it)", r.name)
        self.serve_metrics()
        log.info("alert service %s: %d rule(s) from %s, receivers %s, every %.0fs", self.leader.holder,
                 len(self.config.rules), self.config.path, ", ".join(self.config.receivers), s.alerts_interval_seconds)
        common = {"coalesce": True, "max_instances": 1}
        self.scheduler.add_job(self.evaluate, "interval", seconds=s.alerts_interval_seconds, id="evaluate",
                               misfire_grace_time=max(1, int(s.alerts_interval_seconds)), next_run_time=_now(), **common)
        self.scheduler.add_job(self.deliver, "interval", seconds=s.alerts_delivery_interval_seconds, id="deliver",
                               misfire_grace_time=max(1, int(s.alerts_delivery_interval_seconds)), **common)

        def stop(signum, frame):
            log.info("signal %d: stopping", signum)
            threading.Thread(target=self.scheduler.shutdown, kwargs={"wait": False}, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            self.scheduler.start()
        finally:
            self.dispatcher.drain(timeout=max(r.timeout for r in self.config.receivers.values()) + 1)
            self.leader.release()
            self.engine.dispose()
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
            log.info("alert service stopped")


def _now():
    return datetime.now(timezone.utc)
