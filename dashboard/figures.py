"""Plotly figures of the dashboard (the report draws PNGs with finpulse.charts, in the same colours)."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from finpulse.charts import EPISODE, NEGATIVE, VOLUME
from dashboard.queries import Row

POSITIVE = "#27ae60"
NEUTRAL = "#95a5a6"
SENTIMENT_COLOURS = {"negative": NEGATIVE, "neutral": NEUTRAL, "positive": POSITIVE}


def _layout(fig: go.Figure, title: str, revision: str, height: int) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0, "font": {"size": 14}}, height=height, margin={"l": 50, "r": 50, "t": 40, "b": 40},
        legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"}, plot_bgcolor="white",
        # The same revision across live refreshes keeps the reader's zoom and hidden traces.
        uirevision=revision, hovermode="x unified",
    )
    return fig


def trend_figure(rows: Sequence[Row], episodes: Sequence[Row], *, title: str, revision: str,
                 height: int = 340) -> go.Figure:
    """Negative share (line, left axis) over volume (bars, right axis), alert episodes shaded."""
    x = [r["window_start"] for r in rows]
    shares = [None if r["negative_share"] is None else float(r["negative_share"]) for r in rows]
    fig = go.Figure()
    fig.add_bar(x=x, y=[r["n_docs"] for r in rows], name="documents", yaxis="y2", marker_color=VOLUME,
                opacity=0.5, hovertemplate="%{y} documents<extra></extra>")
    fig.add_scatter(x=x, y=shares, name="negative share", mode="lines+markers" if len(rows) <= 60 else "lines",
                    line={"color": NEGATIVE, "width": 2}, connectgaps=False,
                    hovertemplate="%{y:.1%} negative<extra></extra>")
    fig.update_layout(
        shapes=[{"type": "rect", "xref": "x", "yref": "paper", "x0": e["starts_at"], "x1": e["shaded_until"],
                 "y0": 0, "y1": 1, "fillcolor": EPISODE, "opacity": 0.35, "line": {"width": 0}, "layer": "above"}
                for e in episodes],
        yaxis={"title": "negative share", "tickformat": ".0%", "rangemode": "tozero", "gridcolor": "#eee",
               "range": [0, max([s for s in shares if s is not None] + [0.1]) * 1.15]},
        yaxis2={"title": "documents", "overlaying": "y", "side": "right", "showgrid": False, "rangemode": "tozero",
                "tickmode": "auto"},
        xaxis={"title": "UTC"},
    )
    return _layout(fig, title, revision, height)


def towards_figure(rows: Sequence[Row], *, ticker: str, revision: str) -> go.Figure:
    """Documents per day by the sentiment towards a ticker (the entity head's where it scored the link,
    else the document's), stacked."""
    fig = go.Figure()
    days = [r["window_start"] for r in rows]
    for sentiment, colour in SENTIMENT_COLOURS.items():
        fig.add_bar(x=days, y=[r[f"n_{sentiment}"] for r in rows], name=sentiment, marker_color=colour)
    fig.update_layout(barmode="stack", yaxis={"title": "documents", "gridcolor": "#eee"}, xaxis={"title": "UTC day"})
    return _layout(fig, f"Sentiment towards {ticker} (entity-level where scored), daily, last 7 days", revision, 260)
