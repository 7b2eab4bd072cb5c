"""Who the clients are and how they behave: speed, availability, network link, malice;
and how the server picks them each round.

A `ClientProfile` is drawn once per run, seeded from `system.seed`, so the same config
gives the same federation. The engine (`federated_learning`) asks this module which
clients to select, which of them drop out, how many local steps a straggler manages
before the deadline, and how long a transfer takes over a client's simulated link.

    profiles = make_profiles(config, sizes=[len(p) for p in partitions])
    chosen = select_clients(config, round_number, profiles=profiles, tally=tally, losses_of=losses_fn)
"""

from __future__ import annotations

import math
import operator
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from engine.attacks import choose_malicious
from experiment_config import ExperimentConfig

# Each seeded choice draws from its own stream: default_rng([seed, round, TAG]).
PROFILE_TAG, DROPOUT_TAG, SELECTION_TAG = 0x5EED01, 0x5EED02, 0x5EED03
CYCLIC_TAG = 0x5EED04  # cyclic participation's one order for the run: default_rng([seed, CYCLIC_TAG])
POWER_OF_CHOICE_EXAMPLES = 500  # examples per candidate used to estimate its loss


@dataclass(frozen=True)
class ClientProfile:
    """One client as the run simulates it."""

    id: int
    num_examples: int  # training examples (without its held-out split)
    speed: float  # relative compute speed; 1 = nominal, 0.5 = takes twice as long
    dropout_probability: float
    bandwidth_mbps: float  # both directions
    latency_ms: float  # one way
    malicious: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def transfer_seconds(self, num_bytes: int) -> float:
        """Latency plus bytes over the link; 0 for nothing sent."""
        if num_bytes <= 0:
            return 0.0
        return self.latency_ms / 1e3 + num_bytes * 8 / (self.bandwidth_mbps * 1e6)


def _no_counts() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(eq=False)
class ParticipationTally:
    """Per client: rounds it was selected and rounds its update arrived (availability-aware selection), two
    int64 arrays indexed by client id and grown as higher ids are recorded: a run of 100,000 clients holds at
    most 3.2 MB however many of them take part (dicts held about 140 bytes a client)."""

    selected: np.ndarray = field(default_factory=_no_counts)
    arrived: np.ndarray = field(default_factory=_no_counts)

    @classmethod
    def restored(cls, selected: Any, arrived: Any) -> ParticipationTally:
        """From a checkpoint's counts: arrays or tensors, or {client: count} dicts (checkpoints written before
        the arrays)."""
        if isinstance(selected, dict):
            size = max(map(int, selected), default=-1) + 1
            tally = cls(np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64))
            for client, count in selected.items():
                tally.selected[int(client)], tally.arrived[int(client)] = count, arrived.get(client, 0)
            return tally
        if hasattr(selected, "numpy"):  # tensors, as `RunState.to_bytes` writes them
            selected, arrived = selected.numpy(), arrived.numpy()
        return cls(np.array(selected, dtype=np.int64), np.array(arrived, dtype=np.int64))

    def record(self, client: int, arrived: bool) -> None:
        self._grow(client + 1)
        self.selected[client] += 1
        self.arrived[client] += int(arrived)

    def reliability(self, client: int) -> float:
        """Posterior mean of its arrival probability under a uniform prior: (a + 1) / (s + 2)."""
        if client >= len(self.selected):  # never recorded
            return 1 / 2
        return (int(self.arrived[client]) + 1) / (int(self.selected[client]) + 2)

    def reliabilities(self, num_clients: int) -> np.ndarray:
        """`reliability` of clients 0 … num_clients − 1, (num_clients,) float64."""
        known = min(num_clients, len(self.selected))
        selected, arrived = np.zeros(num_clients, dtype=np.int64), np.zeros(num_clients, dtype=np.int64)
        selected[:known], arrived[:known] = self.selected[:known], self.arrived[:known]
        return (arrived + 1) / (selected + 2)

    def _grow(self, size: int) -> None:
        if size > len(self.selected):  # doubling: a round's records cost O(1) each, amortised
            size = max(size, 2 * len(self.selected))
            self.selected = np.pad(self.selected, (0, size - len(self.selected)))
            self.arrived = np.pad(self.arrived, (0, size - len(self.arrived)))


class ClientProfiles(Sequence[ClientProfile]):
    """The federation's profiles as columns, one array a field, each `ClientProfile` built when asked
    for: 100,000 clients take 4 MB instead of 18 MB of objects (`data.examples_per_client`)."""

    FIELDS = ("num_examples", "speed", "dropout_probability", "bandwidth_mbps", "latency_ms", "malicious")

    def __init__(self, **columns: np.ndarray) -> None:
        if set(columns) != set(self.FIELDS) or len({len(c) for c in columns.values()}) != 1:
            raise ValueError(f"profiles need the columns {', '.join(self.FIELDS)}, all of one length")
        self.columns = {name: np.asarray(columns[name]) for name in self.FIELDS}

    def __len__(self) -> int:
        return len(self.columns["speed"])

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[k] for k in range(*index.indices(len(self)))]
        k = operator.index(index)
        k = k + len(self) if k < 0 else k
        if not 0 <= k < len(self):
            raise IndexError(f"client {index} is not in the federation of {len(self)}")
        row = {name: column[k].item() for name, column in self.columns.items()}
        return ClientProfile(id=k, **row)

    def __iter__(self) -> Iterator[ClientProfile]:
        return (self[k] for k in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClientProfiles):
            return NotImplemented
        return all(np.array_equal(self.columns[n], other.columns[n]) for n in self.FIELDS)

    __hash__ = None  # type: ignore[assignment]

    def table(self) -> dict[str, np.ndarray]:
        """Every field as a column, the id first, in `ClientProfile`'s order (what the store keeps)."""
        return {"id": np.arange(len(self)), **self.columns}


def make_profiles(config: ExperimentConfig, sizes: Sequence[int]) -> ClientProfiles:
    """One profile per client, seeded: lognormal speeds (median 1), bandwidths and
    latencies (medians from the config), dropout probabilities (all p, or uniform in
    [0, 2p] if heterogeneous) and the malicious set (`attacks.choose_malicious`)."""
    federation, network, seed = config.federation, config.communication, config.system.seed
    n = federation.num_clients
    generator = np.random.default_rng([seed, 0, PROFILE_TAG])
    speeds = generator.lognormal(0.0, federation.speed_spread, n) if federation.speed_spread else np.ones(n)
    bandwidths = network.bandwidth_mbps * generator.lognormal(0.0, network.bandwidth_spread, n)
    latencies = network.latency_ms * generator.lognormal(0.0, network.latency_spread, n)
    p = federation.dropout_probability
    drops = np.minimum(generator.uniform(0.0, 2 * p, n), 1.0) if federation.dropout_heterogeneous else np.full(n, p)
    malicious = np.zeros(n, dtype=bool)
    malicious[sorted(choose_malicious(n, config.attack.fraction, seed))] = True
    return ClientProfiles(
        num_examples=np.asarray(sizes, dtype=np.int64)[:n], speed=speeds.astype(float), dropout_probability=drops,
        bandwidth_mbps=bandwidths, latency_ms=latencies, malicious=malicious,
    )  # fmt: skip


def select_clients(
    config: ExperimentConfig,
    round_number: int,
    *,
    profiles: Sequence[ClientProfile],
    tally: ParticipationTally,
    losses_of: Callable[[list[int]], Sequence[float]] | None = None,
) -> list[int]:
    """This round's clients, sorted, seeded per round.

    - central DP, `client_sampling` "poisson": each client independently with q =
      clients_per_round / num_clients (the sampling the accountant assumes; the count varies
      and may be 0); "cyclic": the next clients_per_round of one seeded order (`cyclic_clients`,
      DP-FTRL's schedule); "fixed": exactly clients_per_round distinct clients, uniformly (as uniform,
      below; accounted as k of n). With `privacy.secure_noise` the draw comes from the OS's
      CSPRNG instead of the seed: amplification by sampling needs the sample kept secret, so
      who took part must be as unpredictable as the noise;
    - uniform: `clients_per_round` distinct clients;
    - power_of_choice (Cho et al. 2022): d candidates uniformly, keep the `clients_per_round`
      with the highest loss of the current global model (`losses_of(candidates)`, in
      the candidates' order: all at once, so remote clients are asked in one exchange);
    - availability: without replacement with probability ∝ the client's observed reliability.
    """
    federation = config.federation
    n, m = federation.num_clients, federation.clients_per_round
    generator = np.random.default_rng([config.system.seed, round_number])
    if config.privacy.mode == "central":
        if federation.client_sampling == "cyclic":
            return cyclic_clients(config.system.seed, n, m, round_number)
        return _central_sample(config, generator)
    if federation.selection == "power_of_choice":
        if losses_of is None:
            raise ValueError("power_of_choice selection needs the clients' losses")
        d = federation.selection_candidates or min(n, 2 * m)
        candidates = generator.choice(n, size=d, replace=False)
        losses = np.asarray(losses_of([int(c) for c in candidates]), dtype=float)
        chosen = candidates[np.argsort(-losses, kind="stable")[:m]]
    elif federation.selection == "availability":
        weights = tally.reliabilities(n)
        chosen = generator.choice(n, size=m, replace=False, p=weights / weights.sum())
    else:
        chosen = generator.choice(n, size=m, replace=False)
    return sorted(int(c) for c in chosen)


def cyclic_clients(seed: int, num_clients: int, clients_per_round: int, round_number: int) -> list[int]:
    """Cyclic participation (DP-FTRL's schedule), sorted: the clients in one order drawn from `seed`, round r
    (from 1) taking its next `clients_per_round` (wrapping round), so each client takes part once every
    num_clients / clients_per_round rounds."""
    order = np.random.default_rng([seed, CYCLIC_TAG]).permutation(num_clients)
    start = (round_number - 1) * clients_per_round
    return sorted(int(order[(start + i) % num_clients]) for i in range(clients_per_round))


def _central_sample(config: ExperimentConfig, generator: np.random.Generator) -> list[int]:
    """Central DP's clients of one round (`select_clients`), sorted: Poisson at q = k/n, or exactly k of n."""
    federation = config.federation
    n, m = federation.num_clients, federation.clients_per_round
    if config.privacy.secure_noise:  # secret sampling: SystemRandom reads os.urandom
        secure = random.SystemRandom()
        if federation.client_sampling == "fixed":
            return sorted(secure.sample(range(n), m))
        return [c for c in range(n) if secure.random() < m / n]
    if federation.client_sampling == "fixed":
        return sorted(int(c) for c in generator.choice(n, size=m, replace=False))
    return [int(c) for c in np.flatnonzero(generator.random(n) < m / n)]


def dropouts(config: ExperimentConfig, round_number: int, clients: Sequence[int], profiles: Sequence[ClientProfile]) -> set[int]:
    """The selected clients that drop out this round, each with its own probability."""
    generator = np.random.default_rng([config.system.seed, round_number, DROPOUT_TAG])
    draws = generator.random(config.federation.num_clients)  # one per client: independent of who was selected
    return {c for c in clients if draws[c] < profiles[c].dropout_probability}


def allowed_steps(full_steps: int, speed: float, *, deadline: float, median_full_steps: float) -> int:
    """Local steps a client of `speed` finishes before the deadline, at most `full_steps`.

    The deadline is in units of the median client's full local work at speed 1, so a
    client manages ⌊deadline · median_full_steps · speed⌋ steps; 0 deadline: no limit.
    """
    if deadline <= 0:
        return full_steps
    return min(full_steps, math.floor(deadline * median_full_steps * speed))


def loss_sample(indices: np.ndarray, seed: int, round_number: int, client: int) -> np.ndarray:
    """The examples power-of-choice uses to estimate a candidate's loss (seeded, at most
    `POWER_OF_CHOICE_EXAMPLES`)."""
    if len(indices) <= POWER_OF_CHOICE_EXAMPLES:
        return indices
    generator = np.random.default_rng([seed, round_number, SELECTION_TAG, client])
    return np.sort(generator.choice(indices, size=POWER_OF_CHOICE_EXAMPLES, replace=False))


def client_seed(seed: int, round_number: int, client_id: int) -> int:
    """The seed of one client's batch order in one round, independent of scheduling."""
    return int(np.random.SeedSequence([seed, round_number, client_id]).generate_state(1)[0])


def stream_seed(seed: int, round_number: int, client_id: int, tag: int) -> int:
    """A seed for one purpose (`tag`) of one client in one round, apart from its batch order."""
    return int(np.random.SeedSequence([seed, round_number, client_id, tag]).generate_state(1)[0])
