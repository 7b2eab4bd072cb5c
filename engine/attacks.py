"""Malicious clients: which clients attack, and what they send instead of an honest update.

Pure functions over flat (P,) float32 updates (a client's new weights − the global weights)
and label tensors; the round loop decides when to call them. Model-poisoning behaviours
rewrite the update after training; "label_flip" poisons the training data instead
(`flip_labels`) and sends its update unchanged.

    malicious = choose_malicious(num_clients=10, fraction=0.3, seed=0)   # frozenset({0, 2, 8})
    if client_id in malicious:
        if behaviour == "label_flip":
            train_y = flip_labels(train_y, num_classes=10)                    # before training
        update = poison_update(behaviour, local_weights - global_weights,
                               scale=10.0, noise_std=1.0, generator=generator)  # after training
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from experiment_config import ATTACKS, check_one_of

# Mixed into the seed so the malicious-client stream is not the partition or sampling
# stream that the same `config.seed` drives elsewhere ("mal" in ASCII).
MALICIOUS_STREAM_TAG = 0x6D616C


def num_malicious(num_clients: int, fraction: float) -> int:
    """round(fraction·num_clients), halves rounded up (0.5 of 5 clients → 3)."""
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer; got {num_clients!r}")
    if not (isinstance(fraction, (int, float)) and 0 <= fraction <= 1):
        raise ValueError(f"malicious fraction must be in [0, 1]; got {fraction!r}")
    # Round half up, not Python's round-half-to-even, so counts grow monotonically with
    # the fraction; the small epsilon absorbs float noise such as 0.3·10 = 3.0000000000000004.
    return min(num_clients, math.floor(fraction * num_clients + 0.5 + 1e-9))


def choose_malicious(num_clients: int, fraction: float, seed: int) -> frozenset[int]:
    """`num_malicious(num_clients, fraction)` distinct client ids in 0..num_clients-1, seeded.

    Drawn with numpy `default_rng([seed, MALICIOUS_STREAM_TAG])`, so the same seed gives the
    same set, and this choice shares no stream with other choices seeded by `seed`.
    """
    count = num_malicious(num_clients, fraction)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    generator = np.random.default_rng([int(seed), MALICIOUS_STREAM_TAG])
    return frozenset(int(i) for i in generator.choice(num_clients, size=count, replace=False))


def poison_update(
    behaviour: str, update: Tensor, *, scale: float, noise_std: float, generator: torch.Generator
) -> Tensor:
    """The (P,) update a malicious client sends instead of its honest (P,) update (local − global).

    sign_flip → −scale·update; scale (model replacement, Bagdasaryan et al. 2020) → scale·update;
    gaussian → N(0, noise_std²) noise of the same shape and dtype, in weight units (the honest
    update is discarded); label_flip → `update` itself, unchanged (the poisoning happened in
    training, via `flip_labels`). `scale` must be > 0 for sign_flip and scale; `noise_std` ≥ 0
    for gaussian; each is ignored by the other behaviours. `generator` drives the noise only.
    """
    check_one_of("attack behaviour", behaviour, ATTACKS)
    if update.dim() != 1 or not update.is_floating_point():
        raise ValueError(f"expected a flat (P,) float update; got shape {tuple(update.shape)}, {update.dtype}")
    if behaviour in ("sign_flip", "scale"):
        if not (isinstance(scale, (int, float)) and 0 < scale < math.inf):
            raise ValueError(f"attack scale must be a finite number > 0; got {scale!r}")
        return update * (-scale if behaviour == "sign_flip" else scale)
    if behaviour == "gaussian":
        if not (isinstance(noise_std, (int, float)) and 0 <= noise_std < math.inf):
            raise ValueError(f"attack noise_std must be a finite number >= 0; got {noise_std!r}")
        noise = torch.randn(update.shape, generator=generator, dtype=update.dtype, device=update.device)
        return noise * noise_std
    return update


def flip_labels(labels: Tensor, num_classes: int) -> Tensor:
    """Label flipping: y → num_classes − 1 − y (for MNIST 0↔9, 1↔8, …); same shape and dtype.

    `labels` are integer class ids in 0..num_classes-1, any shape.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor; got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1}; got range {int(labels.min())}..{int(labels.max())}"
        )
    return (num_classes - 1) - labels
