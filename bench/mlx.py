"""Local training on MLX vs torch: seconds per FedAvg round, same weights, same batches.

    python -m bench.mlx [--model mlp|cnn|tinyllama-lora] [--rounds 3] [--examples-per-client 0]
                        [--torch-threads 1] [--data-dir ../shared/data]

MNIST (mlp, cnn): ten IID clients share the training set (6,000 examples each), E=1, B=50,
lr 0.05. NGSS (tinyllama-lora): the NGSS round shape of `bench.ngss speed`, nine schools
of one synthetic task (gas_filled_balloons, ≈ 950 responses, natural partition, max
length 128), E=1, B=16, lr 0.05, TinyLLama-v0's architecture + LoRA r=8 with random frozen
weights (the Hub is not reachable here; the cost is the same), dropout 0.1 (each backend
draws its own masks, so there the accuracies agree only roughly).
Each round, torch's `InProcessTrainer` and `MlxTrainer` train all clients from their own
global weights (both start from the same seeded model and draw the same batches), the
weighted mean becomes the next global model, and the test accuracy of both is printed
(per-label accuracy for NGSS) so the runs can be seen to agree. Rounds alternate between
the backends, so load on a shared machine hits both. Ratio = MLX seconds / torch seconds
(> 1: MLX is slower).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.client_trainers import InProcessTrainer, TrainSettings, TrainTask, accuracy_on
from data_handler import FederatedData, load_mnist, partition_iid
from experiment_config import ExperimentConfig
from federated_learning import train_settings
from mlx_runtime.trainer import MlxTrainer, require_mlx
from model import create_model, flatten, get_parameters, set_parameters, unflatten
from engine.workloads import load_data

MNIST_CLIENTS = 10
NGSS_TASK = "gas_filled_balloons"


@dataclass(frozen=True)
class Workload:
    data: FederatedData
    parts: list[np.ndarray]  # each client's training examples
    settings: TrainSettings
    description: str


def mnist_workload(model_name: str, data_dir: str) -> Workload:
    data = load_mnist(data_dir, download=False)
    parts = partition_iid(data.train_y.numpy(), num_clients=MNIST_CLIENTS, seed=0)
    settings = TrainSettings(model_name, data.num_classes, local_epochs=1, batch_size=50, learning_rate=0.05)
    return Workload(data, parts, settings, f"MNIST, {MNIST_CLIENTS} IID clients, E=1, B=50, lr 0.05")


def ngss_workload() -> Workload:
    """`bench.ngss speed`'s round: nine schools of one task, TinyLLama-v0 + LoRA, B=16."""
    config = ExperimentConfig.from_dict({
        "data": {"dataset": "ngss", "partition": "natural", "ngss_task": NGSS_TASK},
        "model": {"name": "tinyllama-lora", "pretrained": False, "max_length": 128},
        "federation": {"num_clients": 9, "clients_per_round": 9, "batch_size": 16, "learning_rate": 0.05},
        "system": {"backend": "mlx"},
    })  # fmt: skip
    data = load_data(config)
    parts = [np.flatnonzero(data.train_groups == school) for school in range(len(data.group_names))]
    settings = train_settings(config, data.num_classes, noise_multiplier=0.0)
    description = f"NGSS {NGSS_TASK}, {len(parts)} schools, max {data.train_x.shape[1]} tokens, E=1, B=16, lr 0.05"
    return Workload(data, parts, settings, description)


def fedavg_round(
    trainer: Any, weights: torch.Tensor, parts: list[np.ndarray], round_number: int
) -> tuple[torch.Tensor, float]:
    """(new global weights, seconds): every client trains, the server takes the weighted mean."""
    tasks = [TrainTask(i, i, part, seed=1000 * round_number + i) for i, part in enumerate(parts)]
    started = time.perf_counter()
    trainer.train(weights, tasks)
    mean = np.average(trainer.results.numpy(), axis=0, weights=[len(p) for p in parts]).astype(np.float32)
    return torch.from_numpy(mean), time.perf_counter() - started


def fresh_model(settings: TrainSettings) -> torch.nn.Module:
    """The torch model both trainers start from (and that scores the test set)."""
    return create_model(
        settings.model_name, num_classes=settings.num_classes, seed=settings.model_seed or 0, **settings.model_options
    )


def test_accuracy(settings: TrainSettings, weights: torch.Tensor, data: FederatedData) -> float:
    """Accuracy on the test set: argmax hits (MNIST) or per-label accuracy (NGSS)."""
    model = fresh_model(settings)
    set_parameters(model, unflatten(weights, get_parameters(model)))
    return accuracy_on(model, data.test_x, data.test_y, np.arange(len(data.test_y)))


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp", choices=("cnn", "mlp", "tinyllama-lora"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--examples-per-client", type=int, default=0, help="0: all")
    parser.add_argument("--torch-threads", type=int, default=1, help="0: torch's default")
    parser.add_argument("--data-dir", default=str(here.parent / "shared" / "data"))
    args = parser.parse_args()
    require_mlx()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    import mlx.core as mx

    workload = ngss_workload() if args.model == "tinyllama-lora" else mnist_workload(args.model, args.data_dir)
    data, parts, settings = workload.data, workload.parts, workload.settings
    if args.examples_per_client:
        parts = [part[: args.examples_per_client] for part in parts]
    initial = flatten(get_parameters(fresh_model(settings)))
    trainers = {
        "torch": InProcessTrainer(data, settings, initial.numel(), len(parts)),
        "mlx": MlxTrainer(data, settings, initial.numel(), len(parts)),
    }
    for trainer in trainers.values():  # warm-up: kernel set-up and MLX's compilation, not timed
        trainer.train(initial, [TrainTask(0, 0, parts[0], seed=0, max_steps=2)])
    print(
        f"model {args.model}: {workload.description}, {sum(map(len, parts))} examples; "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), mlx {mx.__version__} ({mx.default_device()})"
    )

    weights = dict.fromkeys(trainers, initial)
    seconds: dict[str, list[float]] = {name: [] for name in trainers}
    for round_number in range(1, args.rounds + 1):
        accuracy = {}
        for name, trainer in trainers.items():
            weights[name], took = fedavg_round(trainer, weights[name], parts, round_number)
            seconds[name].append(took)
            accuracy[name] = test_accuracy(settings, weights[name], data)
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
