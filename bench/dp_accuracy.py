"""The DP accuracy targets on MNIST (issue 20): accuracy and ε every round, the best accuracy at each
reported ε, and whether the target was met.

    python -m bench.dp_accuracy local   [--model scatter-linear] [--rounds R] [--batch-size B] [--lr LR]
                                        [--local-epochs E] [--ema DECAY] [--epsilon EPS] [--cache DIR]
                                        [--set KEY=VALUE ...]
    python -m bench.dp_accuracy central [--model scatter-linear] [--rounds R] ... [--no-adaptive-clipping]

local: 10 clients, IID, DP-SGD on every client with σ calibrated before the run so that the whole
run ends at ε ≤ 3 (δ = 1e-5, Poisson batches of expected size B out of each client's 6,000
examples). Target: ≥ 98.0% test accuracy (Tramèr & Boneh 2021 reach 98.7% centralized with
ScatterNet + linear at ε = 3; this project's cnn-dp reached 96.37%).

central: DP-FedAvg over 1,000 clients of 60 examples, each round Poisson-sampling 100 expected
clients; σ calibrated so the whole run ends at ε ≤ 8 (user-level, δ = 1e-5), adaptive clipping on
by default. Target: ≥ 98.0% at ε ≤ 8; the table also gives the best accuracy reached at ε ≤ 2 on the
way (`--epsilon 2` calibrates a whole run to ε ≤ 2 instead).

Each model has its own default recipe (`RECIPES`, with what each measured; the default model is
scatter-linear); any flag overrides it. `--ema DECAY` releases the server's exponential moving
average of the global weights (`federation.server_ema`; free in ε). The scatter models' features are
computed once, before the run, and the time they took is printed (`--cache DIR` keeps them on disk,
keyed by the images, for the next run). The data is the real MNIST (FPL_DATA_DIR).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from engine.scattering import with_scattering
from engine.workloads import load_data
from experiment_config import IMAGE_MODELS, SCATTER_MODELS, ExperimentConfig
from federated_learning import FederatedRun, RoundResult

TARGETS = {"local": (3.0, 0.98), "central": (8.0, 0.98)}  # (ε, accuracy)
REPORTED_EPSILONS = {"local": (1.0, 2.0, 3.0), "central": (2.0, 4.0, 8.0)}  # best accuracy at ε ≤ each


# (mode, model) → rounds, B, lr, local epochs, C, EMA decay: the recipes measured on a 2-core CPU,
# real MNIST, seed 0, σ calibrated to the mode's ε (accuracy at the end of the run):
#   local   cnn-dp          25 rounds, E 1, B 500, lr 4              96.37% at ε 2.99 (before ScatterNet); with
#                           --set privacy.augmentations=4 (augmentation multiplicity) 97.08% at ε 2.993
#   local   scatter-linear  30 rounds, E 1, B 1000, lr 4, EMA 0.8    98.07% at ε 2.996; seeds 1–4: 98.10, 97.92,
#                           97.97, 98.17% (mean of five 98.05%). Before it: 20 rounds, B 500, EMA 0.7 98.04%
#                           (seed 1: 97.94%; without the EMA 97.96%); 40 rounds, lr 2, EMA 0.9 98.05%; 20 rounds,
#                           E 2, lr 2, EMA 0.8 98.05% (seed 1: 97.95%); B 1500 over 40 rounds 97.84% (seed 2);
#                           server momentum (--set federation.strategy=fedavgm, β 0.5, lr 2) 97.90% (seed 2)
#   local   scatter-cnn     10 rounds, E 2, B 500, lr 2, EMA 0.5     97.44% at ε 2.99 (~40 s a round on 1 core)
#   central cnn-dp          100 rounds, E 2, B 20, lr 0.1            96.84% at ε 8.00 (before ScatterNet)
#   central scatter-linear  100 rounds, E 2, B 20, lr 0.05, EMA 0.5  98.10% at ε 8.00 (σ 0.99); the same
#                           calibrated to ε ≤ 2 in 50 rounds (--epsilon 2 --rounds 50, σ 1.89): 97.31% at ε 1.99
# central scatter-cnn has no measured recipe yet: it takes scatter-linear's.
RECIPES: dict[tuple[str, str], dict[str, int | float]] = {
    ("local", "cnn-dp"): {"rounds": 25, "batch_size": 500, "lr": 4.0, "local_epochs": 1, "clip": 1.0, "ema": 0.0},
    ("central", "cnn-dp"): {"rounds": 100, "batch_size": 20, "lr": 0.1, "local_epochs": 2, "clip": 1.0, "ema": 0.0},
    ("local", "scatter-linear"): {"rounds": 30, "batch_size": 1000, "lr": 4.0, "local_epochs": 1, "clip": 1.0,
                                  "ema": 0.8},
    ("local", "scatter-cnn"): {"rounds": 10, "batch_size": 500, "lr": 2.0, "local_epochs": 2, "clip": 1.0,
                               "ema": 0.5},
    ("central", "scatter-linear"): {"rounds": 100, "batch_size": 20, "lr": 0.05, "local_epochs": 2, "clip": 1.0,
                                    "ema": 0.5},
}  # fmt: skip
RECIPES["central", "scatter-cnn"] = RECIPES["central", "scatter-linear"]


def recipe(mode: str, model: str) -> dict[str, int | float]:
    """The default settings for `model` in `mode` (cnn-dp's for the models without their own)."""
    return RECIPES.get((mode, model), RECIPES[(mode, "cnn-dp")])


def config(args: argparse.Namespace) -> ExperimentConfig:
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
            "batch_size": args.batch_size, "learning_rate": args.lr, "server_ema": args.ema,
        },
        "privacy": {
            "mode": args.mode, "target_epsilon": args.epsilon, "delta": 1e-5, "max_grad_norm": args.clip,
            "audit_examples": 0, **privacy,
        },
        "system": {"seed": args.seed, "num_workers": args.workers},
    }).with_overrides(args.set)  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    for mode in TARGETS:
        sub = modes.add_parser(mode)
        sub.add_argument("--model", default="scatter-linear", choices=IMAGE_MODELS)
        sub.add_argument("--rounds", type=int)
        sub.add_argument("--batch-size", type=int)
        sub.add_argument("--lr", type=float)
        sub.add_argument("--local-epochs", type=int)
        sub.add_argument("--clip", type=float, help="C: per-example (local) or per-update (central) bound")
        sub.add_argument("--ema", type=float, help="federation.server_ema: decay of the released average (0: off)")
        sub.add_argument("--epsilon", type=float, default=TARGETS[mode][0], help="ε the whole run is calibrated to")
        sub.add_argument("--no-adaptive-clipping", action="store_true", help="central: keep C fixed")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--workers", type=int, default=0, help="system.num_workers (0: one per core)")
        sub.add_argument(
            "--cache", type=Path, help="scatter models: keep the features in this folder, keyed by the data"
        )
        sub.add_argument("--threads", type=int, default=0, help="torch threads in this process (0: torch's default)")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="any other config key, e.g. federation.strategy=fedavgm (repeatable)")
    args = parser.parse_args()
    for key, value in recipe(args.mode, args.model).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def best_at(results: list[RoundResult], epsilon: float) -> tuple[float, float] | None:
    """(accuracy, ε) of the most accurate round whose ε ≤ `epsilon`, or None."""
    eligible = [(r.accuracy, r.epsilon) for r in results if r.epsilon <= epsilon]
    return max(eligible) if eligible else None


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config(args)
    target_epsilon, target_accuracy = TARGETS[args.mode]

    started = time.perf_counter()
    data = load_data(cfg)
    if args.model in SCATTER_MODELS:
        images = len(data.train_y) + len(data.test_y)
        data = with_scattering(cfg, data, cache_dir=args.cache)
        seconds = time.perf_counter() - started
        print(f"scattering features (J = 2, 81 × 7 × 7): {images} images in {seconds:.0f} s "
              f"({1000 * seconds / images:.2f} ms per image{', or read from the cache' if args.cache else ''}), once, "
              "before the first round", flush=True)  # fmt: skip
    run = FederatedRun(cfg, data=data)
    print(
        f"{args.mode} DP, {args.model}: {cfg.federation.num_clients} clients, {args.rounds} rounds, "
        f"E = {args.local_epochs}, B = {args.batch_size}, lr {args.lr:g}, C = {args.clip:g}, EMA {args.ema:g}; "
        f"σ calibrated to {run.privacy.noise_multiplier:.4f} for ε ≤ {args.epsilon:g} (δ = 1e-5)",
        flush=True,
    )
    results = []
    for result in run.rounds():
        results.append(result)
        print(
            f"round {result.round:>3}: accuracy {100 * result.accuracy:6.2f}%  ε {result.epsilon:.3f}  "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    print_table(args, results)
    last = results[-1]
    met = last.accuracy >= target_accuracy and last.epsilon <= target_epsilon
    print(
        f"final: {100 * last.accuracy:.2f}% at ε = {last.epsilon:.3f}; target ≥ {100 * target_accuracy:g}% at "
        f"ε ≤ {target_epsilon:g} → {'met' if met else 'NOT met'}; {time.perf_counter() - started:.0f} s"
    )


def print_table(args: argparse.Namespace, results: list[RoundResult]) -> None:
    """The best accuracy at each reported ε, as a Markdown table."""
    print("\n| mode | model | EMA | ε ≤ | best accuracy | at ε | round |\n|---|---|---|---|---|---|---|")
    for epsilon in REPORTED_EPSILONS[args.mode]:
        best = best_at(results, epsilon)
        if best is None:
            print(f"| {args.mode} | {args.model} | {args.ema:g} | {epsilon:g} | – | – | – |")
            continue
        accuracy, reached = best
        number = next(r.round for r in results if (r.accuracy, r.epsilon) == best)
        print(
            f"| {args.mode} | {args.model} | {args.ema:g} | {epsilon:g} | {100 * accuracy:.2f}% | {reached:.3f} "
            f"| {number} |"
        )
    print()


if __name__ == "__main__":
    main()
