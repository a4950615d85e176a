"""Calibration report: ECE before/after temperature scaling, the cross-fit, the reliability bins and plot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.evaluation.calibration import cross_fit_ece, head_calibration, plot_reliability, reliability_bins
from models.evaluation.metrics import expected_calibration_error

NAMES = ["negative", "neutral", "positive"]


def overconfident(n: int = 3000, seed: int = 0, scale: float = 3.0) -> tuple[torch.Tensor, list[str]]:
    """Labels drawn from softmax(z); logits reported as scale * z: a model 3x too sure of itself."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3)) * 1.5
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = [NAMES[rng.choice(3, p=row)] for row in p]
    return torch.tensor(z * scale, dtype=torch.float32), labels


def test_temperature_scaling_repairs_an_overconfident_head():
    logits, labels = overconfident()
    r = head_calibration(logits, labels, NAMES, shipped_temperature=1.0)
    assert r["refit_temperature"] == pytest.approx(3.0, rel=0.15)
    assert r["refit"]["ece"] < 0.03 < 0.1 < r["before"]["ece"]
    assert r["refit"]["nll"] < r["before"]["nll"]
    assert r["after"]["ece"] == pytest.approx(r["before"]["ece"])  # shipped T=1 changes nothing
    # Held-out halves: temperature fit on one half still calibrates the other.
    assert r["cross_fit"]["ece"] < 0.05 and len(r["cross_fit"]["temperatures"]) == 2


def test_reliability_bins_agree_with_ece():
    logits, labels = overconfident(n=800, seed=1)
    targets = np.array([NAMES.index(x) for x in labels])
    probs = torch.softmax(logits, -1).numpy()
    bins = reliability_bins(probs, targets)
    assert sum(b["n"] for b in bins) == len(targets)
    ece = sum(b["n"] / len(targets) * abs(b["accuracy"] - b["confidence"]) for b in bins if b["n"])
    assert ece == pytest.approx(expected_calibration_error(probs, targets))


def test_cross_fit_fits_on_one_half_and_measures_on_the_other():
    logits, labels = overconfident(n=1000, seed=2)
    targets = torch.tensor([NAMES.index(x) for x in labels])
    a = cross_fit_ece(logits, targets, seed=0)
    assert a == cross_fit_ece(logits, targets, seed=0)
    assert a["temperatures"][0] != a["temperatures"][1]


def test_reliability_plot_is_a_png(tmp_path):
    logits, labels = overconfident(n=300)
    r = head_calibration(logits, labels, NAMES, shipped_temperature=2.5)
    report = {"model_version": "test", "validation": {"sentiment": r}, "out_of_domain": {"tweets": r}}
    out = plot_reliability(report, tmp_path / "plot.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
