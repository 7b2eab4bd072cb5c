"""The same workload in-process and on Flower: seconds per round, whole-run wall time, peak memory.

    python -m bench.flower [--model cnn|mlp] [--rounds 3] [--clients 10] [--per-round N] [--max-train 0]
                           [--simulation] [--omp-threads 0] [--data-dir ../shared/data]
    python -m bench.flower --clients 1000 --per-round 100 --simulation [--omp-threads 1]

Default: ten IID MNIST clients (6,000 examples each), all in every round; with `--clients 1000
--per-round 100`, 1,000 clients of 60 examples (the 60,000 training examples split IID), 100
sampled per round. Always E=1, B=50, lr 0.05, FedAvg, no privacy, three rounds, the same seeds
everywhere: both runtimes sample the same clients and reach the same accuracy (printed, to see
that they agree).

- in-process: `FederatedRun` as `cli.py run` runs it (trainer processes: one per core, one
  torch thread each);
- Flower deployment: `flower_deployment.run_local_deployment`, a SuperLink and one SuperNode per
  client on loopback, each round a fresh ClientApp process per client (torch import, MNIST
  load) that the SuperNode starts after its next poll. Only up to 32 clients: 1,000 SuperNode
  processes on one machine measure the machine, not Flower;
- `--simulation`: also Flower's simulation engine (Ray virtual SuperNodes with Flower's default
  resources, 2 CPUs per ClientApp; needs `pip install "flwr[simulation]==1.42.*"`), running
  this project's ClientApp (`flower_runtime.client_app`) for every client.

`--omp-threads 1` sets `OMP_NUM_THREADS=1` in every runtime's processes: one torch thread
everywhere, also in the in-process server (its trainer processes always have one) and in
Flower's ClientApps, which otherwise take two (Flower gives each 2 CPUs; Ray sets
`OMP_NUM_THREADS` to that). On a busy two-core machine torch's idle threads compete with the
trainers: 100 small CNN clients trained ~10× slower with two threads than with one.

Each runtime runs in its own process, sampled every 0.5 s for the proportional set size (PSS)
of that process and everything it started (trainer processes; SuperLink, SuperNodes, ServerApp,
Ray): "peak MB", shared pages counted once. "round s" is each round's `seconds` (training +
aggregation: on Flower also transport and polling); "steady s" their mean after the first
round (start-up excluded); "wall s" the whole run from the call to its return (start-up,
every round with its evaluation, shut-down); "×" Flower / in-process. "ok" counts the updates
that arrived over the clients selected. Run on an otherwise idle machine: the 1-minute load
average is printed before and after each runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"  # before flwr is imported
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"

import psutil  # noqa: E402

from database import ExperimentStore  # noqa: E402
from experiment_config import ExperimentConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUNTIMES = ("in-process", "Flower deployment", "Flower simulation")
MAX_SUPERNODES = 32  # a local deployment of more is not run: one SuperNode process per client
SAMPLE_SECONDS = 0.5


def in_process(config: ExperimentConfig) -> dict[str, Any]:
    """Seconds, accuracy and selected clients per round, and wall seconds, of the in-process engine."""
    from federated_learning import run_experiment

    started = time.perf_counter()
    results = run_experiment(config)
    wall = time.perf_counter() - started
    return {
        "seconds": [r.seconds for r in results], "accuracy": [r.accuracy for r in results], "wall": wall,
        "selected": [sorted(c.id for c in r.clients) for r in results],
        "arrived": [sum(c.status == "ok" for c in r.clients) for r in results],
    }  # fmt: skip


def on_flower(config: ExperimentConfig, db_url: str, *, simulation: bool) -> dict[str, Any]:
    """The same for a local Flower run (read back from the rounds its ServerApp recorded)."""
    from flower_runtime.deployment import run_local_deployment

    started = time.perf_counter()
    experiment_id = run_local_deployment(config, db_url=db_url, timeout_s=7200, round_timeout_s=3600,
                                         simulation=simulation)  # fmt: skip
    wall = time.perf_counter() - started
    store = ExperimentStore(db_url)
    summary = store.get_experiment(experiment_id)
    if summary is None or summary.status != "completed":
        raise RuntimeError(f"the Flower run did not complete: {summary.status if summary else '?'}: "
                           f"{summary.error if summary else ''}")  # fmt: skip
    rounds, clients = store.rounds_frame([experiment_id]), store.client_rounds_frame(experiment_id)
    by_round = [clients[clients["round"] == r] for r in rounds["round"]]
    return {
        "seconds": list(rounds.seconds), "accuracy": list(rounds.accuracy), "wall": wall,
        "selected": [sorted(int(c) for c in rows.client_id) for rows in by_round],
        "arrived": [int((rows.status == "ok").sum()) for rows in by_round],
    }  # fmt: skip


def run_one(runtime: str, config: ExperimentConfig) -> dict[str, Any]:
    """Run `runtime` in this process (the child `measure` starts)."""
    if runtime == "in-process":
        return in_process(config)
    with tempfile.TemporaryDirectory(prefix="fpl-bench-flower-") as scratch:
        return on_flower(config, f"sqlite:///{scratch}/bench.db", simulation=runtime == "Flower simulation")


def tree_pss_bytes(root: psutil.Process) -> int:
    """PSS summed over `root`, its descendants and whatever it launched on Flower (processes
    carrying `FPL_FLOWER_LAUNCHER=<root pid>`, should one have left the tree); 0 for vanished ones."""
    family = {root.pid: root}
    try:
        family.update((p.pid, p) for p in root.children(recursive=True))
    except psutil.NoSuchProcess:
        return 0
    for process in psutil.process_iter():
        try:
            if process.pid not in family and process.environ().get("FPL_FLOWER_LAUNCHER") == str(root.pid):
                family[process.pid] = process
        except psutil.Error:
            continue
    total = 0
    for process in family.values():
        try:
            total += process.memory_full_info().pss
        except psutil.Error:
            continue
    return total


def measure(runtime: str, config: ExperimentConfig, omp_threads: int = 0) -> dict[str, Any]:
    """Run `runtime` in a child process (with `OMP_NUM_THREADS=omp_threads` unless 0, inherited
    by everything it starts), sampling its tree's PSS; its result with "peak_mb" and the load
    average before and after."""
    with tempfile.TemporaryDirectory(prefix="fpl-bench-flower-") as scratch:
        result_path = Path(scratch) / "result.json"
        command = [sys.executable, "-m", "bench.flower", "--runtime", runtime, "--config", config.to_json(),
                   "--result", str(result_path)]  # fmt: skip
        load_before = os.getloadavg()[0]
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(omp_threads)} if omp_threads else {}))
        child = subprocess.Popen(command, cwd=REPO, env=env)
        root, peak, done = psutil.Process(child.pid), 0, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_pss_bytes(root))
                done.wait(SAMPLE_SECONDS)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            code = child.wait()
        finally:
            if child.poll() is None:  # Ctrl-C here: the child stops its own processes on SIGTERM
                child.terminate()
                child.wait()
            done.set()
            sampler.join()
        if code != 0:
            raise SystemExit(f"{runtime} failed (exit code {code})")
        result = json.loads(result_path.read_text())
    return {**result, "peak_mb": peak / 2**20, "load": (load_before, os.getloadavg()[0])}


def print_table(measured: dict[str, dict[str, Any]]) -> None:
    print(f"{'runtime':<19}{'round s (each)':<22}{'steady s':>9}{'wall s':>8}{'peak MB':>9}{'ok':>10}"
          f"{'× steady':>9}{'× wall':>8}   load avg   accuracy per round")  # fmt: skip
    base = measured["in-process"]
    for name, m in measured.items():
        each = ", ".join(f"{s:.1f}" for s in m["seconds"])
        ok = f"{sum(m['arrived'])}/{sum(len(s) for s in m['selected'])}"
        load = f"{m['load'][0]:.1f}→{m['load'][1]:.1f}"
        print(f"{name:<19}{each:<22}{steady(m):>9.2f}{m['wall']:>8.1f}{m['peak_mb']:>9.0f}{ok:>10}"
              f"{steady(m) / steady(base):>9.2f}{m['wall'] / base['wall']:>8.2f}   {load:<10} "
              f"{', '.join(f'{a:.4f}' for a in m['accuracy'])}")  # fmt: skip
    for name, m in measured.items():
        if name != "in-process" and m["selected"] != base["selected"]:
            print(f"warning: {name} trained other clients than in-process")


def steady(m: dict[str, Any]) -> float:
    """Mean round seconds after the first (all rounds when there is one)."""
    return statistics.mean(m["seconds"][1:] or m["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn", choices=("cnn", "mlp"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=0, help="clients per round; 0: all")
    parser.add_argument("--max-train", type=int, default=0, help="0: all 60,000 training examples")
    parser.add_argument("--simulation", action="store_true", help="also Flower's simulation engine (Ray)")
    parser.add_argument("--omp-threads", type=int, default=0,
                        help="OMP_NUM_THREADS for every runtime's processes (torch threads); 0: unset")
    parser.add_argument("--data-dir", default=os.environ.get("FPL_DATA_DIR") or str(REPO.parent / "shared" / "data"))
    parser.add_argument("--runtime", choices=RUNTIMES, help=argparse.SUPPRESS)  # the child: run this one only
    parser.add_argument("--config", help=argparse.SUPPRESS)  # the child's ExperimentConfig as JSON
    parser.add_argument("--result", help=argparse.SUPPRESS)  # where the child writes its result
    args = parser.parse_args()
    if args.runtime:
        result = run_one(args.runtime, ExperimentConfig.from_json(args.config))
        Path(args.result).write_text(json.dumps(result))
        return
    per_round = args.per_round or args.clients
    config = ExperimentConfig.from_dict({
        "data": {"data_dir": str(Path(args.data_dir).resolve()), "max_train_examples": args.max_train},
        "model": {"name": args.model},
        "federation": {"num_clients": args.clients, "clients_per_round": per_round, "rounds": args.rounds,
                       "local_epochs": 1, "batch_size": 50, "learning_rate": 0.05},
        "privacy": {"audit_examples": 0},
    })  # fmt: skip
    runtimes = ["in-process"]
    if args.clients <= MAX_SUPERNODES:
        runtimes.append("Flower deployment")
    if args.simulation:
        runtimes.append("Flower simulation")
    examples = (args.max_train or 60_000) // args.clients
    print(f"{args.clients} clients (~{examples:,} examples each), {per_round} per round, MNIST "
          f"{args.model.upper()}, E=1, B=50, {args.rounds} rounds, {os.cpu_count()} cores"
          + (f", OMP_NUM_THREADS={args.omp_threads}" if args.omp_threads else ""), flush=True)  # fmt: skip
    if args.clients > MAX_SUPERNODES:
        print(f"Flower deployment skipped: {args.clients} SuperNode processes on one machine (at most "
              f"{MAX_SUPERNODES})", flush=True)  # fmt: skip
    measured = {}
    for runtime in runtimes:
        measured[runtime] = measure(runtime, config, args.omp_threads)
        print(f"{runtime}: done in {measured[runtime]['wall']:.1f} s", flush=True)
    print_table(measured)


if __name__ == "__main__":
    main()
