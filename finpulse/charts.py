"""PNG charts for people who read finpulse in a mail client or a static page (alert emails, reports).

Shared because two components draw the same picture: the alert email's small trend of the
scope that fired, and the report's trends with alert episodes shaded. Drawn with matplotlib's
object API on an Agg canvas (never ``pyplot``), so it holds no global state and is safe in the
alert service's delivery threads. Times are timezone-aware UTC; the x axis is labelled in UTC.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

NEGATIVE = "#c0392b"
VOLUME = "#95a5a6"
EPISODE = "#f5b7b1"


class ChartError(ValueError):
    """The series cannot be drawn (lengths differ, a naive datetime)."""


@dataclass(frozen=True)
class Span:
    """A time range drawn over a chart: an alert episode (shaded) or the firing window (marked)."""

    start: datetime
    end: datetime
    label: str = ""


def _figure(width: float, height: float, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _check_times(times: Sequence[datetime]) -> None:
    for t in times:
        if t.tzinfo is None:
            raise ChartError(f"naive datetime {t.isoformat()} in a chart: finpulse charts take UTC-aware times")


def trend_png(
    times: Sequence[datetime],
    negative_share: Sequence[float | None],
    volume: Sequence[int],
    *,
    title: str = "",
    spans: Sequence[Span] = (),
    marked: Span | None = None,
    width: float = 6.0,
    height: float = 2.4,
    dpi: int = 100,
) -> bytes:
    """A scope's trend as PNG bytes: documents per window as grey bars (right axis), the negative share
    as a red line (left axis, percent; None = no documents, a gap), ``spans`` shaded (alert episodes)
    and ``marked`` outlined (the window that fired)."""
    if not (len(times) == len(negative_share) == len(volume)):
        raise ChartError(f"series differ in length: {len(times)} times, {len(negative_share)} shares, "
                         f"{len(volume)} volumes")
    _check_times(times)
    _check_times([t for s in (*spans, *([marked] if marked else [])) for t in (s.start, s.end)])
    import matplotlib.dates as mdates

    figure = _figure(width, height, dpi)
    share_axis = figure.add_subplot(1, 1, 1)
    volume_axis = share_axis.twinx()
    if len(times) > 1:
        step = min((b - a) for a, b in zip(times, times[1:]))
        bar_width = step.total_seconds() / 86400 * 0.8
    else:
        bar_width = 1 / 24
    volume_axis.bar(list(times), list(volume), width=bar_width, color=VOLUME, alpha=0.45, align="edge")
    volume_axis.set_ylabel("documents", fontsize=8, color="#555")
    shares = [float("nan") if s is None else 100.0 * float(s) for s in negative_share]
    share_axis.plot(list(times), shares, color=NEGATIVE, linewidth=1.6, marker="." if len(times) < 60 else None)
    share_axis.set_ylabel("negative %", fontsize=8, color=NEGATIVE)
    share_axis.set_ylim(0, max([100.0 * float(s) for s in negative_share if s is not None] + [10.0]) * 1.15)
    # The share line in front of the volume bars.
    share_axis.set_zorder(volume_axis.get_zorder() + 1)
    share_axis.patch.set_visible(False)
    for span in spans:
        share_axis.axvspan(span.start, span.end, color=EPISODE, alpha=0.5, linewidth=0)
    if marked is not None:
        share_axis.axvspan(marked.start, marked.end, facecolor="none", edgecolor=NEGATIVE, linewidth=1.5,
                           hatch="//", alpha=0.8)
    if title:
        share_axis.set_title(title, fontsize=9, loc="left")
    locator = mdates.AutoDateLocator(minticks=3, maxticks=7)
    share_axis.xaxis.set_major_locator(locator)
    share_axis.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz="UTC"))
    for axis in (share_axis, volume_axis):
        axis.tick_params(labelsize=7)
    share_axis.set_xlabel("UTC", fontsize=7)
    return _png(figure)


def bars_png(labels: Sequence[str], values: Sequence[float], *, title: str = "", value_label: str = "",
             colors: Sequence[str] | None = None, width: float = 6.0, height: float | None = None,
             dpi: int = 100) -> bytes:
    """Horizontal bars (a leaderboard: tickers or topics), first label on top, as PNG bytes."""
    if len(labels) != len(values):
        raise ChartError(f"{len(labels)} labels but {len(values)} values")
    figure = _figure(width, height or max(1.6, 0.28 * len(labels) + 0.8), dpi)
    axis = figure.add_subplot(1, 1, 1)
    positions = list(range(len(labels)))[::-1]
    axis.barh(positions, list(values), color=list(colors) if colors else NEGATIVE, alpha=0.8)
    axis.set_yticks(positions, list(labels), fontsize=7)
    axis.tick_params(axis="x", labelsize=7)
    if value_label:
        axis.set_xlabel(value_label, fontsize=8)
    if title:
        axis.set_title(title, fontsize=9, loc="left")
    return _png(figure)
