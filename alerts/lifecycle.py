"""The alert lifecycle, Alertmanager-like, as a pure step function (the service and backtest share it).

Per scope (rule, dimension, key) and evaluated window:

- no open episode: ``fire`` -> a new episode, ``pending`` (or straight to ``firing`` when the
  rule's ``for_windows`` is 1);
- ``pending``: ``fire`` again -> one more pending window; at ``for_windows`` consecutive
  windows it is ``firing``. Not ``fire`` -> ``cancelled`` (it never fired; nobody is told);
- ``firing``: ``hold`` (the looser threshold: hysteresis) -> stays firing; otherwise ->
  ``resolved`` at the end of this window.

A scope with no documents in the window has ``fire`` and ``hold`` false: quiet means over.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from alerts.config import Rule, fingerprint
from alerts.detectors import Result


@dataclass
class Episode:
    id: str
    fingerprint: str
    rule: str
    dimension: str
    key: str
    width: int
    severity: str
    status: str
    pending_windows: int
    starts_at: datetime
    last_window: datetime
    fired_at: datetime | None = None
    ends_at: datetime | None = None
    last_eval: dict[str, Any] = field(default_factory=dict)
    peak: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    is_new: bool = False

    @property
    def open(self) -> bool:
        return self.status in ("pending", "firing")


def episode_id(rule: str, dimension: str, key: str, starts_at: datetime) -> str:
    raw = f"{rule}\x1f{dimension}\x1f{key}\x1f{starts_at.isoformat()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _figures(result: Result, start: datetime, end: datetime) -> dict[str, Any]:
    out = result.as_dict()
    out["window_start"] = start.isoformat()
    out["window_end"] = end.isoformat()
    return out


def step(rule: Rule, key: str, episode: Episode | None, result: Result,
         start: datetime, end: datetime) -> tuple[Episode | None, list[str]]:
    """Advance one scope by one window; returns the (possibly new) episode and the status events."""
    if (episode is None or not episode.open) and not result.fire:
        return None, []  # the common case, kept cheap: most scopes are quiet most of the time
    figures = _figures(result, start, end)
    if episode is None or not episode.open:
        episode = Episode(
            id=episode_id(rule.name, rule.scope.dimension, key, start),
            fingerprint=fingerprint(rule.name, rule.scope.dimension, key), rule=rule.name,
            dimension=rule.scope.dimension, key=key, width=rule.width, severity=rule.severity,
            status="pending", pending_windows=1, starts_at=start, last_window=start,
            last_eval=figures, peak=figures, is_new=True)
        events = ["pending"]
        if rule.for_windows <= 1:
            episode.status, episode.fired_at = "firing", end
            events.append("firing")
        return episode, events
    episode.last_window = start
    episode.last_eval = figures
    if episode.status == "pending":
        if not result.fire:
            episode.status, episode.ends_at = "cancelled", end
            return episode, ["cancelled"]
        episode.pending_windows += 1
        _update_peak(episode, figures)
        if episode.pending_windows >= rule.for_windows:
            episode.status, episode.fired_at = "firing", end
            return episode, ["firing"]
        return episode, []
    # firing
    if result.hold:
        _update_peak(episode, figures)
        return episode, []
    episode.status, episode.ends_at = "resolved", end
    return episode, ["resolved"]


def _update_peak(episode: Episode, figures: dict[str, Any]) -> None:
    old = episode.peak.get("statistic")
    new = figures.get("statistic")
    if new is not None and (old is None or new > old):
        episode.peak = figures
