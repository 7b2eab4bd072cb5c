"""Server aggregation strategies: pure functions over flat weight vectors, plus one small
class per strategy holding only the state its algorithm needs.

The round loop in `federated_learning` is written once and calls `Strategy.aggregate`;
a new rule is a new class registered in `STRATEGIES`, never a branch in the loop.

    strategy = make_strategy("fedavg")
    new_global = strategy.aggregate(global_weights, updates)   # (P,) float32
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClientUpdate:
    """What one client sends back: its new local weights, flat (P,) float32."""

    client_id: int
    weights: torch.Tensor
    num_examples: int
    steps: int
    loss: float


def weighted_average(vectors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Σ w_k v_k / Σ w_k over (P,) vectors; weights must be non-negative with a positive sum."""
    if not vectors or len(vectors) != len(weights):
        raise ValueError(f"need one weight per vector, got {len(vectors)} vectors and {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0 or min(weights) < 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    result = torch.zeros_like(vectors[0], dtype=torch.float64)
    for vector, weight in zip(vectors, weights, strict=True):
        result.add_(vector.to(torch.float64), alpha=weight / total)
    return result.to(vectors[0].dtype)


class Strategy(ABC):
    """One server-side rule for turning client updates into the next global model."""

    name: str

    @abstractmethod
    def aggregate(self, global_weights: torch.Tensor, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        """The next global weights (P,) from the current ones and this round's updates."""


class FedAvg(Strategy):
    """McMahan et al. 2017: average of client weights, weighted by their example counts."""

    name = "fedavg"

    def aggregate(self, global_weights: torch.Tensor, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        return weighted_average([u.weights for u in updates], [u.num_examples for u in updates])


STRATEGIES: dict[str, Callable[[], Strategy]] = {"fedavg": FedAvg}


def make_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"federation.strategy must be one of {', '.join(STRATEGIES)}; got {name!r}")
    return STRATEGIES[name]()
