"""Cost of local DP: a DP-SGD round vs the same round without DP, and per-sample modes.

    python -m bench.dp_overhead [--rounds 2] [--model cnn]

1. The engine: 10 clients × 6,000 MNIST examples, E=1, B=50 (Poisson E[B]=50 under DP),
   one run without privacy and one with `privacy.mode = "local"` (the default per-sample
   mode, `DEFAULT_GRAD_SAMPLE_MODE`), same workers; prints seconds per round and the
   ratio. Target: <= 2.0.
2. One client's epoch on one thread: plain SGD vs DP-SGD with Opacus's ghost clipping,
   Opacus's per-sample gradients from hooks, and book-keeping clipping (one backward
   pass), to show which per-sample mode wins here.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from engine.client_trainers import train_client
from data_handler import load_mnist
from differential_privacy import DEFAULT_GRAD_SAMPLE_MODE, GRAD_SAMPLE_MODES, DPSGDModel, make_accountant
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun
from model import create_model


def engine_round_seconds(data, model_name: str, rounds: int, mode: str) -> list[float]:
    config = ExperimentConfig.from_dict(
        {
            "model": {"name": model_name},
            "federation": {"num_clients": 10, "clients_per_round": 10, "rounds": rounds},
            "privacy": {"mode": mode, "noise_multiplier": 1.0, "max_grad_norm": 1.0},
        }
    )
    return [result.seconds for result in FederatedRun(config, data=data).rounds()]


def client_epoch_seconds(data, model_name: str, mode: str) -> float:
    """One epoch over 6,000 examples at (expected) batch 50, one thread."""
    indices = np.arange(6_000)
    model = create_model(model_name, seed=0)
    started = time.perf_counter()
    if mode == "plain":
        train_client(
            model, data.train_x, data.train_y, indices, local_epochs=1, batch_size=50, learning_rate=0.05, seed=0
        )
    else:
        DPSGDModel(model, max_grad_norm=1.0, grad_sample_mode=mode).train(
            data.train_x, data.train_y, indices, local_epochs=1, batch_size=50, learning_rate=0.05,
            noise_multiplier=1.0, accountant=make_accountant("rdp"), seed=0,
        )  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="cnn", choices=("cnn", "mlp"))
    parser.add_argument("--data-dir", default=str(here.parent / "shared" / "data"))
    args = parser.parse_args()
    data = load_mnist(args.data_dir, download=False)

    plain = engine_round_seconds(data, args.model, args.rounds, "none")
    private = engine_round_seconds(data, args.model, args.rounds, "local")
    plain_median, private_median = statistics.median(plain), statistics.median(private)
    print(f"engine round without DP: {', '.join(f'{s:.1f}' for s in plain)} s")
    print(f"engine round with local DP ({DEFAULT_GRAD_SAMPLE_MODE}): {', '.join(f'{s:.1f}' for s in private)} s")
    print(f"local-DP round / plain round: {private_median / plain_median:.2f} (target <= 2.0)")

    torch.set_num_threads(1)
    client_epoch_seconds(data, args.model, "plain")  # warm-up
    times = {mode: client_epoch_seconds(data, args.model, mode) for mode in ("plain", *GRAD_SAMPLE_MODES)}
    for mode, seconds in times.items():
        print(f"one client epoch, 1 thread, {mode}: {seconds:.1f} s ({seconds / times['plain']:.2f}x plain)")


if __name__ == "__main__":
    main()
