"""Metrics and temperature scaling against hand-computed values."""

from __future__ import annotations

import numpy as np
import torch

from models.evaluation.metrics import classification_report, expected_calibration_error, fit_temperature


def test_classification_report_by_hand():
    truth = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "c", "c"]
    report = classification_report(truth, pred, labels=["a", "b", "c"])
    assert report["accuracy"] == 4 / 6
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # a: P=1, R=2/3 -> F1=0.8; b: P=1/2, R=1/2 -> 0.5; c: P=1/2, R=1 -> 2/3
    assert np.isclose(report["per_class"]["a"]["f1"], 0.8)
    assert np.isclose(report["macro_f1"], (0.8 + 0.5 + 2 / 3) / 3)
    assert report["per_class"]["c"]["support"] == 1


def test_fit_temperature_recovers_a_known_temperature():
    generator = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 3, generator=generator) * 2
    targets = torch.multinomial(torch.softmax(true_logits, -1), 1, generator=generator).squeeze(1)
    # A model three times too confident: the fitted temperature should undo it.
    assert abs(fit_temperature(true_logits * 3, targets) - 3.0) < 0.3


def test_ece_is_zero_for_perfectly_calibrated_certainty():
    probs = np.eye(3)[[0, 1, 2, 0]]
    assert expected_calibration_error(probs, np.array([0, 1, 2, 0])) == 0.0
    assert expected_calibration_error(probs, np.array([1, 2, 0, 1])) == 1.0
