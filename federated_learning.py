"""The federated learning engine: client sampling, local training, aggregation, evaluation.

It knows no storage and no UI: it yields one `RoundResult` per round and checks a stop
event between rounds. Clients train in parallel worker processes (one thread each,
training data shared with them, weights passed through shared buffers, not pickled),
or in this process when `system.num_workers` is 1.

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
import queue
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import nn

from data_handler import FederatedData, label_counts, load_mnist, partition, subset
from experiment_config import ExperimentConfig
from model import create_model, flatten, get_parameters, parameter_bytes, unflatten
from strategies import ClientUpdate, make_strategy

__all__ = ["ExperimentConfig", "FederatedRun", "RoundResult", "ClientResult", "run_experiment"]

EVAL_BATCH = 1000
AUDIT_SEED_TAG = 0xA0D17  # the membership audit's sampling stream (see FederatedRun.audit)
WORKER_START_SECONDS = 120.0  # a worker that has not reported ready by then has failed
# Linux forks trainers: they share this process's loaded torch and training set
# copy-on-write (about 0.5 GB less per trainer than spawn, and no re-import). They
# run with one thread, so no OpenMP pool is used after the fork. macOS must spawn.
START_METHOD = "fork" if sys.platform == "linux" else "spawn"


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


@dataclass(frozen=True)
class TrainTask:
    """One client's work in one round; `slot` is its row in the shared result buffer."""

    slot: int
    client_id: int
    indices: np.ndarray
    seed: int
    history: tuple[tuple[float, float, int], ...] = ()  # local DP: the client's accountant so far


@dataclass(frozen=True)
class TaskOutcome:
    """What a trainer reports for one task; the weights are in the result buffer row."""

    task: TrainTask
    steps: int
    loss: float
    history: tuple[tuple[float, float, int], ...] = ()


class StopEvent(Protocol):
    def is_set(self) -> bool: ...


def client_seed(seed: int, round_number: int, client_id: int) -> int:
    """The seed of one client's batch order in one round, independent of scheduling."""
    return int(np.random.SeedSequence([seed, round_number, client_id]).generate_state(1)[0])


def train_client(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    indices: np.ndarray,
    *,
    local_epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> tuple[int, float]:
    """Plain SGD on the client's examples, batches taken by index; returns (steps, mean loss)."""
    generator = torch.Generator().manual_seed(seed)
    index_tensor = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    criterion = nn.CrossEntropyLoss()
    model.train()
    steps, loss_sum, seen = 0, 0.0, 0
    for _epoch in range(local_epochs):
        order = index_tensor[torch.randperm(len(index_tensor), generator=generator)]
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(train_x[batch]), train_y[batch])
            loss.backward()
            optimizer.step()
            steps += 1
            loss_sum += loss.item() * len(batch)
            seen += len(batch)
    return steps, loss_sum / max(seen, 1)


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


# -- client trainers: in-process, or a pool of single-threaded worker processes ----------


@dataclass(frozen=True)
class TrainSettings:
    model_name: str
    num_classes: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    local_dp: bool = False  # DP-SGD on every client
    noise_multiplier: float = 0.0
    max_grad_norm: float = 0.0
    accountant: str = "rdp"


class ClientTrainer:
    """One process's trainer: a model reused for every client it trains.

    With local DP the model is wrapped once for per-sample clipping; each task brings
    the client's accountant history and takes the updated one back, so any process
    can train any client and ε stays cumulative.
    """

    def __init__(self, train_x: torch.Tensor, train_y: torch.Tensor, settings: TrainSettings) -> None:
        self.train_x, self.train_y, self.settings = train_x, train_y, settings
        self.model = create_model(settings.model_name, num_classes=settings.num_classes)
        self.params = get_parameters(self.model)
        self.dp_model: Any = None

    def run(self, task: TrainTask, global_weights: torch.Tensor, out: torch.Tensor) -> TaskOutcome:
        """Train one client from `global_weights`; its new weights go to `out` (P,)."""
        for name, tensor in unflatten(global_weights, self.params).items():
            self.params[name].copy_(tensor)
        settings = self.settings
        if settings.local_dp:
            outcome = self._run_private(task)
        else:
            steps, loss = train_client(
                self.model, self.train_x, self.train_y, task.indices,
                local_epochs=settings.local_epochs, batch_size=settings.batch_size,
                learning_rate=settings.learning_rate, seed=task.seed,
            )  # fmt: skip
            outcome = TaskOutcome(task, steps, loss)
        torch.cat([p.reshape(-1) for p in self.params.values()], out=out)
        return outcome

    def _run_private(self, task: TrainTask) -> TaskOutcome:
        import differential_privacy as dp  # opacus: ~66 MB, loaded only by private runs

        settings = self.settings
        if self.dp_model is None:
            self.dp_model = dp.DPSGDModel(self.model, max_grad_norm=settings.max_grad_norm)
        accountant = dp.accountant_from_history(task.history, settings.accountant)
        result = self.dp_model.train(
            self.train_x, self.train_y, task.indices,
            local_epochs=settings.local_epochs, batch_size=settings.batch_size,
            learning_rate=settings.learning_rate, noise_multiplier=settings.noise_multiplier,
            accountant=accountant, seed=task.seed,
        )  # fmt: skip
        history = tuple((float(s), float(q), int(n)) for s, q, n in accountant.history)
        return TaskOutcome(task, result.steps, result.loss, history)


class InProcessTrainer:
    """Trains clients one after another in this process, with all of torch's threads."""

    def __init__(self, data: FederatedData, settings: TrainSettings, num_params: int, slots: int) -> None:
        self.trainer = ClientTrainer(data.train_x, data.train_y, settings)
        self.results = torch.empty(slots, num_params)

    def train(self, global_weights: torch.Tensor, tasks: Sequence[TrainTask]) -> list[TaskOutcome]:
        return [self.trainer.run(task, global_weights, self.results[task.slot]) for task in tasks]

    def close(self) -> None:
        pass


def _worker_main(
    worker_index: int,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    settings: TrainSettings,
    global_weights: torch.Tensor,
    results: torch.Tensor,
    tasks: Any,
    replies: Any,
) -> None:
    """A client trainer process: one thread, reads shared data, writes its result row."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    parent = os.getppid()
    trainer = ClientTrainer(train_x, train_y, settings)
    _warm_up(trainer.model, train_x[: settings.batch_size], train_y[: settings.batch_size])
    replies.put(("ready", worker_index, None))
    while (task := _next_task(tasks, parent)) is not None:
        try:
            outcome = trainer.run(task, global_weights, results[task.slot])
            replies.put(("done", task.slot, outcome))
        except Exception as error:  # reported to the server, which fails the run
            replies.put(("error", task.slot, f"{type(error).__name__}: {error}"))


def _warm_up(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """One forward/backward pass, discarded: torch's one-time kernel set-up happens here,
    at start-up, instead of inside the first round's timing."""
    nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)


def _next_task(tasks: Any, parent: int) -> TrainTask | None:
    """The next task, or None when told to stop or when the server process is gone."""
    while True:
        try:
            return tasks.get(timeout=5.0)
        except queue.Empty:
            if os.getppid() != parent:  # orphaned: the server was killed
                return None


class ProcessPoolTrainer:
    """Clients trained in parallel by `num_workers` worker processes, one thread each.

    Training data and both weight buffers are shared (copy-on-write after fork, or shared
    memory when spawning): a task message carries only the client's example indices and
    seed, and a reply only its step count and loss.
    """

    def __init__(
        self, data: FederatedData, settings: TrainSettings, num_params: int, slots: int, num_workers: int
    ) -> None:
        context = mp.get_context(START_METHOD)
        if START_METHOD != "fork":
            data.share_memory()  # spawned trainers map it instead of receiving copies
        self.global_weights = torch.zeros(num_params).share_memory_()
        self.results = torch.zeros(slots, num_params).share_memory_()
        self.tasks = context.Queue()
        self.replies = context.Queue()
        self.processes = [
            context.Process(
                target=_worker_main,
                args=(i, data.train_x, data.train_y, settings, self.global_weights, self.results, self.tasks, self.replies),
                daemon=True,
                name=f"fpl-client-trainer-{i}",
            )
            for i in range(num_workers)
        ]
        for process in self.processes:
            process.start()
        try:
            for _ in self.processes:
                self._reply(WORKER_START_SECONDS)
        except BaseException:
            self.close()
            raise

    def train(self, global_weights: torch.Tensor, tasks: Sequence[TrainTask]) -> list[TaskOutcome]:
        self.global_weights.copy_(global_weights)
        by_slot = {task.slot: task for task in tasks}
        for task in tasks:
            self.tasks.put(task)
        done: dict[int, TaskOutcome] = {}
        while len(done) < len(tasks):
            kind, slot, payload = self._reply(None)
            if kind == "error":
                raise RuntimeError(f"client {by_slot[slot].client_id} failed in a trainer process: {payload}")
            done[slot] = payload
        return [done[slot] for slot in sorted(done)]

    def _reply(self, timeout: float | None) -> tuple[str, int, Any]:
        """The next message from a worker; raises if a worker died or none answered in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self.replies.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in self.processes if not p.is_alive()]
                if dead:
                    raise RuntimeError(
                        f"client trainer process {dead[0].name} died (exit code {dead[0].exitcode})"
                    ) from None
                if deadline is not None and time.monotonic() > deadline:
                    raise RuntimeError(f"client trainer processes did not start within {timeout:.0f} s") from None

    def close(self) -> None:
        for process in self.processes:
            if process.is_alive():
                self.tasks.put(None)
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        self.tasks.close()
        self.replies.close()


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
