"""The federated learning engine: the round loop, written once for every runtime.

Each round: sample clients, plan who drops out or runs late, hand the starting clients to a
trainer (`engine.client_trainers.Trainer`: this process, a pool of single-threaded worker
processes, MLX, or Flower SuperNodes), turn what arrives into updates (attacks, compression),
aggregate (a strategy, DP-FedAvg's noised sum, secure aggregation), evaluate, and yield a
`RoundResult`. It knows no storage and no UI, and checks a stop event between rounds.

    run = FederatedRun(ExperimentConfig())
    for result in run.rounds(stop_event):          # or run.rounds(stop_event, trainer=remote)
        print(result.round, result.accuracy)
    blob = run.checkpoint()                         # RunState: all that carries between rounds

Every random choice is seeded from `system.seed`: partition, initial weights, client
sampling, and each client's batch order (seeded by (seed, round, client), so the
result does not depend on which worker, process or machine trained which client).
"""

from __future__ import annotations

import functools
import io
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

import telemetry
from data_handler import FederatedData, client_partitions, insert_canaries, label_counts, split_holdout, subset
from engine import analysis, fedbuff, objectives
from engine.client_population import (
    ClientProfiles, ParticipationTally, allowed_steps, client_seed, dropouts, make_profiles, select_clients,
)  # fmt: skip
from engine.client_trainers import (
    FOLD_DROP, FOLD_SUM, NON_FINITE, ROW, FoldingTrainer, InProcessTrainer, Live, RemoteClients, TaskOutcome, Trainer,
    TrainTask,
    candidate_loss, full_steps, train_settings,
)  # fmt: skip
from engine.compression import Compressor, compressed_bytes, make_compressor, outgoing_update
from engine.fairness import client_accuracies, with_client_accuracies
from engine.objectives import predict_logits
from engine.process_pool import ProcessPoolTrainer
from engine.results import ClientResult, RoundResult
from engine.secure_aggregation import SecAggError, secure_aggregate
from engine.strategies import ClientUpdate, Strategy, make_strategy, with_global_losses
from engine.streaming import RunningSum, round_streams, squared_distance, stream_slots, trainer_folds
from engine.suspicion import (
    DirectionHistory, FlagHistory, leading_sizes, record_directions, record_flags, score_updates, to_exclude,
)  # fmt: skip
from engine.ema import released, update_ema
from engine.scattering import with_scattering
from engine.workloads import build_model, load_data
from experiment_config import ExperimentConfig
from model import flatten, get_parameters, head_size, parameter_bytes, set_parameters, unflatten
from ngss.metrics import rubric_metrics
from privacy.dp_fedavg import (
    CentralSum, DistributedNoiseSum, PrivacyPlan, RoundSum, TreeSum, central_epsilon_after, plan_privacy,
    secagg_protocol, secagg_statistics,
)  # fmt: skip
from privacy.ftrl import TreeAggregator

__all__ = ["ExperimentConfig", "FederatedRun", "RoundResult", "ClientResult", "RunState", "run_experiment",
           "client_partitions", "train_settings"]

CHECKPOINT_FORMAT = 1  # RunState.to_bytes's layout; a reader refuses any other
ABSENT = ("dropped", "late")  # selected clients that never start training
History = tuple[tuple[float, float, int], ...]  # local DP: a client's accountant, (σ, q, steps) per entry
Statuses = dict[int, tuple[str, int]]  # per selected client: (status, local step limit; 0 = no limit)


class StopEvent(Protocol):
    """What `rounds` checks between rounds: a `threading.Event` will do."""

    def is_set(self) -> bool: ...


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean loss) of `model` on (x, y) (`objectives`: cross-entropy and accuracy,
    or for multi-label targets BCE and per-label accuracy)."""
    return objectives.scores(predict_logits(model, x), y)


def resolve_workers(config: ExperimentConfig) -> int:
    """`system.num_workers`, with 0 meaning one per core, at most one per client per round."""
    if config.system.num_workers > 0:
        return min(config.system.num_workers, config.federation.clients_per_round)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, config.federation.clients_per_round))


# -- what carries from round to round -------------------------------------------------------


@dataclass
class RunState:
    """Everything that carries from one round to the next, and all a checkpoint holds.

    Every random draw is seeded from (seed, round, client), so the RNG state to keep is the
    round number; the rest is the global model and what rounds accumulate: the strategy's
    state (momentum, moments, SCAFFOLD's control variates), top-k residuals, FedPer heads,
    each client's privacy accountant, the participation tally (availability-aware selection),
    the adaptive clip norm and the server's EMA of the weights. The partition, profiles and
    privacy plan are rebuilt from the config, as they were at the start.
    """

    completed_rounds: int
    weights: torch.Tensor  # (P,) the global model after `completed_rounds`
    strategy: Strategy
    compressor: Compressor
    clip_norm: float  # central DP: C of the next round (adaptive clipping moves it)
    heads: dict[int, torch.Tensor] = field(default_factory=dict)  # FedPer: each client's own final layer
    histories: dict[int, History] = field(default_factory=dict)  # local DP, per client
    client_epsilons: dict[int, float] = field(default_factory=dict)
    tally: ParticipationTally = field(default_factory=ParticipationTally)
    trained_clients: set[int] = field(default_factory=set)  # every client that has trained in some round
    flagged_rounds: FlagHistory = field(default_factory=dict)  # suspicion: client → the rounds it was flagged in
    directions: DirectionHistory = field(default_factory=dict)  # suspicion: client → running relative direction h
    ema: torch.Tensor | None = None  # federation.server_ema: (P,) float64 average of the global weights, released
    tree: TreeAggregator | None = None  # DP-FTRL (privacy.mechanism = "dp-ftrl"): w_0 and the noised tree
    buffer: fedbuff.Buffer | None = None  # federation.mode = "async": the updates in flight, the simulated clock

    def to_bytes(self, config: ExperimentConfig) -> bytes:
        """The state serialized with its config (tensors and plain values only: `load` reads it
        with `torch.load(weights_only=True)`, never unpickling code)."""
        state = {
            "format": CHECKPOINT_FORMAT, "config": config.to_dict(), "round": self.completed_rounds,
            "weights": self.weights, "strategy": self.strategy.state_dict(),
            "residuals": self.compressor.state_dict(), "heads": dict(self.heads),
            "histories": {c: [list(entry) for entry in h] for c, h in self.histories.items()},
            "client_epsilons": dict(self.client_epsilons), "selected": torch.from_numpy(self.tally.selected),
            "arrived": torch.from_numpy(self.tally.arrived), "trained_clients": sorted(self.trained_clients),
            "clip_norm": float(self.clip_norm),
            "flagged_rounds": {c: list(rounds) for c, rounds in self.flagged_rounds.items()}, "ema": self.ema,
            "directions": dict(self.directions),
            "tree": self.tree.state_dict() if self.tree is not None else None,
            "buffer": self.buffer.state_dict() if self.buffer is not None else None,
        }  # fmt: skip
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()

    def load(self, checkpoint: bytes, config: ExperimentConfig) -> None:
        """Take the state of `checkpoint` (from `to_bytes` of a run with the same config).
        Raises ValueError for a checkpoint of another config, format or model."""
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
        if saved != config:
            raise ValueError("the checkpoint belongs to a run with another config")
        if state["weights"].shape != self.weights.shape:
            raise ValueError("the checkpoint's weights do not fit the model")
        self.weights = state["weights"]
        self.strategy.load_state_dict(state["strategy"])
        self.compressor.load_state_dict(state["residuals"])
        self.heads = dict(state["heads"])
        self.histories = {c: tuple(tuple(entry) for entry in h) for c, h in state["histories"].items()}
        self.client_epsilons = dict(state["client_epsilons"])
        self.tally = ParticipationTally.restored(state["selected"], state["arrived"])
        self.trained_clients = set(state["trained_clients"])
        flagged = state.get("flagged_rounds", {})  # absent from checkpoints written before suspicion scores
        self.flagged_rounds = {int(c): tuple(int(r) for r in rounds) for c, rounds in flagged.items()}
        self.directions = {int(c): float(h) for c, h in state.get("directions", {}).items()}  # absent: older
        self.clip_norm = state["clip_norm"]
        self.ema = state.get("ema")  # absent from checkpoints written before federation.server_ema; None when off
        if self.tree is not None:  # DP-FTRL resumes from its tree, or not at all
            if state.get("tree") is None:
                raise ValueError("the checkpoint holds no DP-FTRL tree")
            self.tree.load_state_dict(state["tree"])
        if self.buffer is not None:  # async: resumes with the updates in flight, or not at all
            if state.get("buffer") is None:
                raise ValueError("the checkpoint holds no asynchronous buffer")
            self.buffer = fedbuff.Buffer.from_state(state["buffer"])
        self.completed_rounds = int(state["round"])


@dataclass
class RoundWork:
    """One round in progress: what each selected client was planned to do and did, the updates
    that arrived and the bytes they took, and why faulty clients were excluded."""

    statuses: Statuses
    aggregator: CentralSum | DistributedNoiseSum | None  # DP-FedAvg's sum (DP-FTRL's: TreeSum), under central DP
    clip_norm: float  # this round's C
    outcomes: list[TaskOutcome] = field(default_factory=list)
    updates: list[ClientUpdate] = field(default_factory=list)
    arrivals: dict[int, int] = field(default_factory=dict)  # client → bytes up of its arrived update
    failures: dict[int, str] = field(default_factory=dict)  # client → why it was excluded
    faults: dict[int, str] = field(default_factory=dict)  # client → the real fault it was lost or dropped for
    lost: dict[int, torch.Tensor] = field(default_factory=dict)  # secure aggregation: left after the key exchange
    # A streamed round (`engine.streaming`): the updates received as rows, folded as they come (`updates`
    # stays empty), and whether the trainer folds its clients itself (`FoldingTrainer.take_sum`).
    running: RunningSum | None = None
    folded: bool = False
    fold_factors: dict[int, tuple[float, float]] = field(default_factory=dict)  # client → `Strategy.fold_factors`
    skipped: str = ""  # why the global model was not updated
    secure_aggregation: dict[str, Any] | None = None  # the protocol's statistics, when it ran
    held: bool = False  # the clients hold their uploads: secure aggregation runs with them (`RemoteClients`)
    suspicion: dict[int, tuple[float, bool]] = field(default_factory=dict)  # client → (score, flagged), if scored
    excluded: set[int] = field(default_factory=set)  # arrived, left out as suspicious (federation.exclusion)
    buffered: tuple[list[ClientResult], float] | None = None  # async: the applied updates' records, simulated seconds


class RoundAbandoned(Exception):
    """A stop asked for inside a round (`FederatedRun.abandon_round`): the round is not finished."""


class RoundProgress:
    """Where the running round stands, for another thread to read (`FederatedRun.progress`):
    clients whose outcome came back, and local steps taken, live from this machine's trainers
    (`client_trainers.Live`) while a chunk of tasks trains."""

    def __init__(self, round_number: int, planned: dict[int, int]) -> None:
        self.round, self.started, self.planned = round_number, time.monotonic(), planned  # client → steps
        self.done_clients, self.done_steps, self.received_ids = 0, 0, set()
        self.chunk: list[TrainTask] = []
        self.live: Live | None = None
        self.abandoned = False
        self.lock = threading.Lock()

    def start_chunk(self, chunk: list[TrainTask], live: Live | None) -> None:
        with self.lock:
            if live is not None:
                live.reset()
            self.chunk, self.live = chunk, live

    def received(self, outcome: TaskOutcome) -> None:
        with self.lock:  # a reader sees the client counted once: in flight or back
            self.received_ids.add(outcome.task.client_id)
            self.done_clients, self.done_steps = self.done_clients + 1, self.done_steps + outcome.steps

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            live = self.live
            training = [t for t in self.chunk if t.client_id not in self.received_ids] if live is not None else []
            in_flight = live.steps([t.slot for t in training]) if training else 0
            finished = sum(int(live.counts[t.slot]) >= self.planned[t.client_id] for t in training)
            clients, steps = self.done_clients + finished, self.done_steps + in_flight
        return {
            "round": self.round, "clients_total": len(self.planned), "clients_done": clients,
            "batches_total": sum(self.planned.values()), "batches_done": steps,
            "seconds": round(time.monotonic() - self.started, 1),
        }  # fmt: skip


# -- the run ---------------------------------------------------------------------------


class FederatedRun:
    """Everything a run needs, prepared once (data, partition, model, privacy plan, the simulated
    federation: client profiles and step budgets), and its `RunState`."""

    def __init__(self, config: ExperimentConfig, *, data: FederatedData | None = None) -> None:
        self.config = config
        federation, seed = config.federation, config.system.seed
        if data is None:
            data = load_data(config)
        self.data = with_scattering(config, subset(  # scatter models: each client's features, computed once
            data, max_train=config.data.max_train_examples, max_test=config.data.max_test_examples, seed=seed
        ))  # fmt: skip
        parts = client_partitions(config, self.data)
        self.label_counts = label_counts(parts, self.data.train_y.numpy(), self.data.num_classes)
        # Each client's own held-out split (personalization, validation scores) is never trained on.
        self.partitions, self.holdouts = split_holdout(parts, federation.client_holdout, seed=seed)
        # The one-run audit's canaries join the training data after the holdout split: none is held out.
        self.data, self.partitions, self.canaries = insert_canaries(
            self.data, self.partitions, count=config.privacy.canary_count(), seed=seed
        )
        self.model = build_model(config, self.data.num_classes, seed=seed)
        self.num_workers = resolve_workers(config)
        self.profiles: ClientProfiles = make_profiles(config, [len(p) for p in self.partitions])
        self.full_steps = [
            full_steps(len(p), local_epochs=federation.local_epochs, batch_size=federation.batch_size)
            for p in self.partitions
        ]
        self.median_full_steps = float(np.median(self.full_steps))
        params = get_parameters(self.model)
        self.head_size = head_size(params) if federation.personalization == "fedper" else 0
        self.state = RunState(
            completed_rounds=0, weights=flatten(params), strategy=make_strategy(federation),
            compressor=make_compressor(config),
            clip_norm=config.privacy.max_grad_norm,
        )  # fmt: skip
        if config.privacy.mode == "central" and config.privacy.mechanism == "dp-ftrl":
            self.state.tree = TreeAggregator(self.state.weights)
        self.asynchronous = federation.mode == "async"  # FedBuff: one round is one server step (`engine.fedbuff`)
        if self.asynchronous:
            self.state.buffer = fedbuff.Buffer()
        # Rounds fold each update into a running sum instead of holding every one (`engine.streaming`).
        self.streams = not self.asynchronous and round_streams(  # async: updates wait in the buffer
            config, strategy_streams=self.state.strategy.streams, num_params=self.state.weights.numel())
        self.privacy: PrivacyPlan = plan_privacy(
            config, partition_sizes=[len(p) for p in self.partitions], participation=self._planned_participation()
        )
        self.stop_reason: str | None = None  # set when the run ends early (stop event, budget)
        self.round_progress: RoundProgress | None = None  # the running round's, while one runs

    def _planned_participation(self) -> dict[int, int] | None:
        """How many rounds the seeded schedule picks each client, where σ's calibration needs it
        (local DP with a target ε and uniform selection); None where selection depends on
        training (every client is then assumed picked every round) or nothing needs it."""
        config = self.config
        if config.privacy.mode != "local" or config.privacy.target_epsilon <= 0:
            return None
        if config.federation.selection != "uniform" or self.asynchronous:  # async: who starts depends on arrivals
            return None
        return dict(Counter(c for r in range(1, config.federation.rounds + 1) for c in self.sample_clients(r)))

    # -- checkpoints ---------------------------------------------------------------------

    def checkpoint(self) -> bytes:
        """The state after the last completed round, serialized (`RunState.to_bytes`)."""
        return self.state.to_bytes(self.config)

    def restore(self, checkpoint: bytes) -> int:
        """Continue from a `checkpoint` of a run with the same config; returns its round.
        Raises ValueError for a checkpoint of another config or format."""
        self.state.load(checkpoint, self.config)
        set_parameters(self.model, unflatten(released(self.state.weights, self.state.ema), get_parameters(self.model)))
        return self.state.completed_rounds

    # -- the rounds ----------------------------------------------------------------------

    def make_trainer(self) -> Trainer:
        """The trainer `system.backend` and `system.num_workers` ask for, on this machine."""
        config, plan = self.config, self.privacy
        settings = train_settings(config, self.data.num_classes, noise_multiplier=plan.noise_multiplier,
                                  strategy=self.state.strategy)  # fmt: skip
        num_params, slots = self.state.weights.numel(), config.federation.clients_per_round
        folding = self.streams and trainer_folds(config) and config.system.backend != "mlx"
        if self.streams and not folding:  # the round loop folds the rows as they come: chunks of the round
            slots = stream_slots(slots, num_params, self.num_workers)
        if config.system.backend == "mlx":  # local training on MLX; aggregation stays here
            from mlx_runtime.trainer import MlxTrainer  # MLX loads only when asked for

            return MlxTrainer(self.data, settings, num_params, slots)
        if self.num_workers > 1:
            return ProcessPoolTrainer(self.data, settings, num_params, slots, self.num_workers, folding=folding)
        return InProcessTrainer(self.data, settings, num_params, slots, folding=folding)

    def rounds(self, stop_event: StopEvent | None = None, *, trainer: Trainer | None = None) -> Iterator[RoundResult]:
        """Run the rounds (after a restored checkpoint's), yielding each result; `checkpoint()`
        taken at a yield holds the state after that round. Ends early after a round if
        `stop_event` is set, or before a round that would take ε past `privacy.max_epsilon`.
        `trainer`: where clients train (default: `make_trainer()`, closed at the end; a given
        one, e.g. Flower's, belongs to the caller)."""
        own = trainer is None
        trainer = self.make_trainer() if trainer is None else trainer
        try:
            for round_number in range(self.state.completed_rounds + 1, self.config.federation.rounds + 1):
                clients = self.sample_clients(round_number, trainer)
                if (reason := self.budget_exhausted(round_number, clients)) is not None:
                    self.stop_reason = reason
                    break
                try:
                    result = self.run_round(trainer, round_number, clients)
                except RoundAbandoned:
                    self.stop_reason = f"stopped on request during round {round_number}, which was not finished"
                    break
                yield result
                if stop_event is not None and stop_event.is_set():
                    self.stop_reason = "stopped on request"
                    break
        finally:
            if own:
                trainer.close()

    def run_round(self, trainer: Trainer, round_number: int, clients: list[int]) -> RoundResult:
        """Train `clients` with `trainer`, aggregate what arrives, evaluate; the state moves on.
        Inside a "round" span: its clients' training, the aggregation and the evaluation are its children."""
        with telemetry.span("round", round=round_number, selected=len(clients)) as span:
            result = self._run_round(trainer, round_number, clients)
            arrived = sum(c.status in ("ok", "partial") for c in result.clients)
            span.set(
                arrived=arrived, lost=len(result.clients) - arrived, bytes_up=result.bytes_up,
                bytes_down=result.bytes_down, epsilon=result.epsilon, seconds=result.seconds,
                skipped=result.skipped or None,
            )  # fmt: skip
        return result

    def _run_round(self, trainer: Trainer, round_number: int, clients: list[int]) -> RoundResult:
        state, started = self.state, time.perf_counter()
        work = self._train(trainer, round_number, self._plan_round(round_number, clients))
        new_weights = self._server_step(work, trainer, round_number)
        seconds = time.perf_counter() - started
        for client in clients:
            state.tally.record(client, client in work.arrivals)
        state.trained_clients.update(o.task.client_id for o in work.outcomes)
        if self.privacy.mode == "local":
            import differential_privacy as dp  # opacus (~1.4 s to import) loads only with privacy on

            for outcome in work.outcomes:  # each client's accountant, as it reported it
                state.histories[outcome.task.client_id] = outcome.history
                state.client_epsilons[outcome.task.client_id] = dp.epsilon_from_history(
                    outcome.history, self.privacy.delta, self.privacy.accountant
                )
        state.weights, state.completed_rounds = new_weights, round_number
        state.ema = update_ema(state.ema, new_weights, self.config.federation.server_ema)  # None: off
        eval_started = time.perf_counter()
        set_parameters(self.model, unflatten(released(new_weights, state.ema), get_parameters(self.model)))
        with telemetry.span("evaluate", round=round_number, examples=len(self.data.test_y)):
            evaluation = self.evaluate_global()
        accuracies = {} if self.data.info.get("placeholder_rows") else client_accuracies(  # fairness; data at sites:
            self.model, self.data.train_x, self.data.train_y, self.holdouts)  # the holdouts are there, not here
        result = self._round_result(round_number, work, evaluation, (seconds, time.perf_counter() - eval_started))
        result = with_client_accuracies(result, accuracies)
        self.round_progress = None
        return result

    def _server_step(self, work: RoundWork, trainer: Trainer, round_number: int) -> torch.Tensor:
        """The next global weights: the round's aggregate, or under async FedBuff's step (`_buffer_step`)."""
        if not self.asynchronous:
            self._screen(work, round_number)
        if self.state.strategy.needs_global_losses and work.running is None:  # q-FedAvg held: F_k of the round-start
            work.updates = with_global_losses(work.updates, self._global_losses(trainer, round_number, work.updates))
        with telemetry.span("aggregate", round=round_number, updates=len(work.updates)):
            return self._buffer_step(work, round_number) if self.asynchronous else self._aggregate(work, trainer)

    def _buffer_step(self, work: RoundWork, round_number: int) -> torch.Tensor:
        """FedBuff (`engine.fedbuff`): the updates trained this step join the pool, arriving after their
        simulated download, compute and upload; the buffer_size earliest are averaged, each discounted by its
        staleness, and the strategy takes that mean as its one pseudo-update. Failed clients are recorded now."""
        state, federation, weights = self.state, self.config.federation, self.state.weights
        records = {c.id: c for c in self._client_results(work)[0]}
        arrivals = []
        for update in work.updates:
            record = records[update.client_id]
            seconds = fedbuff.client_seconds(self.profiles[update.client_id], steps=update.steps,
                                             bytes_down=record.bytes_down, bytes_up=record.bytes_up)  # fmt: skip
            arrivals.append(fedbuff.Pending(update.client_id, round_number - 1, state.buffer.clock + seconds,
                                            update.weights - weights, replace(record, simulated_seconds=seconds)))
        step = fedbuff.server_step(state.buffer, arrivals, version=round_number - 1,
                                   buffer_size=federation.buffer_size, exponent=federation.staleness_exponent)
        state.buffer = step.buffer
        work.buffered = (step.applied + [records[c] for c in work.failures], step.seconds)
        if step.delta is None:
            work.skipped = "no update is in flight: every client of this step failed"
            return weights
        applied = step.applied
        mean = ClientUpdate(-1, (weights.double() + step.delta).to(weights.dtype), sum(c.num_examples for c in applied),
                            sum(c.steps for c in applied), float(np.mean([c.loss for c in applied])))  # fmt: skip
        return state.strategy.aggregate(weights, [mean])

    def _plan_round(self, round_number: int, clients: list[int]) -> Statuses:
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

    def _tasks(
        self, round_number: int, statuses: Statuses, slots: int, *, fold: bool = False,
        factors: dict[int, tuple[float, float]] | None = None,
    ) -> list[TrainTask]:  # fmt: skip
        """The training tasks of the clients that start, slot i % slots each; `fold`: each is folded
        into the trainer's running sum (FOLD_SUM), or dropped there if its update is lost (FOLD_DROP),
        weighted with its `factors` (q-FedAvg's, `Strategy.fold_factors`)."""
        factors = factors or {}
        seed, malicious_labels = self.config.system.seed, self.config.attack.behaviour == "label_flip"
        starting = [(c, limit, status) for c, (status, limit) in statuses.items() if status not in ABSENT]
        context = telemetry.inject()  # the round's span: each client's training joins it, in any process
        return [
            TrainTask(
                slot % slots, client, self.partitions[client], client_seed(seed, round_number, client),
                self.state.histories.get(client, ()), max_steps=limit,
                flip_labels=malicious_labels and self.profiles[client].malicious,
                head=self.state.heads.get(client) if self.head_size else None,
                holdout=self.holdouts[client] if len(self.holdouts[client]) else None, round_number=round_number,
                trace_context=context, fold=(FOLD_DROP if status == "lost" else FOLD_SUM) if fold else ROW,
                fold_factor=scale, distance_factor=distance,
            )  # fmt: skip
            for slot, (client, limit, status) in enumerate(starting)
            for scale, distance in [factors.get(client, (1.0, 0.0))]
        ]

    def _train(self, trainer: Trainer, round_number: int, statuses: Statuses) -> RoundWork:
        """Train the clients that start, in chunks of the trainer's slots (central DP's Poisson
        samples can be larger), and receive each outcome as it comes."""
        state, slots = self.state, trainer.results.shape[0]
        folded = self.streams and isinstance(trainer, FoldingTrainer) and trainer_folds(self.config)
        factors = self._fold_factors(trainer, round_number, statuses) if self.streams else {}
        tasks = self._tasks(round_number, statuses, slots, fold=folded, factors=factors)
        progress = self.round_progress = RoundProgress(
            round_number, {t.client_id: t.max_steps or self.full_steps[t.client_id] for t in tasks})
        central = self.privacy.mode == "central"
        if not central and not self.streams and not self.asynchronous and len(tasks) > slots:  # async: rows cloned
            raise AssertionError("more clients than result slots outside central DP and streamed rounds")
        aggregator: CentralSum | DistributedNoiseSum | None = None
        if central and self.config.federation.secure_aggregation:
            aggregator = DistributedNoiseSum(self.config, self.privacy, state.weights, round_number,
                                             clip_norm=state.clip_norm, profiles=self.profiles)  # fmt: skip
        elif central and state.tree is not None:  # DP-FTRL
            aggregator = TreeSum(self.config, self.privacy, state.weights, round_number, clip_norm=state.clip_norm,
                                 tree=state.tree)  # fmt: skip
        elif central:
            aggregator = CentralSum(self.config, self.privacy, state.weights, round_number, clip_norm=state.clip_norm)
        work = RoundWork(dict(statuses), aggregator, state.clip_norm)
        if self.streams:
            work.running, work.folded, work.fold_factors = RunningSum(state.weights.numel()), folded, factors
            if folded:
                trainer.take_sum()  # nothing left from a round given up midway
        for start in range(0, len(tasks), slots):
            chunk = tasks[start : start + slots]
            if trainer.corrections is not None:
                for task in chunk:
                    trainer.corrections[task.slot].copy_(state.strategy.client_correction(task.client_id, state.weights))
            progress.start_chunk(chunk, getattr(trainer, "live", None))  # only this machine's trainers have one
            outcomes = trainer.train(state.weights, chunk)
            if progress.abandoned:
                raise RoundAbandoned
            for outcome in outcomes:
                self._receive(work, round_number, outcome, trainer.results[outcome.task.slot])
                progress.received(outcome)
        return work

    def progress(self) -> dict[str, Any] | None:
        """Where the running round stands (`RoundProgress.snapshot`), or None between rounds; safe
        to call from another thread."""
        progress = self.round_progress
        return None if progress is None else progress.snapshot()

    def abandon_round(self) -> bool:
        """Asked from another thread (a stop while a round runs): the running round's tasks stop at
        their next local step and the round is given up, unrecorded (its updates are never
        aggregated or released; `rounds` ends). Not under local DP, whose clients' accountants
        must see every step they took: there the round finishes first. True if it was abandoned."""
        progress = self.round_progress
        if progress is None or self.privacy.mode == "local":
            return False
        progress.abandoned = True
        if (live := progress.live) is not None:
            live.abort()
        return True

    def _receive(self, work: RoundWork, round_number: int, outcome: TaskOutcome, row: torch.Tensor) -> None:
        """Take one client's outcome: exclude it if it failed, was lost or never ran (a real fault
        of a remote trainer); else keep its head (FedPer) and turn its new weights `row` into the
        update the server receives (attack, compression)."""
        client, weights = outcome.task.client_id, self.state.weights
        if outcome.fault:  # a real fault: it never ran, or its reply never came (`error` says so)
            work.statuses[client] = (outcome.fault, 0)
            work.faults[client] = outcome.error
            return
        work.outcomes.append(outcome)
        if outcome.held:
            self._receive_held(work, outcome)
            return
        if outcome.task.fold != ROW:
            self._receive_folded(work, outcome)
            return
        sent = outcome.sent  # None: the client's new weights are in `row`; else it made its upload itself
        if failure := outcome.error or ("" if torch.isfinite(row if sent is None else sent).all() else NON_FINITE):
            work.failures[client] = failure  # excluded: like a client lost after the key exchange
            self._exclude(work, client, torch.zeros_like(weights))
            return
        if self.head_size and sent is None:
            self.state.heads[client] = row[-self.head_size :].clone()  # stays on the client
        if work.statuses[client][0] == "lost":  # it joined the key exchange, then vanished before its input
            self._exclude(work, client, row - weights if sent is None else sent)
            return
        if sent is None:
            update, work.arrivals[client] = self._sent_update(round_number, client, row - weights)
        else:
            update, work.arrivals[client] = sent, outcome.sent_bytes
        if work.aggregator is not None:
            work.aggregator.add(client, update)
            return
        row.copy_(weights + update)  # what the server reconstructs
        if work.running is not None:  # a streamed round: folded now, never held
            examples, steps = len(outcome.task.indices), outcome.steps
            scale, distance = work.fold_factors.get(client, (1.0, 0.0))
            coefficient = self.state.strategy.fold_weight(examples, steps) * scale
            aux = distance * squared_distance([row], weights) if distance else 0.0
            work.running.add(row, coefficient=coefficient, num_examples=examples, steps=steps, aux=aux)
            return
        kept = row.clone() if self.asynchronous else row  # async: it waits in the buffer past this chunk
        work.updates.append(ClientUpdate(client, kept, len(outcome.task.indices), outcome.steps, outcome.loss,
                                         validation_score=outcome.validation_accuracy))  # fmt: skip

    def _receive_folded(self, work: RoundWork, outcome: TaskOutcome) -> None:
        """A client its trainer folded into its running sum (`TrainTask.fold`): its record only. One that
        failed (an error, or non-finite weights) or was lost is not in the sum; the others sent all P values."""
        client = outcome.task.client_id
        if outcome.error:
            work.failures[client] = outcome.error
        elif work.statuses[client][0] != "lost":
            work.arrivals[client] = compressed_bytes(self.state.weights.numel(), "none")

    def _receive_held(self, work: RoundWork, outcome: TaskOutcome) -> None:
        """A remote client that holds its upload for secure aggregation (checked where it is): only
        its id and weight reach the protocol (`_secure_mean`); its row stands for nothing, so the
        global weights fill its place."""
        client, work.held = outcome.task.client_id, True
        if isinstance(work.aggregator, DistributedNoiseSum):  # central DP: it clips and noises its own input
            lost = work.statuses[client][0] == "lost"  # it joins the key exchange, then (simulated) vanishes
            work.aggregator.add_held(client, lost=lost)
            if not lost:
                work.arrivals[client] = 0  # its share of the protocol's bytes comes with the sum
            return
        if work.statuses[client][0] == "lost":  # it joins the key exchange, then (simulated) vanishes
            work.lost[client] = self.state.weights
            return
        work.arrivals[client] = 0  # its share of the protocol's bytes comes with the sum
        work.updates.append(ClientUpdate(client, self.state.weights, len(outcome.task.indices), outcome.steps,
                                         outcome.loss, validation_score=outcome.validation_accuracy))  # fmt: skip

    def _exclude(self, work: RoundWork, client: int, update: torch.Tensor) -> None:
        """A client whose update will not be in the aggregate: DP-FedAvg's sum and secure
        aggregation still account for it (its masks are unmasked away through its shares)."""
        if work.aggregator is not None:
            work.aggregator.add(client, update, lost=True)
        elif self.config.federation.secure_aggregation:
            work.lost[client] = update

    def _screen(self, work: RoundWork, round_number: int) -> None:
        """Score every arrived update for suspicion (`engine.suspicion`; FedPer: the shared body only),
        add who was flagged and each client's running direction to the run's histories (layer-wise:
        `segments`), and under federation.exclusion = "flagged" leave out
        the clients flagged in exclusion_flags of the last exclusion_window rounds. Nothing where the
        server never sees single updates (central DP's sum, secure aggregation)."""
        if work.aggregator is not None or work.held or self.config.federation.secure_aggregation or not work.updates:
            return
        body = self.state.weights.numel() - self.head_size
        stack = torch.stack([u.weights[:body] - self.state.weights[:body] for u in work.updates]).numpy()  # (n, P)
        state, federation = self.state, self.config.federation
        layers = leading_sizes([t.numel() for t in get_parameters(self.model).values()], body)
        scores = score_updates(stack, [u.client_id for u in work.updates], history=state.directions, segments=layers)
        state.directions = record_directions(state.directions, scores)
        work.suspicion = {s.client_id: (s.score, s.flagged) for s in scores}
        flagged = [s.client_id for s in scores if s.flagged]
        state.flagged_rounds = record_flags(state.flagged_rounds, round_number, flagged)
        if federation.exclusion != "flagged":
            return
        dropped = to_exclude(state.flagged_rounds, round_number, flags=federation.exclusion_flags,
                             window=federation.exclusion_window)  # fmt: skip
        work.excluded = {u.client_id for u in work.updates if u.client_id in dropped}
        work.updates = [u for u in work.updates if u.client_id not in dropped]

    def _aggregate(self, work: RoundWork, trainer: Trainer) -> torch.Tensor:
        """The next global weights from what arrived (unchanged, with `work.skipped` saying why,
        when the round is not aggregated)."""
        weights, federation = self.state.weights, self.config.federation
        if isinstance(work.aggregator, DistributedNoiseSum) and isinstance(trainer, RemoteClients):
            return self._take_sum(work, work.aggregator.result(work.statuses, remote=trainer))  # with every node
        if work.aggregator is not None:  # DP-FedAvg: never skipped on the count of arrivals (dp_fedavg)
            return self._take_sum(work, work.aggregator.result(work.statuses))
        if (kept := len(work.arrivals) - len(work.excluded)) < federation.min_clients:
            excluded = f" ({len(work.excluded)} more excluded as suspicious)" if work.excluded else ""
            work.skipped = f"{kept} update(s) arrived{excluded}, fewer than federation.min_clients = " \
                           f"{federation.min_clients}"  # fmt: skip
            return weights
        updates = work.updates
        if federation.secure_aggregation:
            try:
                updates = [self._secure_mean(work, trainer)]
            except SecAggError as error:  # too few clients left to unmask: nothing is revealed
                work.skipped = f"secure aggregation failed: {error}"
                return weights
        try:
            if work.running is not None:  # streamed: the running sum, with what the trainer folded
                folded = work.folded and isinstance(trainer, FoldingTrainer)
                summed = work.running + trainer.take_sum() if folded else work.running
                return self.state.strategy.aggregate_sum(weights, summed)
            return self.state.strategy.aggregate(weights, updates)
        except ValueError as error:  # e.g. Krum with too few updates after dropouts
            work.skipped = str(error)
            return weights

    def _take_sum(self, work: RoundWork, summed: RoundSum) -> torch.Tensor:
        """DP-FedAvg's released sum: C moves for the next round; under secure aggregation every
        arrived client is charged its share of the protocol's bytes."""
        self.state.clip_norm = summed.next_clip_norm
        work.skipped, work.secure_aggregation = summed.skipped, summed.secure_aggregation
        if summed.survivors is not None:
            self._left_during_protocol(work, summed.survivors)
        stats = summed.secure_aggregation
        if stats and "participants" in stats:
            total = stats["bytes_keys"] + stats["bytes_shares"] + stats["bytes_masked"] + stats["bytes_unmasking"]
            work.arrivals.update(dict.fromkeys(work.arrivals, total // stats["participants"]))
        return summed.weights

    def _secure_mean(self, work: RoundWork, trainer: Trainer) -> ClientUpdate:
        """The example-weighted mean of the arrived updates, computed by secure aggregation so
        the server never sees one update; handed to the strategy as a single update. Clients
        that were lost after the key exchange are unmasked away through their shares. With
        remote clients holding their uploads the protocol runs with them, as messages."""
        global_weights = self.state.weights
        weights = {u.client_id: float(u.num_examples) for u in work.updates}
        weights.update({client: float(len(self.partitions[client])) for client in work.lost})
        protocol = secagg_protocol(self.config)
        if work.held and isinstance(trainer, RemoteClients):
            result = trainer.secure_sum(weights, protocol, drop_after_sharing=frozenset(work.lost))
            self._left_during_protocol(work, result.survivors)
        else:
            vectors = {u.client_id: (u.weights - global_weights).double().numpy() for u in work.updates}
            vectors.update({client: update.double().numpy() for client, update in work.lost.items()})
            result = secure_aggregate(vectors, weights, protocol, drop_after_sharing=frozenset(work.lost))
        work.secure_aggregation = secagg_statistics(result)
        per_client = result.stats.bytes_total // max(len(result.participants), 1)
        for client in work.arrivals:
            work.arrivals[client] = per_client  # masked vector + its share of keys, shares and unmasking
        mean = torch.from_numpy(result.weighted_sum / result.total_weight)
        steps = sum(u.steps for u in work.updates)
        weights_out = (global_weights.double() + mean).to(global_weights.dtype)
        loss = float(np.mean([u.loss for u in work.updates]))
        return ClientUpdate(-1, weights_out, int(result.total_weight), steps, loss)

    @staticmethod
    def _left_during_protocol(work: RoundWork, survivors: tuple[int, ...]) -> None:
        """Remote clients whose masked input never came (their node left mid-protocol, a real
        fault): lost, not in the sum, which the others' shares unmasked without them."""
        for client in [c for c in work.arrivals if c not in survivors]:
            del work.arrivals[client]
            work.statuses[client] = ("lost", 0)
            work.faults[client] = "its SuperNode left during secure aggregation (real fault)"
        work.updates = [u for u in work.updates if u.client_id in survivors]

    def _sent_update(self, round_number: int, client: int, update: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The update the server receives from `client` and the bytes it took
        (`compression.outgoing_update`: a malicious client's poisoned one, compressed)."""
        return outgoing_update(
            self.config, self.state.compressor, update, client=client, round_number=round_number,
            malicious=self.profiles[client].malicious, head_size=self.head_size,
        )  # fmt: skip

    # -- sampling, the budget, evaluation -------------------------------------------------

    def sample_clients(self, round_number: int, trainer: Trainer | None = None) -> list[int]:
        """This round's selected clients (`client_population.select_clients`); power-of-choice
        ranks candidates by the current global model's loss on a sample of their data, computed
        where their data is (`RemoteClients`: on their nodes). Async: the clients that start (`fedbuff`)."""
        if self.asynchronous:
            return fedbuff.start_clients(
                seed=self.config.system.seed, step=round_number, num_clients=self.config.federation.num_clients,
                max_concurrency=self.config.federation.max_concurrency, busy=self.state.buffer.busy(),
            )  # fmt: skip
        return select_clients(
            self.config, round_number, profiles=self.profiles, tally=self.state.tally,
            losses_of=functools.partial(self._candidate_losses, trainer, round_number),
        )  # fmt: skip

    def _candidate_losses(self, trainer: Trainer | None, round_number: int, clients: list[int]) -> list[float]:
        if isinstance(trainer, RemoteClients):
            return trainer.candidate_losses(self.state.weights, round_number, clients)
        x, y, seed = self.data.train_x, self.data.train_y, self.config.system.seed
        return [candidate_loss(self.model, x, y, self.partitions[c], seed=seed, round_number=round_number, client=c)
                for c in clients]  # fmt: skip

    def budget_exhausted(self, round_number: int, clients: list[int]) -> str | None:
        """Why the next round may not run under `privacy.max_epsilon`, or None if it may."""
        plan = self.privacy
        if plan.mode == "none" or plan.max_epsilon <= 0:
            return None
        import differential_privacy as dp  # opacus (~1.4 s to import) loads only with privacy on

        if plan.mode == "central":
            epsilon = central_epsilon_after(plan, rounds=round_number)
            if epsilon > plan.max_epsilon:
                return f"privacy budget: round {round_number} would reach ε = {epsilon:.3f} > {plan.max_epsilon}"
            return None
        for client in clients:
            rate = dp.local_sample_rate(len(self.partitions[client]), self.config.federation.batch_size)
            steps = self.config.federation.local_epochs * dp.steps_per_epoch(rate)
            planned = [(plan.noise_multiplier, rate, steps)]
            if dp.would_exceed(
                self.state.histories.get(client, ()), planned, delta=plan.delta, max_epsilon=plan.max_epsilon,
                accountant=plan.accountant,
            ):  # fmt: skip
                return f"privacy budget: round {round_number} would take client {client} past ε = {plan.max_epsilon}"
        return None

    def _fold_factors(self, trainer: Trainer, round_number: int, statuses: Statuses) -> dict[int, tuple[float, float]]:
        """A streamed round's `Strategy.fold_factors` of each client that starts; q-FedAvg's need F_k, the
        round-start model's loss (`_global_losses`' numbers), so they are asked for before training."""
        strategy = self.state.strategy
        if not strategy.needs_global_losses:
            return {}
        starting = [c for c, (status, _) in statuses.items() if status not in ABSENT]
        losses = self._candidate_losses(trainer, round_number, starting)
        return {c: strategy.fold_factors(len(self.partitions[c]), loss) for c, loss in zip(starting, losses)}

    def _global_losses(self, trainer: Trainer, round_number: int, updates: list[ClientUpdate]) -> list[float]:
        """q-FedAvg's F_k per update: the round-start global model's (`self.model` still holds it) mean loss
        on the client's training data, on the seeded ≤ 500-example `loss_sample` power-of-choice uses
        (the whole partition when smaller), computed where the data is (`_candidate_losses`), so every
        runtime aggregates the same numbers. Not the update's `loss`: that is the mean over local training."""
        return self._candidate_losses(trainer, round_number, [u.client_id for u in updates])

    def evaluate_global(self) -> tuple[float, float, dict[str, Any] | None]:
        """(accuracy, loss, rubric metrics or None) of the current global model on the test split."""
        data = self.data
        logits = predict_logits(self.model, data.test_x)
        accuracy, loss = objectives.scores(logits, data.test_y)
        if not data.multilabel:
            return accuracy, loss, None
        predictions = (logits > 0).numpy().astype(np.int8)  # sigmoid ≥ 0.5
        metrics = rubric_metrics(
            predictions, data.test_y.numpy().astype(np.int8), data.test_groups,
            list(data.group_names) if data.group_names else None,
        )  # fmt: skip
        return accuracy, loss, metrics

    # -- the round's record ---------------------------------------------------------------

    def _round_result(
        self, round_number: int, work: RoundWork, evaluation: tuple[float, float, dict[str, Any] | None],
        timing: tuple[float, float],
    ) -> RoundResult:  # fmt: skip
        """The record of a finished round: `evaluation` (accuracy, loss, metrics) and `timing`
        (training + aggregation seconds, evaluation seconds)."""
        plan = self.privacy
        clients, simulated = self._client_results(work)
        epsilon, sample_rate, privacy_steps = self._ledger(round_number, clients)
        private = plan.mode != "none"
        return RoundResult(
            round=round_number, accuracy=evaluation[0], loss=evaluation[1], epsilon=epsilon,
            delta=plan.delta if private else 0.0, seconds=timing[0], eval_seconds=timing[1],
            bytes_up=sum(c.bytes_up for c in clients), bytes_down=sum(c.bytes_down for c in clients), clients=clients,
            noise_multiplier=plan.noise_multiplier if private else 0.0,
            max_grad_norm=work.clip_norm if private else 0.0, sample_rate=sample_rate, privacy_steps=privacy_steps,
            accountant=plan.accountant if private else "", neighbouring_relation=plan.neighbouring_relation,
            skipped=work.skipped, simulated_seconds=simulated,
            secure_aggregation=work.secure_aggregation, metrics=evaluation[2],
        )  # fmt: skip

    def _ledger(self, round_number: int, clients: list[ClientResult]) -> tuple[float, float, int]:
        """(ε so far, sample rate, privacy steps) of the round's privacy ledger (`RoundResult`)."""
        plan = self.privacy
        if plan.mode == "local":  # ε never decreases: the max over every client's accountant
            return (max(self.state.client_epsilons.values(), default=0.0),
                    max((c.sample_rate for c in clients), default=0.0),
                    max((c.steps for c in clients), default=0))  # fmt: skip
        if plan.mode == "central":  # accounted for how clients are sampled (poisson, fixed)
            return central_epsilon_after(plan, rounds=round_number), plan.client_sample_rate, round_number
        return 0.0, 0.0, 0

    def _client_results(self, work: RoundWork) -> tuple[list[ClientResult], float]:
        """One `ClientResult` per selected client, and the round's simulated duration (the
        slowest arrival, or the deadline when late clients were dropped). Async: the applied updates' records
        (their ε now: a client in flight never trains again before its update is applied) and the step's seconds."""
        if work.buffered is not None:
            applied, seconds = work.buffered
            return [replace(c, epsilon=self.state.client_epsilons.get(c.id, 0.0)) for c in applied], seconds
        federation, local = self.config.federation, self.privacy.mode == "local"
        down_bytes = parameter_bytes(get_parameters(self.model)) - 4 * self.head_size  # FedPer: the body only
        by_client = {o.task.client_id: o for o in work.outcomes}
        trained_steps = sum(o.steps for o in work.outcomes)
        step_seconds = sum(o.seconds for o in work.outcomes) / trained_steps if trained_steps else 0.0
        deadline_seconds = federation.round_deadline * self.median_full_steps * step_seconds
        clients, simulated = [], 0.0
        for client, (status, _limit) in work.statuses.items():
            profile, outcome, failure = self.profiles[client], by_client.get(client), work.failures.get(client, "")
            suspicion, flagged = work.suspicion.get(client, (None, False))
            common = dict(
                status="failed" if failure else "excluded" if client in work.excluded else status,
                malicious=profile.malicious, suspicion=suspicion, flagged=flagged,
                error=failure or work.faults.get(client, ""),
                num_examples=len(self.partitions[client]), id=client,
                epsilon=self.state.client_epsilons.get(client, 0.0),
            )  # fmt: skip
            if outcome is None:  # dropped before training, too late to start, or lost for real
                late = status == "late"
                clients.append(ClientResult(
                    steps=0, loss=0.0, bytes_down=down_bytes if late else 0,
                    simulated_seconds=profile.transfer_seconds(down_bytes) + deadline_seconds if late else 0.0,
                    **common,
                ))  # fmt: skip
                if late and federation.straggler_policy == "drop":
                    simulated = max(simulated, deadline_seconds)
                continue
            up = work.arrivals.get(client, 0)
            seconds = profile.transfer_seconds(down_bytes) + outcome.seconds / profile.speed + profile.transfer_seconds(up)
            steps, rate = outcome.steps, 0.0
            if local:
                rate = outcome.history[-1][1] if outcome.history else 0.0
                steps = sum(n for _, _, n in outcome.history)
            if client in work.arrivals:
                simulated = max(simulated, seconds)
            clients.append(ClientResult(
                steps=steps, loss=0.0 if failure else outcome.loss, sample_rate=rate, bytes_up=up,
                bytes_down=down_bytes, simulated_seconds=seconds, validation_accuracy=outcome.validation_accuracy,
                **common,
            ))  # fmt: skip
        return clients, simulated

    # -- after the rounds -----------------------------------------------------------------

    def audit(self, num_examples: int) -> dict[str, Any] | None:
        """The audit of the current global model: the ε lower bound its canaries imply when the run has
        them (`engine.analysis.one_run_audit`), else the loss-threshold one (`engine.analysis.audit`)."""
        if self.canaries is not None:
            return analysis.one_run_audit(self.model, self.data, self.canaries, delta=self.config.privacy.delta)
        return analysis.audit(
            self.model, self.data, [self.partitions[c] for c in sorted(self.state.trained_clients)],
            num_examples=num_examples, seed=self.config.system.seed,
        )  # fmt: skip

    def personalize(self) -> dict[str, Any] | None:
        """Personalized against global accuracy per client (`engine.analysis.personalize`)."""
        heads = self.state.heads if self.head_size else {}
        return analysis.personalize(
            self.config, self.model, self.data, self.partitions, self.holdouts, self.state.weights, heads,
        )  # fmt: skip


def run_experiment(
    config: ExperimentConfig,
    *,
    callback: Callable[[RoundResult], Any] | None = None,
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
