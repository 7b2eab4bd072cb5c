"""What is computed after the rounds, from a run's final global model: the membership-inference
audit and the personalization report. Explicit inputs, results returned; nothing is released.

    audit(model, data, trained_partitions, num_examples=500, seed=0)      # dict, JSON-able, or None
    personalize(config, model, data, partitions, holdouts, weights, heads)  # dict, JSON-able, or None
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from data_handler import FederatedData
from engine.client_population import stream_seed
from engine.client_trainers import accuracy_on, train_client
from engine.workloads import build_model
from experiment_config import ExperimentConfig
from model import get_parameters, set_parameters, unflatten
from privacy.audit import audit_model

AUDIT_SEED_TAG = 0xA0D17  # the membership audit's sampling stream
FINETUNE_TAG = 0xF1  # each client's fine-tuning batch order


def audit(
    model: nn.Module, data: FederatedData, trained_partitions: Sequence[np.ndarray], *, num_examples: int, seed: int
) -> dict[str, Any] | None:
    """A loss-threshold membership-inference audit of `model` (`privacy.audit.audit_model`):
    members are a seeded sample of the examples of the clients that have trained (their
    `trained_partitions`), non-members one of the (held-out) test split, `num_examples` each at
    most, equally many of both. None if `num_examples` is 0 or no client has trained."""
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    if num_examples == 0 or not trained_partitions:
        return None
    trained = np.concatenate(list(trained_partitions))
    size = min(num_examples, len(trained), len(data.test_y))
    # Its own stream: round numbers start at 1, so (seed, 0, tag) is drawn by nothing else.
    generator = np.random.default_rng([seed, 0, AUDIT_SEED_TAG])
    members = torch.from_numpy(np.sort(generator.choice(trained, size=size, replace=False)))
    held_out = torch.from_numpy(np.sort(generator.choice(len(data.test_y), size=size, replace=False)))
    return audit_model(
        model, data.train_x[members], data.train_y[members], data.test_x[held_out], data.test_y[held_out]
    )


def personalize(
    config: ExperimentConfig, model: nn.Module, data: FederatedData, partitions: Sequence[np.ndarray],
    holdouts: Sequence[np.ndarray], weights: torch.Tensor, heads: Mapping[int, torch.Tensor],
) -> dict[str, Any] | None:  # fmt: skip
    """Each client's accuracy on its own held-out split: the global `model`'s (whose flat
    `weights` these are) against its personalized model's (fedper: the global body with the
    client's own final layer from `heads`; finetune: the global model after `finetune_epochs` of
    local SGD on the client's training split). Personalized models stay on their clients: nothing
    is released, so this adds no privacy cost. None without personalization."""
    federation = config.federation
    if federation.personalization == "none":
        return None
    local = build_model(config, data.num_classes, seed=config.system.seed)
    clients = []
    for client, holdout in enumerate(holdouts):
        if len(holdout) == 0:
            continue
        global_accuracy = accuracy_on(model, data.train_x, data.train_y, holdout)
        flat = weights.clone()
        if client in heads:
            flat[-heads[client].numel() :] = heads[client]
        set_parameters(local, unflatten(flat, get_parameters(local)))
        if federation.personalization == "finetune":
            train_client(
                local, data.train_x, data.train_y, partitions[client], local_epochs=federation.finetune_epochs,
                batch_size=federation.batch_size, learning_rate=federation.learning_rate,
                seed=stream_seed(config.system.seed, 0, client, FINETUNE_TAG),
            )  # fmt: skip
        clients.append({
            "client": client, "examples": len(holdout), "global_accuracy": global_accuracy,
            "personalized_accuracy": accuracy_on(local, data.train_x, data.train_y, holdout),
        })  # fmt: skip
    if not clients:
        return None
    return {
        "method": federation.personalization,
        "clients": clients,
        "mean_global_accuracy": float(np.mean([c["global_accuracy"] for c in clients])),
        "mean_personalized_accuracy": float(np.mean([c["personalized_accuracy"] for c in clients])),
    }
