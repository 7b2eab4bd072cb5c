"""Soak: does a long run stay flat? Memory and seconds per round over many rounds.

    python -m bench.soak [--rounds 200] [--clients 100] [--per-round 10] [--workers 0] [--data-dir ../shared/data]

All of MNIST (60,000 training examples over `--clients` IID clients), MLP, E = 1, B = 50,
no privacy, through the in-process engine (`federated_learning.run_experiment`) with a
callback. The callback measures:

- memory at rounds 10, 50, 100, 200 (10, a quarter, half and all of `--rounds`): the PSS of
  this process and its client trainer processes, summed (shared pages — the training set,
  the weight buffers — counted once), with the summed and the main process's RSS beside it;
  RSS stands in where PSS cannot be read;
- seconds per round over the ten rounds ending at 10, half and all of `--rounds` (1–10,
  91–100, 191–200): the wall-clock time from one callback's return to the next callback
  (the first window starts at round 2: round 1 has no previous callback, and its time
  includes starting the trainers), and the engine's own train + eval seconds.

Drift ratios compare the last window (checkpoint) with the first: a run that leaks or
slows down shows ratios above 1. Other jobs on the machine show up as noise in the times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from data_handler import load_mnist
from experiment_config import ExperimentConfig
from federated_learning import RoundResult, run_experiment

REPO = Path(__file__).resolve().parents[1]
MB = 2**20


@dataclass(frozen=True)
class Memory:
    """The process tree's memory at one round, in bytes."""

    round: int
    processes: int
    pss: int | None  # None where the kernel does not report PSS
    rss: int  # summed over the tree: shared pages counted once per process
    main_rss: int


def tree_memory(round_number: int) -> Memory:
    """PSS and RSS of this process and all its descendants (the client trainers)."""
    root = psutil.Process()
    pss: int | None = 0
    rss, main_rss, processes = 0, 0, 0
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            info = process.memory_info()
        processes += 1
        rss += info.rss
        pss = pss + info.pss if pss is not None and hasattr(info, "pss") else None
        if process.pid == root.pid:
            main_rss = info.rss
    return Memory(round_number, processes, pss, rss, main_rss)


@dataclass
class Probe:
    """The run's callback: per round its wall-clock gap and the engine's seconds; memory at checkpoints."""

    checkpoints: set[int]
    wall_seconds: dict[int, float] = field(default_factory=dict)  # round: callback-to-callback seconds
    engine_seconds: dict[int, float] = field(default_factory=dict)  # round: train + eval seconds
    accuracy: dict[int, float] = field(default_factory=dict)
    memory: list[Memory] = field(default_factory=list)
    returned_at: float | None = None  # when the previous callback returned

    def __call__(self, result: RoundResult) -> None:
        now = time.perf_counter()
        if self.returned_at is not None:
            self.wall_seconds[result.round] = now - self.returned_at
        self.engine_seconds[result.round] = result.seconds + result.eval_seconds
        self.accuracy[result.round] = result.accuracy
        if result.round in self.checkpoints:
            self.memory.append(tree_memory(result.round))
            print(describe_memory(self.memory[-1], result.accuracy), flush=True)
        self.returned_at = time.perf_counter()  # measuring memory is not part of the next round


def describe_memory(memory: Memory, accuracy: float) -> str:
    pss = f"PSS {memory.pss / MB:7.1f} MB" if memory.pss is not None else "PSS n/a"
    return (
        f"round {memory.round:>5}: {pss}  RSS {memory.rss / MB:7.1f} MB summed over {memory.processes} processes "
        f"(main {memory.main_rss / MB:6.1f} MB)  accuracy {100 * accuracy:.2f}%"
    )


def windows(rounds: int) -> list[range]:
    """The ten rounds ending at round 10, at half and at all of `rounds` (1–10, 91–100, 191–200 of 200)."""
    ends = sorted({end for end in (10, rounds // 2, rounds) if 1 <= end <= rounds})
    return [range(max(1, end - 9), end + 1) for end in ends]


def checkpoints(rounds: int) -> list[int]:
    """Rounds 10, a quarter, half and all of `rounds` (10, 50, 100, 200 of 200)."""
    return sorted({r for r in (10, rounds // 4, rounds // 2, rounds) if 1 <= r <= rounds})


def mean_over(seconds: dict[int, float], window: range) -> float:
    return statistics.fmean(seconds[r] for r in window if r in seconds)


def report(probe: Probe, rounds: int) -> None:
    spans = windows(rounds)
    print("\nseconds per round      wall (callback to callback)   engine (train + eval)")
    for span in spans:
        measured = [r for r in span if r in probe.wall_seconds]
        label = f"rounds {span[0]}–{span[-1]}"
        if measured[0] != span[0]:
            label += f" (wall {measured[0]}–{measured[-1]})"
        wall, engine = mean_over(probe.wall_seconds, span), mean_over(probe.engine_seconds, span)
        print(f"  {label:<28} {wall:8.3f} s {engine:24.3f} s")
    first = spans[0]
    for span in spans[1:]:
        wall = mean_over(probe.wall_seconds, span) / mean_over(probe.wall_seconds, first)
        engine = mean_over(probe.engine_seconds, span) / mean_over(probe.engine_seconds, first)
        print(f"  drift rounds {span[0]}–{span[-1]} / {first[0]}–{first[-1]}: wall {wall:.3f}, engine {engine:.3f}")
    if len(probe.memory) < 2:
        return
    start, end = probe.memory[0], probe.memory[-1]
    key = "pss" if start.pss is not None and end.pss is not None else "rss"
    print(f"memory ({key.upper()} of the process tree)")
    for memory in probe.memory[1:]:
        growth = (getattr(memory, key) - getattr(start, key)) / MB
        ratio = getattr(memory, key) / getattr(start, key)
        print(f"  round {memory.round:>5} / round {start.round}: {ratio:.3f} ({growth:+.1f} MB)")
    if len(probe.memory) >= 3:  # after the warm-up: growth from the second checkpoint on
        settled = probe.memory[1]
        per_100 = (getattr(end, key) - getattr(settled, key)) / MB / (end.round - settled.round) * 100
        print(f"  from round {settled.round} to {end.round}: {per_100:+.2f} MB per 100 rounds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0, help="system.num_workers (0: one per core)")
    parser.add_argument("--data-dir", default=os.environ.get("FPL_DATA_DIR") or str(REPO.parent / "shared" / "data"))
    args = parser.parse_args()

    config = ExperimentConfig.from_dict({
        "data": {"data_dir": args.data_dir},
        "model": {"name": "mlp"},
        "federation": {
            "num_clients": args.clients, "clients_per_round": args.per_round, "rounds": args.rounds,
            "local_epochs": 1, "batch_size": 50,
        },
        "system": {"num_workers": args.workers},
    })  # fmt: skip
    loading = time.perf_counter()
    data = load_mnist(args.data_dir, download=False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"soak: MNIST {len(data.train_y)} training examples (loaded in {time.perf_counter() - loading:.1f} s), mlp, "
        f"{args.clients} clients, {args.per_round} per round, E=1, B=50, {args.rounds} rounds; "
        f"{cores} cores, load average {os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    probe = Probe(set(checkpoints(args.rounds)))
    started = time.perf_counter()
    run_experiment(config, callback=probe, data=data)
    total = time.perf_counter() - started
    print(f"{args.rounds} rounds in {total:.1f} s; final accuracy {100 * probe.accuracy[args.rounds]:.2f}%; "
          f"load average {os.getloadavg()[0]:.2f} at the end")  # fmt: skip
    report(probe, args.rounds)


if __name__ == "__main__":
    main()
