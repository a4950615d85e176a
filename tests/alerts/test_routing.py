"""Alertmanager's routing semantics against a real Postgres: groups (groupKey, groupLabels, what a
message lists), group_wait and group_interval in window time, route matchers, send_resolved and
silences that start later. The evaluator runs in-process with a fixed "now"; the payloads are the
outbox rows it queues (what the senders transport unchanged)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from alerts.config import load
from alerts.engine import Evaluator
from finpulse import db
from tests.alerts.conftest import surge_series, write_windows
from tests.alerts.test_engine import END, NOW

# ACME fires at the window 7 h before the last (pending at 8 h), BETA an hour later; each resolves
# two windows after it fired. GAMMA does the same as ACME.
SURGES = {"ACME": (8, 7, 6), "BETA": (7, 6, 5), "GAMMA": (8, 7, 6)}
FIRES = {"ACME": 7, "BETA": 6, "GAMMA": 7}  # hours before the last window
RESOLVES = {"ACME": 5, "BETA": 4, "GAMMA": 5}


def window_end(hours_before_last: int):
    return END - timedelta(hours=hours_before_last)


RULES = """
rules:
  - name: ticker-share
    scope: {{dimension: ticker}}
    detector: negative_share
    params: {{min_docs: 20, min_baseline_docs: 50}}
    for_windows: 2
    repeat_interval: 1d
    routes:
      - {{receiver: log, group_by: [alertname, key]}}
      - {{receiver: hook, matchers: ['key!="GAMMA"'], group_by: [alertname], group_wait: {wait}, group_interval: {interval}}}
receivers:
  hook: {{type: webhook, url: "http://127.0.0.1:9/hook", allow_unsigned: true, send_resolved: {resolved}}}
"""


@pytest.fixture(scope="module")
def routing_settings(stack):
    """One database for the module (each test empties it): a new database per test costs seconds."""
    from tests.conftest import scratch_database

    with scratch_database(stack) as settings:
        yield settings.model_copy(update={"alerts_settle_seconds": 0.0, "alerts_catchup_windows": 24})


@pytest.fixture
def alert_settings(routing_settings):
    return routing_settings


@pytest.fixture
def engine(routing_settings):
    eng = db.engine(routing_settings)
    with eng.begin() as conn:
        conn.execute(sa.text("TRUNCATE sentiment_windows, alerts, alert_events, alert_cursors, alert_silences, "
                             "alert_outbox, alert_notifications, alert_deliveries, alert_groups, alert_evaluations"))
    write_windows(eng, [row for key, surge in SURGES.items() for row in surge_series(END, key=key, surge_at=surge)])
    yield eng
    eng.dispose()


def _run(engine, settings, tmp_path, *, wait="0s", interval="0s", resolved="true", now=NOW):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES.format(wait=wait, interval=interval, resolved=resolved))
    return Evaluator(engine, load(path, settings), settings, now=lambda: now).run_once()


def _messages(report, receiver):
    """(window end it was queued at, status, [(key, status), ...]) per message to ``receiver``, in order."""
    out = []
    for m in report.messages:
        if m.receiver != receiver:
            continue
        body = m.payload["webhook"]
        out.append((body["status"], [(a["labels"]["key"], a["status"]) for a in body["alerts"]]))
    return out


def _at_windows(engine, receiver):
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.text(
            "SELECT DISTINCT n.at_window FROM alert_notifications n JOIN alert_outbox o ON o.id = n.outbox_id "
            "WHERE o.receiver = :r ORDER BY 1"), {"r": receiver})]


def test_groups_list_every_firing_alert_and_keys_follow_alertmanager(engine, alert_settings, tmp_path):
    report = _run(engine, alert_settings, tmp_path)
    # hook groups by alertname: each message is the whole group (a resolution while BETA fires is a
    # "firing" message listing both); GAMMA never reaches it (key!="GAMMA").
    assert _messages(report, "hook") == [
        ("firing", [("ACME", "firing")]),
        ("firing", [("ACME", "firing"), ("BETA", "firing")]),
        ("firing", [("BETA", "firing"), ("ACME", "resolved")]),
        ("resolved", [("BETA", "resolved")]),
    ]
    assert _at_windows(engine, "hook") == [window_end(h) for h in (7, 6, 5, 4)]
    hook = [m.payload["webhook"] for m in report.messages if m.receiver == "hook"]
    assert {b["groupKey"] for b in hook} == {'{}/{key!="GAMMA"}:{alertname="ticker-share"}'}
    assert all(b["groupLabels"] == {"alertname": "ticker-share"} for b in hook)
    assert hook[1]["commonLabels"] == {"alertname": "ticker-share", "dimension": "ticker", "severity": "warning",
                                       "width": "3600"}  # key differs, so it is not common
    # log groups by alertname and key: one group per ticker, GAMMA included.
    log = [m.payload["webhook"] for m in report.messages if m.receiver == "log"]
    assert sorted((b["groupLabels"]["key"], b["status"]) for b in log) == [
        ("ACME", "firing"), ("ACME", "resolved"), ("BETA", "firing"), ("BETA", "resolved"),
        ("GAMMA", "firing"), ("GAMMA", "resolved")]
    assert {b["groupKey"] for b in log if b["groupLabels"]["key"] == "ACME"} == {
        '{}:{alertname="ticker-share",key="ACME"}'}
    # Every firing alert a message lists is in the ledger once per message (seq counts them).
    with engine.connect() as conn:
        seqs = conn.execute(sa.text("SELECT a.key, array_agg(n.seq ORDER BY n.seq) FROM alert_notifications n "
                                    "JOIN alerts a ON a.id = n.alert_id WHERE n.receiver = 'hook' "
                                    "AND n.status = 'firing' GROUP BY a.key ORDER BY 1")).all()
        groups_left = conn.execute(sa.text("SELECT count(*) FROM alert_groups")).scalar()
    assert [tuple(r) for r in seqs] == [("ACME", [0, 1]), ("BETA", [0, 1])]
    assert groups_left == 0  # every group ended once nothing fired in it


def test_group_wait_in_window_time_holds_the_first_message_and_gathers_the_group(engine, alert_settings, tmp_path):
    # DELTA fires at -3 h, the window right after the group's last alert resolved (-4 h).
    write_windows(engine, surge_series(END, key="DELTA", surge_at=(4, 3, 2, 1, 0)))
    report = _run(engine, alert_settings, tmp_path, wait="2h")
    # ACME fires at -7 h; the group waits until -5 h, when BETA has joined and ACME has already
    # resolved: ACME was never told as firing, so its resolution is not told either. Once BETA's
    # resolution is told (-4 h) nothing fires in the group and it ends: DELTA starts a new group,
    # which waits its own group_wait (2 h after -3 h), not a group_interval after -4 h.
    assert _messages(report, "hook") == [("firing", [("BETA", "firing")]), ("resolved", [("BETA", "resolved")]),
                                         ("firing", [("DELTA", "firing")])]
    assert _at_windows(engine, "hook") == [window_end(5), window_end(4), window_end(1)]


def test_group_interval_holds_later_messages_and_keeps_the_resolution_owed(engine, alert_settings, tmp_path):
    report = _run(engine, alert_settings, tmp_path, interval="3h")
    # After ACME's first message at -7 h, nothing goes out before -4 h: BETA's firing (-6 h) and
    # ACME's resolution (-5 h) wait; by -4 h BETA has resolved unannounced, ACME's resolution is owed.
    assert _messages(report, "hook") == [("firing", [("ACME", "firing")]), ("resolved", [("ACME", "resolved")])]
    assert _at_windows(engine, "hook") == [window_end(7), window_end(4)]


def test_send_resolved_false_never_tells_that_receiver_a_resolution(engine, alert_settings, tmp_path):
    report = _run(engine, alert_settings, tmp_path, resolved="false")
    # ACME's and then BETA's resolutions just leave the group: nothing new fires, so nothing is sent
    # (as Alertmanager: a shrinking firing set is news only to a receiver that wants resolutions).
    assert _messages(report, "hook") == [
        ("firing", [("ACME", "firing")]),
        ("firing", [("ACME", "firing"), ("BETA", "firing")]),
    ]
    assert sum(1 for m in report.messages if m.receiver == "log" and m.status == "resolved") == 3


def test_a_silence_that_starts_later_mutes_nothing_until_it_starts(engine, alert_settings, tmp_path):
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO alert_silences (rule, key_pattern, starts_at, ends_at, author, comment) "
                             "VALUES ('ticker-share', '*', :s, :e, 'ops', 'maintenance tonight')"),
                     {"s": NOW + timedelta(minutes=30), "e": NOW + timedelta(hours=6)})
    first = _run(engine, alert_settings, tmp_path)
    assert not first.muted and {m.receiver for m in first.messages} == {"log", "hook"}
    # Two hours later DELTA surges in the new windows: the silence is in force now, so it is muted.
    write_windows(engine, surge_series(END + timedelta(hours=2), key="DELTA", hours=26, surge_at=(1, 0)))
    later = _run(engine, alert_settings, tmp_path, now=NOW + timedelta(hours=2))
    assert ("firing", "ticker-share", "DELTA") in [(e, r, k) for e, r, k, _ in later.transitions]
    assert later.muted == [("silenced", "ticker-share", "DELTA")] and not later.messages


def test_an_alert_on_both_sides_of_an_inhibit_rule_is_not_muted_by_another_such_alert(tmp_path):
    from alerts.engine import inhibited_by
    from alerts.lifecycle import Episode
    from finpulse.settings import Settings

    path = tmp_path / "rules.yaml"
    path.write_text("""\
rules:
  - {name: r, scope: {dimension: ticker}, detector: negative_share}
inhibit:
  - source_matchers: ['severity="critical"']
    target_matchers: ['dimension="ticker"']
    equal: [width]
""")
    config = load(path, Settings())

    def episode(key, severity, width=3600):
        return Episode(id=key, fingerprint=key, rule="r", dimension="ticker", key=key, width=width,
                       severity=severity, status="firing", pending_windows=2, starts_at=END, last_window=END)

    a, b, c, d = episode("A", "critical"), episode("B", "critical"), episode("C", "warning"), episode("D", "warning", 60)
    assert inhibited_by(config, c, [a, b, c, d]) is a   # a plain target, muted by a source of the same width
    assert inhibited_by(config, d, [a, b, c, d]) is None  # equal: [width] differs
    assert inhibited_by(config, a, [a, b, c, d]) is None  # both sides: not by B (both sides), nor by itself
