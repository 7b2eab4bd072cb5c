"""bf16 vs fp32 local training (system.precision): seconds per round and accuracy after N rounds.

    python -m bench.precision [--clients 10] [--examples 6000] [--rounds 3] [--pairs 3] [--workers 0]
    python -m bench.precision --examples 600 --rounds 3 --pairs 2      # a shorter run for a busy machine

The MNIST CNN, `--clients` clients × `--examples` each (IID), every client in every round, E = 1, B = 50,
lr 0.05, the engine's own round loop (`FederatedRun`). Each pair runs the same seeded experiment once in
fp32 and once in bf16, in alternating order (a pair that starts with fp32 is followed by one that starts
with bf16), and one plain single-process PyTorch epoch over the same examples in each precision
(`bench.overhead.plain_epoch_seconds`' loop), so load on a shared machine hits both sides alike. Prints
medians and ranges, the bf16 ÷ fp32 ratio of round seconds (per pair, then the median), the accuracy
difference in points, and each precision's round ÷ plain-epoch ratio. The issue's rule: fp32 stays the
default unless bf16 matches accuracy within 0.1 point.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_handler import FederatedData, load_mnist
from engine.client_trainers import train_client
from experiment_config import PRECISIONS, ExperimentConfig
from federated_learning import FederatedRun
from model import create_model

BATCH_SIZE, LEARNING_RATE = 50, 0.05


@dataclass(frozen=True)
class RunTimes:
    """One engine run: seconds of each round, test accuracy after the last round."""

    round_seconds: list[float]
    accuracy: float


def bench_config(*, clients: int, examples: int, rounds: int, workers: int, precision: str) -> ExperimentConfig:
    """The measured experiment; `examples` = 0 keeps all 60,000 training images (6,000 a client for 10)."""
    return ExperimentConfig.from_dict({
        "data": {"max_train_examples": clients * examples},
        "model": {"name": "cnn"},
        "federation": {"num_clients": clients, "clients_per_round": clients, "rounds": rounds,
                       "local_epochs": 1, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE},
        "system": {"num_workers": workers, "seed": 0, "precision": precision},
    })  # fmt: skip


def engine_run(config: ExperimentConfig, data: FederatedData) -> RunTimes:
    results = list(FederatedRun(config, data=data).rounds())
    return RunTimes([r.seconds for r in results], results[-1].accuracy)


def plain_epoch(data: FederatedData, indices: np.ndarray, precision: str) -> float:
    """Seconds of one epoch of single-process SGD (all torch threads) over `indices`, in `precision`."""
    model = create_model("cnn", seed=0)
    started = time.perf_counter()
    train_client(model, data.train_x, data.train_y, indices, local_epochs=1, batch_size=BATCH_SIZE,
                 learning_rate=LEARNING_RATE, seed=0, precision=precision)  # fmt: skip
    return time.perf_counter() - started


def spread(values: list[float], unit: str = " s", scale: float = 1.0) -> str:
    """'median (low–high)' of `values`, each multiplied by `scale`."""
    shown = [v * scale for v in values]
    return f"{statistics.median(shown):.2f}{unit} ({min(shown):.2f}–{max(shown):.2f})"


def measure(args: argparse.Namespace, data: FederatedData) -> tuple[dict[str, list[RunTimes]], dict[str, list[float]]]:
    """Interleaved pairs: engine runs and plain epochs per precision."""
    runs: dict[str, list[RunTimes]] = {p: [] for p in PRECISIONS}
    plain: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    subset = FederatedRun(
        bench_config(clients=args.clients, examples=args.examples, rounds=1, workers=1, precision="fp32"), data=data
    ).data  # the same examples the runs train on
    indices = np.arange(len(subset.train_y))
    plain_epoch(subset, indices[: 10 * BATCH_SIZE], "fp32")  # warm-up: first touch of the data, kernel set-up
    for pair in range(args.pairs):
        order = PRECISIONS if pair % 2 == 0 else PRECISIONS[::-1]
        for precision in order:
            config = bench_config(clients=args.clients, examples=args.examples, rounds=args.rounds,
                                  workers=args.workers, precision=precision)  # fmt: skip
            runs[precision].append(engine_run(config, data))
            plain[precision].append(plain_epoch(subset, indices, precision))
            last = runs[precision][-1]
            print(
                f"  pair {pair + 1} {precision}: rounds {', '.join(f'{s:.2f}' for s in last.round_seconds)} s, "
                f"accuracy {100 * last.accuracy:.2f}%, plain epoch {plain[precision][-1]:.2f} s",
                flush=True,
            )
    return runs, plain


def report(runs: dict[str, list[RunTimes]], plain: dict[str, list[float]]) -> None:
    # Round 1 of each run pays the workers' start; the steady rounds are the rest (all of them if only one).
    steady = {p: [s for r in rs for s in (r.round_seconds[1:] or r.round_seconds)] for p, rs in runs.items()}
    per_pair = {p: [statistics.median(r.round_seconds[1:] or r.round_seconds) for r in rs] for p, rs in runs.items()}
    for precision in PRECISIONS:
        round_median = statistics.median(steady[precision])
        print(f"{precision}: round {spread(steady[precision])}; accuracy "
              f"{spread([r.accuracy for r in runs[precision]], '%', 100)}; plain epoch {spread(plain[precision])}; "
              f"round ÷ plain fp32 epoch {round_median / statistics.median(plain['fp32']):.2f}")  # fmt: skip
    ratios = [b / f for b, f in zip(per_pair["bf16"], per_pair["fp32"], strict=True)]
    plain_ratios = [b / f for b, f in zip(plain["bf16"], plain["fp32"], strict=True)]
    gaps = [100 * (b.accuracy - f.accuracy) for b, f in zip(runs["bf16"], runs["fp32"], strict=True)]
    print(f"bf16 ÷ fp32 round seconds (per pair): {spread(ratios, '')}; plain epoch: {spread(plain_ratios, '')}")
    print(f"accuracy bf16 − fp32: {spread(gaps, ' points')} (bf16 may become the default only within ±0.1 point)")


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--examples", type=int, default=6_000, help="training examples per client")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=3, help="interleaved fp32/bf16 pairs")
    parser.add_argument("--workers", type=int, default=0, help="trainer processes (0: one per core)")
    parser.add_argument("--data-dir", default=str(here.parent / "shared" / "data"))
    args = parser.parse_args()
    data = load_mnist(args.data_dir, download=False)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; CNN, {args.clients} clients × "
        f"{args.examples} examples, all per round, E=1, B={BATCH_SIZE}, {args.rounds} rounds, {args.pairs} pairs"
    )
    runs, plain = measure(args, data)
    report(runs, plain)


if __name__ == "__main__":
    main()
