"""The weak-tag loss: cross-entropy on p_pos / (p_pos + p_neg), neutral untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.training.weak_labels import IGNORE, binary_tag_loss, class_weights, tag_ids


def test_loss_is_bce_of_the_polar_margin_and_leaves_neutral_alone():
    logits = torch.tensor([[2.0, 5.0, -1.0], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0]], requires_grad=True)
    tags = torch.tensor([1, 1, IGNORE])
    loss = binary_tag_loss(logits, tags)
    p_pos = torch.sigmoid(torch.tensor([-1.0 - 2.0, 1.0 - 0.0]))
    assert float(loss.detach()) == pytest.approx(float(-torch.log(p_pos).mean()), rel=1e-6)
    # p_pos / (p_pos + p_neg) of the softmax is exactly that sigmoid, whatever the neutral logit.
    p = torch.softmax(logits.detach(), -1)
    assert torch.allclose(p[:2, 2] / (p[:2, 2] + p[:2, 0]), p_pos)
    loss.backward()
    assert torch.all(logits.grad[:, 1] == 0)  # a tag says nothing about neutral
    assert torch.all(logits.grad[2] == 0)  # untagged row
    assert logits.grad[0, 2] < 0 < logits.grad[0, 0]  # raise positive, lower negative


def test_weights_even_out_the_skew_and_no_tags_give_zero():
    tags = np.array([1] * 50 + [0] * 10 + [IGNORE] * 5)
    w = class_weights(tags, 2, power=1.0)
    assert float(w[0] * 10) == pytest.approx(float(w[1] * 50))  # both tags weigh the same in total
    assert class_weights(tags, 2, power=0.0).tolist() == [1.0, 1.0]  # power 0: plain cross-entropy
    assert class_weights(tags, 3, power=1.0)[2] == 0.0  # a class without rows weighs nothing
    logits = torch.zeros(3, 3, requires_grad=True)
    loss = binary_tag_loss(logits, torch.full((3,), IGNORE))
    assert float(loss.detach()) == 0.0
    loss.backward()  # still differentiable: a batch without comments must not break the step


def test_tag_ids():
    assert tag_ids(["Bullish", "bearish ", "positive", "NEGATIVE"]).tolist() == [1, 0, 1, 0]
    with pytest.raises(ValueError, match="unknown binary tags"):
        tag_ids(["neutral"])
