"""Figures and evidence as people read them, in one place: the email templates (as jinja filters),
the alert summary, the log receiver and the backtest listing all format through these functions.

Rounded for reading: ``p = 1.2e-6``, ``share 37.5% vs 18.5%, +7.1 points``, ``3.2x``, counts as
integers. The JSON that machines read (webhook bodies, ``alerts.evidence``) keeps the exact
numbers; only what is shown is rounded.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from functools import partial
from typing import Any

EXCERPT_CHARS = 200
ELLIPSIS = "…"


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def p_value(p: Any) -> str:
    """``p = 0.03``, ``p = 1.2e-6``; ``p < 1e-300`` when it underflowed; ``p not computed`` (None)."""
    x = _number(p)
    if x is None:
        return "p not computed"
    if x == 0:
        return "p < 1e-300"
    if x >= 0.001:
        return f"p = {x:.2g}"
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"p = {mantissa}e{int(exponent)}"


def _shown(value: Any, render) -> str:
    x = _number(value)
    return "n/a" if x is None else render(x)


# Each takes a number (None, NaN or infinity is shown as "n/a").
percent = partial(_shown, render=lambda x: f"{100 * x:.1f}%")        # a share 0..1: 37.5%
points = partial(_shown, render=lambda x: f"{100 * x:+.1f} points")  # a difference of shares: +7.1 points
count = partial(_shown, render=lambda x: f"{int(round(x)):,}")        # a count: 1,234
ratio = partial(_shown, render=lambda x: f"{x:.1f}x")                 # a rate ratio: 3.2x
rate = partial(_shown, render=lambda x: f"{x:.1f}")                   # a mean count per window: 4.1
score = partial(_shown, render=lambda x: f"{x:.2f}")                  # a probability: 0.99


def duration(seconds: Any) -> str:
    """Seconds in the largest unit that divides them: ``1h``, ``90m``, ``1d``, ``45s``."""
    x = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if x and x % size == 0:
            return f"{x // size}{unit}"
    return f"{x}s"


def when(value: Any) -> str:
    """An ISO time or datetime as ``2026-11-20 10:05 UTC``."""
    if value is None:
        return "n/a"
    t = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def window(start: Any, end: Any) -> str:
    """``2026-11-20 10:00 – 11:00 UTC`` (the end's date only when it differs)."""
    a, b = when(start), when(end)
    if a[:10] == b[:10]:
        return f"{a[:-4]} – {b[11:]}"
    return f"{a[:-4]} – {b}"


def excerpt(text: str | None, limit: int = EXCERPT_CHARS) -> str | None:
    """The start of ``text`` (whitespace collapsed), at most ``limit`` characters, cut at a word
    boundary with an ellipsis when there is more; None for no text."""
    if not text:
        return None
    flat = " ".join(text.split())
    if not flat:
        return None
    if len(flat) <= limit:
        return flat
    cut = flat[:limit + 1]
    space = cut.rfind(" ")
    # A single 200-character "word" (a URL, a hash) is cut where the limit falls.
    cut = cut[:space] if space > limit // 2 else flat[:limit]
    return cut.rstrip(" ,;:.-–—") + ELLIPSIS


def headline(document: dict[str, Any]) -> str:
    """What a person reads for an evidence document: its title, else the start of its text."""
    return document.get("title") or document.get("excerpt") or "(no title or text)"


def statistic(detector: str | None, value: Any) -> str:
    """The detector's statistic: negative_share's lift in points, negative_volume's rate ratio."""
    return points(value) if detector == "negative_share" else ratio(value)


def figures(evaluation: dict[str, Any] | None) -> str:
    """One window's figures: ``share 37.5% vs 18.5%, +7.1 points, p = 1.2e-6, 60 documents, 40 negative``."""
    if not evaluation:
        return "no figures"
    fig = evaluation.get("figures") or {}
    p = p_value(evaluation.get("p_value"))
    if "share" in fig:
        lift = fig.get("lift", evaluation.get("statistic"))
        return (f"share {percent(fig['share'])} vs {percent(fig.get('baseline_share'))}, {points(lift)}, {p}, "
                f"{count(fig.get('n_docs'))} documents, {count(fig.get('n_negative'))} negative")
    if "ratio" in fig:
        return (f"{count(fig.get('n_negative'))} negative vs {rate(fig.get('baseline_rate'))} per window, "
                f"{ratio(fig['ratio'])}, {p}, dispersion {rate(fig.get('dispersion'))}, "
                f"{count(fig.get('n_docs'))} documents")
    return p


def document_line(document: dict[str, Any]) -> str:
    """``[0.99] Apple cuts guidance — benzinga, 2026-11-20 10:05 UTC (first story)``."""
    extra = " (first story)" if document.get("first_story") else ""
    return (f"[{score(document.get('p_negative'))}] {headline(document)} — {document.get('source')}, "
            f"{when(document.get('published_at'))}{extra}")


FILTERS = {"p_value": p_value, "percent": percent, "points": points, "integer": count, "ratio": ratio,
           "rate": rate, "score": score, "duration": duration, "when": when, "headline": headline, "statistic": statistic,
           "figures": figures, "document_line": document_line}


def install(env) -> None:
    """Register the functions above as jinja filters (``{{ d | headline }}``) and ``window`` as a global."""
    env.filters.update(FILTERS)
    env.globals["window"] = window
