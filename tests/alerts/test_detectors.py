"""Detectors on synthetic series: surges fire; quiet, noisy and low-volume series do not."""

from __future__ import annotations

import math
import random

import pytest

from alerts.detectors import (NegativeShare, NegativeVolume, Window, binomial_sf, normal_quantile, poisson_sf,
                              wilson_lower)


def _binom_sf_naive(k, n, p):
    return sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k, n + 1))


def _poisson_sf_naive(k, lam):
    return 1 - sum(math.exp(-lam) * lam ** j / math.factorial(j) for j in range(k))


@pytest.mark.parametrize("k,n,p", [(0, 10, 0.3), (3, 10, 0.3), (9, 10, 0.3), (40, 60, 0.2), (12, 60, 0.2),
                                   (1, 1, 0.5), (55, 200, 0.25), (5, 200, 0.25)])
def test_binomial_tail_matches_the_textbook_sum(k, n, p):
    assert binomial_sf(k, n, p) == pytest.approx(_binom_sf_naive(k, n, p), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("k,lam", [(0, 3.0), (2, 3.0), (10, 3.0), (30, 8.0), (8, 8.0), (1, 0.1)])
def test_poisson_tail_matches_the_textbook_sum(k, lam):
    assert poisson_sf(k, lam) == pytest.approx(_poisson_sf_naive(k, lam), rel=1e-9, abs=1e-15)


def _grid_binomial():
    for n in (1, 2, 7, 40, 300, 2_000, 10_000, 100_000):
        for p in (1e-4, 1e-3, 0.01, 0.05, 0.2, 0.5, 0.9):
            mean, sd = n * p, math.sqrt(n * p * (1 - p))
            ks = {0, 1, n // 2, n - 1, n, int(0.99 * n)}
            ks |= {round(mean + z * sd) for z in (-30, -8, -3, -1, 0, 1, 3, 8, 30, 80)}
            for k in sorted(k for k in ks if 0 <= k <= n):
                yield k, n, p


def _grid_poisson():
    for lam in (0.01, 0.1, 1.0, 3.7, 20.0, 150.0, 1_000.0, 10_000.0):
        sd = math.sqrt(lam)
        ks = {0, 1, 2, int(lam), 10 * int(lam) + 5}
        ks |= {round(lam + z * sd) for z in (-30, -8, -3, -1, 0, 1, 3, 8, 30, 80, 300)}
        for k in sorted(k for k in ks if k >= 0):
            yield k, lam


def _close(ours: float, reference: float) -> bool:
    # Relative agreement wherever the reference is a representable number; both 0 past underflow.
    if reference < 1e-300:
        return ours < 1e-290
    return abs(ours - reference) <= 1e-8 * reference


def test_binomial_tail_matches_scipy_across_the_range_including_far_tails():
    stats = pytest.importorskip("scipy.stats")  # test-only dependency
    cases = [(k, n, p, binomial_sf(k, n, p), float(stats.binom.sf(k - 1, n, p))) for k, n, p in _grid_binomial()]
    assert len(cases) > 500
    bad = [case for case in cases if not _close(case[3], case[4])]
    assert not bad, bad[:5]
    # The far tails are there, not only the bulk: some references are below 1e-100.
    assert sum(1 for case in cases if 0 < case[4] < 1e-100) > 20


def test_poisson_tail_matches_scipy_across_the_range_including_far_tails():
    stats = pytest.importorskip("scipy.stats")
    cases = list(_grid_poisson())
    bad = [(k, lam, poisson_sf(k, lam), float(stats.poisson.sf(k - 1, lam))) for k, lam in cases
           if not _close(poisson_sf(k, lam), float(stats.poisson.sf(k - 1, lam)))]
    assert not bad, bad[:5]
    assert sum(1 for k, lam in cases if 0 < stats.poisson.sf(k - 1, lam) < 1e-100) >= 5


def test_wilson_lower_bound_is_below_the_share_and_tightens_with_n():
    assert wilson_lower(20, 40, 0.05) < 0.5
    assert wilson_lower(200, 400, 0.05) > wilson_lower(20, 40, 0.05)
    # Known value: k=8, n=10, one-sided 95% (z=1.645) Wilson lower bound ~ 0.5396
    assert wilson_lower(8, 10, 0.05) == pytest.approx(0.5396, abs=2e-3)


def test_normal_quantile_is_the_exact_inverse_normal_cdf():
    stats = pytest.importorskip("scipy.stats")
    for q in (1e-12, 1e-6, 0.001, 0.025, 0.5, 0.9, 0.999, 1 - 1e-9):
        assert normal_quantile(q) == pytest.approx(float(stats.norm.ppf(q)), rel=1e-12, abs=1e-12)
    with pytest.raises(ValueError):
        normal_quantile(1.0)


def _baseline(series, i, b=24, docs=None):
    past = series[max(0, i - b):i]
    return Window(n_docs=series[i][0], n_negative=series[i][1], base_windows=b,
                  base_docs=sum(n for n, _ in past), base_negative=sum(k for _, k in past), base_present=len(past),
                  base_sumsq_negative=float(sum(k * k for _, k in past)))


def _binomial_series(rng, hours, n, p):
    return [(n, sum(rng.random() < p for _ in range(n))) for _ in range(hours)]


def _fires(detector, series, start=24):
    return [i for i in range(start, len(series)) if detector(_baseline(series, i)).fire]


def test_negative_share_fires_on_a_surge_and_not_before():
    rng = random.Random(1)
    series = _binomial_series(rng, 72, 50, 0.2)
    series[60] = (60, 42)
    assert _fires(NegativeShare(), series) == [60]


def test_negative_share_quiet_series_never_fires():
    series = [(40, 8)] * 200
    assert _fires(NegativeShare(), series) == []


def test_negative_share_noisy_series_does_not_fire():
    rng = random.Random(7)
    # 30 days of hourly windows whose volume and share both wander (share 10%-35%, volume 20-200)
    series = []
    for _ in range(24 * 30):
        n = rng.randint(20, 200)
        p = rng.uniform(0.10, 0.35)
        series.append((n, sum(rng.random() < p for _ in range(n))))
    assert _fires(NegativeShare(), series) == []


def test_negative_share_low_volume_does_not_fire_even_at_100_percent():
    series = [(40, 8)] * 30 + [(5, 5)]
    w = _baseline(series, 30)
    result = NegativeShare()(w)
    assert not result.fire and "min_docs" in result.reason
    assert result.p_value < 0.01  # significant, but too few documents to act on


def test_negative_share_needs_a_baseline():
    result = NegativeShare()(Window(n_docs=60, n_negative=50, base_windows=24, base_docs=10, base_negative=1))
    assert not result.fire and "baseline" in result.reason


def test_negative_share_significant_but_small_lift_does_not_fire():
    # 10,000 documents: 21.5% against 20% is highly significant, but a 1.5-point lift is not news
    w = Window(n_docs=10_000, n_negative=2150, base_windows=24, base_docs=240_000, base_negative=48_000)
    result = NegativeShare(resolve_lift=0.01)(w)  # a low resolve lift, so the p-value is computed
    assert result.p_value < 0.001 and not result.fire and result.hold


def test_negative_share_hysteresis_holds_between_the_two_thresholds():
    detector = NegativeShare()
    base = dict(base_windows=24, base_docs=960, base_negative=192)  # 20%
    fire = detector(Window(n_docs=60, n_negative=40, **base))
    between = detector(Window(n_docs=60, n_negative=22, **base))  # 37%: not enough to fire, enough to hold
    gone = detector(Window(n_docs=60, n_negative=13, **base))
    assert fire.fire and fire.hold
    assert not between.fire and between.hold
    assert not gone.fire and not gone.hold


def test_negative_volume_fires_on_a_surge():
    rng = random.Random(3)
    series = [(50, _poisson(rng, 4.0)) for _ in range(72)]
    series[50] = (80, 30)
    assert _fires(NegativeVolume(), series) == [50]


def _poisson(rng, lam):
    # Knuth's method: fine for small lambda
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def test_negative_volume_noisy_and_low_volume_series_do_not_fire():
    # Over-dispersed counts: the hourly rate itself wanders between 3 and 8 (a Poisson of a
    # Poisson). Ten series of 30 days: at most one single window in ~7,000 clears the test,
    # and never two in a row (what a rule with for_windows: 2 needs to fire).
    detector = NegativeVolume()
    single, consecutive = 0, 0
    for seed in range(10):
        rng = random.Random(seed)
        noisy = [(50, _poisson(rng, rng.uniform(3, 8))) for _ in range(24 * 30)]
        fires = _fires(detector, noisy)
        single += len(fires)
        consecutive += sum(1 for i in fires if i + 1 in fires)
    assert single <= 1 and consecutive == 0
    rng = random.Random(11)
    low = [(3, rng.choice([0, 0, 1])) for _ in range(48)] + [(9, 8)]  # 8x the rate but only 8 documents
    assert _fires(detector, low) == []


def test_negative_volume_dispersion_widens_the_test():
    steady = Window(n_docs=50, n_negative=15, base_windows=24, base_docs=1200, base_negative=120,
                    base_sumsq_negative=24 * 25.0 + 5 * 23)  # mean 5, variance ~5: Poisson-like
    bursty = Window(n_docs=50, n_negative=15, base_windows=24, base_docs=1200, base_negative=120,
                    base_sumsq_negative=24 * 25.0 + 20 * 23)  # mean 5, variance ~20
    a, b = NegativeVolume()(steady), NegativeVolume()(bursty)
    assert a.figures["dispersion"] == pytest.approx(1.0)
    assert b.figures["dispersion"] > 3
    assert a.p_value < b.p_value


def test_negative_volume_floor_rate_keeps_a_silent_scope_quiet():
    # min_count 1, so only the floor stands between a silent scope's first few documents and an alert.
    silent = Window(n_docs=6, n_negative=6, base_windows=24, base_docs=0, base_negative=0)
    floored = NegativeVolume(min_count=1, min_rate=2.0)(silent)
    assert floored.figures["baseline_rate"] == 2.0 and floored.statistic == 3.0  # 6 against the floor of 2
    assert not floored.fire and floored.p_value == pytest.approx(poisson_sf(6, 2.0))
    # Without a real floor the same window fires: the floor is what keeps it quiet.
    assert NegativeVolume(min_count=1, min_rate=0.01)(silent).fire
