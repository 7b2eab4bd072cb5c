"""Clients trained in parallel by a pool of single-threaded worker processes (`ProcessPoolTrainer`,
the engine's `Trainer` when `system.num_workers` > 1).

The training set and both weight buffers are shared with the workers (copy-on-write after
fork, or shared memory when spawning): a task message carries only the client's example
indices, seed and (local DP) accountant history, and a reply only its step count, loss and
updated history. In a streamed round each worker folds its clients into its own row of a
shared float64 sum instead of writing result rows (`engine.streaming`).

    trainer = ProcessPoolTrainer(data, settings, num_params, slots=10, num_workers=2)
    outcomes = trainer.train(global_weights, tasks)   # trainer.results[task.slot]: (P,)
    trainer.close()
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import nn

import telemetry
from data_handler import FederatedData
from engine import objectives, streaming
from engine.client_trainers import ClientTrainer, Live, TaskOutcome, TrainSettings, TrainTask, result_rows
from engine.streaming import RunningSum

WORKER_START_SECONDS = 120.0  # a worker that has not reported ready by then has failed
# Linux forks trainers: they share this process's loaded torch and training set
# copy-on-write (about 0.5 GB less per trainer than spawn, and no re-import). They
# run with one thread, so no OpenMP pool is used after the fork. macOS must spawn.
START_METHOD = "fork" if sys.platform == "linux" else "spawn"


def _worker_main(
    worker_index: int,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    settings: TrainSettings,
    global_weights: torch.Tensor,
    results: torch.Tensor,
    corrections: torch.Tensor | None,
    live: Live,
    tasks: Any,
    replies: Any,
    sums: torch.Tensor,
) -> None:
    """A client trainer process: one thread, reads shared data, writes its result row (or folds the
    client into its own row of the shared `sums`)."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    parent = os.getppid()
    trainer = ClientTrainer(train_x, train_y, settings)
    trainer.running = RunningSum(global_weights.numel(), values=sums[worker_index])
    _warm_up(trainer.model, train_x[: settings.batch_size], train_y[: settings.batch_size])
    replies.put(("ready", worker_index, None))
    while (task := _next_task(tasks, parent)) is not None:
        try:
            correction = None if corrections is None else corrections[task.slot]
            outcome = trainer.run(task, global_weights, results[task.slot], correction, live.at(task.slot))
            replies.put(("done", task.slot, outcome))
        except Exception as error:  # reported to the server, which fails the run
            replies.put(("error", task.slot, f"{type(error).__name__}: {error}"))
    telemetry.shutdown()  # this process's spans: its exporter's thread would die unflushed with it


def _warm_up(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """One forward/backward pass, discarded: torch's one-time kernel set-up happens here,
    at start-up, instead of inside the first round's timing."""
    objectives.batch_loss(model(x), y).backward()
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
        self, data: FederatedData, settings: TrainSettings, num_params: int, slots: int, num_workers: int, *,
        folding: bool = False,
    ) -> None:  # fmt: skip
        context = mp.get_context(START_METHOD)
        if START_METHOD != "fork":
            data.share_memory()  # spawned trainers map it instead of receiving copies
        self.global_weights = torch.zeros(num_params).share_memory_()
        self.results = result_rows(slots, num_params, folding=folding, shared=True)
        # One running sum per worker (`folding`): each folds its clients into its own row, the server adds them.
        self.sums = torch.zeros(num_workers, num_params + len(streaming.SCALARS), dtype=torch.float64)
        self.sums.share_memory_()
        self.corrections = torch.zeros(slots, num_params).share_memory_() if settings.corrections else None
        self.live = Live(slots, shared=True)
        self.tasks = context.Queue()
        self.replies = context.Queue()
        self.processes = [
            context.Process(
                target=_worker_main,
                args=(
                    i, data.train_x, data.train_y, settings, self.global_weights, self.results, self.corrections,
                    self.live, self.tasks, self.replies, self.sums,
                ),  # fmt: skip
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

    def take_sum(self) -> RunningSum:
        """The workers' sums added up (read after `train` returned: every task has replied), and reset."""
        taken = RunningSum(self.global_weights.numel(), values=self.sums.sum(dim=0))
        self.sums.zero_()
        return taken

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
        # Tasks no trainer will read (its trainers died) must not keep this process from exiting:
        # the queue's feeder thread would block on the full pipe forever.
        self.tasks.cancel_join_thread()
        self.tasks.close()
        self.replies.close()
