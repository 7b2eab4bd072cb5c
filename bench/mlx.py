"""Local training on MLX vs torch: seconds per FedAvg round, same weights, same batches.

    python -m bench.mlx [--model mlp|cnn] [--rounds 3] [--examples-per-client 0] [--torch-threads 1]
                        [--data-dir ../shared/data]

Ten IID clients share the MNIST training set (6,000 examples each), E=1, B=50, lr 0.05.
Each round, torch's `InProcessTrainer` and `MlxTrainer` train all ten clients from their
own global weights (both start from the same seeded model and draw the same batches), the
weighted mean becomes the next global model, and the test accuracy of both is printed so
the runs can be seen to agree. Rounds alternate between the backends, so load on a shared
machine hits both. Ratio = MLX seconds / torch seconds (> 1: MLX is slower).

torch runs on one thread by default: mlx[cpu] computes on one (its bundled reference
BLAS is single-threaded) and the engine's worker processes run torch on one thread each,
so that is the like-for-like comparison; on a loaded machine torch's thread pool also
slows down badly when its threads do not get a core each. `--torch-threads 0` keeps
torch's default.

`--examples-per-client N` trains only the first N examples of each client (a quick look
at a model too slow to train in full; seconds scale with the examples).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client_trainers import InProcessTrainer, TrainSettings, TrainTask, accuracy_on
from data_handler import FederatedData, load_mnist, partition_iid
from mlx_backend import MlxTrainer, require_mlx
from model import create_model, flatten, get_parameters, set_parameters, unflatten

CLIENTS = 10


def fedavg_round(
    trainer: Any, weights: torch.Tensor, parts: list[np.ndarray], round_number: int
) -> tuple[torch.Tensor, float]:
    """(new global weights, seconds): every client trains, the server takes the weighted mean."""
    tasks = [TrainTask(i, i, part, seed=1000 * round_number + i) for i, part in enumerate(parts)]
    started = time.perf_counter()
    trainer.train(weights, tasks)
    mean = np.average(trainer.results.numpy(), axis=0, weights=[len(p) for p in parts]).astype(np.float32)
    return torch.from_numpy(mean), time.perf_counter() - started


def test_accuracy(model_name: str, weights: torch.Tensor, data: FederatedData) -> float:
    model = create_model(model_name)
    set_parameters(model, unflatten(weights, get_parameters(model)))
    return accuracy_on(model, data.test_x, data.test_y, np.arange(len(data.test_y)))


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp", choices=("cnn", "mlp"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--examples-per-client", type=int, default=0, help="0: all (6,000)")
    parser.add_argument("--torch-threads", type=int, default=1, help="0: torch's default")
    parser.add_argument("--data-dir", default=str(here.parent / "shared" / "data"))
    args = parser.parse_args()
    require_mlx()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    import mlx.core as mx

    data = load_mnist(args.data_dir, download=False)
    parts = partition_iid(data.train_y.numpy(), num_clients=CLIENTS, seed=0)
    if args.examples_per_client:
        parts = [part[: args.examples_per_client] for part in parts]
    settings = TrainSettings(args.model, data.num_classes, local_epochs=1, batch_size=50, learning_rate=0.05)
    initial = flatten(get_parameters(create_model(args.model, seed=0)))
    trainers = {
        "torch": InProcessTrainer(data, settings, initial.numel(), CLIENTS),
        "mlx": MlxTrainer(data, settings, initial.numel(), CLIENTS),
    }
    for trainer in trainers.values():  # warm-up: kernel set-up and MLX's compilation, not timed
        trainer.train(initial, [TrainTask(0, 0, parts[0], seed=0, max_steps=2)])
    print(
        f"model {args.model}, {CLIENTS} clients × {len(parts[0])} examples, E=1, B=50, lr 0.05; "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), mlx {mx.__version__} ({mx.default_device()})"
    )

    weights = dict.fromkeys(trainers, initial)
    seconds: dict[str, list[float]] = {name: [] for name in trainers}
    for round_number in range(1, args.rounds + 1):
        accuracy = {}
        for name, trainer in trainers.items():
            weights[name], took = fedavg_round(trainer, weights[name], parts, round_number)
            seconds[name].append(took)
            accuracy[name] = test_accuracy(args.model, weights[name], data)
        print(
            f"round {round_number}: torch {seconds['torch'][-1]:.2f} s (acc {accuracy['torch']:.4f}), "
            f"mlx {seconds['mlx'][-1]:.2f} s (acc {accuracy['mlx']:.4f}), "
            f"ratio {seconds['mlx'][-1] / seconds['torch'][-1]:.2f}"
        )
    torch_median, mlx_median = statistics.median(seconds["torch"]), statistics.median(seconds["mlx"])
    print(
        f"median seconds per round: torch {torch_median:.2f}, mlx {mlx_median:.2f}; "
        f"ratio mlx/torch {mlx_median / torch_median:.2f}"
    )


if __name__ == "__main__":
    main()
