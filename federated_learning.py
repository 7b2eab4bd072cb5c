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

import os
import queue
import signal
import sys
import threading
import time
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
WORKER_START_SECONDS = 120.0  # a worker that has not reported ready by then has failed
# Linux forks trainers: they share this process's loaded torch and training set
# copy-on-write (about 0.5 GB less per trainer than spawn, and no re-import). They
# run with one thread, so no OpenMP pool is used after the fork. macOS must spawn.
START_METHOD = "fork" if sys.platform == "linux" else "spawn"


@dataclass(frozen=True)
class ClientResult:
    id: int
    num_examples: int
    steps: int
    loss: float
    epsilon: float = 0.0


@dataclass(frozen=True)
class RoundResult:
    """One finished round. `seconds` is client training + aggregation, without evaluation."""

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainTask:
    """One client's work in one round; `slot` is its row in the shared result buffer."""

    slot: int
    client_id: int
    indices: np.ndarray
    seed: int


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


class InProcessTrainer:
    """Trains clients one after another in this process, with all of torch's threads."""

    def __init__(self, data: FederatedData, settings: TrainSettings, num_params: int, slots: int) -> None:
        self.data, self.settings = data, settings
        self.model = create_model(settings.model_name, num_classes=settings.num_classes)
        self.results = torch.empty(slots, num_params)

    def train(self, global_weights: torch.Tensor, tasks: Sequence[TrainTask]) -> list[tuple[TrainTask, int, float]]:
        params = get_parameters(self.model)
        out = []
        for task in tasks:
            for name, tensor in unflatten(global_weights, params).items():
                params[name].copy_(tensor)
            steps, loss = _train_task(self.model, self.data, self.settings, task)
            torch.cat([p.reshape(-1) for p in params.values()], out=self.results[task.slot])
            out.append((task, steps, loss))
        return out

    def close(self) -> None:
        pass


def _train_task(model: nn.Module, data: FederatedData, settings: TrainSettings, task: TrainTask) -> tuple[int, float]:
    return train_client(
        model,
        data.train_x,
        data.train_y,
        task.indices,
        local_epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=task.seed,
    )


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
    data = FederatedData(train_x, train_y, train_x[:0], train_y[:0], settings.num_classes)
    model = create_model(settings.model_name, num_classes=settings.num_classes)
    params = get_parameters(model)
    _warm_up(model, train_x[: settings.batch_size], train_y[: settings.batch_size])
    replies.put(("ready", worker_index, None))
    while (task := _next_task(tasks, parent)) is not None:
        try:
            for name, tensor in unflatten(global_weights, params).items():
                params[name].copy_(tensor)
            steps, loss = _train_task(model, data, settings, task)
            torch.cat([p.reshape(-1) for p in params.values()], out=results[task.slot])
            replies.put(("done", task.slot, (steps, loss)))
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

    def train(self, global_weights: torch.Tensor, tasks: Sequence[TrainTask]) -> list[tuple[TrainTask, int, float]]:
        self.global_weights.copy_(global_weights)
        by_slot = {task.slot: task for task in tasks}
        for task in tasks:
            self.tasks.put(task)
        done = {}
        while len(done) < len(tasks):
            kind, slot, payload = self._reply(None)
            if kind == "error":
                raise RuntimeError(f"client {by_slot[slot].client_id} failed in a trainer process: {payload}")
            done[slot] = payload
        return [(by_slot[slot], *done[slot]) for slot in sorted(done)]

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


class FederatedRun:
    """Everything a run needs, prepared once: data, partition, model, strategy."""

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

    def sample_clients(self, round_number: int) -> list[int]:
        """`clients_per_round` distinct client ids, uniformly at random, seeded per round."""
        federation = self.config.federation
        generator = np.random.default_rng([self.config.system.seed, round_number])
        chosen = generator.choice(federation.num_clients, size=federation.clients_per_round, replace=False)
        return sorted(int(c) for c in chosen)

    def rounds(self, stop_event: StopEvent | None = None) -> Iterator[RoundResult]:
        """Run the rounds, yielding each result; ends early after a round if `stop_event` is set."""
        config = self.config
        params = get_parameters(self.model)
        global_weights = flatten(params)
        settings = TrainSettings(
            model_name=config.model.name,
            num_classes=self.data.num_classes,
            local_epochs=config.federation.local_epochs,
            batch_size=config.federation.batch_size,
            learning_rate=config.federation.learning_rate,
        )
        slots = config.federation.clients_per_round
        if self.num_workers > 1:
            trainer: Any = ProcessPoolTrainer(self.data, settings, global_weights.numel(), slots, self.num_workers)
        else:
            trainer = InProcessTrainer(self.data, settings, global_weights.numel(), slots)
        transfer_bytes = parameter_bytes(params)
        try:
            for round_number in range(1, config.federation.rounds + 1):
                started = time.perf_counter()
                tasks = [
                    TrainTask(slot, client, self.partitions[client], client_seed(config.system.seed, round_number, client))
                    for slot, client in enumerate(self.sample_clients(round_number))
                ]
                trained = trainer.train(global_weights, tasks)
                updates = [
                    ClientUpdate(task.client_id, trainer.results[task.slot], len(task.indices), steps, loss)
                    for task, steps, loss in trained
                ]
                global_weights = self.strategy.aggregate(global_weights, updates)
                seconds = time.perf_counter() - started

                eval_started = time.perf_counter()
                for name, tensor in unflatten(global_weights, params).items():
                    params[name].copy_(tensor)
                accuracy, loss = evaluate(self.model, self.data.test_x, self.data.test_y)
                yield RoundResult(
                    round=round_number,
                    accuracy=accuracy,
                    loss=loss,
                    epsilon=0.0,
                    delta=0.0,
                    seconds=seconds,
                    eval_seconds=time.perf_counter() - eval_started,
                    bytes_up=transfer_bytes * len(updates),
                    bytes_down=transfer_bytes * len(updates),
                    clients=[ClientResult(u.client_id, u.num_examples, u.steps, u.loss) for u in updates],
                )
                if stop_event is not None and stop_event.is_set():
                    break
        finally:
            trainer.close()


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
