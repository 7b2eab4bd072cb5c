"""Augmentation multiplicity (privacy.augmentations): the shifts, the clipped mean of each example's
copies against per-example autograd, and a local-DP run that uses it (same ε, different model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import differential_privacy as dp
from experiment_config import ExperimentConfig
from privacy.augmentation import random_shifts
from privacy.per_example_clipping import CLIP_EPSILON, BookkeepingClipper


def numpy_shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """(C, H, W) image whose pixel (y, x) is the input's (y + dy, x + dx), clamped to the frame."""
    height, width = image.shape[1:]
    rows = np.clip(np.arange(height) + dy, 0, height - 1)
    cols = np.clip(np.arange(width) + dx, 0, width - 1)
    return image[:, rows][:, :, cols]


def test_each_copy_is_a_shift_of_its_own_image_and_every_shift_occurs() -> None:
    images = torch.randn(6, 2, 9, 7)
    rows = random_shifts(images, copies=50, max_shift=2, generator=torch.Generator().manual_seed(0))
    assert rows.shape == (300, 2, 9, 7)
    seen = set()
    for r, row in enumerate(rows.numpy()):
        image = images[r // 50].numpy()  # example-major: rows i·K … i·K + K − 1 come from image i
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if np.array_equal(row, numpy_shift(image, dy, dx))]
        assert len(matches) == 1, f"row {r} is not exactly one shift of image {r // 50}"
        seen.add(matches[0])
    assert len(seen) == 25


def test_no_shift_repeats_each_image_and_the_draws_follow_the_generator() -> None:
    images = torch.randn(3, 1, 8, 8)
    same = random_shifts(images, copies=4, max_shift=0, generator=torch.Generator())
    assert torch.equal(same, images.repeat_interleave(4, dim=0))
    first = random_shifts(images, copies=4, max_shift=2, generator=torch.Generator().manual_seed(5))
    again = random_shifts(images, copies=4, max_shift=2, generator=torch.Generator().manual_seed(5))
    other = random_shifts(images, copies=4, max_shift=2, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    with pytest.raises(ValueError, match="copies must be 1 to 64"):
        random_shifts(images, copies=65, max_shift=2, generator=torch.Generator())
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        random_shifts(images.flatten(1), copies=2, max_shift=2, generator=torch.Generator())


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 2, 3, stride=2), nn.Tanh(), nn.Flatten(),
        nn.Linear(2 * 3 * 3, 5), nn.Tanh(), nn.Linear(5, 4),
    )  # fmt: skip


@pytest.mark.parametrize("copies", [1, 3])
@pytest.mark.parametrize("clip", [0.05, 100.0])  # every example clipped; none clipped
def test_clipped_sum_equals_each_examples_mean_gradient_clipped(copies: int, clip: float) -> None:
    """Reference: each example alone, the mean of its copies' losses, plain autograd, clipped by hand."""
    model, examples = small_model(), 5
    x = torch.randn(examples * copies, 1, 7, 7)
    y = torch.randint(0, 4, (examples,)).repeat_interleave(copies)
    loss = BookkeepingClipper(model, clip).backward(x, y, multiplicity=copies)
    got = [p.grad.clone() for p in model.parameters()]

    expected = [torch.zeros_like(p) for p in model.parameters()]
    losses = []
    for i in range(examples):
        rows = slice(i * copies, (i + 1) * copies)
        example_loss = nn.functional.cross_entropy(model(x[rows]), y[rows])  # the mean over its K copies
        grads = torch.autograd.grad(example_loss, list(model.parameters()))
        norm = torch.sqrt(sum(g.square().sum() for g in grads))
        factor = min(1.0, clip / (float(norm) + CLIP_EPSILON))
        expected = [e + factor * g for e, g in zip(expected, grads)]
        losses.append(float(example_loss.detach()))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    assert float(loss) == pytest.approx(np.mean(losses), rel=1e-5)


def test_rows_that_are_not_k_per_example_are_refused() -> None:
    clipper = BookkeepingClipper(small_model(), 1.0)
    with pytest.raises(ValueError, match="not 3 rows of each example"):
        clipper.backward(torch.randn(7, 1, 7, 7), torch.zeros(7, dtype=torch.long), multiplicity=3)


def local_train(augmentations: int, mode: str = "bookkeeping") -> tuple[torch.Tensor, list]:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 26 * 26, 10))
    torch.manual_seed(1)
    for p in model.parameters():
        nn.init.normal_(p, std=0.05)
    generator = torch.Generator().manual_seed(3)
    x, y = torch.randn(120, 1, 28, 28, generator=generator), torch.randint(0, 10, (120,), generator=generator)
    accountant = dp.make_accountant("rdp")
    dp.DPSGDModel(model, max_grad_norm=1.0, grad_sample_mode=mode).train(
        x, y, np.arange(120), local_epochs=2, batch_size=30, learning_rate=0.5, noise_multiplier=1.1,
        accountant=accountant, seed=7, augmentations=augmentations,
    )  # fmt: skip
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]), accountant.history


def test_a_client_trains_with_copies_at_the_same_privacy_cost() -> None:
    plain, plain_history = local_train(0)
    shifted, history = local_train(4)
    again, _ = local_train(4)
    assert history == plain_history  # the same steps at the same σ and q: the same ε
    assert torch.equal(shifted, again)  # the shifts come from the seed
    assert not torch.allclose(shifted, plain, atol=1e-4)
    with pytest.raises(dp.PrivacyError, match="needs grad_sample_mode 'bookkeeping'"):
        local_train(2, mode="hooks")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"privacy": {"mode": "central", "augmentations": 2}}, "needs privacy.mode = 'local'"),
        ({"privacy": {"mode": "local", "augmentations": 2}, "model": {"name": "scatter-linear"}}, "cnn, mlp, cnn-dp"),
        ({"privacy": {"mode": "local", "augmentations": 65}}, r"privacy.augmentations must be in \[0, 64\]"),
        ({"privacy": {"mode": "local", "augmentations": 1.5}}, "privacy.augmentations must be an integer"),
    ],
)
def test_config_refusals(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_dict(changes)


def test_a_local_dp_run_with_copies_reports_the_same_epsilon(mnist) -> None:
    from federated_learning import FederatedRun

    def run(augmentations: int) -> tuple[float, torch.Tensor]:
        config = ExperimentConfig.from_dict({
            "model": {"name": "cnn-dp"}, "data": {"max_train_examples": 600, "max_test_examples": 300},
            "federation": {"num_clients": 3, "clients_per_round": 3, "rounds": 1, "batch_size": 50},
            "privacy": {"mode": "local", "noise_multiplier": 1.0, "augmentations": augmentations, "audit_examples": 0},
            "system": {"num_workers": 1},
        })  # fmt: skip
        federated = FederatedRun(config, data=mnist)
        result = list(federated.rounds())[-1]
        return result.epsilon, federated.state.weights.clone()

    plain, shifted = run(0), run(2)
    assert shifted[0] == pytest.approx(plain[0], rel=1e-12) and plain[0] > 0
    assert not torch.allclose(shifted[1], plain[1], atol=1e-5)
