"""Backtest: the rules over stored windows of a past period, from an empty state, writing and sending nothing.

It runs the evaluator's own loop (:meth:`alerts.engine.Evaluator.evaluate_windows`) with
nothing persisted: the same detectors, lifecycle step and evidence as the service, so what it
lists is what the service would have fired from the same windows (silences, inhibitions and
delivery are left out: they are about who is told, not what fires).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import Engine

from alerts import formatting, store
from alerts.config import Config
from alerts.engine import Evaluator, Report, windows_between
from alerts.lifecycle import Episode
from finpulse.settings import Settings


@dataclass
class BacktestResult:
    episodes: list[Episode]
    windows: int
    model_version: str | None
    transitions: list[tuple[str, str, str, str]] = field(default_factory=list)  # as Report.transitions


def backtest(engine: Engine, config: Config, since: datetime, until: datetime, model_version: str | None = None,
             settings: Settings | None = None) -> BacktestResult:
    from finpulse.settings import get_settings

    evaluator = Evaluator(engine, config, settings or get_settings())
    report = Report()
    with engine.connect() as conn:
        model_version = model_version or store.latest_model_version(conn)
        if model_version is None:
            return BacktestResult([], 0, None)
        schedule = {rule.name: windows_between(rule, since, until) for rule in config.rules}
        evaluator.evaluate_windows(conn, schedule, model_version, {r.name: {} for r in config.rules}, report,
                                   persist=False)
    fired = sorted(report.fired, key=lambda e: (e.starts_at, e.rule, e.key))
    return BacktestResult(fired, report.windows, model_version, report.transitions)


def format_episode(ep: Episode) -> str:
    peak = ep.peak or {}
    end = formatting.when(ep.ends_at) if ep.ends_at else "(still firing)"
    detector = ep.evidence.get("detector")
    lines = [f"{formatting.when(ep.starts_at)} -> {end}  {ep.rule}  {ep.dimension}={ep.key}  {ep.severity}",
             f"    fired at {formatting.when(ep.fired_at) if ep.fired_at else '-'}; peak statistic "
             f"{formatting.statistic(detector, peak.get('statistic'))}, {formatting.p_value(peak.get('p_value'))} "
             f"in window {formatting.when(peak.get('window_start'))}"]
    if ep.evidence.get("window"):
        lines.append(f"    evidence: {formatting.figures(ep.evidence['window'])}")
    for d in ep.evidence.get("documents", [])[:3]:
        lines.append(f"    - {formatting.document_line(d)}")
    return "\n".join(lines)
