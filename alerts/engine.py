"""Evaluation: every rule over its newly closed windows; state changes and outbox in one transaction.

For each rule, the windows to evaluate are the closed ones (``window_end <= now - settle``)
after the rule's cursor, at most ``alerts_catchup_windows`` of them (the first run starts that
many windows back, so a fresh service looks at the recent past). Windows are taken in time
order; all rules' windows that end at the same instant form one step, and what a step makes
notifiable goes out grouped (below). :meth:`Evaluator.evaluate_windows` is the one loop over
windows: the service runs it over closed windows and writes what it decides, the backtest
(``alerts.backtest``) runs it over a past period from an empty state and writes nothing, so
both decide the same transitions with the same evidence.

Everything one run decides (episodes, history, cursors, groups, outbox rows and the
notification ledger) is written in one transaction, under a transaction-level advisory lock:
an evaluation is applied entirely or not at all, and two evaluators never interleave.

Notifications (Alertmanager's semantics, per route of the rule):

- An alert reaches a receiver through the first of its rule's routes to that receiver whose
  matchers select its labels. Alerts of one route whose ``group_by`` labels are equal form a
  group (``groupKey`` and ``groupLabels`` as Alertmanager builds them); a message is one group's.
- A group has something to tell when one of its firing alerts was not yet notified to that
  receiver, when one resolved (and the receiver has ``send_resolved``) after its firing was
  notified there, or when a firing alert's ``repeat_interval`` has passed since it was last
  notified. Its message then lists every firing alert of the group that is not muted, and
  the resolutions: a receiver keyed on groupKey sees the whole group.
- ``group_wait`` holds a new group's first message, ``group_interval`` every later one after
  the group's last message. All three waits are **window time** (the end of the window being
  evaluated), not wall time: a backtest, a catch-up after downtime and a live service decide the
  same messages from the same windows. A wait therefore elapses at the first evaluated window end
  at or after it (a wait shorter than the width is rounded up to the next window).
- A firing alert matching an active silence, or inhibited (an alert matching an inhibit rule's
  source fires, with equal ``equal`` labels), is left out of its group's messages; the decision
  is recorded in ``alert_events`` when it starts or changes. When the silence ends it is
  notified at the next evaluation. A resolution is notified wherever the firing was (unless
  the receiver has ``send_resolved: false``): a receiver must not be left believing it fires.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from alerts import store
from alerts.config import Config, Receiver, Route, Rule, labels_of, matches_all
from alerts.detectors import Result
from alerts.lifecycle import Episode, step
from alerts.notify import CHARTS_PER_MESSAGE, TREND_WINDOWS, alert_json, build_message, chart_spec
from finpulse.settings import Settings

log = logging.getLogger("alerts.engine")
EVALUATION_LOCK = 0x66_70_61_6C  # "fpal": serialises evaluations (transaction-level)
NO_DATA = Result(False, False, float("nan"), 1.0, {}, "no documents in the window")

TESTS = {
    "negative_share": "one-sided exact binomial test of the negative share against the baseline share, "
                      "Wilson lower bound",
    "negative_volume": "quasi-Poisson test of the negative count against the baseline rate (the Poisson tail "
                       "after dividing by the baseline's dispersion)",
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
    fired: list[Episode] = field(default_factory=list)  # episodes that started firing, in order


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


def windows_between(rule: Rule, since: datetime, until: datetime) -> list[datetime]:
    """Starts of the rule's windows that lie wholly in [since, until)."""
    w = rule.width
    first = -(-int(since.timestamp()) // w) * w
    return [datetime.fromtimestamp(t, timezone.utc) for t in range(first, int(until.timestamp()) - w + 1, w)]


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
    """Silences in force at ``now`` (a silence that starts later mutes nothing yet)."""
    rows = conn.execute(sa.text("SELECT id, rule, dimension, key_pattern FROM alert_silences "
                                "WHERE expired_at IS NULL AND starts_at <= :now AND ends_at > :now"), {"now": now})
    return [Silence(r.id, r.rule, r.dimension, r.key_pattern) for r in rows]


def labels(ep: Episode) -> dict[str, str]:
    return labels_of(ep.rule, ep.dimension, ep.key, ep.severity, ep.width)


def inhibited_by(config: Config, ep: Episode, firing: list[Episode]) -> Episode | None:
    """The firing episode that inhibits ``ep``, if any (never itself)."""
    target = labels(ep)
    for inh in config.inhibit:
        if not matches_all(inh.target_matchers, target):
            continue
        target_is_source = matches_all(inh.source_matchers, target)
        for src in firing:
            if src.id == ep.id:
                continue
            source = labels(src)
            if not matches_all(inh.source_matchers, source):
                continue
            # Alertmanager: an alert on both sides is not muted by another alert on both sides.
            if target_is_source and matches_all(inh.target_matchers, source):
                continue
            if all(source[name] == target[name] for name in inh.equal):
                return src
    return None


@dataclass
class _Group:
    receiver: Receiver
    route: Route
    key: str
    labels: dict[str, str]
    firing: list[Episode] = field(default_factory=list)
    resolved: list[Episode] = field(default_factory=list)


class Evaluator:
    def __init__(self, engine: Engine, config: Config, settings: Settings, *,
                 now: Callable[[], datetime] = utcnow, holder: str | None = None):
        self.engine = engine
        self.config = config
        self.settings = settings
        self.now = now
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"

    def run_once(self, *, dry_run: bool = False) -> Report:
        report = Report()
        started = time.monotonic()
        with self.engine.connect() as conn:
            with conn.begin() as tx:
                if not conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": EVALUATION_LOCK}).scalar():
                    report.skipped = "another evaluation is running"
                    return report
                self._evaluate(conn, report)
                self._record_evaluation(conn, report, started)
                if dry_run:
                    tx.rollback()
        return report

    def _record_evaluation(self, conn: Connection, report: Report, started: float) -> None:
        conn.execute(sa.text(
            "INSERT INTO alert_evaluations (singleton, at, holder, windows, transitions, messages, skipped, "
            "duration_ms) VALUES (true, now(), :h, :w, :t, :m, :s, :d) ON CONFLICT (singleton) DO UPDATE SET "
            "at = EXCLUDED.at, holder = EXCLUDED.holder, windows = EXCLUDED.windows, "
            "transitions = EXCLUDED.transitions, messages = EXCLUDED.messages, skipped = EXCLUDED.skipped, "
            "duration_ms = EXCLUDED.duration_ms"),
            {"h": self.holder, "w": report.windows, "t": len(report.transitions), "m": len(report.messages),
             "s": report.skipped, "d": int((time.monotonic() - started) * 1000)})

    def _evaluate(self, conn: Connection, report: Report) -> None:
        now = self.now()
        model_version = self.settings.alerts_model_version or store.latest_model_version(conn)
        if model_version is None:
            report.skipped = "no windows in sentiment_windows yet"
            return
        cursors = {r.rule: r.last_window for r in conn.execute(sa.text("SELECT rule, last_window FROM alert_cursors"))}
        schedule = {rule.name: closed_windows(rule, cursors.get(rule.name), now, self.settings)
                    for rule in self.config.rules}
        open_eps: dict[str, dict[str, Episode]] = {r.name: {} for r in self.config.rules}
        for row in conn.execute(sa.text("SELECT * FROM alerts WHERE status IN ('pending', 'firing')")):
            if row.rule in open_eps:
                open_eps[row.rule][row.key] = _episode_from_row(row)
            else:
                self._close_orphan(conn, _episode_from_row(row), now, report)
        silences = active_silences(conn, now)
        ends = self.evaluate_windows(conn, schedule, model_version, open_eps, report, persist=True,
                                     silences=silences)
        if not ends:
            # No new window: still-firing alerts whose silence or inhibition ended are notified now.
            firing = [ep for eps in open_eps.values() for ep in eps.values() if ep.status == "firing"]
            if firing:
                end = max(ep.last_window + timedelta(seconds=ep.width) for ep in firing)
                self._notify(conn, end, firing, silences, report)

    def evaluate_windows(self, conn: Connection, schedule: dict[str, list[datetime]], model_version: str,
                         open_eps: dict[str, dict[str, Episode]], report: Report, *, persist: bool,
                         silences: list[Silence] = ()) -> list[datetime]:
        """The one loop over windows: ``schedule`` (rule name -> window starts) in time order, all
        rules' windows ending at the same instant as one step, advancing ``open_eps`` (rule -> key
        -> open episode). With ``persist`` (the service) every decision is written through ``conn``
        and notified, under ``silences``; without (the backtest) nothing is written. Returns the
        step ends."""
        by_end: dict[datetime, list[tuple[Rule, datetime]]] = defaultdict(list)
        for rule in self.config.rules:
            for start in schedule.get(rule.name, []):
                by_end[start + timedelta(seconds=rule.width)].append((rule, start))
        for end in sorted(by_end):
            for rule, start in by_end[end]:
                report.windows += 1
                self._evaluate_window(conn, rule, start, end, model_version, open_eps[rule.name], report, persist)
                if persist:
                    conn.execute(sa.text(
                        "INSERT INTO alert_cursors (rule, width_seconds, last_window) VALUES (:r, :w, :t) "
                        "ON CONFLICT (rule) DO UPDATE SET width_seconds = EXCLUDED.width_seconds, "
                        "last_window = EXCLUDED.last_window, updated_at = now()"),
                        {"r": rule.name, "w": rule.width, "t": start})
            if persist:
                firing = [ep for eps in open_eps.values() for ep in eps.values() if ep.status == "firing"]
                self._notify(conn, end, firing, list(silences), report)
        return sorted(by_end)

    def _evaluate_window(self, conn: Connection, rule: Rule, start: datetime, end: datetime, model_version: str,
                         open_eps: dict[str, Episode], report: Report, persist: bool) -> None:
        windows = store.scope_windows(conn, rule, start, model_version)
        if not windows:
            # No data at all for this rule's scopes (pipeline down or not started): leave open episodes be.
            return
        detect = rule.detector_fn()
        for key in sorted(set(windows) | set(open_eps)):
            window = windows.get(key)
            result = detect(window) if window is not None else NO_DATA
            ep, events = step(rule, key, open_eps.get(key), result, start, end)
            if ep is None:
                continue
            if "firing" in events:
                ep.evidence = evidence(conn, rule, key, start, end, model_version, ep.last_eval)
                report.fired.append(ep)
            if ep.status == "resolved":
                ep.evidence = {**ep.evidence, "resolved_window": ep.last_eval}
            if persist and (events or ep.open):
                # Open episodes are saved every window (last_eval); closed ones once, on their last event.
                _save(conn, ep)
            for event in events:
                if persist:
                    _event(conn, ep.id, event, start, ep.last_eval)
                    log.info("alert %s %s %s=%s window %s", event, rule.name, rule.scope.dimension, key,
                             start.isoformat())
                report.transitions.append((event, rule.name, key, start.isoformat()))
            if ep.open:
                open_eps[key] = ep
            else:
                open_eps.pop(key, None)

    # --- notifications -------------------------------------------------------------------------

    def _groups(self, firing: list[Episode], resolved: list[Episode]) -> dict[tuple[str, str], _Group]:
        groups: dict[tuple[str, str], _Group] = {}
        for ep in firing + resolved:
            rule = self._rule(ep.rule)
            if rule is None:
                continue
            alert_labels = labels(ep)
            seen: set[str] = set()
            for route, receiver in self.config.routes(rule, alert_labels):
                if receiver.name in seen:
                    continue  # the first route to a receiver that selects the alert is its route there
                seen.add(receiver.name)
                if ep.status == "resolved" and not receiver.send_resolved:
                    continue
                key = route.group_key(alert_labels)
                group = groups.setdefault((receiver.name, key),
                                          _Group(receiver, route, key, route.group_labels(alert_labels)))
                (group.firing if ep.status == "firing" else group.resolved).append(ep)
        return groups

    def _unannounced(self, conn: Connection, end: datetime) -> list[Episode]:
        """Resolved episodes whose resolution some receiver may still be owed: resolved recently enough
        that their group's group_interval (plus a window) has not run out since, notified firing
        somewhere and not yet notified resolved there."""
        routes = [route for rule in self.config.rules for route in rule.routes]
        horizon = (max((r.group_interval + r.group_wait for r in routes), default=0)
                   + 2 * max((rule.width for rule in self.config.rules), default=0))
        rows = conn.execute(sa.text("""
            SELECT a.* FROM alerts a
            WHERE a.status = 'resolved' AND a.ends_at >= :since AND a.ends_at <= :end
              AND EXISTS (SELECT 1 FROM alert_notifications n WHERE n.alert_id = a.id AND n.status = 'firing'
                          AND NOT EXISTS (SELECT 1 FROM alert_notifications m WHERE m.alert_id = a.id
                                          AND m.receiver = n.receiver AND m.status = 'resolved'))
            ORDER BY a.ends_at, a.id"""), {"since": end - timedelta(seconds=horizon), "end": end})
        return [_episode_from_row(r) for r in rows]

    def _notify(self, conn: Connection, end: datetime, firing: list[Episode], silences: list[Silence],
                report: Report) -> None:
        # Resolutions come from the table, not only this step: one held back by group_interval is
        # told when its group's next message goes out.
        resolved = self._unannounced(conn, end)
        groups = self._groups(firing, resolved)
        states = {(r.receiver, r.group_key): r for r in conn.execute(sa.text(
            "SELECT receiver, group_key, first_window, last_window FROM alert_groups"))}
        gone = [k for k in states if k not in groups]
        if gone:  # no alert left in them (or their route changed): they end
            conn.execute(sa.text("DELETE FROM alert_groups WHERE (receiver, group_key) IN "
                                 "(SELECT * FROM unnest(CAST(:r AS text[]), CAST(:g AS text[])))"),
                         {"r": [k[0] for k in gone], "g": [k[1] for k in gone]})
        candidates = firing + resolved
        if not candidates:
            return
        ledger: dict[tuple[str, str, str], tuple[int, datetime]] = {}
        for row in conn.execute(sa.text(
                "SELECT alert_id, receiver, status, max(seq) AS seq, max(at_window) AS at_window "
                "FROM alert_notifications WHERE alert_id = ANY(:ids) GROUP BY alert_id, receiver, status"),
                {"ids": [ep.id for ep in candidates]}):
            ledger[(row.alert_id, row.receiver, row.status)] = (row.seq, row.at_window)
        muted = self._mutes(conn, firing, silences, report)
        for (name, key), group in sorted(groups.items()):
            rules = {ep.id: self._rule(ep.rule) for ep in group.firing}
            visible = [ep for ep in group.firing if ep.id not in muted]
            new = [ep for ep in visible if (ep.id, name, "firing") not in ledger]
            repeat = [ep for ep in visible if (ep.id, name, "firing") in ledger
                      and (end - ledger[(ep.id, name, "firing")][1]).total_seconds() >= rules[ep.id].repeat_interval]
            announce = [ep for ep in group.resolved
                        if (ep.id, name, "firing") in ledger and (ep.id, name, "resolved") not in ledger]
            if not (new or repeat or announce):
                continue
            state = states.get((name, key))
            if state is None or state.last_window is None:
                first = state.first_window if state is not None else end
                if state is None:
                    conn.execute(sa.text(
                        "INSERT INTO alert_groups (receiver, group_key, labels, first_window) "
                        "VALUES (:r, :g, CAST(:l AS jsonb), :w)"),
                        {"r": name, "g": key, "l": _dump(group.labels), "w": end})
                if (end - first).total_seconds() < group.route.group_wait:
                    continue
            elif (end - state.last_window).total_seconds() < group.route.group_interval:
                continue
            items = [(ep, "firing", ledger[(ep.id, name, "firing")][0] + 1 if (ep.id, name, "firing") in ledger else 0)
                     for ep in visible] + [(ep, "resolved", 0) for ep in announce]
            self._queue(conn, end, group, items, report)
            if group.firing:
                conn.execute(sa.text(
                    "UPDATE alert_groups SET last_window = :w, updated_at = now() WHERE receiver = :r AND group_key = :g"),
                    {"r": name, "g": key, "w": end})
            else:  # nothing fires in it any more: the group ends (a new alert starts a new one, with group_wait)
                conn.execute(sa.text("DELETE FROM alert_groups WHERE receiver = :r AND group_key = :g"),
                             {"r": name, "g": key})

    def _mutes(self, conn: Connection, firing: list[Episode], silences: list[Silence],
               report: Report) -> set[str]:
        """Ids of the firing episodes that are silenced or inhibited now (recorded when that starts or changes)."""
        last_mute: dict[str, tuple[str, dict]] = {}
        for row in conn.execute(sa.text(
                "SELECT DISTINCT ON (alert_id) alert_id, event, detail FROM alert_events "
                "WHERE alert_id = ANY(:ids) AND event IN ('silenced', 'inhibited', 'notified') "
                "ORDER BY alert_id, id DESC"), {"ids": [ep.id for ep in firing]}):
            last_mute[row.alert_id] = (row.event, row.detail)
        muted = set()
        for ep in firing:
            reason = self._muted(ep, firing, silences)
            if reason is None:
                continue
            muted.add(ep.id)
            if last_mute.get(ep.id) != reason:
                _event(conn, ep.id, reason[0], None, reason[1])
            if (reason[0], ep.rule, ep.key) not in report.muted:
                report.muted.append((reason[0], ep.rule, ep.key))
        return muted

    def _queue(self, conn: Connection, end: datetime, group: _Group, items: list[tuple[Episode, str, int]],
               report: Report) -> None:
        receiver = group.receiver
        message_id = f"msg_{uuid.uuid4().hex}"
        alerts = [alert_json(self._rule(ep.rule), ep, status, self.settings) for ep, status, _ in items]
        charts = None
        if receiver.type == "email":
            charts = [self._chart(conn, ep) for ep, _, _ in items[:CHARTS_PER_MESSAGE]]
        payload = build_message(message_id, receiver, alerts, self.settings, group_key=group.key,
                                group_labels=group.labels, charts=charts)
        status = payload["webhook"]["status"]
        conn.execute(sa.text(
            "INSERT INTO alert_outbox (id, receiver, channel, status, group_key, payload) "
            "VALUES (:id, :r, :c, :s, :g, CAST(:p AS jsonb))"),
            {"id": message_id, "r": receiver.name, "c": receiver.type, "s": status, "g": group.key,
             "p": _dump(payload)})
        for ep, st, seq in items:
            conn.execute(sa.text(
                "INSERT INTO alert_notifications (alert_id, receiver, status, seq, outbox_id, at_window) "
                "VALUES (:a, :r, :s, :q, :o, :w)"),
                {"a": ep.id, "r": receiver.name, "s": st, "q": seq, "o": message_id, "w": end})
            _event(conn, ep.id, "notified", None,
                   {"receiver": receiver.name, "status": st, "seq": seq, "outbox_id": message_id,
                    "group_key": group.key})
        report.messages.append(Outgoing(message_id, receiver.name, receiver.type, status, payload))
        log.info("queued %s message %s for %s, group %s, with %d alert(s)", status, message_id, receiver.name,
                 group.key, len(items))

    def _chart(self, conn: Connection, ep: Episode) -> dict[str, Any] | None:
        """What the email's trend chart of ``ep`` needs, read now and stored with the message."""
        rule = self._rule(ep.rule)
        model_version = (ep.evidence or {}).get("model_version")
        if rule is None or model_version is None:
            return None
        series = store.trend(conn, rule, ep.key, ep.last_window, model_version, TREND_WINDOWS)
        return chart_spec(ep, series, rule.width)

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


def evidence(conn: Connection, rule: Rule, key: str, start: datetime, end: datetime, model_version: str,
             window: dict[str, Any]) -> dict[str, Any]:
    """What an alert shows when it fires: the test, its parameters, the window's figures and the
    documents that counted as negative in it, by the measure the window counted."""
    return {"test": TESTS[rule.detector], "detector": rule.detector, "params": rule.params,
            "first_stories_only": rule.first_stories_only, "model_version": model_version,
            "window": window, "documents_measure": store.documents_measure(rule.scope.dimension),
            "documents": store.top_documents(conn, rule, key, start, end, model_version)}
