"""The one duration grammar of finpulse settings, CLI options and config files.

A duration is a number and a unit, ``ms``, ``s``, ``m``, ``h`` or ``d`` (``500ms``, ``90s``,
``1.5h``, ``1d``); a bare number (``60``, ``"60"``) is seconds, and so is an int or float
given directly (a YAML number); a ``timedelta`` is taken as is. Callers state what they
accept: ``whole`` (whole seconds, e.g. window widths, which are stored as integer seconds) and
``positive`` (more than zero, e.g. an interval); a negative duration is always refused.
Errors are ``ValueError`` naming the value, what was expected and, when given, ``what`` it is
(``trigger '0s': must be more than zero``), so pydantic validators and CLIs can pass them on.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any

_GRAMMAR = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(ms|s|m|h|d)?\s*$")
UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
EXAMPLES = "e.g. 500ms, 90s, 15m, 1h, 1d; a bare number is seconds"


def parse_seconds(value: Any, *, whole: bool = False, positive: bool = False, what: str = "duration") -> float:
    """Seconds in ``value`` (see the module docstring); an int when ``whole``."""
    shown = f"{what} {value!r}"
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):  # a YAML `yes`, never a duration
        raise ValueError(f"{shown}: expected a duration ({EXAMPLES})")
    elif isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _GRAMMAR.match(str(value)) if isinstance(value, str) else None
        if not match:
            raise ValueError(f"{shown}: expected a number and a unit ms, s, m, h or d ({EXAMPLES})")
        seconds = float(match.group(1)) * UNIT_SECONDS[match.group(2) or "s"]
    if not math.isfinite(seconds):
        raise ValueError(f"{shown}: expected a finite duration ({EXAMPLES})")
    if seconds < 0:
        raise ValueError(f"{shown}: must not be negative")
    if positive and seconds == 0:
        raise ValueError(f"{shown}: must be more than zero")
    if whole:
        # 1.5s or 2500ms is not whole; compare with a tolerance for float units (0.1h is 360 s).
        rounded = round(seconds)
        if abs(seconds - rounded) > 1e-6:
            raise ValueError(f"{shown}: must be a whole number of seconds")
        return int(rounded)
    return seconds


def parse_timedelta(value: Any, *, whole: bool = False, positive: bool = False,
                    what: str = "duration") -> timedelta:
    """The same as :func:`parse_seconds`, as a ``timedelta``."""
    return timedelta(seconds=parse_seconds(value, whole=whole, positive=positive, what=what))
