"""The federated learning engine: client sampling, local training, aggregation, evaluation.

It knows no storage and no UI: it yields one `RoundResult` per round and checks a stop
event between rounds. Clients train in parallel worker processes (`client_trainers`:
one thread each, training data shared with them, weights passed through shared
buffers, not pickled), or in this process when `system.num_workers` is 1.

    run = FederatedRun(ExperimentConfig())
    for result in run.rounds(stop_event):
        print(result.round, result.accuracy)

Every random choice is seeded from `system.seed`: partition, initial weights, client
sampling, and each client's batch order (seeded by (seed, round, client), so the
result does not depend on which worker trained which client).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from client_trainers import InProcessTrainer, ProcessPoolTrainer, TaskOutcome, TrainSettings, TrainTask
from data_handler import FederatedData, label_counts, load_mnist, partition, subset
from experiment_config import ExperimentConfig
from model import create_model, flatten, get_parameters, parameter_bytes, unflatten
from strategies import ClientUpdate, make_strategy

__all__ = ["ExperimentConfig", "FederatedRun", "RoundResult", "ClientResult", "run_experiment"]

EVAL_BATCH = 1000
AUDIT_SEED_TAG = 0xA0D17  # the membership audit's sampling stream (see FederatedRun.audit)


@dataclass(frozen=True)
class ClientResult:
    """One client in one round. With local DP, `steps` and `epsilon` are cumulative over
    every round the client took part in (its accountant's totals); otherwise `steps` are
    this round's SGD steps and `epsilon` is 0."""

    id: int
    num_examples: int
    steps: int
    loss: float
    epsilon: float = 0.0
    sample_rate: float = 0.0


@dataclass(frozen=True)
class RoundResult:
    """One finished round. `seconds` is client training + aggregation, without evaluation.

    The privacy ledger: `epsilon` (the run's ε so far: max over clients for local DP),
    `delta`, `noise_multiplier` σ, `max_grad_norm` C, `sample_rate` (central: client
    sampling rate q; local: the largest per-client batch sampling rate this round),
    `privacy_steps` (central: rounds so far; local: the most DP-SGD steps of a client)
    and the `accountant`. All zero / empty without privacy.
    """

    round: int
    accuracy: float
    loss: float
    epsilon: float
    delta: float
    seconds: float
    eval_seconds: float
    bytes_up: int
    bytes_down: int
    clients: list[ClientResult] = field(default_factory=list)
    noise_multiplier: float = 0.0
    max_grad_norm: float = 0.0
    sample_rate: float = 0.0
    privacy_steps: int = 0
    accountant: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


    def is_set(self) -> bool: ...


def client_seed(seed: int, round_number: int, client_id: int) -> int:
    """The seed of one client's batch order in one round, independent of scheduling."""
    return int(np.random.SeedSequence([seed, round_number, client_id]).generate_state(1)[0])


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on (x, y)."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(y), EVAL_BATCH):
        logits = model(x[start : start + EVAL_BATCH])
        target = y[start : start + EVAL_BATCH]
        loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum").item()
        correct += int((logits.argmax(1) == target).sum())
    return correct / max(len(y), 1), loss_sum / max(len(y), 1)


def resolve_workers(config: ExperimentConfig) -> int:
    """`system.num_workers`, with 0 meaning one per core, at most one per client per round."""
    if config.system.num_workers > 0:
        return min(config.system.num_workers, config.federation.clients_per_round)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, config.federation.clients_per_round))


# -- the run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PrivacyPlan:
    """The privacy a run applies, fixed before it starts (σ calibrated if a target was set)."""

    mode: str  # none | local | central
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: str
    max_epsilon: float  # 0: no budget
    client_sample_rate: float  # central: Poisson rate q of client sampling
    update_noise_multiplier: float = 0.0  # central: σ_Δ on the updates (σ, or more with adaptive clipping)


class FederatedRun:
    """Everything a run needs, prepared once: data, partition, model, strategy, privacy."""

    def __init__(self, config: ExperimentConfig, *, data: FederatedData | None = None) -> None:
        self.config = config
        seed = config.system.seed
        if data is None:
            data = load_mnist(config.data.data_dir)
        self.data = subset(
            data, max_train=config.data.max_train_examples, max_test=config.data.max_test_examples, seed=seed
        )
        labels = self.data.train_y.numpy()
        self.partitions = partition(
            labels,
            config.data.partition,
            num_clients=config.federation.num_clients,
            seed=seed,
            alpha=config.data.dirichlet_alpha,
        )
        self.label_counts = label_counts(self.partitions, labels, self.data.num_classes)
        self.model = create_model(config.model.name, num_classes=self.data.num_classes, seed=seed)
        self.strategy = make_strategy(config.federation.strategy)
        self.num_workers = resolve_workers(config)
        self.privacy = plan_privacy(config, self)
        self.histories: dict[int, tuple[tuple[float, float, int], ...]] = {}  # local DP, per client
        self.client_epsilons: dict[int, float] = {}
        self.stop_reason: str | None = None  # set when the run ends early (stop event, budget)
        self.trained_clients: set[int] = set()  # every client that has trained in some round
        self.clip_norm = config.privacy.max_grad_norm  # central: C of the next round (adaptive: moves)

    def sample_clients(self, round_number: int) -> list[int]:
        """This round's clients, seeded per round.

        Uniformly `clients_per_round` distinct clients; in central DP mode, Poisson: each
        client independently with probability q = clients_per_round / num_clients, which
        is the sampling the central accountant assumes (the count varies, may be 0).
        """
        federation = self.config.federation
        generator = np.random.default_rng([self.config.system.seed, round_number])
        if self.config.privacy.mode == "central":
            rate = federation.clients_per_round / federation.num_clients
            return [int(c) for c in np.flatnonzero(generator.random(federation.num_clients) < rate)]
        chosen = generator.choice(federation.num_clients, size=federation.clients_per_round, replace=False)
        return sorted(int(c) for c in chosen)

    def audit(self, num_examples: int) -> dict[str, Any] | None:
        """A loss-threshold membership-inference audit of the current global model
        (`privacy_audit.audit_model`): members are a seeded sample of the examples of clients
        that have trained, non-members one of the (held-out) test split, `num_examples` each
        at most, equally many of both. None if `num_examples` is 0 or no client has trained.
        """
        if num_examples < 0:
            raise ValueError(f"num_examples must be >= 0, got {num_examples}")
        if num_examples == 0 or not self.trained_clients:
            return None
        from privacy_audit import audit_model

        trained = np.concatenate([self.partitions[c] for c in sorted(self.trained_clients)])
        size = min(num_examples, len(trained), len(self.data.test_y))
        # Its own stream: round numbers start at 1, so (seed, 0, tag) is drawn by nothing else.
        generator = np.random.default_rng([self.config.system.seed, 0, AUDIT_SEED_TAG])
        members = torch.from_numpy(np.sort(generator.choice(trained, size=size, replace=False)))
        held_out = torch.from_numpy(np.sort(generator.choice(len(self.data.test_y), size=size, replace=False)))
        return audit_model(
            self.model, self.data.train_x[members], self.data.train_y[members],
            self.data.test_x[held_out], self.data.test_y[held_out],
        )  # fmt: skip

    def rounds(self, stop_event: StopEvent | None = None) -> Iterator[RoundResult]:
        """Run the rounds, yielding each result; ends early after a round if `stop_event` is
        set, or before a round that would take ε past `privacy.max_epsilon`."""
        config, plan = self.config, self.privacy
        params = get_parameters(self.model)
        global_weights = flatten(params)
        settings = TrainSettings(
            model_name=config.model.name,
            num_classes=self.data.num_classes,
            local_epochs=config.federation.local_epochs,
            batch_size=config.federation.batch_size,
            learning_rate=config.federation.learning_rate,
            local_dp=plan.mode == "local",
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.max_grad_norm,
            accountant=plan.accountant,
        )
        slots = config.federation.clients_per_round  # central DP trains Poisson samples in chunks of this
        if self.num_workers > 1:
            trainer: Any = ProcessPoolTrainer(self.data, settings, global_weights.numel(), slots, self.num_workers)
        else:
            trainer = InProcessTrainer(self.data, settings, global_weights.numel(), slots)
        transfer_bytes = parameter_bytes(params)
        try:
            for round_number in range(1, config.federation.rounds + 1):
                clients = self.sample_clients(round_number)
                if (reason := self._budget_exhausted(round_number, clients)) is not None:
                    self.stop_reason = reason
                    break
                started = time.perf_counter()
                tasks = [
                    TrainTask(
                        slot % slots, client, self.partitions[client],
                        client_seed(config.system.seed, round_number, client), self.histories.get(client, ()),
                    )  # fmt: skip
                    for slot, client in enumerate(clients)
                ]
                clip_norm = self.clip_norm
                if plan.mode == "central":
                    global_weights, outcomes = self._central_round(trainer, global_weights, tasks, round_number)
                else:
                    outcomes = trainer.train(global_weights, tasks)
                    updates = [
                        ClientUpdate(o.task.client_id, trainer.results[o.task.slot], len(o.task.indices), o.steps, o.loss)
                        for o in outcomes
                    ]
                    global_weights = self.strategy.aggregate(global_weights, updates)
                seconds = time.perf_counter() - started

                self.trained_clients.update(o.task.client_id for o in outcomes)
                eval_started = time.perf_counter()
                for name, tensor in unflatten(global_weights, params).items():
                    params[name].copy_(tensor)
                accuracy, loss = evaluate(self.model, self.data.test_x, self.data.test_y)
                yield self._round_result(
                    round_number, outcomes, accuracy=accuracy, loss=loss, seconds=seconds,
                    eval_seconds=time.perf_counter() - eval_started, transfer_bytes=transfer_bytes,
                    clip_norm=clip_norm,
                )  # fmt: skip
                if stop_event is not None and stop_event.is_set():
                    self.stop_reason = "stopped on request"
                    break
        finally:
            trainer.close()

    def _central_round(
        self, trainer: Any, global_weights: torch.Tensor, tasks: list[TrainTask], round_number: int
    ) -> tuple[torch.Tensor, list[TaskOutcome]]:
        """DP-FedAvg: clip each client's update to C, sum unweighted, add N(0, σ_Δ²C²), divide
        by the expected participant count q·n; train in chunks of the result buffer's size.
        With adaptive clipping, C then moves towards the target quantile of update norms."""
        import differential_privacy as dp

        plan, federation, privacy = self.privacy, self.config.federation, self.config.privacy
        clip_norm = self.clip_norm
        clipped_sum = torch.zeros_like(global_weights, dtype=torch.float64)
        unclipped = 0
        outcomes: list[TaskOutcome] = []
        slots = trainer.results.shape[0]
        for start in range(0, len(tasks), slots):
            for outcome in trainer.train(global_weights, tasks[start : start + slots]):
                update = trainer.results[outcome.task.slot] - global_weights
                if not torch.isfinite(update).all():
                    raise RuntimeError(
                        f"client {outcome.task.client_id} returned non-finite weights in round {round_number}: "
                        "training diverged (lower the learning rate, or use more clients per round so the "
                        "server noise σC/(q·n) per weight is smaller)"
                    )
                clipped, norm = dp.clip_update(update, clip_norm)
                clipped_sum += clipped.to(torch.float64)
                unclipped += norm <= clip_norm
                outcomes.append(outcome)
        # The server's noise seed: the client-id slot one past the last client.
        generator = torch.Generator().manual_seed(
            client_seed(self.config.system.seed, round_number, federation.num_clients)
        )
        expected = plan.client_sample_rate * federation.num_clients
        noised_mean = dp.central_noise(
            clipped_sum,
            noise_multiplier=plan.update_noise_multiplier,
            max_norm=clip_norm,
            expected_participants=expected,
            generator=generator,
        )
        if privacy.adaptive_clipping:
            self.clip_norm, _fraction = dp.adapt_clip_norm(
                clip_norm, unclipped_count=unclipped, expected_participants=expected,
                target_quantile=privacy.target_quantile, learning_rate=privacy.clip_learning_rate,
                count_stddev=dp.count_noise_stddev(expected), generator=generator,
            )  # fmt: skip
        return (global_weights.to(torch.float64) + noised_mean).to(global_weights.dtype), outcomes

    def _budget_exhausted(self, round_number: int, clients: list[int]) -> str | None:
        """Why the next round may not run under `privacy.max_epsilon`, or None if it may."""
        plan = self.privacy
        if plan.mode == "none" or plan.max_epsilon <= 0:
            return None
        import differential_privacy as dp

        if plan.mode == "central":
            epsilon = dp.central_epsilon(
                noise_multiplier=plan.noise_multiplier, sample_rate=plan.client_sample_rate,
                rounds=round_number, delta=plan.delta, accountant=plan.accountant,
            )  # fmt: skip
            if epsilon > plan.max_epsilon:
                return f"privacy budget: round {round_number} would reach ε = {epsilon:.3f} > {plan.max_epsilon}"
            return None
        for client in clients:
            rate = dp.local_sample_rate(len(self.partitions[client]), self.config.federation.batch_size)
            steps = self.config.federation.local_epochs * dp.steps_per_epoch(rate)
            planned = [(plan.noise_multiplier, rate, steps)]
            if dp.would_exceed(
                self.histories.get(client, ()), planned, delta=plan.delta, max_epsilon=plan.max_epsilon,
                accountant=plan.accountant,
            ):  # fmt: skip
                return f"privacy budget: round {round_number} would take client {client} past ε = {plan.max_epsilon}"
        return None

    def _round_result(
        self, round_number: int, outcomes: list[TaskOutcome], *, accuracy: float, loss: float,
        seconds: float, eval_seconds: float, transfer_bytes: int, clip_norm: float,
    ) -> RoundResult:  # fmt: skip
        plan = self.privacy
        clients = []
        epsilon, sample_rate, privacy_steps = 0.0, 0.0, 0
        if plan.mode == "local":
            import differential_privacy as dp

            for o in outcomes:
                client = o.task.client_id
                self.histories[client] = o.history
                self.client_epsilons[client] = dp.epsilon_from_history(o.history, plan.delta, plan.accountant)
                rate = o.history[-1][1] if o.history else 0.0
                total_steps = sum(n for _, _, n in o.history)
                clients.append(
                    ClientResult(client, len(o.task.indices), total_steps, o.loss, self.client_epsilons[client], rate)
                )
                sample_rate, privacy_steps = max(sample_rate, rate), max(privacy_steps, total_steps)
            epsilon = max(self.client_epsilons.values(), default=0.0)  # never decreases
        else:
            clients = [ClientResult(o.task.client_id, len(o.task.indices), o.steps, o.loss) for o in outcomes]
        if plan.mode == "central":
            import differential_privacy as dp

            sample_rate, privacy_steps = plan.client_sample_rate, round_number
            epsilon = dp.central_epsilon(
                noise_multiplier=plan.noise_multiplier, sample_rate=sample_rate, rounds=round_number,
                delta=plan.delta, accountant=plan.accountant,
            )  # fmt: skip
        private = plan.mode != "none"
        return RoundResult(
            round=round_number,
            accuracy=accuracy,
            loss=loss,
            epsilon=epsilon,
            delta=plan.delta if private else 0.0,
            seconds=seconds,
            eval_seconds=eval_seconds,
            bytes_up=transfer_bytes * len(outcomes),
            bytes_down=transfer_bytes * len(outcomes),
            clients=clients,
            noise_multiplier=plan.noise_multiplier if private else 0.0,
            max_grad_norm=clip_norm if private else 0.0,
            sample_rate=sample_rate,
            privacy_steps=privacy_steps,
            accountant=plan.accountant if private else "",
        )


def plan_privacy(config: ExperimentConfig, run: FederatedRun) -> PrivacyPlan:
    """Resolve σ (the configured one, or calibrated so the whole run ends at <= target ε)
    and, for central DP, the update noise σ_Δ: σ itself, or with adaptive clipping the
    larger σ_Δ that leaves room for the noised count at the same ε (Andrew et al. 2021)."""
    privacy, federation = config.privacy, config.federation
    rate = federation.clients_per_round / federation.num_clients
    plan = PrivacyPlan(
        mode=privacy.mode, noise_multiplier=privacy.noise_multiplier, max_grad_norm=privacy.max_grad_norm,
        delta=privacy.delta, accountant=privacy.accountant, max_epsilon=privacy.max_epsilon, client_sample_rate=rate,
    )  # fmt: skip
    if privacy.mode == "none":
        return plan
    import differential_privacy as dp

    if privacy.target_epsilon > 0:
        plan = dataclasses.replace(plan, noise_multiplier=_calibrated_noise(config, run, dp))
    update_noise = plan.noise_multiplier
    if privacy.adaptive_clipping:
        count_stddev = dp.count_noise_stddev(rate * federation.num_clients)
        update_noise = dp.adaptive_update_noise(noise_multiplier=plan.noise_multiplier, count_stddev=count_stddev)
    return dataclasses.replace(plan, update_noise_multiplier=update_noise)


def _calibrated_noise(config: ExperimentConfig, run: FederatedRun, dp: Any) -> float:
    """σ such that the whole run ends at <= privacy.target_epsilon.

    Central: q = clients_per_round / num_clients, one step per round. Local: every client k
    that the (seeded) schedule picks R_k times takes R_k · local_epochs · round(1/q_k)
    DP-SGD steps at q_k = batch_size / N_k; one σ must keep every client under the
    target, so it is the largest σ any client needs.
    """
    privacy, federation = config.privacy, config.federation
    rate = federation.clients_per_round / federation.num_clients
    calibrate = functools.partial(
        dp.calibrate_noise, target_epsilon=privacy.target_epsilon, delta=privacy.delta, accountant=privacy.accountant
    )
    if privacy.mode == "central":
        sigma = calibrate(sample_rate=rate, steps=federation.rounds)
    else:
        participation = Counter(c for r in range(1, federation.rounds + 1) for c in run.sample_clients(r))
        needs = set()
        for client, times in participation.items():
            q = dp.local_sample_rate(len(run.partitions[client]), federation.batch_size)
            needs.add((q, times * federation.local_epochs * dp.steps_per_epoch(q)))
        # ε grows with both q and steps: only clients no other client dominates can need the most noise.
        frontier = [(q, n) for q, n in needs if not any(q2 >= q and n2 >= n and (q2, n2) != (q, n) for q2, n2 in needs)]
        sigma = max(calibrate(sample_rate=q, steps=n) for q, n in frontier)
    return sigma


def run_experiment(
    config: ExperimentConfig,
    *,
    callback: Any = None,
    stop_event: StopEvent | None = None,
    data: FederatedData | None = None,
) -> list[RoundResult]:
    """Run a whole experiment, calling `callback(result)` after each round; returns all rounds."""
    results = []
    for result in FederatedRun(config, data=data).rounds(stop_event or threading.Event()):
        results.append(result)
        if callback is not None:
            callback(result)
    return results
