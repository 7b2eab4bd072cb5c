"""FedBuff (Nguyen et al. 2022): buffered asynchronous aggregation over a simulated clock.

Under `federation.mode = "async"` the round loop (`federated_learning`) takes one server step per
"round" (`federation.rounds` counts them; after step t the global model is version t):

1. the clients that start (`start_clients`: seeded from (seed, step), never one still training; the
   first step starts `max_concurrency`, later ones replace those applied) fetch version t − 1 and train
   through the run's trainer, in this process, its worker processes or on Flower SuperNodes;
2. each update joins the in-flight pool (`Buffer.pending`) with the simulated second it reaches the
   server: the step's start + download + its local steps at its speed + upload (`client_seconds`);
3. the `buffer_size` (K) earliest arrivals are taken (`take_earliest`), each weighted by its staleness
   s = (t − 1) − the version it fetched, (1 + s)^(−a) (`staleness_weight`), and averaged
   (`buffered_delta`); the strategy applies that mean update as its one pseudo-update (fedavg: w += Δ̄;
   fedavgm, fedadam, ...: their server optimiser on Δ̄). The clock moves to the K-th arrival.

A slow client keeps training across steps, so its update arrives several versions stale. The pool is
tensors and plain values (`Buffer.state_dict`): a checkpoint carries it and a resumed run continues bit
for bit. Everything here is pure: explicit inputs, returned results.

    buffer = Buffer()
    starting = start_clients(seed=0, step=1, num_clients=100, max_concurrency=20, busy=buffer.busy())
    step = server_step(buffer, arrivals, version=0, buffer_size=10, exponent=0.5)   # arrivals: list[Pending]
    weights = weights + step.delta.to(weights.dtype)       # with FedAvg's step; then buffer = step.buffer

Simplification, stated: replacements start at the server step (fetching the new version), not at the
moment their predecessor's upload arrived.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from engine.client_population import ClientProfile
from engine.results import ClientResult

F64 = torch.float64
START_TAG = 0x5EED0B  # the seeded stream of who starts: default_rng([seed, step, START_TAG])
# Simulated seconds of one local step at speed 1. A constant, not the measured time of the step: which
# updates arrive first decides the model, so the clock must be seeded like everything else, never depend
# on how busy this machine was. 0.05 s: a 50-example MNIST CNN step on one CPU core.
STEP_SECONDS = 0.05


@dataclass(frozen=True)
class Pending:
    """One update in flight: who sent it, the global version it trained from, when it reaches the
    server (simulated seconds since the run began), the (P,) update Δ as the server receives it
    (its new weights minus the version it fetched), and its record (`ClientResult`, staleness unset)."""

    client: int
    version: int
    arrival: float
    delta: torch.Tensor  # (P,) float32
    record: ClientResult

    def to_state(self) -> dict[str, Any]:
        return {"client": self.client, "version": self.version, "arrival": self.arrival, "delta": self.delta,
                "record": asdict(self.record)}  # fmt: skip

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Pending:
        return cls(int(state["client"]), int(state["version"]), float(state["arrival"]), state["delta"],
                   ClientResult(**state["record"]))  # fmt: skip


@dataclass
class Buffer:
    """The server's asynchronous state: the simulated clock at the last server step and the updates
    in flight (trained, not yet applied: still on their way or waiting in the buffer)."""

    clock: float = 0.0
    pending: list[Pending] = field(default_factory=list)

    def busy(self) -> set[int]:
        """Clients with an update in flight: none of them starts again until it is applied."""
        return {p.client for p in self.pending}

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only (a checkpoint is read with `torch.load(weights_only=True)`)."""
        return {"clock": self.clock, "pending": [p.to_state() for p in self.pending]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Buffer:
        return cls(float(state["clock"]), [Pending.from_state(p) for p in state["pending"]])


@dataclass(frozen=True)
class ServerStep:
    """One server step's outcome: the mean update to apply (None when nothing arrived), the applied
    updates' records with their staleness, the simulated seconds since the previous step, and the
    buffer after it."""

    delta: torch.Tensor | None  # (P,) float64
    applied: list[ClientResult]
    seconds: float
    buffer: Buffer


def start_clients(*, seed: int, step: int, num_clients: int, max_concurrency: int, busy: set[int]) -> list[int]:
    """The clients that start training at server step `step`, sorted: enough to bring the clients in
    flight back to `max_concurrency`, uniformly among those not in flight, seeded from (seed, step)."""
    idle = np.array(sorted(set(range(num_clients)) - busy), dtype=np.int64)
    count = min(max(max_concurrency - len(busy), 0), len(idle))
    generator = np.random.default_rng([seed, step, START_TAG])
    return sorted(int(c) for c in generator.choice(idle, size=count, replace=False))


def client_seconds(profile: ClientProfile, *, steps: int, bytes_down: int, bytes_up: int) -> float:
    """Simulated seconds from fetching the model to the server receiving the update: download, `steps`
    local steps at the client's speed (`STEP_SECONDS` each at speed 1), upload."""
    compute = steps * STEP_SECONDS / profile.speed
    return profile.transfer_seconds(bytes_down) + compute + profile.transfer_seconds(bytes_up)


def staleness_weight(staleness: int, exponent: float) -> float:
    """(1 + s)^(−a): FedBuff's polynomial staleness discount (a = 0.5: 1/√(1 + s); a = 0: none)."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    return float((1.0 + staleness) ** -exponent)


def take_earliest(pending: Sequence[Pending], count: int) -> tuple[list[Pending], list[Pending]]:
    """The `count` earliest arrivals and the rest, by (arrival, client): ties go to the lower id."""
    order = sorted(pending, key=lambda p: (p.arrival, p.client))
    return order[:count], order[count:]


def buffered_delta(taken: Sequence[Pending], *, version: int, exponent: float) -> torch.Tensor:
    """Δ̄ = Σ_i n_i (1 + s_i)^(−a) Δ_i / Σ_i n_i, float64 (P,), with s_i = version − its fetched version.

    Normalised by the examples, not by the staleness weights: with equal n_i this is FedBuff's own
    (1/K) Σ_i (1 + s_i)^(−a) Δ_i. Dividing by Σ n_i (1 + s_i)^(−a) instead would undo the discount
    whenever the whole buffer is equally stale: a buffer of only stale updates would move the model as
    far as a fresh one. The n_i make it FedAvg's example-weighted mean when every update is fresh.
    """
    if not taken:
        raise ValueError("cannot take a server step from an empty buffer")
    examples = float(sum(p.record.num_examples for p in taken))
    result = torch.zeros_like(taken[0].delta, dtype=F64)
    for update in taken:
        weight = update.record.num_examples * staleness_weight(version - update.version, exponent)
        result.add_(update.delta.to(F64), alpha=weight / examples)
    return result


def server_step(
    buffer: Buffer, arrivals: Sequence[Pending], *, version: int, buffer_size: int, exponent: float,
) -> ServerStep:  # fmt: skip
    """Add this step's `arrivals` to the pool, take the `buffer_size` earliest, and return the step
    they make from global `version` (the number of steps taken before this one)."""
    taken, rest = take_earliest([*buffer.pending, *arrivals], buffer_size)
    if not taken:
        return ServerStep(None, [], 0.0, Buffer(buffer.clock, rest))
    clock = max(buffer.clock, taken[-1].arrival)
    applied = [replace(p.record, staleness=version - p.version) for p in taken]
    delta = buffered_delta(taken, version=version, exponent=exponent)
    return ServerStep(delta, applied, clock - buffer.clock, Buffer(clock, rest))
