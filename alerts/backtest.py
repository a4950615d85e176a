"""Backtest: the rules over stored windows of a past period, in memory, sending and writing nothing.

It runs the same detectors and the same lifecycle step as the service, window by window, so
what it lists is what the service would have fired (silences, inhibitions and delivery are
left out: they are about who is told, not what fires).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy.engine import Engine

from alerts import store
from alerts.config import Config
from alerts.engine import NO_DATA, TESTS
from alerts.lifecycle import Episode, step


@dataclass
class BacktestResult:
    episodes: list[Episode]
    windows: int
    model_version: str | None


def _aligned(t: datetime, width: int) -> datetime:
    ts = int(t.timestamp())
    return datetime.fromtimestamp(ts - ts % width, timezone.utc)


def backtest(engine: Engine, config: Config, since: datetime, until: datetime,
             model_version: str | None = None) -> BacktestResult:
    fired: list[Episode] = []
    n = 0
    with engine.connect() as conn:
        model_version = model_version or store.latest_model_version(conn)
        if model_version is None:
            return BacktestResult([], 0, None)
        for rule in config.rules:
            detect = rule.detector_fn()
            open_eps: dict[str, Episode] = {}
            start = _aligned(since, rule.width)
            if start < since:
                start += timedelta(seconds=rule.width)
            while start + timedelta(seconds=rule.width) <= until:
                end = start + timedelta(seconds=rule.width)
                n += 1
                windows = store.scope_windows(conn, rule, start, model_version)
                if windows:
                    for key in set(windows) | set(open_eps):
                        result = detect(windows[key]) if key in windows else NO_DATA
                        ep, events = step(rule, key, open_eps.get(key), result, start, end)
                        if ep is None:
                            continue
                        if "firing" in events:
                            ep.evidence = {"test": TESTS[rule.detector], "window": ep.last_eval,
                                           "documents": store.top_documents(conn, rule, key, start, end, model_version)}
                            fired.append(ep)
                        if ep.open:
                            open_eps[key] = ep
                        else:
                            open_eps.pop(key, None)
                start = end
    fired.sort(key=lambda e: (e.starts_at, e.rule, e.key))
    return BacktestResult(fired, n, model_version)


def format_episode(ep: Episode) -> str:
    peak = ep.peak or {}
    end = ep.ends_at.isoformat() if ep.ends_at else "(still firing)"
    lines = [f"{ep.starts_at.isoformat()} -> {end}  {ep.rule}  {ep.dimension}={ep.key}  {ep.severity}",
             f"    fired at {ep.fired_at.isoformat() if ep.fired_at else '-'}; peak statistic "
             f"{_fmt(peak.get('statistic'))} p={_fmt(peak.get('p_value'))} in window {peak.get('window_start')}"]
    fig = (ep.evidence.get("window") or {}).get("figures", {})
    if fig:
        lines.append("    evidence: " + ", ".join(f"{k}={_fmt(v)}" for k, v in fig.items()))
    for d in ep.evidence.get("documents", [])[:3]:
        lines.append(f"    - [{d['p_negative']:.2f}] {d.get('title') or '(no title)'} ({d['source']})"
                     f"{' first story' if d.get('first_story') else ''}")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
