"""Weak binary tags (StockTwits bullish / bearish) as training signal for the three-class sentiment head.

An author's tag says positive-vs-negative; it does not say "not neutral" (most tagged posts are
chatter a reader would call neutral). So the loss only asks that, of the two polar classes,
the tagged one is the more probable: cross-entropy on ``p_pos / (p_pos + p_neg)``, which is
``sigmoid(logit_pos - logit_neg)``. The neutral logit gets no gradient from a tag, and the
tags' 5:1 bullish skew is evened out by class weights (inverse frequency ^ power, as training
weighs its other heads).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

IGNORE = -100  # as models.training.train: a row without a tag
TAG_IDS = {"bearish": 0, "negative": 0, "bullish": 1, "positive": 1}


def tag_ids(labels: pd.Series | list[str]) -> np.ndarray:
    """bullish/positive -> 1, bearish/negative -> 0; anything else raises, naming it."""
    values = pd.Series(labels).astype(str).str.strip().str.lower()
    bad = sorted(set(values) - set(TAG_IDS))
    if bad:
        raise ValueError(f"unknown binary tags {bad[:10]}; expected {sorted(TAG_IDS)}")
    return values.map(TAG_IDS).to_numpy(dtype=np.int64)


def class_weights(labels: np.ndarray, n_classes: int, *, power: float) -> torch.Tensor:
    """Per-class loss weights (mean count / count) ^ power over the labelled rows (``IGNORE`` skipped).

    power 0 is plain cross-entropy, 1 makes every class weigh the same in total; a class with no rows gets 0.
    Training weighs its labelled heads and the weak tags (2 classes: negative, positive) with it.
    """
    counts = np.bincount(labels[labels != IGNORE], minlength=n_classes).astype(float)
    weights = np.where(counts > 0, (counts.sum() / np.maximum(counts, 1) / n_classes) ** power, 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def binary_tag_loss(logits: torch.Tensor, tags: torch.Tensor, *, negative_index: int = 0, positive_index: int = 2,
                    weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean weighted BCE of ``sigmoid(logit_pos - logit_neg)`` against the tags (``IGNORE`` rows skipped).

    Zero (with a graph, so ``backward`` still works) when no row of the batch has a tag.
    """
    tagged = tags != IGNORE
    if not bool(tagged.any()):
        return logits.sum() * 0.0
    margin = (logits[tagged, positive_index] - logits[tagged, negative_index]).float()
    target = tags[tagged].float()
    row_weights = None if weights is None else weights.to(logits.device)[tags[tagged]]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(margin, target, weight=row_weights, reduction="sum")
    return loss / (row_weights.sum() if row_weights is not None else tagged.sum())
