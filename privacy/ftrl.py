"""DP-FTRL (Kairouz et al. 2021, "Practical and private (deep) learning without sampling or
shuffling"): central, user-level DP that needs no sampling assumption.

Each round t the server sums the participating clients' updates, each clipped to L2 norm C,
with no fresh noise of its own; the leaf x_t joins a binary tree over the rounds, whose every
node (a dyadic range of rounds) carries the noise N(0, σ²C²) drawn once, when it completes.
The running (prefix) sum S_t = x_1 + … + x_t is released as the sum of the noised nodes that
cover [1, t], one per set bit of t: the plain binary-tree estimator, not Honaker's
variance-reduced one. The model follows in FTRL form, without server momentum:

    w_t = w_0 + η_s · Ŝ_t / k         (η_s: federation.server_learning_rate, 0 → 1; k: clients_per_round)

Without noise this is FedAvg with server step η_s: w_t − w_{t−1} = η_s · x_t / k.

Accounting, as the paper does (zCDP, then the standard conversion to (ε, δ)): the release
is a Gaussian mechanism on the completed nodes, so it is ρ-zCDP with ρ = Δ²/(2σ²C²), Δ² the
largest change one client can make to those nodes: Σ over nodes of (m·C)², m the client's
rounds inside the node. A client in one round touches one node per level, Δ² = C²·⌈lg(t+1)⌉,
the paper's ρ = ⌈lg(t+1)⌉·C²/(2σ²); a client in several rounds is charged for every one of
them (same node: m² — no restarts). The schedule of who takes part (exactly k of n a round,
seeded, never depending on data) is computed before the run from the engine's own
`select_clients`, so Δ² is exact for it. Relation: zero-out one client (its clipped updates
replaced by zeros, as Kairouz et al.); replace-one would double Δ.

    schedule = participation_schedule(config)
    squared = tree_squared_sensitivities(schedule, rounds=config.federation.rounds)  # Δ²/C² after each round
    sigma = calibrate_tree_noise(target_epsilon=8.0, delta=1e-5, squared_sensitivity=squared[-1])
    tree = TreeAggregator(w0); prefix = tree.add(clipped_sum, node_noise)   # each round
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from engine.client_population import ParticipationTally, client_seed, select_clients
from experiment_config import ExperimentConfig, check_number

TREE_ACCOUNTANT = "zcdp"  # what the round ledger records as DP-FTRL's accountant
TREE_RELATION = "zero-out one client"  # the neighbouring relation of DP-FTRL's ε


class TreeAggregator:
    """The online binary tree over the rounds' leaf sums, and w_0: DP-FTRL's state (checkpointed).

    After t leaves it keeps, for each set bit j of t, the node that covers the 2^j rounds
    ending where the higher bits leave off: its exact sum (needed to build the next, larger
    node; the server's own memory, like any central-DP server's, so a checkpoint must be kept
    as private as the server) and its noised value. Shapes: (P,), float64.
    """

    def __init__(self, initial_weights: torch.Tensor) -> None:
        self.initial = initial_weights.detach().to(torch.float64).clone()  # w_0
        self.count = 0  # leaves added (rounds aggregated)
        self.exact: dict[int, torch.Tensor] = {}  # level j → the node's sum of leaves
        self.noisy: dict[int, torch.Tensor] = {}  # level j → that sum + its node's noise

    def add(self, leaf: torch.Tensor, node_noise: torch.Tensor) -> torch.Tensor:
        """Add round t's leaf (the sum of clipped updates) with the noise of the node that completes
        at t (level = trailing zeros of t, covering rounds t − 2^level + 1 … t); return Ŝ_t."""
        t = self.count + 1
        level = (t & -t).bit_length() - 1
        node = leaf.detach().to(torch.float64).clone()
        for lower in range(level):  # the nodes below merge into the new one (bits 0…level−1 of t − 1)
            node += self.exact.pop(lower)
            del self.noisy[lower]
        self.exact[level], self.noisy[level] = node, node + node_noise.to(torch.float64)
        self.count = t
        return self.prefix()

    def prefix(self) -> torch.Tensor:
        """Ŝ_t: the noised nodes of the set bits of t (zeros before the first round)."""
        total = torch.zeros_like(self.initial)
        for level in sorted(self.noisy):
            total += self.noisy[level]
        return total

    def state_dict(self) -> dict[str, Any]:
        """Tensors and ints only (a checkpoint is read with `torch.load(weights_only=True)`)."""
        return {"initial": self.initial, "count": self.count, "exact": dict(self.exact), "noisy": dict(self.noisy)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["initial"].shape != self.initial.shape or set(state["exact"]) != set(state["noisy"]):
            raise ValueError("the checkpoint's DP-FTRL tree does not fit the model")
        count = int(state["count"])
        if set(state["exact"]) != {j for j in range(count.bit_length()) if count >> j & 1}:
            raise ValueError("the checkpoint's DP-FTRL tree has nodes that do not match its round count")
        self.initial, self.count = state["initial"], count
        self.exact = {int(j): node for j, node in state["exact"].items()}
        self.noisy = {int(j): node for j, node in state["noisy"].items()}


def node_noise(config: ExperimentConfig, round_number: int, shape: torch.Size, *, std: float) -> torch.Tensor:
    """N(0, std²) per coordinate, float64: the noise of the tree node that completes at `round_number`,
    from the server's seed slot of that round (`client_seed(seed, round, num_clients)`, as DP-FedAvg's)."""
    seed = client_seed(config.system.seed, round_number, config.federation.num_clients)
    generator = torch.Generator().manual_seed(seed)
    return torch.normal(0.0, std, size=tuple(shape), generator=generator).to(torch.float64)


def ftrl_weights(tree: TreeAggregator, *, server_learning_rate: float, clients_per_round: int) -> torch.Tensor:
    """w_t = w_0 + η_s · Ŝ_t / k, float64 (P,): the fixed divisor k, never the realised count
    (that would make the sensitivity depend on who arrived)."""
    return tree.initial + server_learning_rate * tree.prefix() / clients_per_round


def server_step(config: ExperimentConfig) -> float:
    """η_s: federation.server_learning_rate, its default 0 meaning 1 (plain FedAvg steps)."""
    return config.federation.server_learning_rate or 1.0


# -- accounting --------------------------------------------------------------------------------


def participation_schedule(config: ExperimentConfig) -> list[list[int]]:
    """Who each round 1…R selects: the engine's own seeded `select_clients` (central DP, fixed size)."""
    rounds = config.federation.rounds
    return [select_clients(config, r, profiles=(), tally=ParticipationTally()) for r in range(1, rounds + 1)]


def tree_squared_sensitivities(schedule: Sequence[Sequence[int]], *, rounds: int) -> np.ndarray:
    """Δ²/C² after each round 1…`rounds`, shape (rounds,): the most any one client can change the
    completed tree nodes, Σ over the nodes complete by then of m², m its rounds in the node.

    A node of level l covers rounds a·2^l + 1 … (a+1)·2^l and completes at (a+1)·2^l. Each
    (client, node) pair is an event at that round adding m²; a client's Δ² is the running sum
    of its events and the round's Δ² the largest over clients so far (non-decreasing)."""
    if len(schedule) < rounds:
        raise ValueError(f"the schedule has {len(schedule)} rounds, fewer than {rounds}")
    taken = [(r, c) for r, clients in enumerate(schedule[:rounds], start=1) for c in clients]
    if not taken:
        return np.zeros(rounds)
    round_of, client_of = (np.array(column, dtype=np.int64) for column in zip(*taken))
    ends, clients, squares = [], [], []
    for level in range(rounds.bit_length()):
        node = (round_of - 1) >> level
        end = (node + 1) << level
        keep = end <= rounds  # nodes not complete by the last round are never released
        pairs, counts = np.unique(np.stack([client_of[keep], end[keep]]), axis=1, return_counts=True)
        clients.append(pairs[0])
        ends.append(pairs[1])
        squares.append(counts.astype(np.float64) ** 2)
    client, end, square = np.concatenate(clients), np.concatenate(ends), np.concatenate(squares)
    order = np.lexsort((end, client))  # by client, then by round
    client, end, running = client[order], end[order], np.cumsum(square[order])
    starts = np.flatnonzero(np.r_[True, client[1:] != client[:-1]])  # each client's first event
    offset = np.repeat(np.r_[0.0, running][starts], np.diff(np.r_[starts, len(client)]))
    best = np.zeros(rounds + 1)
    np.maximum.at(best, end, running - offset)
    return np.maximum.accumulate(best)[1:]


def tree_epsilon(*, noise_multiplier: float, squared_sensitivity: float, delta: float) -> float:
    """ε of the tree after a round whose Δ²/C² is `squared_sensitivity`: ρ = Δ²/(2σ²C²)-zCDP
    (`accounting.zcdp_epsilon`). σ = 0 with a client in the tree: inf."""
    from privacy.accounting import zcdp_epsilon  # opacus (~1.4 s to import) loads only with privacy on

    squared_sensitivity = check_number("squared_sensitivity", squared_sensitivity, low=0.0)
    noise_multiplier = check_number("noise_multiplier", noise_multiplier, low=0.0)
    if squared_sensitivity == 0.0:
        return 0.0
    rho = math.inf if noise_multiplier == 0.0 else squared_sensitivity / (2.0 * noise_multiplier**2)
    return zcdp_epsilon(rho=rho, delta=delta)


def calibrate_tree_noise(*, target_epsilon: float, delta: float, squared_sensitivity: float) -> float:
    """The smallest σ whose `tree_epsilon` is <= target_epsilon, in closed form: the conversion
    ε = ρ + 2√(ρ·L), L = ln(1/δ), inverts to ρ = (√(L + ε) − √L)², and σ = √(Δ²/(2ρ))."""
    target_epsilon = check_number("target_epsilon", target_epsilon, low=0.0, low_open=True)
    squared_sensitivity = check_number("squared_sensitivity", squared_sensitivity, low=0.0, low_open=True)
    log_term = math.log(1.0 / check_number("delta", delta, low=0.0, high=1.0, low_open=True, high_open=True))
    rho = (math.sqrt(log_term + target_epsilon) - math.sqrt(log_term)) ** 2
    sigma = math.sqrt(squared_sensitivity / (2.0 * rho))
    while tree_epsilon(noise_multiplier=sigma, squared_sensitivity=squared_sensitivity, delta=delta) > target_epsilon:
        sigma = math.nextafter(sigma, math.inf)  # the rounding of the closed form, never the target, gives way
    return sigma
