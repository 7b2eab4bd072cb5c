"""Engine overhead: one federated round vs one epoch of plain PyTorch SGD, same run.

    python -m bench.overhead [--rounds 3] [--model cnn] [--data-dir ../shared/data]

Ten clients each train one epoch on their 6,000 examples (B=50), so a round is the
same 1,200 gradient steps as one plain epoch over all 60,000. The ratio
round seconds / plain epoch seconds is the engine's overhead plus how well it uses
the cores (< 1 means parallel clients beat one process using every thread).
Required: <= 1.05. Goal: <= 0.8. The engine's trainers hold a conv model in channels-last layout
(`client_trainers.cpu_layout`); for the CNN the plain epoch is also timed in that layout, so the ratio
against it shows what is left once the layout is not counted.

    python -m bench.overhead --small [--rounds 3] [--model mlp] [--workers 2]

Many small clients (issue 22): 1,000 clients × 60 examples, 100 a round. The ratio round seconds ÷
the pure gradient-step time of the same clients (each trained by `train_client` in one thread, the
sum divided by the workers) is what dispatch, model resets, result rows and aggregation add.
Target: <= 1.15. The same clients are also trained by plain `train_client` loops in as many forked
processes at once (each its share, round-robin): round seconds ÷ that wall time leaves out how far
two processes on this machine fall short of twice one (shared caches, memory bandwidth, the VM). Run it from another copy of the code (`cd /tmp/base && PYTHONPATH=. python
/path/to/bench/overhead.py --small`) for a before/after on the same machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from engine.client_trainers import cpu_layout, train_client
from data_handler import load_mnist
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun
from model import create_model


def plain_epoch_seconds(data, model_name: str, batch_size: int, learning_rate: float, *, layout: str = "default") -> float:
    """One epoch of single-process SGD over the whole training set, all torch threads; `layout` "channels-last":
    the model in the layout the engine's trainers give a conv model (`cpu_layout`)."""
    model = create_model(model_name, seed=0)
    if layout == "channels-last":
        model = cpu_layout(model, private=False)
    indices = np.arange(len(data.train_y))
    started = time.perf_counter()
    train_client(
        model, data.train_x, data.train_y, indices,
        local_epochs=1, batch_size=batch_size, learning_rate=learning_rate, seed=0,
    )  # fmt: skip
    return time.perf_counter() - started


def federated_round_seconds(data, model_name: str, rounds: int, num_workers: int) -> list[float]:
    config = ExperimentConfig.from_dict(
        {
            "model": {"name": model_name},
            "federation": {"num_clients": 10, "clients_per_round": 10, "rounds": rounds},
            "system": {"num_workers": num_workers},
        }
    )
    return [result.seconds for result in FederatedRun(config, data=data).rounds()]


def _train_share(model, data, partitions, clients: list[int], start, ends) -> None:
    """A plain process's share of the clients: wait for the start, train each with `train_client`, report the end."""
    torch.set_num_threads(1)
    start.wait()
    for client in clients:
        train_client(model, data.train_x, data.train_y, partitions[client],
                     local_epochs=1, batch_size=50, learning_rate=0.05, seed=client)  # fmt: skip
    ends.put(time.perf_counter())  # CLOCK_MONOTONIC: comparable across processes


def parallel_pure_seconds(model, data, partitions, clients: list[int], num_workers: int) -> float:
    """Wall time of `clients` trained by `num_workers` forked plain processes at once, each its round-robin share."""
    context = multiprocessing.get_context("fork")
    start, ends = context.Event(), context.Queue()
    shares = [clients[w::num_workers] for w in range(num_workers)]
    processes = [context.Process(target=_train_share, args=(model, data, partitions, share, start, ends)) for share in shares]
    for process in processes:
        process.start()
    time.sleep(0.5)  # every process forked and waiting
    began = time.perf_counter()
    start.set()
    finished = max(ends.get(timeout=600) for _ in processes)
    for process in processes:
        process.join()
    return finished - began


def small_clients_overhead(data, model_name: str, rounds: int, num_workers: int) -> list[tuple[float, float, float]]:
    """(round seconds, pure gradient-step seconds of its clients ÷ workers, the same clients' wall time in
    `num_workers` plain processes at once) per round of 1,000 × 60, 100 a round.

    Each round's pure steps are timed right after it (the trainer processes wait idle meanwhile), so a
    load that comes and goes on a shared machine hits both sides of each ratio alike."""
    config = ExperimentConfig.from_dict({
        "model": {"name": model_name}, "data": {"max_train_examples": 60_000},
        "federation": {"num_clients": 1_000, "clients_per_round": 100, "rounds": rounds},
        "system": {"num_workers": num_workers},
    })  # fmt: skip
    run = FederatedRun(config, data=data)
    model, pairs = cpu_layout(create_model(model_name, seed=0), private=False), []  # as the trainers hold it
    for result in run.rounds():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each worker trains
        try:
            started = time.perf_counter()
            for client in result.clients:
                train_client(
                    model, run.data.train_x, run.data.train_y, run.partitions[client.id],
                    local_epochs=1, batch_size=50, learning_rate=0.05, seed=client.id,
                )  # fmt: skip
            serial = (time.perf_counter() - started) / num_workers
        finally:
            torch.set_num_threads(threads)
        clients = [client.id for client in result.clients]
        parallel = parallel_pure_seconds(model, run.data, run.partitions, clients, num_workers)
        pairs.append((result.seconds, serial, parallel))
    return pairs


def main_small(args: argparse.Namespace) -> None:
    data = load_mnist(args.data_dir, download=False)
    rows = small_clients_overhead(data, args.model, args.rounds, args.workers)
    print(f"1,000 clients × 60 examples, 100 a round, {args.model}, {args.workers} workers: " + "; ".join(
        f"round {e:.2f} s vs pure steps {p:.2f} s (in {args.workers} processes at once {w:.2f} s)" for e, p, w in rows
    ))  # fmt: skip
    for label, column in (("÷ pure steps / workers", 1), (f"÷ pure steps in {args.workers} processes", 2)):
        ratios = [row[0] / row[column] for row in rows]
        print(f"overhead ratio {label}: {', '.join(f'{r:.2f}' for r in ratios)}; median "
              f"{statistics.median(ratios):.2f} (target <= 1.15)")  # fmt: skip


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="cnn", choices=("cnn", "mlp"))
    parser.add_argument("--data-dir", default=str(here.parent / "shared" / "data"))
    parser.add_argument("--skip-sequential", action="store_true", help="skip the 1-worker engine run")
    parser.add_argument("--small", action="store_true", help="1,000 clients × 60 examples, 100 a round")
    parser.add_argument("--workers", type=int, default=2, help="--small: trainer processes")
    args = parser.parse_args()
    if args.small:
        main_small(args)
        return

    data = load_mnist(args.data_dir, download=False)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, model {args.model}")
    layouts = ("default", "channels-last") if args.model == "cnn" else ("default",)
    plain = {layout: [] for layout in layouts}
    for layout in layouts:
        plain_epoch_seconds(data, args.model, 50, 0.05, layout=layout)  # warm-up: first-touch of the data, kernel set-up
        plain[layout].append(plain_epoch_seconds(data, args.model, 50, 0.05, layout=layout))

    runs = {"parallel (auto workers)": 0}
    if not args.skip_sequential:
        runs["sequential (1 worker, in-process)"] = 1
    engine = {}
    for label, workers in runs.items():
        engine[label] = federated_round_seconds(data, args.model, args.rounds, workers)
        for layout in layouts:  # interleaved: drift hits both
            plain[layout].append(plain_epoch_seconds(data, args.model, 50, 0.05, layout=layout))
    baselines = {layout: statistics.median(seconds) for layout, seconds in plain.items()}
    for layout, seconds in plain.items():
        print(f"plain PyTorch epoch, {layout} layout (1 process, {threads} threads): "
              f"{', '.join(f'{s:.1f}' for s in seconds)} s; median {baselines[layout]:.1f} s")  # fmt: skip
    for label, seconds in engine.items():
        steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
        others = "".join(f"; against the {layout} epoch {steady / b:.2f}" for layout, b in baselines.items()
                         if layout != "default")  # fmt: skip
        print(
            f"engine {label}: rounds {', '.join(f'{s:.1f}' for s in seconds)} s; "
            f"median after round 1 {steady:.1f} s; ratio {steady / baselines['default']:.2f} "
            f"(worst round {max(seconds) / baselines['default']:.2f}; required <= 1.05, goal <= 0.80){others}"
        )


if __name__ == "__main__":
    main()
