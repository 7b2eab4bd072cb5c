"""DP-FTRL against DP-FedAvg on MNIST (issue 20, item 3): the accuracy–ε curve of both central
mechanisms at 1,000 clients × 60 examples, 100 a round, with the 2NN MLP (quick on a CPU).

    python -m bench.dp_ftrl                                   # ε = 1, 2, 4, 8; 100 rounds (the full run)
    python -m bench.dp_ftrl --epsilons 2,8 --rounds 10        # a small check that it works
    python -m bench.dp_ftrl --ftrl-sampling cyclic            # DP-FTRL with each client once every 10 rounds

For each target ε each mechanism's σ is calibrated before the run so that all rounds end at ε ≤
the target (δ = 1e-5, user level), with the same model, recipe, clip norm C and seed:

- DP-FedAvg: Poisson client sampling at q = 100/1,000, fresh N(0, σ²C²) each round, accounted by
  RDP with amplification by sampling (add/remove one client);
- DP-FTRL: exactly 100 of 1,000 clients a round (seeded), the tree's noise on the running sum
  (privacy/ftrl.py), accounted by zCDP over the schedule with no amplification (zero-out one client).
  The 100 are drawn at random each round (`--ftrl-sampling fixed`, where clients repeat) or taken
  in turn from one seeded order (`--ftrl-sampling cyclic`: each client once every 10 rounds).

The two ε protect slightly different relations (the table says which); both are user-level. The
data is the real MNIST (FPL_DATA_DIR). Prints one line per round and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import time

import torch

from data_handler import FederatedData
from engine.workloads import load_data
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun, RoundResult

MECHANISMS = ("dp-fedavg", "dp-ftrl")
SAMPLING = {"dp-fedavg": "poisson", "dp-ftrl": "fixed"}  # what each mechanism's accountant is for


def config(args: argparse.Namespace, mechanism: str, epsilon: float) -> ExperimentConfig:
    """The run of `mechanism` calibrated to `epsilon`: 1,000 IID clients of 60 examples, 100 a round."""
    return ExperimentConfig.from_dict({
        "model": {"name": "mlp"},
        "data": {"partition": "iid"},
        "federation": {
            "num_clients": 1000, "clients_per_round": 100, "rounds": args.rounds, "local_epochs": args.local_epochs,
            "batch_size": args.batch_size, "learning_rate": args.lr,
            "client_sampling": args.ftrl_sampling if mechanism == "dp-ftrl" else SAMPLING[mechanism],
            "server_learning_rate": args.server_lr if mechanism == "dp-ftrl" else 0.0,
        },
        "privacy": {
            "mode": "central", "mechanism": mechanism, "target_epsilon": epsilon, "delta": 1e-5,
            "max_grad_norm": args.clip, "audit_examples": 0,
        },
        "system": {"seed": args.seed, "num_workers": args.workers},
    })  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", default="1,2,4,8", help="target ε values, comma-separated")
    parser.add_argument("--mechanisms", default=",".join(MECHANISMS), help="dp-fedavg, dp-ftrl or both")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.1, help="the clients' SGD step")
    parser.add_argument("--server-lr", type=float, default=1.0, help="DP-FTRL's η_s (DP-FedAvg steps by 1)")
    parser.add_argument("--clip", type=float, default=1.0, help="C: each client update's L2 bound")
    parser.add_argument("--ftrl-sampling", choices=("fixed", "cyclic"), default="fixed",
                        help="DP-FTRL's schedule: k of n drawn at random each round, or cyclic (each client once "
                             "every n/k rounds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="system.num_workers (0: one per core)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in this process (0: torch's default; 1 is fastest for the MLP's small batches)")
    return parser.parse_args()


def run_one(
    args: argparse.Namespace, mechanism: str, epsilon: float, data: FederatedData
) -> tuple[float, list[RoundResult]]:
    """(σ, results) of one calibrated run, printing each round."""
    run = FederatedRun(config(args, mechanism, epsilon), data=data)
    sigma, started = run.privacy.noise_multiplier, time.perf_counter()
    print(f"{mechanism} at ε ≤ {epsilon:g}: σ = {sigma:.4f} ({run.privacy.accountant}, "
          f"{run.privacy.neighbouring_relation})", flush=True)  # fmt: skip
    results = []
    for result in run.rounds():
        results.append(result)
        print(f"  round {result.round:>3}: accuracy {100 * result.accuracy:6.2f}%  ε {result.epsilon:.3f}  "
              f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    return sigma, results


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    epsilons = [float(e) for e in args.epsilons.split(",")]
    mechanisms = [m.strip() for m in args.mechanisms.split(",")]
    started = time.perf_counter()
    data = load_data(config(args, MECHANISMS[0], epsilons[0]))
    rows = []
    for epsilon in epsilons:
        for mechanism in mechanisms:
            sigma, results = run_one(args, mechanism, epsilon, data)
            last, best = results[-1], max(r.accuracy for r in results)
            rows.append((mechanism, epsilon, sigma, last, best))
    print(f"\n1,000 clients × 60, 100 a round, MLP, {args.rounds} rounds, E = {args.local_epochs}, "
          f"B = {args.batch_size}, lr {args.lr:g}, C = {args.clip:g}, DP-FTRL η_s {args.server_lr:g} "
          f"({args.ftrl_sampling} sampling), δ = 1e-5; "
          f"{time.perf_counter() - started:.0f} s in all\n")  # fmt: skip
    print("| mechanism | target ε | σ | final accuracy | best accuracy | final ε | accountant | relation |")
    print("|---|---|---|---|---|---|---|---|")
    for mechanism, epsilon, sigma, last, best in rows:
        print(f"| {mechanism} | {epsilon:g} | {sigma:.4f} | {100 * last.accuracy:.2f}% | {100 * best:.2f}% | "
              f"{last.epsilon:.3f} | {last.accountant} | {last.neighbouring_relation} |")  # fmt: skip


if __name__ == "__main__":
    main()
