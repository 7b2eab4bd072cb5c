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

import functools
import io
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

import objectives
from objectives import predict_logits
from attacks import poison_update
from client_population import (
    ParticipationTally, allowed_steps, client_seed, dropouts, loss_sample, make_profiles, select_clients, stream_seed,
)  # fmt: skip
from client_trainers import (
    InProcessTrainer, ProcessPoolTrainer, TaskOutcome, TrainSettings, TrainTask, accuracy_on, full_steps, train_client,
)  # fmt: skip
from compression import Compressor
from data_handler import FederatedData, label_counts, partition, partition_natural, split_holdout, subset
from experiment_config import ExperimentConfig
from model import flatten, get_parameters, head_size, parameter_bytes, set_parameters, unflatten
from dp_fedavg import SECAGG_CLIP_RANGE, CentralSum, DistributedNoiseSum, plan_privacy, secagg_statistics
from secure_aggregation import SecAggConfig, SecAggError, secure_aggregate
from strategies import ClientUpdate, make_strategy
from workloads import build_model, is_text, load_data, model_options

__all__ = ["ExperimentConfig", "FederatedRun", "RoundResult", "ClientResult", "run_experiment"]

EVAL_BATCH = 1000
NON_FINITE = "returned non-finite weights (NaN or inf): its training diverged; lower the learning rate"
AUDIT_SEED_TAG = 0xA0D17  # the membership audit's sampling stream (see FederatedRun.audit)
ATTACK_TAG, COMPRESSION_TAG = 0xA77AC, 0xC0B4E55  # attackers' noise, stochastic quantization
CHECKPOINT_FORMAT = 1  # FederatedRun.checkpoint's layout; a reader refuses any other


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
    # ok | partial (straggler: fewer steps) | lost (trained; update never arrived) |
    # dropped (never started) | late (could not finish before the deadline; dropped) |
    # failed (its training raised, or it returned NaN/inf: excluded, `error` says why)
    status: str = "ok"
    malicious: bool = False
    bytes_up: int = 0  # after compression
    bytes_down: int = 0
    simulated_seconds: float = 0.0  # download + compute at its speed + upload, over its simulated link
    validation_accuracy: float | None = None  # its new local model on its own held-out split
    error: str = ""  # why a failed client was excluded


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
    skipped: str = ""  # why the global model was not updated this round ("" when it was)
    secure_aggregation: dict[str, Any] | None = None  # the protocol's statistics, when it ran
    simulated_seconds: float = 0.0  # the round's duration over the simulated network and speeds
    # Rubric scoring (multi-label): `ngss_data.rubric_metrics` of the global model on the test
    # split (exact match, micro/macro F1, score MAE, per label), overall and per school.
    metrics: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StopEvent(Protocol):
    """What `rounds` checks between rounds: a `threading.Event` will do."""

    def is_set(self) -> bool: ...


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean loss) of `model` on (x, y) (`objectives`: cross-entropy and accuracy,
    or for multi-label targets BCE and per-label accuracy)."""
    return objectives.scores(predict_logits(model, x, EVAL_BATCH), y)


def client_partitions(config: ExperimentConfig, data: FederatedData) -> list[np.ndarray]:
    """Each client's example indices (before its held-out split): one per school with the natural
    partition, else the seeded iid / dirichlet / shards split of `data` (after `subset`)."""
    federation = config.federation
    if config.data.partition == "natural":
        return partition_natural(data.train_groups, num_clients=federation.num_clients, group_names=data.group_names)
    return partition(
        data.train_y.numpy(), config.data.partition, num_clients=federation.num_clients, seed=config.system.seed,
        alpha=config.data.dirichlet_alpha,
    )  # fmt: skip


def train_settings(config: ExperimentConfig, num_classes: int, *, noise_multiplier: float) -> TrainSettings:
    """What every client trainer of a run is told (σ: the configured or calibrated one)."""
    federation, privacy = config.federation, config.privacy
    return TrainSettings(
        model_name=config.model.name,
        num_classes=num_classes,
        model_options=model_options(config),
        model_seed=config.system.seed,
        # Text models run Linear layers over (B, T, features): Opacus's hooks compute their per-example
        # gradients; our bookkeeping clipper handles (B, features) only (and refuses the rest).
        grad_sample_mode="hooks" if is_text(config) else "",
        local_epochs=federation.local_epochs,
        batch_size=federation.batch_size,
        learning_rate=federation.learning_rate,
        local_dp=privacy.mode == "local",
        noise_multiplier=noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        accountant=privacy.accountant,
        proximal_mu=federation.proximal_mu if federation.strategy == "fedprox" else 0.0,
        corrections=federation.strategy == "scaffold",
        optimizer=federation.client_optimizer,
    )


def resolve_workers(config: ExperimentConfig) -> int:
    """`system.num_workers`, with 0 meaning one per core, at most one per client per round."""
    if config.system.num_workers > 0:
        return min(config.system.num_workers, config.federation.clients_per_round)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, config.federation.clients_per_round))


# -- the run ---------------------------------------------------------------------------


class FederatedRun:
    """Everything a run needs, prepared once: data, partition, model, strategy, privacy,
    and the simulated federation (client profiles, compression, personal heads)."""

    def __init__(self, config: ExperimentConfig, *, data: FederatedData | None = None) -> None:
        self.config = config
        federation, seed = config.federation, config.system.seed
        if data is None:
            data = load_data(config)
        self.data = subset(
            data, max_train=config.data.max_train_examples, max_test=config.data.max_test_examples, seed=seed
        )
        parts = client_partitions(config, self.data)
        self.label_counts = label_counts(parts, self.data.train_y.numpy(), self.data.num_classes)
        # Each client's own held-out split (personalization, validation scores) is never trained on.
        self.partitions, self.holdouts = split_holdout(parts, federation.client_holdout, seed=seed)
        self.model = build_model(config, self.data.num_classes, seed=seed)
        self.strategy = make_strategy(federation)
        self.num_workers = resolve_workers(config)
        self.profiles = make_profiles(config, [len(p) for p in self.partitions])
        self.tally = ParticipationTally()
        self.full_steps = [
            full_steps(len(p), local_epochs=federation.local_epochs, batch_size=federation.batch_size)
            for p in self.partitions
        ]
        self.median_full_steps = float(np.median(self.full_steps))
        communication = config.communication
        self.compressor = Compressor(
            communication.compression, fraction=communication.topk_fraction, bits=communication.quantization_bits,
            error_feedback=communication.error_feedback,
        )  # fmt: skip
        params = get_parameters(self.model)
        self.head_size = head_size(params) if federation.personalization == "fedper" else 0
        self.heads: dict[int, torch.Tensor] = {}  # FedPer: each client's own final layer, kept on the client
        self.privacy = plan_privacy(config, self)
        self.histories: dict[int, tuple[tuple[float, float, int], ...]] = {}  # local DP, per client
        self.client_epsilons: dict[int, float] = {}
        self.stop_reason: str | None = None  # set when the run ends early (stop event, budget)
        self.trained_clients: set[int] = set()  # every client that has trained in some round
        self.clip_norm = config.privacy.max_grad_norm  # central: C of the next round (adaptive: moves)
        self.secagg_stats: dict[str, Any] | None = None  # the last round's secure-aggregation statistics
        self.failures: dict[int, str] = {}  # this round's faulty clients: why each was excluded
        self.completed_rounds = 0  # rounds done (a restored run goes on after its checkpoint's)

    # -- checkpoints: everything that carries from one round to the next ----------------
    #
    # Every random draw is seeded from (seed, round, client), so the RNG state to keep is the
    # round number; the rest is the global model and what rounds accumulate: the strategy's
    # state (momentum, moments, SCAFFOLD's control variates), each client's privacy accountant
    # history, the participation tally (availability-aware selection), the adaptive clip norm,
    # top-k residuals and FedPer heads. The partition, profiles and privacy plan are rebuilt
    # from the config, as they were at the start.

    def checkpoint(self) -> bytes:
        """The state after the last completed round, serialized (tensors and plain values only:
        `restore` reads it with `torch.load(weights_only=True)`, never unpickling code)."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "round": self.completed_rounds,
            "weights": flatten(get_parameters(self.model)),
            "strategy": self.strategy.state_dict(),
            "residuals": self.compressor.state_dict(),
            "heads": dict(self.heads),
            "histories": {c: [list(entry) for entry in h] for c, h in self.histories.items()},
            "client_epsilons": dict(self.client_epsilons),
            "selected": dict(self.tally.selected),
            "arrived": dict(self.tally.arrived),
            "trained_clients": sorted(self.trained_clients),
            "clip_norm": float(self.clip_norm),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()

    def restore(self, checkpoint: bytes) -> int:
        """Continue from a `checkpoint` of a run with the same config; returns its round.
        Raises ValueError for a checkpoint of another config or format."""
        try:
            state = torch.load(io.BytesIO(checkpoint), weights_only=True)
        except Exception as error:  # truncated or not ours: never trust it further
            raise ValueError(f"the checkpoint cannot be read: {type(error).__name__}: {error}") from error
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"the checkpoint is not format {CHECKPOINT_FORMAT} (written by another version)")
        try:  # written by an older version, it may lack keys added since
            saved = ExperimentConfig.from_stored(state["config"])
        except (ValueError, TypeError, AttributeError):
            saved = None
        if saved != self.config:
            raise ValueError("the checkpoint belongs to a run with another config")
        params = get_parameters(self.model)
        if state["weights"].shape != flatten(params).shape:
            raise ValueError("the checkpoint's weights do not fit the model")
        set_parameters(self.model, unflatten(state["weights"], params))
        self.strategy.load_state_dict(state["strategy"])
        self.compressor.load_state_dict(state["residuals"])
        self.heads = dict(state["heads"])
        self.histories = {c: tuple(tuple(entry) for entry in h) for c, h in state["histories"].items()}
        self.client_epsilons = dict(state["client_epsilons"])
        self.tally = ParticipationTally(selected=dict(state["selected"]), arrived=dict(state["arrived"]))
        self.trained_clients = set(state["trained_clients"])
        self.clip_norm = state["clip_norm"]
        self.completed_rounds = int(state["round"])
        return self.completed_rounds

    def evaluate_global(self) -> tuple[float, float, dict[str, Any] | None]:
        """(accuracy, loss, rubric metrics or None) of the current global model on the test split."""
        data = self.data
        logits = predict_logits(self.model, data.test_x, EVAL_BATCH)
        accuracy, loss = objectives.scores(logits, data.test_y)
        if not data.multilabel:
            return accuracy, loss, None
        from ngss_data import rubric_metrics

        predictions = (logits > 0).numpy().astype(np.int8)  # sigmoid ≥ 0.5
        metrics = rubric_metrics(
            predictions, data.test_y.numpy().astype(np.int8), data.test_groups,
            list(data.group_names) if data.group_names else None,
        )  # fmt: skip
        return accuracy, loss, metrics

    def sample_clients(self, round_number: int) -> list[int]:
        """This round's selected clients (`client_population.select_clients`); power-of-choice
        ranks candidates by the current global model's loss on a sample of their data."""
        return select_clients(
            self.config, round_number, profiles=self.profiles, tally=self.tally,
            loss_of=functools.partial(self._client_loss, round_number),
        )  # fmt: skip

    def _client_loss(self, round_number: int, client: int) -> float:
        sample = torch.from_numpy(loss_sample(self.partitions[client], self.config.system.seed, round_number, client))
        return evaluate(self.model, self.data.train_x[sample], self.data.train_y[sample])[1]

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

    def personalize(self) -> dict[str, Any] | None:
        """Each client's accuracy on its own held-out split: the global model's against its
        personalized model's (fedper: the global body with the client's own final layer;
        finetune: the global model after `finetune_epochs` of local SGD on the client's
        training split). Personalized models stay on their clients: nothing is released, so
        this adds no privacy cost. None without personalization."""
        federation = self.config.federation
        if federation.personalization == "none":
            return None
        data, params = self.data, get_parameters(self.model)
        global_weights = flatten(params)
        local = build_model(self.config, data.num_classes, seed=self.config.system.seed)
        local_params = get_parameters(local)
        clients = []
        for client in range(federation.num_clients):
            holdout = self.holdouts[client]
            if len(holdout) == 0:
                continue
            global_accuracy = accuracy_on(self.model, data.train_x, data.train_y, holdout)
            set_parameters(local, unflatten(global_weights, params))
            if federation.personalization == "fedper":
                if client in self.heads:
                    flat = flatten(local_params)
                    flat[-self.head_size :] = self.heads[client]
                    set_parameters(local, unflatten(flat, local_params))
            else:
                train_client(
                    local, data.train_x, data.train_y, self.partitions[client],
                    local_epochs=federation.finetune_epochs, batch_size=federation.batch_size,
                    learning_rate=federation.learning_rate, seed=stream_seed(self.config.system.seed, 0, client, 0xF1),
                )  # fmt: skip
            personal_accuracy = accuracy_on(local, data.train_x, data.train_y, holdout)
            clients.append(
                {"client": client, "examples": len(holdout), "global_accuracy": global_accuracy,
                 "personalized_accuracy": personal_accuracy}
            )  # fmt: skip
        if not clients:
            return None
        return {
            "method": federation.personalization,
            "clients": clients,
            "mean_global_accuracy": float(np.mean([c["global_accuracy"] for c in clients])),
            "mean_personalized_accuracy": float(np.mean([c["personalized_accuracy"] for c in clients])),
        }

    def rounds(self, stop_event: StopEvent | None = None) -> Iterator[RoundResult]:
        """Run the rounds (after a restored checkpoint's), yielding each result; `checkpoint()`
        taken at a yield holds the state after that round. Ends early after a round if
        `stop_event` is set, or before a round that would take ε past `privacy.max_epsilon`."""
        config, plan, federation = self.config, self.privacy, self.config.federation
        params = get_parameters(self.model)
        global_weights = flatten(params)
        settings = train_settings(config, self.data.num_classes, noise_multiplier=plan.noise_multiplier)
        slots = federation.clients_per_round  # central DP trains Poisson samples in chunks of this
        if config.system.backend == "mlx":  # local training on MLX; aggregation stays here
            from mlx_backend import MlxTrainer

            trainer: Any = MlxTrainer(self.data, settings, global_weights.numel(), slots)
        elif self.num_workers > 1:
            trainer = ProcessPoolTrainer(self.data, settings, global_weights.numel(), slots, self.num_workers)
        else:
            trainer = InProcessTrainer(self.data, settings, global_weights.numel(), slots)
        try:
            for round_number in range(self.completed_rounds + 1, federation.rounds + 1):
                clients = self.sample_clients(round_number)
                if (reason := self.budget_exhausted(round_number, clients)) is not None:
                    self.stop_reason = reason
                    break
                started = time.perf_counter()
                self.secagg_stats = None
                self.failures = {}
                statuses = self._plan_round(round_number, clients)
                clip_norm = self.clip_norm
                global_weights, outcomes, arrivals, skipped = self._train_and_aggregate(
                    trainer, global_weights, round_number, statuses
                )
                seconds = time.perf_counter() - started
                for client in clients:
                    self.tally.record(client, client in arrivals)
                self.trained_clients.update(o.task.client_id for o in outcomes)
                eval_started = time.perf_counter()
                for name, tensor in unflatten(global_weights, params).items():
                    params[name].copy_(tensor)
                accuracy, loss, metrics = self.evaluate_global()
                self.completed_rounds = round_number
                yield self.round_result(
                    round_number, statuses, outcomes, arrivals, accuracy=accuracy, loss=loss, seconds=seconds,
                    eval_seconds=time.perf_counter() - eval_started, clip_norm=clip_norm, skipped=skipped,
                    metrics=metrics,
                )  # fmt: skip
                if stop_event is not None and stop_event.is_set():
                    self.stop_reason = "stopped on request"
                    break
        finally:
            trainer.close()

    def _plan_round(self, round_number: int, clients: list[int]) -> dict[int, tuple[str, int]]:
        """Per selected client: (status, local step limit). `dropped` never starts, `late`
        cannot finish before the deadline (straggler_policy drop, or not one step),
        `lost` trains but its update never arrives, `partial` trains fewer steps."""
        federation = self.config.federation
        gone = dropouts(self.config, round_number, clients, self.profiles)
        plan = {}
        for client in clients:
            full = self.full_steps[client]
            steps = allowed_steps(
                full, self.profiles[client].speed, deadline=federation.round_deadline,
                median_full_steps=self.median_full_steps,
            )  # fmt: skip
            if client in gone and federation.dropout_stage == "before":
                plan[client] = ("dropped", 0)
            elif steps < full and (federation.straggler_policy == "drop" or steps < 1):
                plan[client] = ("late", 0)
            elif client in gone:
                plan[client] = ("lost", steps if steps < full else 0)
            else:
                plan[client] = ("partial", steps) if steps < full else ("ok", 0)
        return plan

    def _train_and_aggregate(
        self, trainer: Any, global_weights: torch.Tensor, round_number: int, statuses: dict[int, tuple[str, int]]
    ) -> tuple[torch.Tensor, list[TaskOutcome], dict[int, int], str]:
        """Train the clients that start, turn what arrives into updates (attack, compression),
        aggregate. Returns (new global weights, outcomes, {client: bytes up} of the updates that
        arrived, why the model was not updated or "")."""
        config, federation = self.config, self.config.federation
        seed, slots = config.system.seed, trainer.results.shape[0]
        malicious_labels = config.attack.behaviour == "label_flip"
        tasks = [
            TrainTask(
                slot % slots, client, self.partitions[client], client_seed(seed, round_number, client),
                self.histories.get(client, ()), max_steps=limit,
                flip_labels=malicious_labels and self.profiles[client].malicious,
                head=self.heads.get(client) if self.head_size else None,
                holdout=self.holdouts[client] if len(self.holdouts[client]) else None,
            )  # fmt: skip
            for slot, (client, (status, limit)) in enumerate(
                (c, s) for c, s in statuses.items() if s[0] not in ("dropped", "late")
            )
        ]
        central = self.privacy.mode == "central"
        if not central and len(tasks) > slots:
            raise AssertionError("more clients than result slots outside central DP")
        secure = federation.secure_aggregation
        aggregator = None
        if central:
            aggregator = (DistributedNoiseSum if secure else CentralSum)(self, global_weights, round_number)
        outcomes, updates, arrivals, lost_rows = [], [], {}, {}
        for start in range(0, len(tasks), slots):
            chunk = tasks[start : start + slots]
            if trainer.corrections is not None:
                for task in chunk:
                    trainer.corrections[task.slot].copy_(self.strategy.client_correction(task.client_id, global_weights))
            for outcome in trainer.train(global_weights, chunk):
                client, row = outcome.task.client_id, trainer.results[outcome.task.slot]
                outcomes.append(outcome)
                if failure := outcome.error or ("" if torch.isfinite(row).all() else NON_FINITE):
                    self.failures[client] = failure  # excluded: like a client lost after the key exchange
                    if aggregator is not None:
                        aggregator.add(client, torch.zeros_like(global_weights), lost=True)
                    elif secure:
                        lost_rows[client] = torch.zeros_like(global_weights)
                    continue
                if self.head_size:
                    self.heads[client] = row[-self.head_size :].clone()  # stays on the client
                if statuses[client][0] == "lost":
                    if aggregator is not None:
                        aggregator.add(client, row - global_weights, lost=True)
                    elif secure:  # it joined the key exchange, then vanished before its masked input
                        lost_rows[client] = row - global_weights
                    continue
                update, arrivals[client] = self._sent_update(round_number, client, row - global_weights)
                if aggregator is not None:
                    aggregator.add(client, update)
                else:
                    row.copy_(global_weights + update)  # what the server reconstructs
                    updates.append(
                        ClientUpdate(
                            client, row, len(outcome.task.indices), outcome.steps, outcome.loss,
                            validation_score=outcome.validation_accuracy,
                        )
                    )
        if aggregator is not None:  # DP-FedAvg: never skipped on the count of arrivals (dp_fedavg)
            new_weights, skipped = aggregator.result(statuses)
            if secure and self.secagg_stats and "participants" in self.secagg_stats:
                stats = self.secagg_stats
                total = stats["bytes_keys"] + stats["bytes_shares"] + stats["bytes_masked"] + stats["bytes_unmasking"]
                per_client = total // stats["participants"]
                arrivals.update(dict.fromkeys(arrivals, per_client))
            return new_weights, outcomes, arrivals, skipped
        if len(arrivals) < federation.min_clients:
            return global_weights, outcomes, arrivals, (
                f"{len(arrivals)} update(s) arrived, fewer than federation.min_clients = {federation.min_clients}"
            )  # fmt: skip
        if secure:
            try:
                updates = [self._secure_mean(global_weights, updates, lost_rows, arrivals)]
            except SecAggError as error:  # too few clients left to unmask: nothing is revealed
                return global_weights, outcomes, arrivals, f"secure aggregation failed: {error}"
        try:
            return self.strategy.aggregate(global_weights, updates), outcomes, arrivals, ""
        except ValueError as error:  # e.g. Krum with too few updates after dropouts
            return global_weights, outcomes, arrivals, str(error)

    def _secure_mean(
        self, global_weights: torch.Tensor, updates: list[ClientUpdate], lost: dict[int, torch.Tensor],
        arrivals: dict[int, int],
    ) -> ClientUpdate:  # fmt: skip
        """The example-weighted mean of the arrived updates, computed by secure aggregation so
        the server never sees one update; handed to the strategy as a single update. Clients
        that were lost after the key exchange are unmasked away through their shares."""
        federation = self.config.federation
        vectors = {u.client_id: (u.weights - global_weights).double().numpy() for u in updates}
        weights = {u.client_id: float(u.num_examples) for u in updates}
        for client, update in lost.items():
            vectors[client], weights[client] = update.double().numpy(), float(len(self.partitions[client]))
        result = secure_aggregate(
            vectors, weights,
            SecAggConfig(threshold=federation.secagg_threshold, neighbours=federation.secagg_neighbours,
                         clip_range=SECAGG_CLIP_RANGE),
            drop_after_sharing=frozenset(lost),
        )  # fmt: skip
        self.secagg_stats = secagg_statistics(result)
        per_client = result.stats.bytes_total // max(len(result.participants), 1)
        for client in arrivals:
            arrivals[client] = per_client  # masked vector + its share of keys, shares and unmasking
        mean = torch.from_numpy(result.weighted_sum / result.total_weight)
        steps = sum(u.steps for u in updates)
        weights_out = (global_weights.double() + mean).to(global_weights.dtype)
        return ClientUpdate(-1, weights_out, int(result.total_weight), steps, float(np.mean([u.loss for u in updates])))

    def _sent_update(self, round_number: int, client: int, update: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The update the server receives from `client` and the bytes it took: a malicious
        client's poisoned one, compressed. With FedPer only the body is sent; the head part
        passes through for the reporting-only global head and costs no bytes."""
        attack, seed = self.config.attack, self.config.system.seed
        if self.profiles[client].malicious:
            generator = torch.Generator().manual_seed(stream_seed(seed, round_number, client, ATTACK_TAG))
            update = poison_update(
                attack.behaviour, update, scale=attack.scale, noise_std=attack.noise_std, generator=generator
            )
        body = update.numel() - self.head_size
        generator = torch.Generator().manual_seed(stream_seed(seed, round_number, client, COMPRESSION_TAG))
        sent, num_bytes = self.compressor.compress(client, update[:body].contiguous(), generator)
        if self.head_size:
            sent = torch.cat([sent, update[body:]])
        return sent, num_bytes

    def budget_exhausted(self, round_number: int, clients: list[int]) -> str | None:
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


    def round_result(
        self, round_number: int, statuses: dict[int, tuple[str, int]], outcomes: list[TaskOutcome],
        arrivals: dict[int, int], *, accuracy: float, loss: float, seconds: float, eval_seconds: float,
        clip_norm: float, skipped: str, metrics: dict[str, Any] | None = None,
    ) -> RoundResult:  # fmt: skip
        plan, federation = self.privacy, self.config.federation
        down_bytes = parameter_bytes(get_parameters(self.model)) - 4 * self.head_size  # FedPer: the body only
        by_client = {o.task.client_id: o for o in outcomes}
        trained_steps = sum(o.steps for o in outcomes)
        step_seconds = sum(o.seconds for o in outcomes) / trained_steps if trained_steps else 0.0
        deadline_seconds = federation.round_deadline * self.median_full_steps * step_seconds
        if plan.mode == "local":
            import differential_privacy as dp

            for o in outcomes:
                self.histories[o.task.client_id] = o.history
                self.client_epsilons[o.task.client_id] = dp.epsilon_from_history(o.history, plan.delta, plan.accountant)
        clients, simulated, epsilon, sample_rate, privacy_steps = [], 0.0, 0.0, 0.0, 0
        for client, (status, _limit) in statuses.items():
            profile, outcome = self.profiles[client], by_client.get(client)
            failure = self.failures.get(client, "")
            common = dict(
                status="failed" if failure else status, malicious=profile.malicious,
                num_examples=len(self.partitions[client]), id=client, epsilon=self.client_epsilons.get(client, 0.0),
                error=failure,
            )  # fmt: skip
            if outcome is None:  # dropped before training, or too late to start
                late = status == "late"
                clients.append(ClientResult(
                    steps=0, loss=0.0, bytes_down=down_bytes if late else 0,
                    simulated_seconds=profile.transfer_seconds(down_bytes) + deadline_seconds if late else 0.0,
                    **common,
                ))  # fmt: skip
                if late and federation.straggler_policy == "drop":
                    simulated = max(simulated, deadline_seconds)
                continue
            up = arrivals.get(client, 0)
            client_seconds = (
                profile.transfer_seconds(down_bytes) + outcome.seconds / profile.speed + profile.transfer_seconds(up)
            )
            steps, rate = outcome.steps, 0.0
            if plan.mode == "local":
                rate = outcome.history[-1][1] if outcome.history else 0.0
                steps = sum(n for _, _, n in outcome.history)
                sample_rate, privacy_steps = max(sample_rate, rate), max(privacy_steps, steps)
            if client in arrivals:
                simulated = max(simulated, client_seconds)
            clients.append(ClientResult(
                steps=steps, loss=0.0 if failure else outcome.loss, sample_rate=rate, bytes_up=up, bytes_down=down_bytes,
                simulated_seconds=client_seconds, validation_accuracy=outcome.validation_accuracy, **common,
            ))  # fmt: skip
        if plan.mode == "local":
            epsilon = max(self.client_epsilons.values(), default=0.0)  # never decreases
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
            bytes_up=sum(c.bytes_up for c in clients),
            bytes_down=sum(c.bytes_down for c in clients),
            clients=clients,
            noise_multiplier=plan.noise_multiplier if private else 0.0,
            max_grad_norm=clip_norm if private else 0.0,
            sample_rate=sample_rate,
            privacy_steps=privacy_steps,
            accountant=plan.accountant if private else "",
            skipped=skipped,
            simulated_seconds=simulated,
            secure_aggregation=self.secagg_stats,
            metrics=metrics,
        )


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
