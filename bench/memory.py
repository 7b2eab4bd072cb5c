"""Peak memory of a whole run as the number of clients grows.

    python -m bench.memory [--clients 10 1000] [--per-round 10] [--rounds 3] [--model cnn]
    python -m bench.memory --clients 1000 10000 --all --examples 6 --model mlp --rounds 2 [--tree /tmp/base]

Each configuration runs through the real CLI (`cli.py run`) in its own process tree.
A sampler adds up the proportional set size (PSS) of the run and its trainer
processes every 0.2 s, so shared memory (the training set, the weight buffers) is
counted once, not once per process. Target: 1,000 clients with 10 per round peak at
<= 1.5 GB, and within 10% of the same run with 10 clients.

`--all` puts every client in every round; `--examples N` gives each N training examples (the
training set cut to clients × N). Streaming aggregation (`engine.streaming`) keeps such rounds
flat: 10,000 MLP clients × 6 examples, all in a round, at the memory of 100. `--tree DIR` runs
another copy of the code (e.g. `git archive HEAD | tar -x -C /tmp/base`: the code before a change)
with this interpreter, for a before/after on the same machine.

    python -m bench.memory --clients 10000 --round-sizes 100 10000 --examples 6 --model mlp --rounds 2

`--round-sizes` keeps one population (the largest of `--clients`, the same data) and varies only how
many of its clients a round takes: what a round's size costs, with the training set held equal
(with `--examples`, 10,000 clients hold 100× the images of 100, ~186 MB more on their own).
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


def tree_memory_bytes(root: psutil.Process) -> tuple[int, int, int]:
    """(PSS summed over the process tree, RSS of the root, PSS of the root) in bytes; 0 for vanished processes."""
    pss, rss, root_pss = 0, 0, 0
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        pss += info.pss
        if process.pid == root.pid:
            rss, root_pss = info.rss, info.pss
    return pss, rss, root_pss


def measure(
    num_clients: int, per_round: int, rounds: int, model: str, *, examples: int = 0, tree: Path = REPO,
    extra: tuple[str, ...] = (),
) -> dict[str, float]:  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        command = [
            sys.executable, str(tree / "cli.py"), "run", "--json", "--db", f"sqlite:///{folder}/bench.db",
            "--set", f"model.name={model}", "--set", f"federation.num_clients={num_clients}",
            "--set", f"federation.clients_per_round={per_round}", "--set", f"federation.rounds={rounds}",
        ]  # fmt: skip
        if examples:
            command += ["--set", f"data.max_train_examples={num_clients * examples}"]
        for setting in extra:
            command += ["--set", setting]
        started = time.perf_counter()
        # To files, not pipes: a round's line lists every client (~200 bytes each), and a full pipe that
        # nobody reads while the sampler polls would stop the run.
        out_file, err_file = open(f"{folder}/out.jsonl", "w+"), open(f"{folder}/err.txt", "w+")  # noqa: SIM115
        process = subprocess.Popen(command, stdout=out_file, stderr=err_file, text=True, cwd=tree)
        root = psutil.Process(process.pid)
        peak_pss, peak_rss, peak_children = 0, 0, 0
        while process.poll() is None:
            pss, rss, root_pss = tree_memory_bytes(root)
            peak_pss, peak_rss, peak_children = max(peak_pss, pss), max(peak_rss, rss), max(peak_children, pss - root_pss)
            time.sleep(0.2)
        process.wait()
        out, err = Path(out_file.name).read_text(), Path(err_file.name).read_text()
        out_file.close()
        err_file.close()
        if process.returncode != 0:
            raise SystemExit(f"run with {num_clients} clients failed: {err.strip().splitlines()[-1:]}")
        lines = [json.loads(line) for line in out.strip().splitlines()]
        return {
            "seconds": time.perf_counter() - started,
            "peak_pss_mb": peak_pss / 2**20,
            "peak_main_rss_mb": peak_rss / 2**20,
            "peak_trainers_pss_mb": peak_children / 2**20,
            "final_accuracy": lines[-1]["accuracy"],
            "round_seconds": [line["seconds"] for line in lines if "round" in line],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="cnn", choices=("cnn", "mlp"))
    parser.add_argument("--all", action="store_true", help="every client in every round (overrides --per-round)")
    parser.add_argument("--examples", type=int, default=0, help="training examples per client (0: all of MNIST)")
    parser.add_argument("--tree", type=Path, default=REPO, help="the copy of the code to run (default: this one)")
    parser.add_argument("--set", action="append", default=[], help="more config settings, as cli.py's --set")
    parser.add_argument("--round-sizes", type=int, nargs="+", default=[],
                        help="one population (the largest --clients), these many clients a round each")
    args = parser.parse_args()

    population = max(args.clients)
    runs = [(population, size) for size in args.round_sizes] or [
        (clients, clients if args.all else args.per_round) for clients in args.clients
    ]
    results = {}
    for clients, per_round in runs:
        key = per_round if args.round_sizes else clients
        results[key] = measure(clients, per_round, args.rounds, args.model, examples=args.examples,
                               tree=args.tree.resolve(), extra=tuple(args.set))  # fmt: skip
        r = results[key]
        print(
            f"{clients:>6} clients, {per_round} per round, {args.rounds} rounds: peak PSS of the run "
            f"{r['peak_pss_mb']:.0f} MB (main process RSS {r['peak_main_rss_mb']:.0f} MB, "
            f"its child processes' PSS {r['peak_trainers_pss_mb']:.0f} MB), "
            f"{r['seconds']:.1f} s (rounds {', '.join(f'{s:.1f}' for s in r['round_seconds'])} s), "
            f"accuracy {100 * r['final_accuracy']:.2f}%",
            flush=True,
        )
    smallest, largest = min(results), max(results)
    ratio = results[largest]["peak_pss_mb"] / results[smallest]["peak_pss_mb"]
    what = "clients a round" if args.round_sizes else "clients"
    print(
        f"peak with {largest} {what} / with {smallest}: {ratio:.3f} (target within 0.90-1.10); "
        f"peak {results[largest]['peak_pss_mb'] / 1024:.2f} GB (target <= 1.5 GB)"
    )


if __name__ == "__main__":
    main()
