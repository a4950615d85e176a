"""finpulse.charts: the PNGs the alert email and the report embed."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pytest

from finpulse.charts import ChartError, Span, bars_png, trend_png

PNG = b"\x89PNG\r\n\x1a\n"


def _series(n: int = 30):
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    times = [start + timedelta(hours=i) for i in range(n)]
    shares = [0.1 if i != 20 else 0.6 for i in range(n)]
    shares[5] = None  # a window without documents is a gap, not a zero
    volume = [40 + i for i in range(n)]
    return times, shares, volume


def _pixels(png: bytes):
    from matplotlib import image

    return image.imread(io.BytesIO(png), format="png")


def test_trend_png_draws_the_marked_window_in_red():
    times, shares, volume = _series()
    plain = trend_png(times, shares, volume, title="ticker ACME")
    marked = trend_png(times, shares, volume, title="ticker ACME",
                       spans=[Span(times[18], times[24])], marked=Span(times[20], times[21]))
    assert plain.startswith(PNG) and marked.startswith(PNG)
    a, b = _pixels(plain), _pixels(marked)
    assert a.shape == b.shape and a.shape[1] >= 500  # 6 in at 100 dpi, trimmed to the drawing

    def reddish(img) -> int:
        r, g, bl = img[..., 0], img[..., 1], img[..., 2]
        return int(((r > 0.85) & (g < 0.8) & (bl < 0.8)).sum())

    # The shaded episode and the outlined window add red-ish pixels the plain chart lacks.
    assert reddish(b) > reddish(a) + 500


def test_trend_png_refuses_naive_times_and_unequal_series():
    times, shares, volume = _series()
    with pytest.raises(ChartError, match="naive"):
        trend_png([t.replace(tzinfo=None) for t in times], shares, volume)
    with pytest.raises(ChartError, match="length"):
        trend_png(times, shares[:-1], volume)
    with pytest.raises(ChartError, match="naive"):
        trend_png(times, shares, volume, marked=Span(times[0].replace(tzinfo=None), times[1]))


def test_bars_png_one_bar_per_label():
    png = bars_png(["AAPL", "TSLA", "AMZN"], [0.4, 0.2, 0.1], title="most negative", value_label="negative share")
    assert png.startswith(PNG)
    tall = bars_png([f"T{i}" for i in range(20)], [i / 20 for i in range(20)])
    assert _pixels(tall).shape[0] > _pixels(png).shape[0]
    with pytest.raises(ChartError):
        bars_png(["A"], [1.0, 2.0])
