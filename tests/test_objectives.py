"""Losses and accuracy for single-label and multi-label (−1 = unscored) targets, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.objectives import TaskLoss, accuracy, batch_loss, example_losses, flip_labels, is_multilabel

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [-0.3, 0.2, -2.0], [1.5, 1.0, -0.1]])
TARGETS = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])


def numpy_bce(logit: float, target: float) -> float:
    p = 1.0 / (1.0 + np.exp(-logit))
    return -(target * np.log(p) + (1 - target) * np.log(1 - p))


def test_single_label_loss_and_accuracy_are_cross_entropy_and_argmax():
    y = torch.tensor([0, 2, 1])
    assert not is_multilabel(y)
    torch.testing.assert_close(batch_loss(LOGITS, y), torch.nn.functional.cross_entropy(LOGITS, y))
    assert accuracy(LOGITS, y) == pytest.approx(1 / 3)  # only the first row's argmax is right


def test_multilabel_loss_averages_bce_over_each_examples_scored_labels():
    losses = example_losses(LOGITS, TARGETS).numpy()
    expected = [
        (numpy_bce(2.0, 1) + numpy_bce(-1.0, 0)) / 2,
        (numpy_bce(-0.3, 0) + numpy_bce(0.2, 1) + numpy_bce(-2.0, 1)) / 3,
        0.0,  # nothing scored: no loss, no gradient
    ]
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    assert float(batch_loss(LOGITS, TARGETS, "sum")) == pytest.approx(sum(expected), rel=1e-6)
    assert float(TaskLoss()(LOGITS, TARGETS)) == pytest.approx(np.mean(expected), rel=1e-6)
    assert batch_loss(LOGITS, TARGETS, "none").shape == (3,)
    with pytest.raises(ValueError, match="reduction"):
        batch_loss(LOGITS, TARGETS, "max")


def test_multilabel_accuracy_is_the_mean_of_each_labels_accuracy_over_scored_entries():
    # Predictions (logit > 0): row0 [1,0,1], row1 [0,1,0], row2 [1,1,0].
    # Label 0: rows 0,1 scored, both right → 1. Label 1: rows 0,1 right → 1. Label 2: row 1 only, wrong → 0.
    assert accuracy(LOGITS, TARGETS) == pytest.approx((1 + 1 + 0) / 3)
    assert accuracy(LOGITS[2:], TARGETS[2:]) == 0.0  # nothing scored


def test_label_flipping_swaps_scored_entries_and_mirrors_classes():
    torch.testing.assert_close(
        flip_labels(TARGETS, 3), torch.tensor([[0.0, 1.0, -1.0], [1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
    )
    assert flip_labels(torch.tensor([0, 9, 3]), 10).tolist() == [9, 0, 6]


def test_masked_labels_get_no_gradient():
    logits = LOGITS.clone().requires_grad_(True)
    batch_loss(logits, TARGETS).backward()
    assert logits.grad[TARGETS < 0].abs().max() == 0
    assert logits.grad[TARGETS >= 0].abs().min() > 0
