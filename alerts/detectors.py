"""Spike detectors: is this window's negative sentiment out of line with the scope's own past?

Each detector sees one scope (a ticker, a topic, a source or the whole market) at one window:
the window's counts and the sums over the ``B`` windows before it (its rolling baseline). It
answers twice, for hysteresis: ``fire`` (strong evidence, the threshold to start or keep
counting pending windows) and ``hold`` (weaker evidence, the threshold an alert already firing
needs to stay firing). An alert resolves only when ``hold`` is false, so a series hovering at
the firing threshold does not flap.

Counts come from ``sentiment_windows``: ``n_docs`` / ``n_negative``, or with
``first_stories_only`` the first-story counts ``n_first_stories`` / ``n_negative_first``, so a
story syndicated fifty times counts once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

_STANDARD_NORMAL = NormalDist()


@dataclass(frozen=True)
class Window:
    """One scope's figures at one window, and the sums over its baseline windows."""

    n_docs: int
    n_negative: int
    base_windows: int  # windows in the baseline period (absent rows are windows with no documents)
    base_docs: int
    base_negative: int
    base_present: int = 0  # baseline windows that have a row
    base_sumsq_negative: float | None = None  # sum of squared negative counts over the baseline windows
    mean_p_negative: float | None = None


@dataclass
class Result:
    fire: bool
    hold: bool
    statistic: float  # the detector's test statistic (see each detector)
    p_value: float
    figures: dict[str, Any] = field(default_factory=dict)
    reason: str = ""  # why it did not fire, when it did not

    def as_dict(self) -> dict[str, Any]:
        return {"fire": self.fire, "hold": self.hold, "statistic": _finite(self.statistic),
                "p_value": _finite(self.p_value), "figures": dict(self.figures), "reason": self.reason}


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# --- distribution tails -----------------------------------------------------------------------

def _tail(logpmf, k: int, lo: int, hi: int, mode: int) -> float:
    """P(X >= k) for a unimodal pmf on [lo, hi], summing outward from k where the terms shrink.

    Beyond the mode the terms decrease, so the sum stops once a term is below 1e-17 of the sum
    (or underflows to 0: every later one does too): O(sqrt(n)) terms instead of O(n). Below the
    mode it sums the lower tail and complements it.
    """
    if k <= lo:
        return 1.0
    if k > hi:
        return 0.0
    if k > mode:
        total, j = 0.0, k
        while j <= hi:
            term = math.exp(logpmf(j))
            total += term
            if term == 0.0 or term < total * 1e-17:
                break
            j += 1
        return min(1.0, total)
    total, j = 0.0, k - 1
    while j >= lo:
        term = math.exp(logpmf(j))
        total += term
        if term == 0.0 or term < total * 1e-17:
            break
        j -= 1
    return max(0.0, min(1.0, 1.0 - total))


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact (log-gamma terms)."""
    if p <= 0.0:
        return 1.0 if k <= 0 else 0.0
    if p >= 1.0:
        return 1.0 if k <= n else 0.0
    lp, lq, lnf = math.log(p), math.log1p(-p), math.lgamma(n + 1)

    def logpmf(j: int) -> float:
        return lnf - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * lp + (n - j) * lq

    return _tail(logpmf, k, 0, n, int((n + 1) * p))


def poisson_sf(k: int, lam: float) -> float:
    """P(X >= k) for X ~ Poisson(lam), exact (log-gamma terms)."""
    if lam <= 0.0:
        return 1.0 if k <= 0 else 0.0
    llam = math.log(lam)

    def logpmf(j: int) -> float:
        return -lam + j * llam - math.lgamma(j + 1)

    return _tail(logpmf, k, 0, max(k, int(lam * 20 + 100)) * 10, int(lam))


def normal_quantile(q: float) -> float:
    """z with P(Z <= z) = q, for the Wilson bound (the standard library's inverse normal CDF)."""
    if not 0.0 < q < 1.0:
        raise ValueError("q must be in (0, 1)")
    return _STANDARD_NORMAL.inv_cdf(q)


def wilson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided lower confidence bound (level 1 - alpha) of a binomial proportion k/n (Wilson score)."""
    if n <= 0:
        return 0.0
    z = normal_quantile(1 - alpha)
    phat = k / n
    centre = phat + z * z / (2 * n)
    margin = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z * z / n))


# --- detectors --------------------------------------------------------------------------------

@dataclass(frozen=True)
class NegativeShare:
    r"""Negative share of the window against the scope's rolling baseline share.

    With :math:`k` negative documents out of :math:`n` in the window and :math:`K` out of
    :math:`N` over the baseline windows, the baseline share is smoothed towards a neutral
    prior so a scope with little history is not judged against 0:

    .. math:: p_0 = \frac{K + a}{N + a + b}, \qquad a = 1,\ b = 2 \ (\text{prior mean } 1/3)

    Under "nothing changed" :math:`k \sim \mathrm{Binomial}(n, p_0)`; the one-sided p-value is

    .. math:: p = P(X \ge k) = \sum_{j=k}^{n} \binom{n}{j} p_0^j (1-p_0)^{n-j}

    and the Wilson lower bound of the window's share at confidence :math:`1-\alpha`, with
    :math:`\hat p = k/n` and :math:`z = \Phi^{-1}(1-\alpha)`, is

    .. math:: L = \frac{\hat p + \frac{z^2}{2n} - z\sqrt{\frac{\hat p(1-\hat p)}{n} + \frac{z^2}{4n^2}}}{1 + \frac{z^2}{n}}

    **fire** iff :math:`n \ge` ``min_docs``, :math:`N \ge` ``min_baseline_docs``,
    :math:`p \le \alpha` and :math:`L - p_0 \ge` ``min_lift``: significant *and* material (a
    big scope makes tiny lifts significant; the lift is what a desk cares about).
    **hold** iff :math:`n \ge 1`, :math:`p \le` ``resolve_alpha`` and
    :math:`\hat p - p_0 \ge` ``resolve_lift`` (looser on both counts: hysteresis).
    The statistic is the lift :math:`L - p_0`. When :math:`\hat p - p_0` is below both lifts
    neither answer can be yes, and the p-value is not computed (NaN, shown as null).
    """

    alpha: float = 0.001
    min_lift: float = 0.15
    resolve_alpha: float = 0.05
    resolve_lift: float = 0.05
    min_docs: int = 20
    min_baseline_docs: int = 50

    def __call__(self, w: Window) -> Result:
        n, k = w.n_docs, w.n_negative
        p0 = (w.base_negative + 1.0) / (w.base_docs + 3.0)
        share = k / n if n else 0.0
        if share - p0 < min(self.min_lift, self.resolve_lift):
            # Neither threshold can be met (L <= share): skip the tail sums, the bulk of the cost
            # when thousands of quiet scopes are evaluated. The p-value is reported as not computed.
            figures = {"n_docs": n, "n_negative": k, "share": share, "baseline_share": p0,
                       "baseline_docs": w.base_docs, "baseline_negative": w.base_negative,
                       "baseline_windows": w.base_windows}
            return Result(False, False, share - p0, math.nan, figures, "share below baseline + lift")
        p_value = binomial_sf(k, n, p0) if n else 1.0
        lower = wilson_lower(k, n, self.alpha) if n else 0.0
        lift = lower - p0
        figures = {"n_docs": n, "n_negative": k, "share": share, "baseline_share": p0,
                   "baseline_docs": w.base_docs, "baseline_negative": w.base_negative,
                   "baseline_windows": w.base_windows, "wilson_lower": lower, "lift": lift}
        hold = n >= 1 and p_value <= self.resolve_alpha and share - p0 >= self.resolve_lift
        if n < self.min_docs:
            return Result(False, hold, lift, p_value, figures, f"n_docs {n} < min_docs {self.min_docs}")
        if w.base_docs < self.min_baseline_docs:
            return Result(False, hold, lift, p_value, figures,
                          f"baseline_docs {w.base_docs} < min_baseline_docs {self.min_baseline_docs}")
        fire = p_value <= self.alpha and lift >= self.min_lift
        return Result(fire, hold or fire, lift, p_value, figures,
                      "" if fire else f"p={p_value:.3g} lift={lift:.3f}")


@dataclass(frozen=True)
class NegativeVolume:
    r"""A surge in the number of negative documents against the scope's rolling mean (quasi-Poisson).

    With :math:`k` negative documents in the window and counts :math:`x_1..x_B` over the
    :math:`B` baseline windows (a window without a row had none), the expected count is

    .. math:: \lambda = \max\left(\bar x, \lambda_{min}\right), \qquad \bar x = \frac{1}{B}\sum x_i

    (the floor ``min_rate`` keeps a scope that was silent from alerting on its first few
    documents). News counts are over-dispersed (bursty) compared with a Poisson, whose variance
    equals its mean, so the baseline's own dispersion is estimated as in quasi-Poisson models
    (and the Farrington outbreak-detection algorithm):

    .. math:: \phi = \max\left(1, \frac{s^2}{\lambda}\right), \qquad s^2 = \frac{1}{B-1}\sum (x_i - \bar x)^2

    and the count is tested on the scale where it is Poisson-like: under "nothing changed",
    :math:`k/\phi \sim \mathrm{Poisson}(\lambda/\phi)`, so the one-sided p-value is

    .. math:: p = P(X \ge \lceil k/\phi \rceil), \quad X \sim \mathrm{Poisson}(\lambda/\phi)

    Significance alone still fires on big scopes for small changes, so the rate ratio
    :math:`r = k/\lambda` must also clear ``min_ratio``.
    **fire** iff :math:`k \ge` ``min_count``, :math:`p \le \alpha` and :math:`r \ge` ``min_ratio``.
    **hold** iff :math:`p \le` ``resolve_alpha`` and :math:`r \ge` ``resolve_ratio``.
    The statistic is :math:`r`. When :math:`r` is below both ratios the p-value is not
    computed (NaN, shown as null).
    """

    alpha: float = 0.0001
    min_ratio: float = 3.0
    resolve_alpha: float = 0.05
    resolve_ratio: float = 1.5
    min_count: int = 10
    min_rate: float = 1.0

    def __call__(self, w: Window) -> Result:
        k = w.n_negative
        b = w.base_windows
        mean = w.base_negative / b if b else 0.0
        lam = max(mean, self.min_rate)
        phi = 1.0
        if w.base_sumsq_negative is not None and b > 1:
            variance = max(0.0, (w.base_sumsq_negative - b * mean * mean) / (b - 1))
            phi = max(1.0, variance / lam)
        ratio = k / lam
        figures = {"n_docs": w.n_docs, "n_negative": k, "baseline_rate": lam, "dispersion": phi,
                   "baseline_negative": w.base_negative, "baseline_windows": b, "ratio": ratio}
        if ratio < min(self.min_ratio, self.resolve_ratio):
            # Neither threshold can be met: the p-value is not computed (see NegativeShare).
            return Result(False, False, ratio, math.nan, figures, "ratio below thresholds")
        p_value = poisson_sf(math.ceil(k / phi - 1e-9), lam / phi)
        hold = p_value <= self.resolve_alpha and ratio >= self.resolve_ratio
        if k < self.min_count:
            return Result(False, hold, ratio, p_value, figures, f"n_negative {k} < min_count {self.min_count}")
        fire = p_value <= self.alpha and ratio >= self.min_ratio
        return Result(fire, hold or fire, ratio, p_value, figures,
                      "" if fire else f"p={p_value:.3g} ratio={ratio:.2f}")


DETECTORS = {"negative_share": NegativeShare, "negative_volume": NegativeVolume}


def build(name: str, params: dict[str, Any]):
    """The detector called ``name`` with ``params`` (names and types checked by the rules loader)."""
    return DETECTORS[name](**params)
