"""Outbox delivery: claim due messages, send each in a worker thread, record every attempt.

A message is claimed with a lease (``lease_until`` = now + timeout + margin) under
``FOR UPDATE SKIP LOCKED``, so two dispatchers never send the same message at once, and a
dispatcher killed mid-send leaves a lease that simply runs out (a live one renews the leases of
its sends in flight on every scan, so a slow send is never taken over): the message is sent again,
under the same id, by whoever leads next. Delivery is therefore at least once, and the
message id (``webhook-id``, email ``Message-ID``) is what makes it effectively once at a
receiver that remembers ids it has seen (the Standard Webhooks contract).

Failures are retried with exponential backoff and *equal* jitter: with the ceiling
``c = min(max, base * 2**(attempt-1))`` the delay is ``c/2 + uniform(0, c/2)``, so between half
the ceiling and the ceiling. Equal rather than full jitter (``uniform(0, c)``): jitter is there
to spread retries, but one leader sends at most two messages per receiver at a time, so there
is no crowd of clients to spread, while full jitter can retry a receiver that just failed almost
at once; the floor of half the ceiling keeps the backoff a backoff. Retries go on until the
message is older than ``alerts_delivery_max_age_seconds``; then it is marked ``dead`` (kept,
with its last error) and logged as an error. At most two messages per receiver are in flight, so a slow or
hanging receiver (every attempt bounded by its timeout) never holds up the others.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from alerts.config import Config
from alerts.metrics import Metrics
from alerts.notify import DeliveryError, send
from finpulse.settings import Settings

log = logging.getLogger("alerts.delivery")
PER_RECEIVER = 2
LEASE_MARGIN_SECONDS = 5.0

_CLAIM = sa.text("""
UPDATE alert_outbox SET lease_until = now() + make_interval(secs => :lease), attempts = attempts + 1,
       updated_at = now()
WHERE id IN (
    SELECT id FROM alert_outbox
    WHERE state = 'pending' AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now())
      AND receiver = :receiver
    ORDER BY next_attempt_at, created_at
    LIMIT :n FOR UPDATE SKIP LOCKED)
RETURNING id, receiver, payload, attempts, created_at
""")


def backoff(attempt: int, settings: Settings, rng: random.Random = random.Random()) -> float:
    """Seconds before the next attempt after ``attempt`` failures: exponential, capped, equal jitter
    (uniform between half the ceiling and the ceiling; see the module docstring)."""
    ceiling = min(settings.alerts_backoff_max_seconds, settings.alerts_backoff_base_seconds * 2 ** (attempt - 1))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class Dispatcher:
    def __init__(self, engine: Engine, config: Config, settings: Settings, *, holder: str = "",
                 is_leader=lambda: True, metrics: Metrics | None = None):
        self.engine = engine
        self.metrics = metrics or Metrics()
        self.config = config
        self.settings = settings
        self.holder = holder
        self.is_leader = is_leader
        self.pool = ThreadPoolExecutor(max_workers=settings.alerts_delivery_workers, thread_name_prefix="deliver")
        self.in_flight: dict[str, int] = {}
        self.in_flight_ids: dict[str, float] = {}  # outbox id -> lease seconds, renewed while it is sent
        self.lock = threading.Lock()

    def dispatch(self) -> int:
        """Claim what is due and hand it to the workers without waiting; returns how many were claimed."""
        self._renew_leases()
        claimed = 0
        total_free = self.settings.alerts_delivery_workers - sum(self.in_flight.values())
        for name, receiver in self.config.receivers.items():
            with self.lock:
                free = min(PER_RECEIVER - self.in_flight.get(name, 0), total_free)
            if free <= 0:
                continue
            lease = receiver.timeout + LEASE_MARGIN_SECONDS
            with self.engine.begin() as conn:
                rows = conn.execute(_CLAIM, {"lease": lease, "receiver": name, "n": free}).all()
            for row in rows:
                with self.lock:
                    self.in_flight[name] = self.in_flight.get(name, 0) + 1
                    self.in_flight_ids[row.id] = lease
                total_free -= 1
                claimed += 1
                self.pool.submit(self._deliver, row)
        self._dead_for_unknown_receivers()
        self._count_pending()
        return claimed

    def _count_pending(self) -> None:
        with self.engine.connect() as conn:
            pending = dict(conn.execute(sa.text(
                "SELECT receiver, count(*) FROM alert_outbox WHERE state = 'pending' GROUP BY receiver")).all())
        self.metrics.set_pending({name: pending.get(name, 0) for name in {*self.config.receivers, *pending}})

    def _renew_leases(self) -> None:
        # SMTP and HTTP timeouts bound each socket operation, not a whole send, so a slow but live
        # send could outlast its first lease; renewing on every scan keeps it ours until it ends,
        # while the lease of a dead sender runs out one lease after its last scan.
        with self.lock:
            leases = dict(self.in_flight_ids)
        if not leases:
            return
        with self.engine.begin() as conn:
            for outbox_id, lease in leases.items():
                conn.execute(sa.text("UPDATE alert_outbox SET lease_until = now() + make_interval(secs => :l) "
                                     "WHERE id = :id AND state = 'pending' AND lease_until IS NOT NULL"),
                             {"id": outbox_id, "l": lease})

    def _dead_for_unknown_receivers(self) -> None:
        # A message for a receiver no longer configured stays pending until max age, then is marked dead.
        with self.engine.begin() as conn:
            rows = conn.execute(sa.text(
                "UPDATE alert_outbox SET state = 'dead', last_error = 'receiver not configured', updated_at = now() "
                "WHERE state = 'pending' AND NOT (receiver = ANY(:names)) "
                "AND created_at < now() - make_interval(secs => :age) RETURNING id, receiver"),
                {"names": list(self.config.receivers), "age": self.settings.alerts_delivery_max_age_seconds}).all()
        for row in rows:
            self.metrics.message(row.receiver, "dead")
            log.error("message %s for unconfigured receiver %s is dead", row.id, row.receiver)

    def _deliver(self, row) -> None:
        receiver = self.config.receivers[row.receiver]
        started = time.monotonic()
        code, error = None, None
        try:
            if not self.is_leader():
                raise DeliveryError("lost leadership before sending")
            code = send(receiver, row.id, row.payload, self.settings)
        except DeliveryError as exc:
            error, code = str(exc), exc.response_code
        except Exception as exc:  # a bug in a sender must not kill the worker or lose the message
            error = f"{type(exc).__name__}: {exc}"
            log.exception("sender %s crashed on message %s", receiver.name, row.id)
        elapsed = time.monotonic() - started
        duration_ms = int(elapsed * 1000)
        self.metrics.delivery_duration.labels(receiver.name).observe(elapsed)
        try:
            self._record(row, receiver.name, code, error, duration_ms)
        except Exception:
            log.exception("could not record delivery of %s (the lease will run out and it is retried)", row.id)
        finally:
            with self.lock:
                self.in_flight[receiver.name] -= 1
                self.in_flight_ids.pop(row.id, None)

    def _record(self, row, receiver: str, code: int | None, error: str | None, duration_ms: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO alert_deliveries (outbox_id, attempt, ok, response_code, error, duration_ms, holder) "
                "VALUES (:id, :a, :ok, :code, :err, :ms, :h)"),
                {"id": row.id, "a": row.attempts, "ok": error is None, "code": code, "err": error,
                 "ms": duration_ms, "h": self.holder})
            outcome = self._next_state(conn, row, code, error)
        # Counted once committed: a record that fails is retried, and counted then.
        self.metrics.message(receiver, "sent" if error is None else "failed")
        if outcome == "dead":
            self.metrics.message(receiver, "dead")
            log.error("giving up on %s to %s after %d attempts: %s", row.id, receiver, row.attempts, error)
        elif error is None:
            log.info("delivered %s to %s (attempt %d, %d ms)", row.id, receiver, row.attempts, duration_ms)
        else:
            log.warning("delivery of %s to %s failed (attempt %d), retry in %.1fs: %s", row.id, receiver,
                        row.attempts, outcome, error)

    def _next_state(self, conn, row, code: int | None, error: str | None) -> str | float:
        """Mark the message sent, dead, or due again after a backoff; returns 'sent', 'dead' or the delay."""
        if error is None:
            conn.execute(sa.text(
                "UPDATE alert_outbox SET state = 'sent', sent_at = now(), lease_until = NULL, last_error = NULL, "
                "response_code = :code, updated_at = now() WHERE id = :id"), {"id": row.id, "code": code})
            return "sent"
        age = (datetime.now(timezone.utc) - row.created_at).total_seconds()
        if age >= self.settings.alerts_delivery_max_age_seconds:
            conn.execute(sa.text(
                "UPDATE alert_outbox SET state = 'dead', lease_until = NULL, last_error = :err, "
                "response_code = :code, updated_at = now() WHERE id = :id AND state = 'pending'"),
                {"id": row.id, "err": error, "code": code})
            return "dead"
        delay = backoff(row.attempts, self.settings)
        conn.execute(sa.text(
            "UPDATE alert_outbox SET next_attempt_at = now() + make_interval(secs => :d), lease_until = NULL, "
            "last_error = :err, response_code = :code, updated_at = now() WHERE id = :id AND state = 'pending'"),
            {"id": row.id, "d": delay, "err": error, "code": code})
        return delay

    def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` for in-flight sends (at shutdown)."""
        deadline = time.monotonic() + timeout
        while sum(self.in_flight.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.pool.shutdown(wait=False, cancel_futures=True)
