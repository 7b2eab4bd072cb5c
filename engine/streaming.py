"""Streaming aggregation: each client's update folded into a float64 running sum as it arrives.

A rule whose result needs only a weighted sum of the round's updates (FedAvg, FedProx, FedAvgM,
FedAdagrad/Adam/Yogi, FedNova, q-FedAvg; `Strategy.fold_weight`) never needs the updates
themselves: the round's memory is one (P,) float64 sum per trainer process, whatever the number
of clients in it. q-FedAvg weighs client k by its loss F_k of the round-start model, known before
it trains (`Strategy.fold_factors`), and adds a scalar of its own per client (`aux`, from
‖x − y_k‖²). Rules that read every update (median, trimmed mean, Krum, Bulyan, SCAFFOLD's
control variates, adaptive weighting), secure aggregation's masked
vectors, central DP's clipped sum (`privacy.dp_fedavg.CentralSum`, which sums as it goes on its
own) and suspicion scoring keep the round's updates, as before.

    running = RunningSum(num_params)
    running.add(new_weights, coefficient=by_examples(n, steps), num_examples=n, steps=steps)
    total = running + other_process_sum                      # across trainer processes
    new_global = strategy.aggregate_sum(global_weights, total)

Where the sum is made: a trainer that can (`FoldingTrainer`: this process, the process pool)
folds each client's new weights straight from its model's parameters, in the worker process, and
writes no result row; other trainers (MLX, Flower SuperNodes), and rounds whose uploads the server
transforms first (a simulated attacker's poisoned update, compression, FedPer's heads), fill result
rows that the round loop folds as each client's outcome is received.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from experiment_config import ExperimentConfig

F64 = torch.float64
# Rounds whose updates fit in this many float32 bytes keep them and score each for suspicion
# (`engine.suspicion`), as every round did before streaming: 10 CNN clients or 84 MLP clients. Above
# it, holding them is what grows memory with the round (10,000 MLP updates: 8 GB), so a round whose
# rule needs only the sum streams and records no suspicion scores (as under central DP).
HELD_ROUND_BYTES = 64 * 2**20
FLOAT32_BYTES = 4
# The scalars kept after the (P,) vector, in this order; aux: Σ a_k, a strategy's own per-client scalar.
SCALARS = ("weight", "examples", "example_steps", "clients", "stepless", "aux")


def by_examples(num_examples: int, steps: int) -> float:
    """c_k = n_k: FedAvg's weight (the server optimisers average the same way)."""
    return float(num_examples)


def by_examples_per_step(num_examples: int, steps: int) -> float:
    """c_k = n_k / τ_k: FedNova's normalised direction; 0 for a client without a step (counted as
    `stepless`, which FedNova refuses as its held path does)."""
    return num_examples / steps if steps >= 1 else 0.0


class RunningSum:
    """Σ_k c_k·y_k over a round's client weights y_k (P,), in float64, with the scalars the
    streaming strategies need: Σ c_k, Σ n_k, Σ n_k·τ_k, the count, and clients with τ_k < 1.

    `values` (P + 5,) may be a row of a shared tensor: a trainer process folds into its own row and
    the round loop adds the rows up (`+`)."""

    def __init__(self, num_params: int, *, values: torch.Tensor | None = None) -> None:
        if values is None:
            values = torch.zeros(num_params + len(SCALARS), dtype=F64)
        if values.dtype != F64 or values.shape != (num_params + len(SCALARS),):
            raise ValueError(f"a running sum of {num_params} values needs a float64 ({num_params + len(SCALARS)},) "
                             f"tensor, got {values.dtype} {tuple(values.shape)}")  # fmt: skip
        self.num_params, self.values = num_params, values

    @property
    def vector(self) -> torch.Tensor:
        """Σ c_k·y_k, (P,) float64 (a view: adding to it adds to the sum)."""
        return self.values[: self.num_params]

    def scalar(self, name: str) -> float:
        return float(self.values[self.num_params + SCALARS.index(name)])

    @property
    def clients(self) -> int:
        return int(self.scalar("clients"))

    def add(
        self, weights: torch.Tensor, *, coefficient: float, num_examples: int, steps: int, aux: float = 0.0
    ) -> None:
        """Fold one client's new weights (P,) in: c·y is added in float64 (torch computes a float32
        operand of a float64 in-place add in float64), with no copy of y; `aux`: its strategy's own scalar."""
        self.add_parts([weights], coefficient=coefficient, num_examples=num_examples, steps=steps, aux=aux)

    def add_parts(
        self, parts: Sequence[torch.Tensor], *, coefficient: float, num_examples: int, steps: int, aux: float = 0.0
    ) -> None:
        """`add` for weights given as consecutive pieces of the flat vector (a model's parameters,
        in `model.get_parameters` order), so a trainer folds its model without flattening it."""
        offset = 0
        for part in parts:
            size = part.numel()
            self.values[offset : offset + size].add_(part.detach().reshape(-1), alpha=coefficient)
            offset += size
        if offset != self.num_params:
            raise ValueError(f"the parts hold {offset} values, the running sum {self.num_params}")
        scalars = (coefficient, num_examples, num_examples * steps, 1, steps < 1, aux)  # one add, not six indexed
        self.values[self.num_params : self.num_params + len(scalars)] += torch.tensor(scalars, dtype=torch.float64)

    def __add__(self, other: RunningSum) -> RunningSum:
        return RunningSum(self.num_params, values=self.values + other.values)

    def reset(self) -> None:
        self.values.zero_()

    def mean(self) -> torch.Tensor:
        """Σ c_k·y_k / Σ c_k, (P,) float64; ValueError when nothing was folded."""
        weight = self.scalar("weight")
        if self.clients < 1 or weight <= 0:
            raise ValueError(f"cannot aggregate zero client updates (streamed: {self.clients} folded, "
                             f"total weight {weight})")  # fmt: skip
        return self.vector / weight


def fednova_from_sum(global_weights: torch.Tensor, summed: RunningSum) -> torch.Tensor:
    """FedNova (`strategies.fednova`) from a sum folded with c_k = n_k/τ_k, float64 (P,):

    with N = Σ n_k, A = Σ n_k/τ_k, S = Σ (n_k/τ_k)·y_k:  Σ p_k d_k = (A·x − S)/N,  τ_eff = Σ n_k τ_k / N,
    so x ← x − τ_eff·(A·x − S)/N.
    """
    examples, stepless = summed.scalar("examples"), summed.scalar("stepless")
    if summed.clients < 1:
        raise ValueError("cannot aggregate zero client updates")
    if stepless or examples <= 0:
        raise ValueError(f"fednova needs steps >= 1 and a positive total of num_examples, got {int(stepless)} "
                         f"client(s) without a step and {examples:.0f} examples")  # fmt: skip
    x = global_weights.to(F64)
    effective_steps = summed.scalar("example_steps") / examples
    direction = (x * summed.scalar("weight") - summed.vector) / examples  # Σ p_k d_k
    return x - effective_steps * direction


def squared_distance(parts: Sequence[torch.Tensor], flat: torch.Tensor) -> float:
    """‖y − x‖² in float64, y given as consecutive pieces of the flat order (a model's parameters) and x (P,)."""
    total, offset = 0.0, 0
    for part in parts:
        size = part.numel()
        total += float((part.detach().reshape(-1).to(F64) - flat[offset : offset + size].to(F64)).square().sum())
        offset += size
    return total


def qfedavg_from_sum(global_weights: torch.Tensor, summed: RunningSum, *, lipschitz: float) -> torch.Tensor:
    """q-FedAvg (`strategies.qfedavg`) from a sum folded with c_k = n_k·F_k^q and a_k = n_k·q·F_k^(q−1)·‖x − y_k‖²
    (F_k with its floor), float64 (P,): with W = Σ c_k, S = Σ c_k·y_k, A = Σ a_k, N = Σ n_k,

    Σ p_k Δ_k = L·(W·x − S)/N,  Σ p_k h_k = (L²·A + L·W)/N,  so x ← x − (W·x − S)/(L·A + W).
    """
    weight, aux = summed.scalar("weight"), summed.scalar("aux")
    if summed.clients < 1 or summed.scalar("examples") <= 0:
        raise ValueError(f"qfedavg needs a positive total of num_examples, got {summed.clients} client(s) folded")
    x = global_weights.to(F64)
    return x - (x * weight - summed.vector) / (lipschitz * aux + weight)


def round_streams(config: ExperimentConfig, *, strategy_streams: bool, num_params: int) -> bool:
    """Whether a run's rounds fold each update into a running sum instead of holding every one:
    its strategy needs only the sum, nothing else reads single updates (secure aggregation, central
    DP's own clipped sum, suspicion exclusion), and holding them would take over HELD_ROUND_BYTES."""
    federation = config.federation
    return (
        strategy_streams
        and not federation.secure_aggregation
        and config.privacy.mode != "central"
        and federation.exclusion == "none"
        and federation.clients_per_round * num_params * FLOAT32_BYTES > HELD_ROUND_BYTES
    )


def trainer_folds(config: ExperimentConfig) -> bool:
    """Whether a streamed round's clients can be folded where they train: the server takes each
    upload as it is (no compression, no simulated model-poisoning attacker, no FedPer head that
    stays on the client), so the trainer's sum is the server's."""
    poisoning = config.attack.fraction > 0 and config.attack.behaviour != "label_flip"  # label flip: in training
    return (
        config.communication.compression == "none"
        and not poisoning
        and config.federation.personalization != "fedper"
    )


def stream_slots(clients_per_round: int, num_params: int, num_workers: int) -> int:
    """Result rows of a trainer whose streamed rounds are folded by the round loop: chunks of the
    round that fit HELD_ROUND_BYTES (at least one row per worker), the round trained chunk by chunk."""
    fitting = HELD_ROUND_BYTES // (FLOAT32_BYTES * num_params)
    return max(1, min(clients_per_round, max(num_workers, fitting)))


def streamed_round_bytes(num_params: int, num_workers: int) -> int:
    """At most what a streamed round holds besides the process (`runs.preflight`'s estimate): a chunk of
    result rows (HELD_ROUND_BYTES, when the round loop folds them), and float64 (P,) sums: one per trainer
    process, their total and the round loop's own."""
    return HELD_ROUND_BYTES + 8 * num_params * (num_workers + 3)
