"""Catching Byzantine clients: precision and recall of the suspicion flags per attack, and FedAvg's
accuracy with and without leaving the flagged clients out (issue 21).

    python -m bench.byzantine [--rounds 5] [--attacks sign_flip,scale,gaussian,label_flip] [--max-train 6000]
                              [--partition iid] [--learning-rate 0.05] [--seed 0] [--data-dir ../shared/data]

MNIST (IID by default; --partition dirichlet gives α = 0.5), 20 clients all taking part in every round, 30% of them (6) malicious, the 2NN MLP, FedAvg,
one local epoch of SGD. Attacks as `engine.attacks` sends them: sign_flip (−10× the honest update),
scale (10×), gaussian (N(0, 1) per weight) and label_flip (trained on y → 9 − y). Per attack two runs:
`federation.exclusion = "none"` (every update scored and aggregated) and `"flagged"` (the clients flagged
this round left out: k = m = 1). Precision and recall are over every scored (client, round) of the run
(`engine.suspicion.flag_quality`), against who really was malicious. Targets: precision and recall
≥ 0.9 for the first three attacks; accuracy with exclusion close to the clean run's. Kept short for
shared CPUs (a few minutes at the defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from data_handler import load_mnist
from engine.suspicion import flag_quality
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun

REPO = Path(__file__).resolve().parents[1]
NUM_CLIENTS, MALICIOUS_FRACTION = 20, 0.3


def config(
    attack: str, *, exclusion: str, rounds: int, seed: int, max_train: int, partition: str = "iid",
    learning_rate: float = 0.05,
) -> ExperimentConfig:  # fmt: skip
    """The bench's federation; attack "" is the clean run (nobody malicious)."""
    return ExperimentConfig.from_dict({
        "data": {"max_train_examples": max_train, "max_test_examples": 2_000, "partition": partition,
                 "dirichlet_alpha": 0.5},
        "model": {"name": "mlp"},
        "federation": {"num_clients": NUM_CLIENTS, "clients_per_round": NUM_CLIENTS, "rounds": rounds,
                       "local_epochs": 1, "batch_size": 50, "learning_rate": learning_rate, "exclusion": exclusion},
        "attack": {"fraction": MALICIOUS_FRACTION if attack else 0.0, "behaviour": attack or "sign_flip",
                   "scale": 10.0, "noise_std": 1.0},
        "system": {"seed": seed, "num_workers": 1},
    })  # fmt: skip


def run(experiment: ExperimentConfig, dataset) -> dict[str, float | None]:
    """The final accuracy, the flags' precision and recall over the run, and the wall time."""
    started = time.perf_counter()
    results = list(FederatedRun(experiment, data=dataset).rounds())
    quality = flag_quality([dataclasses.asdict(c) for r in results for c in r.clients]) or {}
    excluded = sum(c.status == "excluded" for r in results for c in r.clients)
    return {
        "accuracy": results[-1].accuracy, "precision": quality.get("precision"), "recall": quality.get("recall"),
        "excluded": excluded, "seconds": time.perf_counter() - started,
    }  # fmt: skip


def ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--attacks", default="sign_flip,scale,gaussian,label_flip", help="comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train", type=int, default=6_000, help="MNIST training examples used (0 = all)")
    parser.add_argument("--partition", default="iid", choices=("iid", "dirichlet"))
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--data-dir", default=os.environ.get("FPL_DATA_DIR", str(REPO.parent / "shared" / "data")))
    args = parser.parse_args()
    dataset = load_mnist(Path(args.data_dir), download=False)
    common = {"rounds": args.rounds, "seed": args.seed, "max_train": args.max_train, "partition": args.partition,
              "learning_rate": args.learning_rate}  # fmt: skip
    clean = run(config("", exclusion="none", **common), dataset)
    print(f"\n## MNIST {args.partition}, {NUM_CLIENTS} clients (all each round), {MALICIOUS_FRACTION:.0%} malicious, MLP, "
          f"FedAvg (lr {args.learning_rate:g}), {args.rounds} rounds, {args.max_train or 'all'} train examples, "
          f"seed {args.seed}\n")  # fmt: skip
    print(f"Clean run (nobody malicious): accuracy {clean['accuracy']:.2%} ({clean['seconds']:.0f} s)\n")
    print("| attack | precision | recall | acc. exclusion none | acc. exclusion flagged | excluded | wall s |")
    print("|---|---|---|---|---|---|---|")
    for attack in args.attacks.split(","):
        scored = run(config(attack, exclusion="none", **common), dataset)
        excluding = run(config(attack, exclusion="flagged", **common), dataset)
        print(
            f"| {attack} | {ratio(scored['precision'])} | {ratio(scored['recall'])} | {scored['accuracy']:.2%} | "
            f"{excluding['accuracy']:.2%} | {excluding['excluded']} | {scored['seconds'] + excluding['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
