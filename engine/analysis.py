"""What is computed after the rounds, from a run's final global model: the membership-inference
audits (loss threshold, or the one-run ε lower bound from canaries) and the personalization
report. Explicit inputs, results returned; nothing is released.

    audit(model, data, trained_partitions, num_examples=500, seed=0)      # dict, JSON-able, or None
    one_run_audit(model, data, canaries, delta=1e-5)                      # dict, JSON-able
    personalize(config, model, data, partitions, holdouts, weights, heads)  # dict, JSON-able, or None
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from data_handler import Canaries, FederatedData
from engine.client_population import stream_seed
from engine.client_trainers import accuracy_on, train_client
from engine.workloads import build_model
from experiment_config import ExperimentConfig
from model import get_parameters, set_parameters, unflatten
from privacy import one_run_audit as one_run
from privacy.audit import audit_model, example_losses

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


def one_run_audit(model: nn.Module, data: FederatedData, canaries: Canaries, *, delta: float) -> dict[str, Any]:
    """The one-run audit of `model` (`privacy.one_run_audit.one_run_audit`): each canary scored by
    −(the loss of its random label), nats: an included canary was fitted to a label nothing else
    teaches, so it scores higher. `delta` is the run's δ, the one the accountant's ε holds with."""
    rows = torch.from_numpy(canaries.rows)
    losses = example_losses(model, data.train_x[rows], data.train_y[rows])
    return one_run.one_run_audit(-losses, canaries.included, delta=delta)


def personalize(
    config: ExperimentConfig, model: nn.Module, data: FederatedData, partitions: Sequence[np.ndarray],
    holdouts: Sequence[np.ndarray], weights: torch.Tensor, heads: Mapping[int, torch.Tensor],
) -> dict[str, Any] | None:  # fmt: skip
    """Each client's accuracy on its own held-out split: the global model's (whose flat `weights`
    these are; `model` holds them) against its personalized model's (`personalize_client`).
    Personalized models stay on their clients: nothing is released, so this adds no privacy
    cost. None without personalization."""
    if config.federation.personalization == "none":
        return None
    local = build_model(config, data.num_classes, seed=config.system.seed)
    clients = [
        personalize_client(config, local, data.train_x, data.train_y, partitions[client], holdout, weights,
                           heads.get(client), client=client)  # fmt: skip
        for client, holdout in enumerate(holdouts) if len(holdout)
    ]
    return personalization_summary(config, clients)


def personalize_client(
    config: ExperimentConfig, local: nn.Module, x: torch.Tensor, y: torch.Tensor, partition: np.ndarray,
    holdout: np.ndarray, weights: torch.Tensor, head: torch.Tensor | None, *, client: int,
) -> dict[str, Any]:  # fmt: skip
    """One client's row: the global `weights`' accuracy on its `holdout` of (x, y), and its
    personalized model's (fedper: the global body with its own final layer `head`; finetune: the
    global model after `finetune_epochs` of local SGD on `partition`). `local` is a model of the
    run's architecture, overwritten; the same wherever it runs (this process or the client's node)."""
    federation = config.federation
    set_parameters(local, unflatten(weights, get_parameters(local)))
    global_accuracy = accuracy_on(local, x, y, holdout)
    if head is not None:
        flat = weights.clone()
        flat[-head.numel() :] = head
        set_parameters(local, unflatten(flat, get_parameters(local)))
    if federation.personalization == "finetune":
        train_client(
            local, x, y, partition, local_epochs=federation.finetune_epochs, batch_size=federation.batch_size,
            learning_rate=federation.learning_rate, seed=stream_seed(config.system.seed, 0, client, FINETUNE_TAG),
        )  # fmt: skip
    return {"client": client, "examples": len(holdout), "global_accuracy": global_accuracy,
            "personalized_accuracy": accuracy_on(local, x, y, holdout)}  # fmt: skip


def personalization_summary(config: ExperimentConfig, clients: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The stored personalization result from the clients' rows (None if no client has a holdout)."""
    if not clients:
        return None
    clients = sorted(clients, key=lambda row: row["client"])
    return {
        "method": config.federation.personalization,
        "clients": list(clients),
        "mean_global_accuracy": float(np.mean([c["global_accuracy"] for c in clients])),
        "mean_personalized_accuracy": float(np.mean([c["personalized_accuracy"] for c in clients])),
    }
