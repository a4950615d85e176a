"""finpulse.durations: the one duration grammar (pipeline trigger, window widths, lateness, alert rules)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from finpulse.durations import parse_seconds, parse_timedelta


@pytest.mark.parametrize("value,seconds", [
    ("500ms", 0.5), ("2s", 2.0), ("90s", 90.0), ("15m", 900.0), ("1h", 3600.0), ("1d", 86400.0),
    ("1.5h", 5400.0), (" 2 m ", 120.0), (".5s", 0.5), ("60", 60.0), ("0.25", 0.25), (60, 60.0), (1.5, 1.5),
    (timedelta(minutes=2), 120.0), ("0s", 0.0),
])
def test_the_grammar(value, seconds):
    assert parse_seconds(value) == seconds


def test_whole_and_positive_are_what_callers_ask_for():
    assert parse_seconds("2000ms", whole=True) == 2 and isinstance(parse_seconds("2000ms", whole=True), int)
    assert parse_seconds("0.1h", whole=True) == 360  # float units still give whole seconds
    assert parse_timedelta("1h", whole=True, positive=True) == timedelta(hours=1)
    assert parse_seconds("0", whole=True) == 0  # zero is fine unless positive is asked for


@pytest.mark.parametrize("value,kwargs,message", [
    ("1.5s", {"whole": True}, "width '1.5s': must be a whole number of seconds"),
    ("0m", {"positive": True}, "width '0m': must be more than zero"),
    ("-1h", {}, "width '-1h': must not be negative"),
    ("1x", {}, "width '1x': expected a number and a unit ms, s, m, h or d (e.g. 500ms, 90s, 15m, 1h, 1d; "
               "a bare number is seconds)"),
    ("", {}, "width '': expected a number and a unit"),
    ("1h30m", {}, "expected a number and a unit"),
    (True, {}, "width True: expected a duration"),
    (None, {}, "width None: expected a number and a unit"),
    (float("inf"), {}, "expected a finite duration"),
])
def test_errors_name_the_value_and_what_it_is(value, kwargs, message):
    with pytest.raises(ValueError) as info:
        parse_seconds(value, what="width", **kwargs)
    assert message in str(info.value)
