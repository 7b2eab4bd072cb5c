"""The DP accuracy targets on MNIST: accuracy and ε every round, and whether the target was met.

    python -m bench.dp_accuracy local   [--model cnn-dp] [--rounds 25] [--batch-size 500] [--lr 4.0]
    python -m bench.dp_accuracy central [--model cnn-dp] [--rounds 100] [--batch-size 20] [--lr 0.1]
                                        [--local-epochs 2] [--no-adaptive-clipping]

local: 10 clients, IID, DP-SGD on every client with σ calibrated before the run so that the whole
run ends at ε ≤ 3 (δ = 1e-5, C = 1, Poisson batches of expected size B out of each client's 6,000
examples). Target: ≥ 96% test accuracy (centralized Opacus reaches 96.78% at ε = 2.91).

central: DP-FedAvg over 1,000 clients of 60 examples, each round Poisson-sampling 100 expected
clients; σ calibrated so the whole run ends at ε ≤ 8 (user-level, δ = 1e-5), adaptive clipping on
by default. Prints the accuracy–ε curve. Aim: ≥ 95% at ε ≤ 8.

Both default to `cnn-dp`, the small tanh CNN (model.py); `--model cnn` measures the 1.66M-parameter
CNN of McMahan et al. under the same recipe. The data is the real MNIST (FPL_DATA_DIR).
"""

from __future__ import annotations

import argparse
import time

import torch

from experiment_config import ExperimentConfig
from federated_learning import FederatedRun

TARGETS = {"local": (3.0, 0.96), "central": (8.0, 0.95)}  # (ε, accuracy)


def config(args: argparse.Namespace) -> ExperimentConfig:
    epsilon = TARGETS[args.mode][0]
    if args.mode == "local":
        federation = {"num_clients": 10, "clients_per_round": 10}
        privacy = {}
    else:
        federation = {"num_clients": 1000, "clients_per_round": 100}
        privacy = {"adaptive_clipping": not args.no_adaptive_clipping}
    return ExperimentConfig.from_dict({
        "model": {"name": args.model},
        "data": {"partition": "iid"},
        "federation": {
            **federation, "rounds": args.rounds, "local_epochs": args.local_epochs,
            "batch_size": args.batch_size, "learning_rate": args.lr,
        },
        "privacy": {
            "mode": args.mode, "target_epsilon": epsilon, "delta": 1e-5, "max_grad_norm": args.clip,
            "audit_examples": 0, **privacy,
        },
        "system": {"seed": args.seed, "num_workers": args.workers},
    })  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    # Each mode's defaults are the recipe that met its target (README, "Which model to train privately").
    for mode, rounds, batch_size, lr, epochs in (("local", 25, 500, 4.0, 1), ("central", 100, 20, 0.1, 2)):
        sub = modes.add_parser(mode)
        sub.add_argument("--model", default="cnn-dp", choices=("cnn-dp", "cnn", "mlp"))
        sub.add_argument("--rounds", type=int, default=rounds)
        sub.add_argument("--batch-size", type=int, default=batch_size)
        sub.add_argument("--lr", type=float, default=lr)
        sub.add_argument("--local-epochs", type=int, default=epochs)
        sub.add_argument("--clip", type=float, default=1.0, help="C: per-example (local) or per-update (central) bound")
        sub.add_argument("--no-adaptive-clipping", action="store_true", help="central: keep C fixed")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--workers", type=int, default=0, help="system.num_workers (0: one per core)")
        sub.add_argument("--threads", type=int, default=0, help="torch threads in this process (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    target_epsilon, target_accuracy = TARGETS[args.mode]

    started = time.perf_counter()
    run = FederatedRun(config(args))
    plan = run.privacy
    print(f"{args.mode} DP, {args.model}: {run.config.federation.num_clients} clients, "
          f"{args.rounds} rounds, E = {args.local_epochs}, B = {args.batch_size}, lr {args.lr:g}, C = {args.clip:g}; "
          f"σ calibrated to {plan.noise_multiplier:.4f} for ε ≤ {target_epsilon:g} (δ = 1e-5)", flush=True)
    last = None
    for last in run.rounds():
        print(f"round {last.round:>3}: accuracy {100 * last.accuracy:6.2f}%  ε {last.epsilon:.3f}  "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    met = last.accuracy >= target_accuracy and last.epsilon <= target_epsilon
    print(f"final: {100 * last.accuracy:.2f}% at ε = {last.epsilon:.3f}; target ≥ {100 * target_accuracy:g}% at "
          f"ε ≤ {target_epsilon:g} → {'met' if met else 'NOT met'}; {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
