"""Fairness across clients: the global model's accuracy on each client's own held-out split, and
how evenly it is spread (Li et al. 2020, "Fair Resource Allocation in Federated Learning").

The round loop calls it after aggregation when `federation.client_holdout > 0`, for every client
with a held-out split (not only the round's selected ones: fairness is about the whole population).
It differs from `ClientResult.validation_accuracy`, the client's accuracy with its NEW local weights:
here every client is scored with the same, freshly aggregated GLOBAL model.

    accuracies = client_accuracies(model, data.train_x, data.train_y, holdouts)  # {client: accuracy}
    summary = fairness_summary(list(accuracies.values()))  # mean, worst 10 %, variance, Gini; None if empty
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engine import objectives
from engine.results import RoundResult

WORST_FRACTION = 0.1  # the paper's "worst 10%" of devices


@dataclass(frozen=True)
class FairnessSummary:
    """How the global model's accuracy is spread over the clients (accuracies in [0, 1])."""

    mean: float  # unweighted: every client counts once, whatever its size
    worst10: float  # mean accuracy of the worst 10% of clients (at least one client)
    variance: float  # population variance, np.var
    gini: float  # Gini coefficient: 0 = all equal, → 1 = all accuracy held by one client


def worst_fraction_mean(values: Sequence[float], fraction: float = WORST_FRACTION) -> float:
    """Mean of the ⌊fraction·n⌋ lowest values, at least one (the authors' code: `sorted(acc)[:int(0.1·n)]`)."""
    if not values:
        raise ValueError("worst_fraction_mean needs at least one value")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    count = max(1, math.floor(fraction * len(values)))
    return float(np.mean(np.sort(np.asarray(values, dtype=np.float64))[:count]))


def gini(values: Sequence[float]) -> float:
    """Gini coefficient G = Σ_i Σ_j |x_i − x_j| / (2 n² x̄) of non-negative values; 0 when all are
    equal (including all zero). Computed from the sorted values in O(n log n):
    Σ_i Σ_j |x_i − x_j| = 2 Σ_i (2i − n − 1) x_(i), i = 1..n."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.size == 0:
        raise ValueError("gini needs at least one value")
    if x[0] < 0:
        raise ValueError(f"gini needs non-negative values, got a minimum of {x[0]}")
    n, total = x.size, float(x.sum())
    if total == 0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(2 * np.sum((2 * ranks - n - 1) * x) / (2 * n * total))


def fairness_summary(accuracies: Sequence[float]) -> FairnessSummary | None:
    """Mean, worst-10% mean, variance and Gini of per-client accuracies; None for no clients."""
    if not accuracies:
        return None
    values = np.asarray(accuracies, dtype=np.float64)
    return FairnessSummary(
        mean=float(values.mean()), worst10=worst_fraction_mean(accuracies), variance=float(values.var()),
        gini=gini(accuracies),
    )  # fmt: skip


@torch.no_grad()
def client_accuracies(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, holdouts: Sequence[np.ndarray]
) -> dict[int, float]:
    """{client: accuracy of `model` on its held-out examples `holdouts[client]` of (x, y)} for every
    client with a non-empty holdout. One forward pass over all holdouts together (they are small),
    then each client's slice is scored alone (`objectives.accuracy`)."""
    clients = [client for client, holdout in enumerate(holdouts) if len(holdout)]
    if not clients:
        return {}
    indices = torch.from_numpy(np.concatenate([holdouts[c] for c in clients]).astype(np.int64))
    logits = objectives.predict_logits(model, x[indices])  # (Σ holdout sizes, outputs)
    targets, result, start = y[indices], {}, 0
    for client in clients:
        end = start + len(holdouts[client])
        result[client] = objectives.accuracy(logits[start:end], targets[start:end])
        start = end
    return result


def with_client_accuracies(result: RoundResult, accuracies: dict[int, float]) -> RoundResult:
    """`result` with the fairness fields: each selected client's `global_accuracy` (None without a
    holdout) and the summary over all clients in `accuracies` (all None when it is empty)."""
    summary = fairness_summary(list(accuracies.values()))
    clients = [dataclasses.replace(c, global_accuracy=accuracies.get(c.id)) for c in result.clients]
    if summary is None:
        return dataclasses.replace(result, clients=clients)
    return dataclasses.replace(
        result, clients=clients, client_accuracy_mean=summary.mean, client_accuracy_worst10=summary.worst10,
        client_accuracy_variance=summary.variance, client_accuracy_gini=summary.gini,
    )  # fmt: skip
