"""Peak memory of a whole run as the number of clients grows.

    python -m bench.memory [--clients 10 1000] [--per-round 10] [--rounds 3] [--model cnn]

Each configuration runs through the real CLI (`cli.py run`) in its own process tree.
A sampler adds up the proportional set size (PSS) of the run and its trainer
processes every 0.2 s, so shared memory (the training set, the weight buffers) is
counted once, not once per process. Target: 1,000 clients with 10 per round peak at
<= 1.5 GB, and within 10% of the same run with 10 clients.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def tree_memory_bytes(root: psutil.Process) -> tuple[int, int]:
    """(PSS summed over the process tree, RSS of the root) in bytes; 0 for vanished processes."""
    pss, rss = 0, 0
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        pss += info.pss
        if process.pid == root.pid:
            rss = info.rss
    return pss, rss


def measure(num_clients: int, per_round: int, rounds: int, model: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        command = [
            sys.executable, str(REPO / "cli.py"), "run", "--json", "--db", f"sqlite:///{folder}/bench.db",
            "--set", f"model.name={model}", "--set", f"federation.num_clients={num_clients}",
            "--set", f"federation.clients_per_round={per_round}", "--set", f"federation.rounds={rounds}",
        ]  # fmt: skip
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        root = psutil.Process(process.pid)
        peak_pss, peak_rss = 0, 0
        while process.poll() is None:
            pss, rss = tree_memory_bytes(root)
            peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
            time.sleep(0.2)
        out, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"run with {num_clients} clients failed: {err.strip()}")
        return {
            "seconds": time.perf_counter() - started,
            "peak_pss_mb": peak_pss / 2**20,
            "peak_main_rss_mb": peak_rss / 2**20,
            "final_accuracy": json.loads(out.strip().splitlines()[-1])["accuracy"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="cnn", choices=("cnn", "mlp"))
    args = parser.parse_args()

    results = {}
    for clients in args.clients:
        results[clients] = measure(clients, args.per_round, args.rounds, args.model)
        r = results[clients]
        print(
            f"{clients:>6} clients, {args.per_round} per round, {args.rounds} rounds: peak PSS of the run "
            f"{r['peak_pss_mb']:.0f} MB (main process RSS {r['peak_main_rss_mb']:.0f} MB), "
            f"{r['seconds']:.1f} s, accuracy {100 * r['final_accuracy']:.2f}%",
            flush=True,
        )
    smallest, largest = min(results), max(results)
    ratio = results[largest]["peak_pss_mb"] / results[smallest]["peak_pss_mb"]
    print(
        f"peak with {largest} clients / with {smallest}: {ratio:.3f} (target within 0.90-1.10); "
        f"peak {results[largest]['peak_pss_mb'] / 1024:.2f} GB (target <= 1.5 GB)"
    )


if __name__ == "__main__":
    main()
