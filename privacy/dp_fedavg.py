"""DP-FedAvg's server side (central, user-level DP): how much noise a run uses, and the
clipped, noised sum of one round, either added by the server or spread over the clients
under secure aggregation.

    plan = plan_privacy(config, partition_sizes=sizes, participation=counts)  # σ (calibrated to a target ε)
    epsilon = central_epsilon_after(plan, rounds=r)   # ε of r rounds, for the scheme clients are sampled by
    total = CentralSum(config, plan, global_weights, r, clip_norm=c)  # the server sees each clipped update
    total = DistributedNoiseSum(config, plan, global_weights, r, clip_norm=c, profiles=p)  # only the noised sum
    total = TreeSum(config, plan, global_weights, r, clip_norm=c, tree=t)  # DP-FTRL's tree noise (privacy/ftrl.py)
    total.add(client, update); ...; summed = total.result(statuses)   # RoundSum: weights, skipped, next C

Under secure aggregation the server never holds an individual update, so it cannot add
the noise after the fact without having seen something un-noised: every client of the
population takes part in the protocol each round (the sampled ones with their clipped
update, the others with zeros, so the server does not learn who was sampled either), and
each adds its share N(0, σ_Δ²C²/m) of the noise. The sum is released only when at least
m = ⌈secagg_threshold · num_clients⌉ inputs are in it, so any released sum carries at
least the N(0, σ_Δ²C²) the accountant assumes; whether a round is released depends only
on which clients dropped out, which does not depend on the data or on the sampling.
The price is noise: with s > m inputs the sum carries s/m times the variance.
With `privacy.distributed_noise = "skellam"` the shares are integers: each client scales its
clipped update by γ, rounds it to integers and adds Skellam noise, the protocol sums integers
exactly, and ε comes from the discrete mechanism's own accountant (privacy/skellam.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from engine.client_population import ClientProfile, client_seed, dropouts, stream_seed
from engine.client_trainers import RemoteClients
from engine.secure_aggregation import SecAggConfig, SecAggError, secure_aggregate
from experiment_config import ExperimentConfig
from privacy.ftrl import (
    TREE_ACCOUNTANT, TREE_RELATION, TreeAggregator, calibrate_tree_noise, ftrl_weights, node_noise,
    participation_schedule, server_step, tree_epsilon, tree_squared_sensitivities,
)  # fmt: skip

# |x| bound per coordinate of a masked input (a clipped update or the count, plus a noise
# share); with 24 fractional bits, 2^20 leaves room for 2^18 clients in 64-bit arithmetic.
SECAGG_CLIP_RANGE = 2.0**20
NOISE_SHARE_TAG = 0xD15C0  # each client's share of the distributed noise (stream_seed tag)
ROUNDING_TAG = 0xD15C1  # skellam: each client's stochastic rounding of its scaled update (stream_seed tag)


@dataclass(frozen=True)
class PrivacyPlan:
    """The privacy a run applies, fixed before it starts (σ calibrated if a target was set)."""

    mode: str  # none | local | central
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: str
    max_epsilon: float  # 0: no budget
    client_sample_rate: float  # central: q = clients_per_round / num_clients (Poisson's rate; fixed: k/n)
    update_noise_multiplier: float = 0.0  # central: σ_Δ on the updates (σ, or more with adaptive clipping)
    client_sampling: str = "poisson"  # central: poisson | fixed (exactly clients_per_round a round)
    clients_per_round: int = 0
    num_clients: int = 0
    neighbouring_relation: str = ""  # what ε protects (accounting.NEIGHBOURING_RELATIONS); "" without privacy
    secure_noise: bool = False  # central: noise (and client sampling) from os.urandom, not the seed
    mechanism: str = "dp-fedavg"  # central: dp-fedavg | dp-ftrl (privacy/ftrl.py)
    tree_sensitivities: tuple[float, ...] = ()  # dp-ftrl: Δ²/C² of the tree after each round 1…R
    distributed_noise: str = "gaussian"  # under secure aggregation: gaussian | skellam (privacy/skellam.py)


@dataclass(frozen=True)
class RoundSum:
    """What a DP-FedAvg round released: the new global weights (the old ones if it was
    skipped, and why), C for the next round (moved by adaptive clipping, else the same) and,
    under secure aggregation, the protocol's statistics."""

    weights: torch.Tensor
    skipped: str
    next_clip_norm: float
    secure_aggregation: dict[str, Any] | None = None
    # Under secure aggregation, the clients whose masked input is in the sum (a remote client
    # that is not left mid-protocol, a real fault); None without it.
    survivors: tuple[int, ...] | None = None


def noise_floor(config: ExperimentConfig) -> int:
    """m: the fewest inputs a distributed-noise sum may be released with (each client adds
    1/m of the noise variance): ⌈secagg_threshold · num_clients⌉, at least 2."""
    federation = config.federation
    return max(2, math.ceil(federation.secagg_threshold * federation.num_clients))


class CentralSum:
    """DP-FedAvg's server side for one round: clip each arriving update to C, sum them
    unweighted; `result` adds N(0, σ_Δ²C²), divides by the expected participant count q·n
    and, with adaptive clipping, moves the run's C towards the target quantile of norms."""

    def __init__(
        self, config: ExperimentConfig, plan: PrivacyPlan, global_weights: torch.Tensor, round_number: int, *,
        clip_norm: float,
    ) -> None:  # fmt: skip
        self.config, self.plan, self.global_weights, self.round_number = config, plan, global_weights, round_number
        self.clip_norm = clip_norm
        self.clipped_sum = torch.zeros_like(global_weights, dtype=torch.float64)
        self.unclipped = 0
        self.participants = 0  # updates in the sum (adaptive clipping centres its count on them)

    def add(self, client: int, update: torch.Tensor, *, lost: bool = False) -> None:
        import differential_privacy as dp  # opacus (~1.4 s to import) loads only with privacy on
        if lost:  # its update never reached the server
            return
        clipped, norm = dp.clip_update(update, self.clip_norm)
        self.clipped_sum += clipped.to(torch.float64)
        self.unclipped += norm <= self.clip_norm
        self.participants += 1

    def result(self, statuses: Mapping[int, tuple[str, int]]) -> RoundSum:
        """Always released, even with no updates, because skipping on the count of arrivals
        would reveal whether a client took part."""
        import differential_privacy as dp  # opacus (~1.4 s to import) loads only with privacy on
        plan, federation, privacy = self.plan, self.config.federation, self.config.privacy
        # The server's noise seed: the client-id slot one past the last client.
        generator = torch.Generator().manual_seed(
            client_seed(self.config.system.seed, self.round_number, federation.num_clients)
        )
        expected = plan.client_sample_rate * federation.num_clients
        noised_mean = dp.central_noise(
            self.clipped_sum, noise_multiplier=plan.update_noise_multiplier, max_norm=self.clip_norm,
            expected_participants=expected, generator=generator, secure=plan.secure_noise,
        )  # fmt: skip
        next_clip_norm = self.clip_norm
        if privacy.adaptive_clipping:
            next_clip_norm, _fraction = dp.adapt_clip_norm(
                self.clip_norm, unclipped_count=self.unclipped, participants=self.participants,
                expected_participants=expected,
                target_quantile=privacy.target_quantile, learning_rate=privacy.clip_learning_rate,
                count_stddev=dp.count_noise_stddev(expected), generator=generator, secure=plan.secure_noise,
            )  # fmt: skip
        weights = (self.global_weights.to(torch.float64) + noised_mean).to(self.global_weights.dtype)
        return RoundSum(weights, "", next_clip_norm)


class TreeSum(CentralSum):
    """DP-FTRL's server side for one round (privacy/ftrl.py): the clipped updates summed as
    DP-FedAvg's, no fresh noise of the round's own; `result` adds the sum to the run's tree
    (`tree`, which it moves on: the round is released), with the noise of the node that
    completes now, and sets w_t = w_0 + η_s·Ŝ_t/k. C never moves (no adaptive clipping)."""

    def __init__(
        self, config: ExperimentConfig, plan: PrivacyPlan, global_weights: torch.Tensor, round_number: int, *,
        clip_norm: float, tree: TreeAggregator,
    ) -> None:  # fmt: skip
        super().__init__(config, plan, global_weights, round_number, clip_norm=clip_norm)
        self.tree = tree

    def result(self, statuses: Mapping[int, tuple[str, int]]) -> RoundSum:
        """Always released, as DP-FedAvg's: the tree's noise does not depend on who arrived."""
        if self.tree.count != self.round_number - 1:
            raise RuntimeError(
                f"the DP-FTRL tree holds {self.tree.count} rounds, not the {self.round_number - 1} before this one"
            )
        std = self.plan.noise_multiplier * self.clip_norm
        self.tree.add(self.clipped_sum, node_noise(self.config, self.round_number, self.clipped_sum.shape, std=std))
        weights = ftrl_weights(self.tree, server_learning_rate=server_step(self.config),
                               clients_per_round=self.plan.clients_per_round)  # fmt: skip
        return RoundSum(weights.to(self.global_weights.dtype), "", self.clip_norm)


@dataclass(frozen=True)
class DistributedNoise:
    """What each client of one DP-FedAvg round under secure aggregation feeds the protocol
    (module docstring): its clipped update and unclipped indicator − ½ (`clipped_input`; zeros
    for a client that was not sampled), plus its share of the noise. The same arithmetic runs
    in-process (`DistributedNoiseSum`) and on a Flower node, so both give the same sum."""

    clip_norm: float
    length: int  # the update's coordinates + the unclipped indicator
    update_std: float  # one share's standard deviation on the update's coordinates
    count_std: float  # ... and on the indicator (0 without adaptive clipping)
    secure: bool  # shares from the OS's CSPRNG, not the seed's stream
    seed: int
    round_number: int
    # gaussian: real shares N(0, update_std²), the input on the protocol's 2^-24 grid. skellam: integers,
    # the clipped update scaled by γ and rounded plus Sk(update_std²) (update_std in integer units).
    mechanism: str = "gaussian"

    def input(self, client: int, update: torch.Tensor | None) -> np.ndarray:
        """`client`'s vector: its clipped input (`update` None: a cover client's zeros) plus its share."""
        if self.mechanism == "skellam":  # integers; the indicator stays 0 (no adaptive clipping)
            rounded = np.zeros(self.length)
            if update is not None:
                from privacy import skellam  # scipy and opacus load only with privacy on
                scaled = clipped_input(update, self.clip_norm)[:-1] * skellam.scale(self.clip_norm)
                rounded[:-1] = skellam.conditional_round(scaled, generator=self._generator(client, ROUNDING_TAG))
            return rounded + self.share(client)
        return (0.0 if update is None else clipped_input(update, self.clip_norm)) + self.share(client)

    def share(self, client: int) -> np.ndarray:
        """`client`'s share of the round's noise, (length,)."""
        import differential_privacy as dp  # opacus (~1.4 s to import) loads only with privacy on
        if self.mechanism == "skellam":
            from privacy import skellam
            generator = self._generator(client, NOISE_SHARE_TAG)
            share = skellam.skellam_share(self.length - 1, variance=self.update_std**2, generator=generator)
            return np.append(share, 0.0)  # the indicator: no adaptive clipping
        if self.secure:  # each client's share from its own OS's CSPRNG
            share = dp.secure_normal((self.length,), std=1.0).numpy()
        else:
            generator = np.random.default_rng(stream_seed(self.seed, self.round_number, client, NOISE_SHARE_TAG))
            share = generator.normal(0.0, 1.0, self.length)
        share[:-1] *= self.update_std
        share[-1] *= self.count_std
        return share

    def _generator(self, client: int, tag: int) -> np.random.Generator:
        """The Skellam path's randomness: `client`'s seeded stream for `tag`, or under secure noise
        a generator keyed from the OS's CSPRNG (`skellam.secure_generator` says what that means)."""
        from privacy import skellam
        if self.secure:
            return skellam.secure_generator()
        return np.random.default_rng(stream_seed(self.seed, self.round_number, client, tag))


def clipped_input(update: torch.Tensor, clip_norm: float) -> np.ndarray:
    """A client's update clipped to `clip_norm`, with its unclipped indicator centred at ½ (as
    `adapt_clip_norm`'s: one client moves the sum by ½) as one more coordinate."""
    import differential_privacy as dp  # opacus (~1.4 s to import) loads only with privacy on
    clipped, norm = dp.clip_update(update, clip_norm)
    return np.append(clipped.double().numpy(), float(norm <= clip_norm) - 0.5)


class DistributedNoiseSum:
    """DP-FedAvg under secure aggregation, the noise added by the clients (module docstring).

    Each input is `DistributedNoise.input`; weights are all 1 and the unmasked sum is divided
    by q·n as in `CentralSum`. In-process the inputs are made here (`add`); clients that hold
    their upload where they are (`add_held`, Flower nodes) make their own, and the protocol runs
    with them (`result(..., remote=...)`), cover clients included.
    """

    def __init__(
        self, config: ExperimentConfig, plan: PrivacyPlan, global_weights: torch.Tensor, round_number: int, *,
        clip_norm: float, profiles: Sequence[ClientProfile],
    ) -> None:  # fmt: skip
        self.config, self.plan, self.global_weights, self.round_number = config, plan, global_weights, round_number
        self.clip_norm, self.profiles = clip_norm, profiles
        self.updates: dict[int, torch.Tensor] = {}  # client → its update, made into its input by `DistributedNoise`
        self.held: set[int] = set()  # clients whose upload waits at their node for the protocol
        self.lost: set[int] = set()

    def add(self, client: int, update: torch.Tensor, *, lost: bool = False) -> None:
        """The update of a sampled client that trained; `lost`: it vanished after the
        key exchange, so the server unmasks it away through its shares."""
        self.updates[client] = update
        if lost:
            self.lost.add(client)

    def add_held(self, client: int, *, lost: bool = False) -> None:
        """A sampled client that trained and holds its upload at its node (`TaskOutcome.held`)."""
        self.held.add(client)
        if lost:
            self.lost.add(client)

    def result(self, statuses: Mapping[int, tuple[str, int]], *, remote: RemoteClients | None = None) -> RoundSum:
        """The released sum, or the old weights and why nothing was released; `remote`: the
        clients take part from where they are (each makes its own input and share)."""
        config = self.config
        federation = config.federation
        population = range(federation.num_clients)
        gone = dropouts(config, self.round_number, population, self.profiles)  # the same draws _plan_round used
        if federation.dropout_stage == "before":
            participants = [c for c in population if c not in gone]
        else:  # they join the key exchange, then vanish
            participants = list(population)
            self.lost |= gone - statuses.keys()
        floor = noise_floor(config)
        survivors = len(participants) - len(self.lost & set(participants))
        stats: dict[str, Any] = {
            "distributed_noise": True, "noise_floor": floor, "cover_clients": len(set(participants) - statuses.keys()),
        }  # fmt: skip
        if survivors < floor:
            return RoundSum(self.global_weights, (
                f"only {survivors} of {federation.num_clients} clients stayed for secure aggregation; the "
                f"distributed noise needs {floor} (federation.secagg_threshold): nothing was released"
            ), self.clip_norm, stats)  # fmt: skip
        noise, dropped = self._noise(), frozenset(self.lost & set(participants))
        try:
            if remote is not None:
                secure = remote.secure_sum(dict.fromkeys(participants, 1.0), secagg_protocol(config),
                                           drop_after_sharing=dropped, noise=noise, held=frozenset(self.held))  # fmt: skip
            else:
                vectors = {client: noise.input(client, self.updates.get(client)) for client in participants}
                secure = secure_aggregate(vectors, dict.fromkeys(participants, 1.0), secagg_protocol(config),
                                          drop_after_sharing=dropped)  # fmt: skip
        except SecAggError as error:  # too few neighbours left somewhere: nothing is revealed
            return RoundSum(self.global_weights, f"secure aggregation failed: {error}", self.clip_norm, stats)
        stats.update(secagg_statistics(secure))
        return self._released(secure.weighted_sum, stats, secure.survivors)

    def _noise(self) -> DistributedNoise:
        """This round's noise shares: each of the m = noise floor shares carries 1/m of the variance
        (skellam: of μ = (σ_Δ·c)² in integer units, privacy/skellam.py)."""
        import differential_privacy as dp  # opacus (~1.4 s to import) loads only with privacy on
        plan, floor = self.plan, noise_floor(self.config)
        if plan.distributed_noise == "skellam":
            from privacy.skellam import SCALED_NORM
            return DistributedNoise(
                clip_norm=self.clip_norm, length=self.global_weights.numel() + 1,
                update_std=plan.update_noise_multiplier * SCALED_NORM / math.sqrt(floor), count_std=0.0,
                secure=plan.secure_noise, seed=self.config.system.seed, round_number=self.round_number,
                mechanism="skellam",
            )  # fmt: skip
        expected = plan.client_sample_rate * self.config.federation.num_clients
        count_std = dp.count_noise_stddev(expected) / math.sqrt(floor) if self.config.privacy.adaptive_clipping else 0.0
        return DistributedNoise(
            clip_norm=self.clip_norm, length=self.global_weights.numel() + 1,
            update_std=plan.update_noise_multiplier * self.clip_norm / math.sqrt(floor), count_std=count_std,
            secure=plan.secure_noise, seed=self.config.system.seed, round_number=self.round_number,
        )  # fmt: skip

    def _released(self, total: np.ndarray, stats: dict[str, Any], survivors: tuple[int, ...]) -> RoundSum:
        """The new weights from the unmasked sum, and C moved by its noised unclipped count."""
        import differential_privacy as dp  # opacus (~1.4 s to import) loads only with privacy on
        privacy = self.config.privacy
        expected = self.plan.client_sample_rate * self.config.federation.num_clients
        next_clip_norm = self.clip_norm
        if privacy.adaptive_clipping:
            next_clip_norm = dp.next_clip_norm(
                self.clip_norm, noised_fraction=total[-1] / expected + 0.5, target_quantile=privacy.target_quantile,
                learning_rate=privacy.clip_learning_rate,
            )  # fmt: skip
        if self.plan.distributed_noise == "skellam":  # the integer sum back in the update's units: Σ/γ
            from privacy.skellam import scale
            total = total / scale(self.clip_norm)
        mean = torch.from_numpy(total[:-1] / expected)
        weights = (self.global_weights.double() + mean).to(self.global_weights.dtype)
        return RoundSum(weights, "", next_clip_norm, stats, survivors)


def secagg_statistics(result: Any) -> dict[str, Any]:
    """What one secure-aggregation round cost, as stored per round (JSON-able)."""
    stats = result.stats
    return {
        "threshold": result.threshold, "participants": len(result.participants),
        "survivors": len(result.survivors), "dropouts_recovered": stats.dropouts_recovered,
        "bytes_keys": stats.bytes_keys, "bytes_shares": stats.bytes_shares, "bytes_masked": stats.bytes_masked,
        "bytes_unmasking": stats.bytes_unmasking, "crypto_seconds": stats.crypto_seconds,
        "mask_seconds": stats.mask_seconds, "server_seconds": stats.server_seconds,
    }  # fmt: skip


def plan_privacy(
    config: ExperimentConfig, *, partition_sizes: Sequence[int], participation: Mapping[int, int] | None = None
) -> PrivacyPlan:
    """Resolve σ (the configured one, or calibrated so the whole run ends at <= target ε)
    and, for central DP, the update noise σ_Δ: σ itself, or with adaptive clipping the
    larger σ_Δ that leaves room for the noised count at the same ε (Andrew et al. 2021).

    `partition_sizes`: each client's training examples. `participation`: how many rounds the
    seeded schedule picks each client for ({client: rounds}; local DP with a target ε and
    uniform selection needs it; None: every client in every round).

    Central DP with `federation.client_sampling = "fixed"` is accounted as exactly k of n
    clients a round under the replace-one relation (`fixed_size_epsilon`); adaptive clipping
    keeps σ there too: against replace-one the update sum moves by 2C and the unclipped count
    by 1, so the pair is one Gaussian of multiplier (4σ_Δ⁻² + σ_b⁻²)^(−1/2) = σ/2, which is
    what `fixed_size_epsilon` accounts for σ."""
    privacy, federation = config.privacy, config.federation
    rate = federation.clients_per_round / federation.num_clients
    plan = PrivacyPlan(
        mode=privacy.mode, noise_multiplier=privacy.noise_multiplier, max_grad_norm=privacy.max_grad_norm,
        delta=privacy.delta, accountant=privacy.accountant, max_epsilon=privacy.max_epsilon, client_sample_rate=rate,
        client_sampling=federation.client_sampling, clients_per_round=federation.clients_per_round,
        num_clients=federation.num_clients, secure_noise=privacy.secure_noise,
    )  # fmt: skip
    if privacy.mode == "none":
        return plan
    if privacy.mode == "central" and privacy.mechanism == "dp-ftrl":
        return _tree_plan(config, plan)
    import differential_privacy as dp  # opacus (~1.4 s to import) loads only with privacy on

    relation = dp.LOCAL_NEIGHBOURING_RELATION
    if privacy.mode == "central":
        relation = dp.NEIGHBOURING_RELATIONS[federation.client_sampling]
    plan = dataclasses.replace(plan, neighbouring_relation=relation)
    if privacy.mode == "central" and privacy.distributed_noise == "skellam":
        return _skellam_plan(config, plan)

    if privacy.target_epsilon > 0:
        plan = dataclasses.replace(plan, noise_multiplier=_calibrated_noise(config, partition_sizes, participation))
    update_noise = plan.noise_multiplier
    if privacy.adaptive_clipping:
        count_stddev = dp.count_noise_stddev(rate * federation.num_clients)
        update_noise = dp.adaptive_update_noise(noise_multiplier=plan.noise_multiplier, count_stddev=count_stddev)
    return dataclasses.replace(plan, update_noise_multiplier=update_noise)


def _tree_plan(config: ExperimentConfig, plan: PrivacyPlan) -> PrivacyPlan:
    """DP-FTRL's plan: the tree's Δ²/C² after each round, from the seeded schedule of who takes part,
    and σ (the configured one, or calibrated so that round R ends at <= target ε), accounted by zCDP."""
    privacy, rounds = config.privacy, config.federation.rounds
    squared = tree_squared_sensitivities(participation_schedule(config), rounds=rounds)
    sigma = privacy.noise_multiplier
    if privacy.target_epsilon > 0:
        sigma = calibrate_tree_noise(target_epsilon=privacy.target_epsilon, delta=privacy.delta,
                                     squared_sensitivity=float(squared[-1]))  # fmt: skip
    return dataclasses.replace(
        plan, mechanism="dp-ftrl", accountant=TREE_ACCOUNTANT, neighbouring_relation=TREE_RELATION,
        noise_multiplier=sigma, update_noise_multiplier=sigma, tree_sensitivities=tuple(float(s) for s in squared),
    )  # fmt: skip


def _skellam_plan(config: ExperimentConfig, plan: PrivacyPlan) -> PrivacyPlan:
    """Distributed Skellam noise's plan (privacy/skellam.py): σ (the configured one, or calibrated to
    the target ε by the Skellam accountant), checked to sum exactly in the protocol's ring."""
    from privacy import skellam  # scipy and opacus load only with privacy on
    privacy, federation = config.privacy, config.federation
    sigma = privacy.noise_multiplier
    if privacy.target_epsilon > 0:
        sigma = skellam.calibrate_skellam_noise(
            target_epsilon=privacy.target_epsilon, delta=privacy.delta, sample_rate=plan.client_sample_rate,
            rounds=federation.rounds,
        )  # fmt: skip
    skellam.ring_bounds(noise_multiplier=sigma, noise_floor=noise_floor(config), num_clients=federation.num_clients)
    return dataclasses.replace(
        plan, accountant=skellam.SKELLAM_ACCOUNTANT, distributed_noise="skellam", noise_multiplier=sigma,
        update_noise_multiplier=sigma,
    )  # fmt: skip


def _calibrated_noise(
    config: ExperimentConfig, partition_sizes: Sequence[int], participation: Mapping[int, int] | None
) -> float:
    """σ such that the whole run ends at <= privacy.target_epsilon.

    Central: q = clients_per_round / num_clients, one step per round. Local: every client k
    that the (seeded) schedule picks R_k times (every round, when selection depends on
    training: power_of_choice, availability) takes R_k · local_epochs · round(1/q_k)
    DP-SGD steps at q_k = batch_size / N_k; one σ must keep every client under the
    target, so it is the largest σ any client needs.
    """
    import differential_privacy as dp  # opacus (~1.4 s to import) loads only with privacy on
    privacy, federation = config.privacy, config.federation
    rate = federation.clients_per_round / federation.num_clients
    calibrate = functools.partial(
        dp.calibrate_noise, target_epsilon=privacy.target_epsilon, delta=privacy.delta, accountant=privacy.accountant
    )
    if privacy.mode == "central" and federation.client_sampling == "fixed":
        return dp.calibrate_fixed_size_noise(
            target_epsilon=privacy.target_epsilon, delta=privacy.delta, accountant=privacy.accountant,
            clients_per_round=federation.clients_per_round, num_clients=federation.num_clients,
            rounds=federation.rounds,
        )  # fmt: skip
    if privacy.mode == "central":
        return calibrate(sample_rate=rate, steps=federation.rounds)
    if participation is None:  # who is picked depends on training: calibrate for a client picked in every round
        participation = dict.fromkeys(range(federation.num_clients), federation.rounds)
    needs = set()
    for client, times in participation.items():
        q = dp.local_sample_rate(partition_sizes[client], federation.batch_size)
        needs.add((q, times * federation.local_epochs * dp.steps_per_epoch(q)))
    # ε grows with both q and steps: only clients no other client dominates can need the most noise.
    frontier = [(q, n) for q, n in needs if not any(q2 >= q and n2 >= n and (q2, n2) != (q, n) for q2, n2 in needs)]
    return max(calibrate(sample_rate=q, steps=n) for q, n in frontier)


def central_epsilon_after(plan: PrivacyPlan, *, rounds: int) -> float:
    """Central DP's ε after `rounds` noised rounds of `plan`, accounted for how its clients are
    sampled: Poisson at q (`central_epsilon`, add/remove one client) or exactly k of n
    (`fixed_size_epsilon`, replace one client); DP-FTRL: the tree's zCDP over the run's schedule
    (`ftrl.tree_epsilon`, zero-out one client). σ is the accounted one (`noise_multiplier`)."""
    import differential_privacy as dp  # opacus (~1.4 s to import) loads only with privacy on

    if plan.mode != "central":
        raise ValueError(f"central_epsilon_after needs a central DP plan, got mode {plan.mode!r}")
    if plan.mechanism == "dp-ftrl":  # the tree's zCDP over the schedule (privacy/ftrl.py), no sampling assumed
        squared = plan.tree_sensitivities[rounds - 1] if rounds > 0 else 0.0
        return tree_epsilon(noise_multiplier=plan.noise_multiplier, squared_sensitivity=squared, delta=plan.delta)
    if plan.distributed_noise == "skellam":  # the discrete mechanism's RDP, Poisson-subsampled (privacy/skellam.py)
        from privacy.skellam import skellam_epsilon
        return skellam_epsilon(noise_multiplier=plan.noise_multiplier, sample_rate=plan.client_sample_rate,
                               rounds=rounds, delta=plan.delta)  # fmt: skip
    if plan.client_sampling == "fixed":
        return dp.fixed_size_epsilon(
            noise_multiplier=plan.noise_multiplier, clients_per_round=plan.clients_per_round,
            num_clients=plan.num_clients, rounds=rounds, delta=plan.delta, accountant=plan.accountant,
        )  # fmt: skip
    return dp.central_epsilon(
        noise_multiplier=plan.noise_multiplier, sample_rate=plan.client_sample_rate, rounds=rounds,
        delta=plan.delta, accountant=plan.accountant,
    )  # fmt: skip


def secagg_protocol(config: ExperimentConfig) -> SecAggConfig:
    """The secure-aggregation parameters of a run (the server and every client, in-process or on
    Flower, use these): fixed point on a 2^-24 grid, or with Skellam noise integers (f = 0) of
    |value| ≤ 2^40 each, which n < 2^23 clients sum in the 64-bit ring without wrapping."""
    federation = config.federation
    if config.privacy.mode == "central" and config.privacy.distributed_noise == "skellam":  # integers, exactly
        from privacy.skellam import SKELLAM_RANGE
        return SecAggConfig(threshold=federation.secagg_threshold, neighbours=federation.secagg_neighbours,
                            clip_range=SKELLAM_RANGE, fractional_bits=0)  # fmt: skip
    return SecAggConfig(threshold=federation.secagg_threshold, neighbours=federation.secagg_neighbours,
                        clip_range=SECAGG_CLIP_RANGE)  # fmt: skip
