"""One evaluation: every rule over its newly closed windows, state changes and outbox in one transaction.

For each rule, the windows to evaluate are the closed ones (``window_end <= now - settle``)
after the rule's cursor, at most ``alerts_catchup_windows`` of them (the first run starts that
many windows back, so a fresh service looks at the recent past). Windows are taken in time
order; all rules' windows that end at the same instant form one evaluation, and what it makes
notifiable is grouped into one outbox message per receiver.

Everything one run decides (episodes, history, cursors, outbox rows and the notification
ledger) is written in one transaction, under a transaction-level advisory lock: an
evaluation is applied entirely or not at all, and two evaluators never interleave.

Notification rules (Alertmanager's, per receiver of the rule's ``routes``):

- a firing episode is notified once, then again every ``repeat_interval`` (measured in window
  time, so a backtest or a catch-up behaves the same as live) while it keeps firing;
- a resolved episode is notified once if its firing was notified to that receiver;
- a firing episode matching an active silence, or inhibited (an alert matching an inhibit
  rule's ``source`` fires, with equal ``equal`` labels), is not notified; the decision is
  recorded in ``alert_events``. When the silence ends the episode is notified at the next
  evaluation. A resolution is always notified where the firing was: the receiver must not be
  left believing it still fires.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from alerts import store
from alerts.config import Config, Rule
from alerts.detectors import Result
from alerts.lifecycle import Episode, step
from alerts.notify import alert_json, build_message
from finpulse.settings import Settings

log = logging.getLogger("alerts.engine")
EVALUATION_LOCK = 0x66_70_61_6C  # "fpal": serialises evaluations (transaction-level)
NO_DATA = Result(False, False, float("nan"), 1.0, {}, "no documents in the window")

TESTS = {
    "negative_share": "one-sided binomial test of the negative share against the baseline share, Wilson lower bound",
    "negative_volume": "Poisson tail of the negative count against the baseline rate",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Outgoing:
    outbox_id: str
    receiver: str
    channel: str
    status: str
    payload: dict[str, Any]


@dataclass
class Report:
    windows: int = 0
    transitions: list[tuple[str, str, str, str]] = field(default_factory=list)  # (event, rule, key, window_start)
    messages: list[Outgoing] = field(default_factory=list)
    muted: list[tuple[str, str, str]] = field(default_factory=list)  # (reason, rule, key)
    skipped: str | None = None


def closed_windows(rule: Rule, cursor: datetime | None, now: datetime, settings: Settings) -> list[datetime]:
    """Starts of the rule's windows that closed since ``cursor`` (epoch-aligned tumbling windows)."""
    w = rule.width
    horizon = now.timestamp() - settings.alerts_settle_seconds - w
    latest = int(horizon // w) * w
    earliest = latest - (settings.alerts_catchup_windows - 1) * w
    first = earliest if cursor is None else max(int(cursor.timestamp()) + w, earliest)
    if cursor is not None and int(cursor.timestamp()) + w < earliest:
        log.warning("rule %s: %d window(s) not evaluated after downtime (catch-up limit %d)", rule.name,
                    (earliest - int(cursor.timestamp())) // w - 1, settings.alerts_catchup_windows)
    return [datetime.fromtimestamp(t, timezone.utc) for t in range(first, latest + 1, w)]


def _episode_from_row(row) -> Episode:
    return Episode(id=row.id, fingerprint=row.fingerprint, rule=row.rule, dimension=row.dimension, key=row.key,
                   width=row.width_seconds, severity=row.severity, status=row.status,
                   pending_windows=row.pending_windows, starts_at=row.starts_at, last_window=row.last_window,
                   fired_at=row.fired_at, ends_at=row.ends_at, last_eval=row.last_eval, peak=row.peak,
                   evidence=row.evidence)


_UPSERT = sa.text("""
INSERT INTO alerts (id, fingerprint, rule, dimension, key, width_seconds, severity, status, pending_windows,
                    starts_at, fired_at, ends_at, last_window, last_eval, peak, evidence)
VALUES (:id, :fingerprint, :rule, :dimension, :key, :width, :severity, :status, :pending_windows,
        :starts_at, :fired_at, :ends_at, :last_window, CAST(:last_eval AS jsonb), CAST(:peak AS jsonb),
        CAST(:evidence AS jsonb))
ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, pending_windows = EXCLUDED.pending_windows,
    fired_at = EXCLUDED.fired_at, ends_at = EXCLUDED.ends_at, last_window = EXCLUDED.last_window,
    last_eval = EXCLUDED.last_eval, peak = EXCLUDED.peak, evidence = EXCLUDED.evidence, updated_at = now()
""")


def _dump(value: Any) -> str:
    return json.dumps(value, default=str, allow_nan=False)


def _save(conn: Connection, ep: Episode) -> None:
    conn.execute(_UPSERT, {"id": ep.id, "fingerprint": ep.fingerprint, "rule": ep.rule, "dimension": ep.dimension,
                           "key": ep.key, "width": ep.width, "severity": ep.severity, "status": ep.status,
                           "pending_windows": ep.pending_windows, "starts_at": ep.starts_at, "fired_at": ep.fired_at,
                           "ends_at": ep.ends_at, "last_window": ep.last_window, "last_eval": _dump(ep.last_eval),
                           "peak": _dump(ep.peak), "evidence": _dump(ep.evidence)})


def _event(conn: Connection, alert_id: str, event: str, window_start: datetime | None, detail: dict) -> None:
    conn.execute(sa.text("INSERT INTO alert_events (alert_id, event, window_start, detail) "
                         "VALUES (:a, :e, :w, CAST(:d AS jsonb))"),
                 {"a": alert_id, "e": event, "w": window_start, "d": _dump(detail)})


@dataclass(frozen=True)
class Silence:
    id: int
    rule: str | None
    dimension: str | None
    key_pattern: str

    def matches(self, ep: Episode) -> bool:
        return ((self.rule is None or self.rule == ep.rule)
                and (self.dimension is None or self.dimension == ep.dimension)
                and fnmatch.fnmatchcase(ep.key, self.key_pattern))


def active_silences(conn: Connection, now: datetime) -> list[Silence]:
    rows = conn.execute(sa.text("SELECT id, rule, dimension, key_pattern FROM alert_silences "
                                "WHERE expired_at IS NULL AND starts_at <= :now AND ends_at > :now"), {"now": now})
    return [Silence(r.id, r.rule, r.dimension, r.key_pattern) for r in rows]


def _labels(ep: Episode) -> dict[str, str]:
    return {"alertname": ep.rule, "dimension": ep.dimension, "key": ep.key, "severity": ep.severity,
            "width": str(ep.width)}


def inhibited_by(config: Config, ep: Episode, firing: list[Episode]) -> Episode | None:
    """The firing episode that inhibits ``ep``, if any (never itself)."""
    labels = _labels(ep)
    for inh in config.inhibit:
        if not inh.target.matches(labels):
            continue
        for src in firing:
            if src.id == ep.id:
                continue
            src_labels = _labels(src)
            if inh.source.matches(src_labels) and all(src_labels[e] == labels[e] for e in inh.equal):
                return src
    return None


class Evaluator:
    def __init__(self, engine: Engine, config: Config, settings: Settings, *,
                 now: Callable[[], datetime] = utcnow):
        self.engine = engine
        self.config = config
        self.settings = settings
        self.now = now

    def run_once(self, *, dry_run: bool = False) -> Report:
        report = Report()
        with self.engine.connect() as conn:
            with conn.begin() as tx:
                if not conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": EVALUATION_LOCK}).scalar():
                    report.skipped = "another evaluation is running"
                    return report
                self._evaluate(conn, report)
                if dry_run:
                    tx.rollback()
        return report

    def _evaluate(self, conn: Connection, report: Report) -> None:
        now = self.now()
        model_version = self.settings.alerts_model_version or store.latest_model_version(conn)
        if model_version is None:
            report.skipped = "no windows in sentiment_windows yet"
            return
        cursors = {r.rule: r.last_window for r in conn.execute(sa.text("SELECT rule, last_window FROM alert_cursors"))}
        by_end: dict[datetime, list[tuple[Rule, datetime]]] = defaultdict(list)
        for rule in self.config.rules:
            for start in closed_windows(rule, cursors.get(rule.name), now, self.settings):
                by_end[start + timedelta(seconds=rule.width)].append((rule, start))
        open_eps: dict[str, dict[str, Episode]] = {r.name: {} for r in self.config.rules}
        for row in conn.execute(sa.text("SELECT * FROM alerts WHERE status IN ('pending', 'firing')")):
            if row.rule in open_eps:
                open_eps[row.rule][row.key] = _episode_from_row(row)
            else:
                self._close_orphan(conn, _episode_from_row(row), now, report)
        silences = active_silences(conn, now)
        for end in sorted(by_end):
            resolved_now: list[Episode] = []
            for rule, start in by_end[end]:
                report.windows += 1
                self._evaluate_window(conn, rule, start, end, model_version, open_eps[rule.name], resolved_now, report)
                conn.execute(sa.text(
                    "INSERT INTO alert_cursors (rule, width_seconds, last_window) VALUES (:r, :w, :t) "
                    "ON CONFLICT (rule) DO UPDATE SET width_seconds = EXCLUDED.width_seconds, "
                    "last_window = EXCLUDED.last_window, updated_at = now()"),
                    {"r": rule.name, "w": rule.width, "t": start})
            firing = [ep for eps in open_eps.values() for ep in eps.values() if ep.status == "firing"]
            self._notify(conn, end, firing, resolved_now, silences, report)
        if not by_end:
            # No new window: still-firing alerts whose silence or inhibition ended are notified now.
            firing = [ep for eps in open_eps.values() for ep in eps.values() if ep.status == "firing"]
            if firing:
                end = max(ep.last_window + timedelta(seconds=ep.width) for ep in firing)
                self._notify(conn, end, firing, [], silences, report)

    def _evaluate_window(self, conn: Connection, rule: Rule, start: datetime, end: datetime, model_version: str,
                         open_eps: dict[str, Episode], resolved_now: list[Episode], report: Report) -> None:
        windows = store.scope_windows(conn, rule, start, model_version)
        if not windows:
            # No data at all for this rule's scopes (pipeline down or not started): leave open episodes be.
            return
        detect = rule.detector_fn()
        for key in set(windows) | set(open_eps):
            window = windows.get(key)
            result = detect(window) if window is not None else NO_DATA
            ep, events = step(rule, key, open_eps.get(key), result, start, end)
            if ep is None:
                continue
            if "firing" in events:
                ep.evidence = {
                    "test": TESTS[rule.detector], "detector": rule.detector, "params": rule.params,
                    "first_stories_only": rule.first_stories_only, "model_version": model_version,
                    "window": ep.last_eval,
                    "documents": store.top_documents(conn, rule, key, start, end, model_version),
                }
            if ep.status == "resolved":
                ep.evidence = {**ep.evidence, "resolved_window": ep.last_eval}
            if events or ep.open:
                # Open episodes are saved every window (last_eval); closed ones once, on their last event.
                _save(conn, ep)
            for event in events:
                _event(conn, ep.id, event, start, ep.last_eval)
                report.transitions.append((event, rule.name, key, start.isoformat()))
                log.info("alert %s %s %s=%s window %s", event, rule.name, rule.scope.dimension, key, start.isoformat())
            if ep.open:
                open_eps[key] = ep
            else:
                open_eps.pop(key, None)
                if ep.status == "resolved":
                    resolved_now.append(ep)

    def _notify(self, conn: Connection, end: datetime, firing: list[Episode], resolved: list[Episode],
                silences: list[Silence], report: Report) -> None:
        candidates = firing + resolved
        if not candidates:
            return
        ledger: dict[tuple[str, str, str], tuple[int, datetime]] = {}
        for row in conn.execute(sa.text(
                "SELECT alert_id, receiver, status, max(seq) AS seq, max(at_window) AS at_window "
                "FROM alert_notifications WHERE alert_id = ANY(:ids) GROUP BY alert_id, receiver, status"),
                {"ids": [ep.id for ep in candidates]}):
            ledger[(row.alert_id, row.receiver, row.status)] = (row.seq, row.at_window)
        last_mute: dict[str, tuple[str, dict]] = {}
        for row in conn.execute(sa.text(
                "SELECT DISTINCT ON (alert_id) alert_id, event, detail FROM alert_events "
                "WHERE alert_id = ANY(:ids) AND event IN ('silenced', 'inhibited', 'notified') "
                "ORDER BY alert_id, id DESC"), {"ids": [ep.id for ep in firing]}):
            last_mute[row.alert_id] = (row.event, row.detail)
        per_receiver: dict[str, list[tuple[Episode, str, int]]] = defaultdict(list)
        for ep in firing:
            rule = self._rule(ep.rule)
            if rule is None:
                continue
            due = []
            for receiver in self.config.routes(rule):
                last = ledger.get((ep.id, receiver.name, "firing"))
                if last is None or (end - last[1]).total_seconds() >= rule.repeat_interval:
                    due.append((receiver.name, 0 if last is None else last[0] + 1))
            if not due:
                continue
            reason = self._muted(ep, firing, silences)
            if reason is not None:
                # Recorded when it starts or changes, not at every evaluation while it lasts.
                if last_mute.get(ep.id) != reason:
                    _event(conn, ep.id, reason[0], None, reason[1])
                report.muted.append((reason[0], ep.rule, ep.key))
                continue
            for name, seq in due:
                per_receiver[name].append((ep, "firing", seq))
        for ep in resolved:
            rule = self._rule(ep.rule)
            if rule is None:
                continue
            for receiver in self.config.routes(rule):
                if (ep.id, receiver.name, "firing") in ledger and (ep.id, receiver.name, "resolved") not in ledger:
                    per_receiver[receiver.name].append((ep, "resolved", 0))
        for name, items in per_receiver.items():
            receiver = self.config.receivers[name]
            message_id = f"msg_{uuid.uuid4().hex}"
            alerts = [alert_json(self._rule(ep.rule), ep, status, self.settings) for ep, status, _ in items]
            payload = build_message(message_id, receiver, alerts, self.settings)
            status = payload["webhook"]["status"]
            conn.execute(sa.text(
                "INSERT INTO alert_outbox (id, receiver, channel, status, group_key, payload) "
                "VALUES (:id, :r, :c, :s, :g, CAST(:p AS jsonb))"),
                {"id": message_id, "r": name, "c": receiver.type, "s": status,
                 "g": payload["webhook"]["groupKey"], "p": _dump(payload)})
            for ep, st, seq in items:
                conn.execute(sa.text(
                    "INSERT INTO alert_notifications (alert_id, receiver, status, seq, outbox_id, at_window) "
                    "VALUES (:a, :r, :s, :q, :o, :w)"),
                    {"a": ep.id, "r": name, "s": st, "q": seq, "o": message_id, "w": end})
                _event(conn, ep.id, "notified", None, {"receiver": name, "status": st, "seq": seq, "outbox_id": message_id})
            report.messages.append(Outgoing(message_id, name, receiver.type, status, payload))
            log.info("queued %s message %s for %s with %d alert(s)", status, message_id, name, len(items))

    def _muted(self, ep: Episode, firing: list[Episode], silences: list[Silence]) -> tuple[str, dict] | None:
        for silence in silences:
            if silence.matches(ep):
                return "silenced", {"silence_id": silence.id}
        source = inhibited_by(self.config, ep, firing)
        if source is not None:
            return "inhibited", {"by_alert": source.id, "by_rule": source.rule, "by_key": source.key}
        return None

    @staticmethod
    def _close_orphan(conn: Connection, ep: Episode, now: datetime, report: Report) -> None:
        """An open episode whose rule is no longer configured: closed (resolved if it fired, else
        cancelled) with a ``rule_removed`` event, so it does not stay open for ever. Without its
        rule there are no routes, so no receiver is told."""
        ep.status = "resolved" if ep.status == "firing" else "cancelled"
        ep.ends_at = now
        _save(conn, ep)
        _event(conn, ep.id, "rule_removed", None, {"status": ep.status})
        report.transitions.append(("rule_removed", ep.rule, ep.key, now.isoformat()))
        log.warning("alert %s %s=%s closed (%s): its rule is no longer configured", ep.rule, ep.dimension, ep.key,
                    ep.status)

    def _rule(self, name: str) -> Rule | None:
        return next((r for r in self.config.rules if r.name == name), None)
