"""This engine and pfl-research (Apple's `pfl` 0.6.0) side by side: the same CNN, data, clients and start.

    python -m bench.pfl [--setup big small] [--rounds 3] [--repeats 1] [--pfl-workers 1] [--pfl-threads 0]
                        [--engine-workers 0] [--examples 0]
    python -m bench.pfl --setup big --examples 600 --rounds 3 --pfl-workers 2    # shorter: 10 × 600

Setups (issue 22): `big` = 10 clients × 6,000 MNIST examples, all in every round; `small` = 1,000 × 60,
100 a round. Both sides train this project's `model.py` CNN from the same initial weights on the clients
the engine's own partitioner makes (IID over the 60,000 images `data_handler.load_mnist` reads), with
plain SGD, lr 0.05, E = 1, B = 50, FedAvg (equal-size clients: the example-weighted and the plain mean
agree), and evaluate on the same 10,000 test images after every round (inside each side's round time).

Each side runs in its own process tree, started by this script, one after the other in alternating order
(`--repeats` pairs), and a sampler adds up the PSS of each tree every 0.2 s (as `bench.memory` does). pfl
is not a dependency of this project: it lives in a separate virtual environment (`--pfl-python`, default
`.venv-bench/bin/python`; `requirements-bench.txt` says why and how), whose interpreter runs the pfl side
(`python -m bench.pfl --side pfl --dir DIR`). pfl's worker processes need no Horovod: with `--pfl-workers N > 1`
they are N copies of the pfl side that find each other through `PFL_WORKER_ADDRESSES`/`PFL_WORKER_RANK` and
sum their updates with torch.distributed (gloo) on 127.0.0.1; each then uses cores ÷ N torch threads.

What differs by design: each side shuffles a client's batches its own way (the engine: its seeded
`randperm` per client and round; pfl: a fresh permutation each time a user's dataset is made), and picks
the `small` setup's 100 clients its own way (the engine: seeded uniform; pfl: `MinimizeReuseUserSampler`,
each user once before any repeats). So accuracies agree closely, not bit for bit; where neither can differ
(`--setup big --examples 50`: one batch a client, every client every round) they agree exactly (measured:
23.22, 28.61, 30.52% after rounds 1–3 on both sides), which checks that both do the same FedAvg. pfl
also evaluates each user before and after local training in its iteration 0 (its `evaluation_frequency`
schedule; set here so that only iteration 0 does), which lands in its round-1 time: compare the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from torch import nn

from data_handler import FederatedData, load_mnist, subset
from model import create_model, get_parameters, set_parameters, unflatten

REPO = Path(__file__).resolve().parents[1]
SETUPS = {"big": (10, 10), "small": (1_000, 100)}  # name: (clients, clients per round)
BATCH_SIZE, LEARNING_RATE, LOCAL_EPOCHS, SEED = 50, 0.05, 1, 0
INPUTS = "inputs.npz"  # what both sides start from: partition and initial weights


@dataclass(frozen=True)
class SharedInputs:
    """The set-up both sides share: each client's training-example indices and the initial flat weights."""

    partitions: list[np.ndarray]
    initial: torch.Tensor  # (P,) float32, `model.flatten` order


@dataclass(frozen=True)
class SideResult:
    """One side's run: per-round seconds and test accuracy, wall time of its process tree, peak PSS."""

    side: str
    round_seconds: list[float]
    accuracy: list[float]
    wall_seconds: float
    peak_pss_bytes: int


def engine_config(setup: str, rounds: int, workers: int, examples: int = 0) -> Any:
    """The engine's config for `setup`: the whole training set (10 × 6,000 = 1,000 × 60 = 60,000), or a seeded
    subset of `examples` per client (> 0: a shorter run for a busy machine); the whole test set."""
    from experiment_config import ExperimentConfig

    clients, per_round = SETUPS[setup]
    return ExperimentConfig.from_dict({
        "data": {"max_train_examples": clients * examples},
        "model": {"name": "cnn"},
        "federation": {"num_clients": clients, "clients_per_round": per_round, "rounds": rounds,
                       "local_epochs": LOCAL_EPOCHS, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE},
        "system": {"num_workers": workers, "seed": SEED},
    })  # fmt: skip


def shared_inputs(config: Any, data: Any) -> SharedInputs:
    """The engine's own partition and initial weights for `config` (its `FederatedRun` set-up). The engine is
    imported here, not at the top: the pfl side runs in pfl's environment, which lacks its dependencies."""
    from federated_learning import FederatedRun

    run = FederatedRun(config, data=data)
    return SharedInputs([np.asarray(p, dtype=np.int64) for p in run.partitions], run.state.weights.clone())


def write_inputs(folder: Path, inputs: SharedInputs) -> None:
    sizes = np.array([len(p) for p in inputs.partitions], dtype=np.int64)
    np.savez(folder / INPUTS, indices=np.concatenate(inputs.partitions), sizes=sizes, initial=inputs.initial.numpy())


def read_inputs(folder: Path) -> SharedInputs:
    with np.load(folder / INPUTS, allow_pickle=False) as saved:
        parts = np.split(saved["indices"], np.cumsum(saved["sizes"])[:-1])
        return SharedInputs(parts, torch.from_numpy(saved["initial"].copy()))


def side_data(data: FederatedData, setup: str, examples: int) -> FederatedData:
    """The examples a side trains and tests on: what the engine's `FederatedRun` takes for `engine_config`
    (the same `data_handler.subset` call), so the shared partition's indices mean the same images."""
    return subset(data, max_train=SETUPS[setup][0] * examples, max_test=0, seed=SEED)


def initial_model(initial: torch.Tensor) -> nn.Module:
    """This project's CNN holding the shared initial weights."""
    model = create_model("cnn", seed=SEED)
    set_parameters(model, unflatten(initial, get_parameters(model)))
    return model


@torch.no_grad()
def test_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1_000) -> float:
    """Share of `x` (N, 1, 28, 28) whose argmax logit is `y` (N,); eval mode, batches of `batch_size`."""
    model.eval()
    correct = sum(int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
                  for i in range(0, len(y), batch_size))  # fmt: skip
    return correct / max(len(y), 1)


class PflCNN(nn.Module):
    """The CNN as pfl's `PyTorchModel` wants it: the module plus `loss` and `metrics` over a user's batch."""

    def __init__(self, net: nn.Module, metric: Any) -> None:
        super().__init__()
        self.net, self.metric = net, metric  # metric: pfl.metrics.Weighted (pfl is imported by the pfl side only)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.train()
        return nn.functional.cross_entropy(self(x), y)  # the engine's single-label loss: mean cross-entropy

    @torch.no_grad()
    def metrics(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        self.eval()
        return {"loss": self.metric(float(nn.functional.cross_entropy(self(x), y, reduction="sum")), len(y))}


class RoundClock:
    """A pfl callback (duck-typed: pfl calls these three methods): after each central iteration, the test
    accuracy of the central model and the seconds since the previous one, one JSON line each."""

    def __init__(self, test_x: torch.Tensor, test_y: torch.Tensor, out: Path, metrics_type: type) -> None:
        self.test_x, self.test_y, self.out, self.metrics_type = test_x, test_y, out, metrics_type
        self.last = time.perf_counter()

    def on_train_begin(self, *, model: Any) -> Any:
        self.last = time.perf_counter()
        return self.metrics_type()

    def after_central_iteration(self, aggregate_metrics: Any, model: Any, *, central_iteration: int) -> tuple:
        accuracy = test_accuracy(model.pytorch_model, self.test_x, self.test_y)
        now = time.perf_counter()
        with self.out.open("a") as file:
            file.write(json.dumps({"round": central_iteration + 1, "seconds": now - self.last,
                                   "accuracy": accuracy}) + "\n")  # fmt: skip
        self.last = now
        return False, self.metrics_type()

    def on_train_end(self, *, model: Any) -> None:
        pass


def pfl_side(folder: Path, data_dir: str, setup: str, args: argparse.Namespace) -> None:
    """pfl's FedAvg on the shared inputs, in this process (one of `workers` if > 1); rank 0 writes the rounds."""
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import MinimizeReuseUserSampler
    from pfl.hyperparam import NNTrainHyperParams
    from pfl.internal.ops.selector import get_default_framework_module
    from pfl.metrics import Metrics, Weighted
    from pfl.model.pytorch import PyTorchModel

    rounds, per_round = args.rounds, SETUPS[setup][1]
    torch.set_num_threads(args.pfl_threads or max(1, (os.cpu_count() or 1) // args.pfl_workers))
    torch.manual_seed(SEED)
    np.random.seed(SEED)  # pfl's own seeds (cohorts, algorithm) come from numpy's global generator
    data = side_data(load_mnist(data_dir, download=False), setup, args.examples)
    inputs = read_inputs(folder)
    shuffler = np.random.default_rng(SEED)

    def user_dataset(user_id: int) -> Any:
        order = inputs.partitions[user_id][shuffler.permutation(len(inputs.partitions[user_id]))]
        return Dataset(raw_data=[data.train_x[order], data.train_y[order]], user_id=user_id)

    train = FederatedDataset(user_dataset, MinimizeReuseUserSampler(list(range(len(inputs.partitions)))))
    module = PflCNN(initial_model(inputs.initial), Weighted)
    model = PyTorchModel(
        module, local_optimizer_create=torch.optim.SGD, central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0)
    )  # w ← w + mean Δ
    rank = get_default_framework_module().distributed.global_rank
    out = folder / ("pfl_rounds.jsonl" if rank == 0 else f"pfl_rounds.{rank}.jsonl")
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(central_num_iterations=rounds, evaluation_frequency=rounds + 1,
                                           train_cohort_size=per_round, val_cohort_size=0),
        backend=SimulatedBackend(training_data=train, val_data=train),
        model=model,
        model_train_params=NNTrainHyperParams(local_num_epochs=LOCAL_EPOCHS, local_learning_rate=LEARNING_RATE,
                                              local_batch_size=BATCH_SIZE),
        callbacks=[RoundClock(data.test_x, data.test_y, out, Metrics)],
        send_metrics_to_platform=False,
    )  # fmt: skip


def engine_side(folder: Path, data_dir: str, setup: str, args: argparse.Namespace) -> None:
    """The engine's run of `setup` from the shared inputs (checked equal to its own set-up); one line a round."""
    from federated_learning import FederatedRun

    data, inputs = load_mnist(data_dir, download=False), read_inputs(folder)
    run = FederatedRun(engine_config(setup, args.rounds, args.engine_workers, args.examples), data=data)
    if not torch.equal(run.state.weights, inputs.initial) or any(
        not np.array_equal(a, b) for a, b in zip(run.partitions, inputs.partitions, strict=True)
    ):  # fmt: skip
        raise SystemExit("the engine's set-up differs from the shared inputs")
    last = time.perf_counter()
    with (folder / "engine_rounds.jsonl").open("w") as file:
        for result in run.rounds():
            now = time.perf_counter()
            file.write(json.dumps({"round": result.round, "seconds": now - last, "accuracy": result.accuracy}) + "\n")
            file.flush()
            last = now


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def side_commands(side: str, python: str, folder: Path, args: argparse.Namespace, setup: str) -> list[tuple]:
    """(argv, extra environment) of each process of one side."""
    base = [python, "-m", "bench.pfl", "--side", side, "--dir", str(folder), "--data-dir", args.data_dir,
            "--setup", setup, "--rounds", str(args.rounds), "--examples", str(args.examples),
            "--pfl-threads", str(args.pfl_threads)]  # fmt: skip
    if side == "engine":
        return [([*base, "--engine-workers", str(args.engine_workers)], {})]
    workers = args.pfl_workers
    if workers == 1:
        return [([*base, "--pfl-workers", "1"], {})]
    port = free_port()  # rank 0's torch.distributed rendezvous, on loopback
    addresses = ",".join(f"127.0.0.1:{port + i}" for i in range(workers))
    return [([*base, "--pfl-workers", str(workers)],
             {"PFL_WORKER_ADDRESSES": addresses, "PFL_WORKER_RANK": str(rank), "GLOO_SOCKET_IFNAME": "lo"})
            for rank in range(workers)]  # fmt: skip


def tree_pss(roots: list[psutil.Process]) -> int:
    """PSS summed over the process trees of `roots`, in bytes (vanished processes count 0)."""
    total = 0
    for root in roots:
        try:
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in members:
            try:
                total += process.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return total


def run_side(side: str, commands: list[tuple], folder: Path) -> SideResult:
    """Start one side's processes (stdout/stderr to files), sample their trees' PSS until all exit, read the rounds."""
    started, processes, logs = time.perf_counter(), [], []
    for i, (argv, env) in enumerate(commands):
        log = (folder / f"{side}.{i}.log").open("w")
        logs.append(log)
        processes.append(subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                          env={**os.environ, **env}))  # fmt: skip
    roots, peak = [psutil.Process(p.pid) for p in processes], 0
    while any(p.poll() is None for p in processes):
        peak = max(peak, tree_pss(roots))
        time.sleep(0.2)
    wall = time.perf_counter() - started
    for log in logs:
        log.close()
    if any(p.returncode for p in processes):
        tail = (folder / f"{side}.0.log").read_text().strip().splitlines()[-1:]
        raise SystemExit(f"the {side} side failed: {tail}")
    rows = [json.loads(line) for line in (folder / f"{side}_rounds.jsonl").read_text().splitlines()]
    (folder / f"{side}_rounds.jsonl").unlink()
    return SideResult(side, [r["seconds"] for r in rows], [r["accuracy"] for r in rows], wall, peak)


def spread(values: list[float], digits: int = 2) -> str:
    """'median (low–high)'."""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def summary_rows(results: list[SideResult]) -> list[list[str]]:
    """One row per side: round seconds (median, range over every round of every repeat), the same over the
    steady rounds (2 on: round 1 pays the engine's worker start and pfl's per-user evaluation), whole-run wall
    seconds (median), peak PSS (max, GB) and the accuracy after each round (median over repeats, %)."""
    rows = []
    for side in dict.fromkeys(r.side for r in results):
        mine = [r for r in results if r.side == side]
        per_round = [statistics.median(acc) for acc in zip(*(r.accuracy for r in mine), strict=True)]
        rows.append([
            side, spread([s for r in mine for s in r.round_seconds]), spread(steady_seconds(mine)),
            f"{statistics.median(r.wall_seconds for r in mine):.1f}",
            f"{max(r.peak_pss_bytes for r in mine) / 2**30:.2f}",
            " ".join(f"{100 * a:.2f}" for a in per_round),
        ])  # fmt: skip
    return rows


def steady_seconds(results: list[SideResult]) -> list[float]:
    """Round seconds from round 2 on (all rounds of a one-round run)."""
    return [s for r in results for s in (r.round_seconds[1:] or r.round_seconds)]


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns, as wide as their widest cell, separated by two spaces."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])  # fmt: skip


def accuracy_gap(results: list[SideResult]) -> float:
    """Largest |engine − pfl| test accuracy, in points, over rounds of the median accuracies."""
    medians = {side: [statistics.median(a) for a in zip(*(r.accuracy for r in results if r.side == side), strict=True)]
               for side in ("engine", "pfl")}  # fmt: skip
    return max(abs(e - p) * 100 for e, p in zip(medians["engine"], medians["pfl"], strict=True))


def compare(setup: str, args: argparse.Namespace, data: Any) -> list[SideResult]:
    """Both sides of one setup, `args.repeats` times, alternating which goes first."""
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-pfl-") as name:
        folder = Path(name)
        config = engine_config(setup, args.rounds, args.engine_workers, args.examples)
        write_inputs(folder, shared_inputs(config, data))
        for repeat in range(args.repeats):
            order = ("engine", "pfl") if repeat % 2 == 0 else ("pfl", "engine")
            for side in order:
                python = sys.executable if side == "engine" else args.pfl_python
                results.append(run_side(side, side_commands(side, python, folder, args, setup), folder))
                print(f"  {setup} repeat {repeat + 1} {side}: rounds "
                      f"{', '.join(f'{s:.2f}' for s in results[-1].round_seconds)} s", flush=True)  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side, interleaved")
    parser.add_argument("--pfl-workers", type=int, default=1, help="pfl worker processes (torch.distributed, gloo)")
    parser.add_argument("--pfl-threads", type=int, default=0, help="torch threads per pfl worker (0: cores ÷ workers)")
    parser.add_argument("--examples", type=int, default=0, help="> 0: examples per client (a shorter run)")
    parser.add_argument("--engine-workers", type=int, default=0, help="the engine's trainer processes (0: auto)")
    parser.add_argument("--pfl-python", default=str(REPO / ".venv-bench" / "bin" / "python"))
    parser.add_argument("--data-dir", default=os.environ.get("FPL_DATA_DIR", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--side", choices=("engine", "pfl"), help=argparse.SUPPRESS)  # a child process: one side
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)  # the child's folder: inputs in, rounds out
    args = parser.parse_args()
    if args.side:  # a child: one side of one run (the setup is the first --setup)
        setup, folder = args.setup[0], args.dir
        if args.side == "pfl":
            pfl_side(folder, args.data_dir, setup, args)
        else:
            engine_side(folder, args.data_dir, setup, args)
        return
    data = load_mnist(args.data_dir, download=False)
    print(
        f"torch {torch.__version__}, {os.cpu_count()} cores; pfl workers {args.pfl_workers}, engine workers "
        f"{args.engine_workers or 'auto'}; {args.rounds} rounds, {args.repeats} repeat(s)"
    )
    for setup in args.setup:
        results = compare(setup, args, data)
        clients, per_round = SETUPS[setup]
        each = args.examples or 60_000 // clients
        print(f"{setup}: {clients} clients × {each} examples, {per_round} a round")
        print(format_table(["side", "s/round median (range)", "steady s/round", "wall s", "peak PSS GB", "accuracy % per round"],
                           summary_rows(results)))  # fmt: skip
        engine = statistics.median(steady_seconds([r for r in results if r.side == "engine"]))
        pfl = statistics.median(steady_seconds([r for r in results if r.side == "pfl"]))
        print(
            f"engine ÷ pfl steady seconds per round: {engine / pfl:.2f}; largest accuracy gap {accuracy_gap(results):.2f} points"
        )


if __name__ == "__main__":
    main()
