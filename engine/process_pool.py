"""Clients trained in parallel by a pool of single-threaded worker processes (`ProcessPoolTrainer`,
the engine's `Trainer` when `system.num_workers` > 1).

The training set and both weight buffers are shared with the workers (copy-on-write after
fork, or shared memory when spawning): a task carries only the client's example indices, seed
and (local DP) accountant history, and its reply only its step count, loss and updated history.
Tasks travel in batches that shrink as the round goes (`guided_batches`): with 60-example
clients, a message per client each way made a round 1.3–1.5× the workers' own training time
(the server process shares the cores with them); batched, 1.05–1.1×. In a streamed round each
worker folds its clients into its own row of a shared float64 sum instead of writing result
rows (`engine.streaming`).

    trainer = ProcessPoolTrainer(data, settings, num_params, slots=10, num_workers=2)
    outcomes = trainer.train(global_weights, tasks)   # trainer.results[task.slot]: (P,)
    trainer.close()
"""

from __future__ import annotations

import dataclasses
import gc
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
# Guided self-scheduling: each batch holds up to the remaining work / (BATCH_DIVISOR × workers), so a round
# of n clients takes O(workers · log n) messages and ends with single clients (no worker idles long).
BATCH_DIVISOR = 2


def guided_batches(tasks: Sequence[TrainTask], num_workers: int) -> list[list[TrainTask]]:
    """`tasks` in order, cut into batches whose examples (a client's work) add up to at most the remaining
    examples / (BATCH_DIVISOR · num_workers), and at least one task: big batches first (few messages),
    then smaller, down to one client each at the end, so the workers, taking batches as they become free,
    finish within about one client of each other, even when client sizes differ. 100 clients of 60
    examples on 2 workers: 17 batches (25, 18, 14, 10, 8, 6, 4, 3, 3, 2, then single clients)."""
    remaining = sum(len(task.indices) for task in tasks)
    batches, start = [], 0
    while start < len(tasks):
        quota, work, end = remaining / (BATCH_DIVISOR * num_workers), len(tasks[start].indices), start + 1
        while end < len(tasks) and work + len(tasks[end].indices) <= quota:
            work += len(tasks[end].indices)
            end += 1
        batches.append(list(tasks[start:end]))
        remaining -= work
        start = end
    return batches


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
    while (batch := _next_task(tasks, parent)) is not None:
        replies.put(_run_batch(trainer, batch, global_weights, results, corrections, live))
    telemetry.shutdown()  # this process's spans: its exporter's thread would die unflushed with it


def _run_batch(
    trainer: ClientTrainer, batch: list[TrainTask], global_weights: torch.Tensor, results: torch.Tensor,
    corrections: torch.Tensor | None, live: Live,
) -> tuple[str, int, Any]:
    """Train a batch's tasks in order; the reply is ("done", count, [(slot, outcome without its task), ...])
    (the server holds the tasks: sending them back would pickle every client's indices twice), or
    ("error", slot, message) for the first task that raised (the server then fails the run)."""
    outcomes = []
    for task in batch:
        try:
            correction = None if corrections is None else corrections[task.slot]
            outcome = trainer.run(task, global_weights, results[task.slot], correction, live.at(task.slot))
        except Exception as error:  # reported to the server, which fails the run
            return "error", task.slot, f"{type(error).__name__}: {error}"
        outcomes.append((task.slot, dataclasses.replace(outcome, task=None)))
    return "done", len(outcomes), outcomes


def _warm_up(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """One forward/backward pass, discarded: torch's one-time kernel set-up happens here,
    at start-up, instead of inside the first round's timing."""
    objectives.batch_loss(model(x), y).backward()
    model.zero_grad(set_to_none=True)


def _next_task(tasks: Any, parent: int) -> list[TrainTask] | None:
    """The next batch of tasks, or None when told to stop or when the server process is gone."""
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
        # Forked trainers share this process's pages until either side writes one. A full garbage collection
        # writes the header of every object it scans, so one in this process (10,000 clients' tasks trigger it)
        # copied ~80 MB of pages that torch, numpy and the rest hold since import, and each trainer's own did the
        # same. Frozen, the objects alive now are never scanned, on either side, until `close` thaws them.
        self.frozen = START_METHOD == "fork"
        if self.frozen:
            gc.freeze()
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
        batches = guided_batches(tasks, len(self.processes))
        for batch in batches:
            self.tasks.put(batch)
        done: dict[int, TaskOutcome] = {}
        while len(done) < len(tasks):  # one reply per batch, in the order the workers finish them
            kind, slot, payload = self._reply(None)
            if kind == "error":
                raise RuntimeError(f"client {by_slot[slot].client_id} failed in a trainer process: {payload}")
            for task_slot, outcome in payload:
                done[task_slot] = dataclasses.replace(outcome, task=by_slot[task_slot])
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
        if self.frozen:  # no trainer shares a page any more: the collector may scan them again
            gc.unfreeze()
            self.frozen = False
