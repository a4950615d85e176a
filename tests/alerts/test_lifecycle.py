"""The lifecycle step alone: pending for k windows -> firing -> resolved, with hysteresis."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from alerts.config import Rule
from alerts.detectors import Result
from alerts.lifecycle import step

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
RULE = Rule(name="r", scope={"dimension": "ticker"}, detector="negative_share", for_windows=3)
FIRE = Result(True, True, 0.3, 1e-6)
HOLD = Result(False, True, 0.05, 0.01)
QUIET = Result(False, False, 0.0, 0.5)


def run(results, rule=RULE):
    ep, log = None, []
    for i, r in enumerate(results):
        start = T0 + timedelta(hours=i)
        ep, events = step(rule, "ACME", ep, r, start, start + timedelta(hours=1))
        log.extend(events)
        if ep is not None and not ep.open:
            ep = None if ep.status in ("resolved", "cancelled") and i < len(results) - 1 else ep
    return log


def test_pending_for_k_windows_then_firing_then_resolved():
    assert run([FIRE, FIRE, FIRE, FIRE, QUIET]) == ["pending", "firing", "resolved"]


def test_fewer_than_k_windows_is_cancelled_and_never_fires():
    assert run([FIRE, FIRE, QUIET, FIRE, QUIET]) == ["pending", "cancelled", "pending", "cancelled"]


def test_hysteresis_keeps_firing_between_thresholds():
    # HOLD alone cannot start an alert, but keeps a firing one firing.
    assert run([HOLD, HOLD]) == []
    ep = None
    for i, r in enumerate([FIRE, FIRE, FIRE, HOLD, HOLD, HOLD, QUIET]):
        start = T0 + timedelta(hours=i)
        ep, events = step(RULE, "ACME", ep, r, start, start + timedelta(hours=1))
        assert ep.status == ("resolved" if i == 6 else "firing" if i >= 2 else "pending"), i


def test_for_windows_one_fires_at_once():
    rule = RULE.model_copy(update={"for_windows": 1})
    assert run([FIRE, QUIET], rule) == ["pending", "firing", "resolved"]


def test_episode_times_and_peak():
    ep = None
    results = [FIRE, Result(True, True, 0.5, 1e-9), FIRE, QUIET]
    for i, r in enumerate(results):
        start = T0 + timedelta(hours=i)
        ep, _ = step(RULE, "ACME", ep, r, start, start + timedelta(hours=1))
    assert ep.status == "resolved"
    assert ep.starts_at == T0 and ep.fired_at == T0 + timedelta(hours=3) and ep.ends_at == T0 + timedelta(hours=4)
    assert ep.peak["statistic"] == 0.5
