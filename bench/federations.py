"""Realistic federations on MNIST: the comparison tables of issue 4.

    python -m bench.federations [--model mlp] [--only noniid,attack,topk,dropout] [--data-dir ../shared/data]

- noniid:  Dirichlet α = 0.1, 10 clients, 30 rounds: FedAvg, FedProx, FedAvgM, FedAdam,
           SCAFFOLD, FedNova (final accuracy, best accuracy, first round at ≥ 95%).
- attack:  3 of 10 clients flip the sign of their update (×10), IID, 20 rounds: FedAvg vs
           median, trimmed mean (β = 0.3), Multi-Krum (f = 3). Goal: robust rules ≥ 95%.
- topk:    top-k 1% with error feedback vs none, IID, 20 rounds. Goal: ≥ 20× fewer upload
           bytes at ≤ 1 point accuracy loss.
- dropout: 30% of the selected clients drop out of each round vs none, IID, 20 rounds.
           Goal: within 1 point.

Prints one table per experiment and the ratios the goals are about.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from data_handler import load_mnist
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun

REPO = Path(__file__).resolve().parents[1]


def run(base: dict, dataset, **sections) -> dict:
    raw = {k: dict(v) for k, v in base.items()}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    started = time.perf_counter()
    results, diverged = [], None
    try:
        for result in FederatedRun(ExperimentConfig.from_dict(raw), data=dataset).rounds():
            results.append(result)
    except RuntimeError as error:  # the attack drove the global model to inf/NaN: a collapse
        if "non-finite" not in str(error):
            raise
        diverged = len(results) + 1
    reached = next((r.round for r in results if r.accuracy >= 0.95), None)
    return {
        "final": results[-1].accuracy,
        "best": max(r.accuracy for r in results),
        "round_95": reached,
        "bytes_up": sum(r.bytes_up for r in results),
        "bytes_down": sum(r.bytes_down for r in results),
        "simulated": sum(r.simulated_seconds for r in results),
        "seconds": time.perf_counter() - started,
        "skipped": sum(bool(r.skipped) for r in results),
        "diverged": diverged,
    }


def table(title: str, rows: dict[str, dict]) -> None:
    print(f"\n## {title}\n")
    print("| run | final acc | best acc | round ≥ 95% | MB up | MB down | simulated s | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        final = f"diverged in round {r['diverged']} (last {100 * r['final']:.2f}%)" if r["diverged"] else (
            f"{100 * r['final']:.2f}%"
        )
        print(
            f"| {name} | {final} | {100 * r['best']:.2f}% | {r['round_95'] or '–'} | "
            f"{r['bytes_up'] / 1e6:.1f} | {r['bytes_down'] / 1e6:.1f} | {r['simulated']:.0f} | {r['seconds']:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    parser.add_argument("--only", default="noniid,attack,topk,dropout")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = load_mnist(args.data_dir, download=False)
    only = set(args.only.split(","))
    base = {
        "data": {"data_dir": args.data_dir},
        "model": {"name": args.model},
        "federation": {"num_clients": 10, "clients_per_round": 10, "rounds": 20, "batch_size": 50,
                       "learning_rate": 0.05},
        "privacy": {"audit_examples": 0},
        "system": {"seed": args.seed},
    }  # fmt: skip
    print(f"model {args.model}, seed {args.seed}, 10 clients, E=1, B=50, lr 0.05")

    if "noniid" in only:
        noniid = {"partition": "dirichlet", "dirichlet_alpha": 0.1}
        strategies = {
            "FedAvg": {"strategy": "fedavg"},
            "FedProx μ=0.01": {"strategy": "fedprox", "proximal_mu": 0.01},
            "FedAvgM β=0.9, η=1": {"strategy": "fedavgm"},
            "FedAdam η=0.01": {"strategy": "fedadam"},
            "SCAFFOLD": {"strategy": "scaffold"},
            "FedNova": {"strategy": "fednova"},
        }
        rows = {
            name: run(base, data, data=noniid, federation={"rounds": 30, **values})
            for name, values in strategies.items()
        }
        table("Dirichlet α = 0.1, 30 rounds", rows)

    if "attack" in only:
        attack = {"fraction": 0.3, "behaviour": "sign_flip", "scale": 10.0}
        rows = {"FedAvg, no attack": run(base, data)}
        rows["FedAvg, 30% sign flip"] = run(base, data, attack=attack)
        rows["median"] = run(base, data, attack=attack, federation={"strategy": "median"})
        rows["trimmed mean β=0.3"] = run(
            base, data, attack=attack, federation={"strategy": "trimmed_mean", "trim_fraction": 0.3}
        )
        rows["Multi-Krum f=3"] = run(
            base, data, attack=attack, federation={"strategy": "multi_krum", "byzantine_clients": 3}
        )
        table("30% sign-flip attackers (×10), IID, 20 rounds", rows)

    if "topk" in only:
        plain = run(base, data)
        compressed = run(base, data, communication={"compression": "topk", "topk_fraction": 0.01})
        table("top-k 1% with error feedback, IID, 20 rounds", {"no compression": plain, "top-k 1% + EF": compressed})
        print(
            f"\nupload bytes ratio {plain['bytes_up'] / compressed['bytes_up']:.1f}× fewer; "
            f"accuracy cost {100 * (plain['final'] - compressed['final']):.2f} points (goal ≥ 20×, ≤ 1 point)"
        )

    if "dropout" in only:
        plain = run(base, data)
        dropped = run(base, data, federation={"dropout_probability": 0.3})
        table("30% dropout per round, IID, 20 rounds", {"no dropout": plain, "30% dropout": dropped})
        print(f"\naccuracy cost {100 * (plain['final'] - dropped['final']):.2f} points (goal ≤ 1 point)")


if __name__ == "__main__":
    main()
