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
"""

from __future__ import annotations

import logging
import signal
import threading

from apscheduler.schedulers.blocking import BlockingScheduler

from alerts.config import Config
from alerts.delivery import Dispatcher
from alerts.engine import Evaluator
from alerts.leader import Leader
from finpulse import db
from finpulse.settings import Settings

log = logging.getLogger("alerts.service")


class AlertService:
    def __init__(self, config: Config, settings: Settings):
        self.config = config
        self.settings = settings
        self.engine = db.engine(settings, pool_size=settings.alerts_delivery_workers + 2)
        self.leader = Leader(settings.sqlalchemy_url().get_secret_value())
        self.evaluator = Evaluator(self.engine, config, settings)
        self.dispatcher = Dispatcher(self.engine, config, settings, holder=self.leader.holder,
                                     is_leader=lambda: self.leader.is_leader)
        self.scheduler = BlockingScheduler(timezone="UTC")
        self._lock = threading.Lock()

    def evaluate(self) -> None:
        try:
            if not self.leader.poll():
                log.debug("%s is a standby", self.leader.holder)
                return
            report = self.evaluator.run_once()
            if report.skipped:
                log.info("evaluation skipped: %s", report.skipped)
            else:
                log.info("evaluated %d window(s): %d transition(s), %d message(s) queued, %d muted",
                         report.windows, len(report.transitions), len(report.messages), len(report.muted))
        except Exception:
            log.exception("evaluation failed; next run in %.0fs", self.settings.alerts_interval_seconds)

    def deliver(self) -> None:
        try:
            if self.leader.is_leader:
                self.dispatcher.dispatch()
        except Exception:
            log.exception("outbox dispatch failed; retrying next run")

    def run(self) -> None:
        s = self.settings
        # APScheduler logs every job run at INFO: twice a second of noise; its warnings still show.
        logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))
        for name, why in self.config.unconfigured.items():
            log.info("receiver %s is off (%s)", name, why)
        for r in self.config.receivers.values():
            if r.type == "webhook" and r.secret is None:
                log.warning("webhook receiver %s has no signing secret: its messages go out unsigned", r.name)
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
            log.info("alert service stopped")


def _now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)
