"""The same workload in-process and on Flower: seconds per round and whole-run wall time.

    python -m bench.flower [--model cnn|mlp] [--rounds 3] [--clients 10] [--max-train 0]
                           [--simulation] [--data-dir ../shared/data]

Ten IID MNIST clients (6,000 examples each), E=1, B=50, lr 0.05, FedAvg, no privacy, every
client in every round, three rounds; the same seeds everywhere, so both runtimes reach the
same accuracy (printed, to see that they agree).

- in-process: `FederatedRun` as `cli.py run` runs it (trainer processes: one per core);
- Flower deployment: `flower_deployment.run_local_deployment`, a SuperLink and one SuperNode per
  client on loopback, each round a fresh ClientApp process per client (torch import, MNIST
  load) that the SuperNode starts after its next poll;
- `--simulation`: also Flower's simulation engine (Ray virtual SuperNodes; needs
  `pip install "flwr[simulation]==1.42.*"`).

"round s" is each round's `seconds` (training + aggregation: on Flower also transport,
process start-up and polling); "wall s" is the whole run from the call to its return
(start-up, every round with its evaluation, shut-down). Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"  # before flwr is imported
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"

from database import ExperimentStore  # noqa: E402
from experiment_config import ExperimentConfig  # noqa: E402


def in_process(config: ExperimentConfig) -> tuple[list[float], list[float], float]:
    """(seconds per round, accuracy per round, wall seconds) of the in-process engine."""
    from federated_learning import run_experiment

    started = time.perf_counter()
    results = run_experiment(config)
    return [r.seconds for r in results], [r.accuracy for r in results], time.perf_counter() - started


def on_flower(config: ExperimentConfig, db_url: str, *, simulation: bool) -> tuple[list[float], list[float], float]:
    """(seconds per round, accuracy per round, wall seconds) of a local Flower run."""
    from flower_deployment import run_local_deployment

    started = time.perf_counter()
    experiment_id = run_local_deployment(config, db_url=db_url, timeout_s=3600, simulation=simulation)
    wall = time.perf_counter() - started
    store = ExperimentStore(db_url)
    summary = store.get_experiment(experiment_id)
    if summary is None or summary.status != "completed":
        raise RuntimeError(f"the Flower run did not complete: {summary.status if summary else '?'}: "
                           f"{summary.error if summary else ''}")  # fmt: skip
    rounds = store.rounds_frame([experiment_id])
    return list(rounds.seconds), list(rounds.accuracy), wall


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn", choices=("cnn", "mlp"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--max-train", type=int, default=0, help="0: all 60,000 training examples")
    parser.add_argument("--simulation", action="store_true", help="also Flower's simulation engine (Ray)")
    parser.add_argument("--data-dir", default=os.environ.get("FPL_DATA_DIR") or str(here.parent / "shared" / "data"))
    args = parser.parse_args()
    config = ExperimentConfig.from_dict({
        "data": {"data_dir": str(Path(args.data_dir).resolve()), "max_train_examples": args.max_train},
        "model": {"name": args.model},
        "federation": {"num_clients": args.clients, "clients_per_round": args.clients, "rounds": args.rounds,
                       "local_epochs": 1, "batch_size": 50, "learning_rate": 0.05},
        "privacy": {"audit_examples": 0},
    })  # fmt: skip
    runs = {"in-process": lambda: in_process(config)}
    with tempfile.TemporaryDirectory(prefix="fpl-bench-flower-") as scratch:
        db_url = f"sqlite:///{scratch}/bench.db"
        runs["Flower deployment"] = lambda: on_flower(config, db_url, simulation=False)
        if args.simulation:
            runs["Flower simulation"] = lambda: on_flower(config, db_url, simulation=True)
        measured = {name: run() for name, run in runs.items()}
    print(f"{args.clients} clients, MNIST {args.model.upper()}, E=1, B=50, {args.rounds} rounds, "
          f"{os.cpu_count()} cores")  # fmt: skip
    print(f"{'runtime':<20}{'round s (each)':<28}{'mean round s':>13}{'wall s':>9}  accuracy per round")
    baseline = statistics.mean(measured["in-process"][0])
    for name, (seconds, accuracy, wall) in measured.items():
        each = ", ".join(f"{s:.1f}" for s in seconds)
        mean = statistics.mean(seconds)
        print(f"{name:<20}{each:<28}{mean:>13.1f}{wall:>9.1f}  {', '.join(f'{a:.4f}' for a in accuracy)}"
              f"   (round ×{mean / baseline:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
