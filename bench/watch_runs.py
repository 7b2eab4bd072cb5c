"""Watch short runs to their end as the page does, and count how often one is wrongly seen as `interrupted`.

    python -m bench.watch_runs [--runs 20] [--db sqlite:////tmp/watch.db]

Each run is started like the page's Start (`service.create`, then `runs.workers.launch_worker`: a real
`cli.py worker` process), one after the other, and polled like the page's Live fragment
(`app_pages.common.list_experiments`): reap the worker's handle, fail a run still `queued` whose worker
exited, then `store.mark_interrupted_if_dead(pid_alive)` and read the status. A run that ends normally
must never be seen `interrupted` on the way (a worker that finished between the look-up and the check
must not be taken for a dead one). tests/test_page_watch_runs.py runs 3 of these; this runs as many as asked.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from database import FINAL_STATUSES, ExperimentStore
from experiment_config import ExperimentConfig
from runs import service
from runs.workers import launch_worker, pid_alive

POLL_SECONDS = 0.1  # faster than the page's 1.5 s: more chances to catch a worker at its exit
TINY_RUN = {
    "data": {"dataset": "mnist", "max_train_examples": 200, "max_test_examples": 100},
    "model": {"name": "mlp"},
    "federation": {"num_clients": 2, "clients_per_round": 2, "rounds": 2, "batch_size": 50},
    "system": {"num_workers": 1},
}  # fmt: skip


@dataclass
class Watched:
    """One run as the watcher saw it: every status read (in order, repeats dropped) and the polls."""

    experiment_id: int
    statuses: list[str] = field(default_factory=list)
    polls: int = 0
    seconds: float = 0.0


def poll_like_the_page(store: ExperimentStore, experiment_id: int, worker) -> str:
    """One poll of the Live fragment: settle an exited worker's queued run, mark dead workers' runs, read."""
    if worker.poll() is not None:
        experiment = store.get_experiment(experiment_id)
        if experiment is not None and experiment.status == "queued":
            store.finish(experiment_id, "failed", error=f"the worker exited with code {worker.returncode}")
    store.mark_interrupted_if_dead(pid_alive)
    experiment = store.get_experiment(experiment_id)
    return "missing" if experiment is None else experiment.status


def watch_one(store: ExperimentStore, config: ExperimentConfig, *, timeout_seconds: float = 180.0) -> Watched:
    """Start one run in its own worker and poll it until it ends (or `timeout_seconds` pass: then stop it)."""
    experiment_id = service.create(store, config, name="watched")
    started = time.perf_counter()
    worker = launch_worker(store, experiment_id)
    watched = Watched(experiment_id)
    try:
        while time.perf_counter() - started < timeout_seconds:
            status = poll_like_the_page(store, experiment_id, worker)
            watched.polls += 1
            if not watched.statuses or watched.statuses[-1] != status:
                watched.statuses.append(status)
            if status in FINAL_STATUSES or status == "missing":
                break
            time.sleep(POLL_SECONDS)
    finally:
        if worker.poll() is None:
            try:
                worker.wait(timeout=30)  # a finished run's worker exits at once; a stuck one is ended
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    watched.seconds = time.perf_counter() - started
    return watched


def watch_runs(store: ExperimentStore, count: int, config: ExperimentConfig | None = None) -> list[Watched]:
    """`count` runs of `config` (default `TINY_RUN`), one after the other, each watched to its end."""
    config = config or ExperimentConfig.from_dict(TINY_RUN)
    return [watch_one(store, config) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--db", default=None, help="database URL (default: a new SQLite file in a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        store = ExperimentStore(args.db or f"sqlite:///{Path(folder) / 'watch.db'}")
        watched = watch_runs(store, args.runs)
        store.engine.dispose()
    interrupted = [w.experiment_id for w in watched if "interrupted" in w.statuses]
    endings = [w.statuses[-1] for w in watched]
    print(f"{len(watched)} runs watched to their end, {sum(w.polls for w in watched)} polls, "
          f"{sum(w.seconds for w in watched):.1f} s in all ({max(w.seconds for w in watched):.1f} s the longest)")  # fmt: skip
    print(f"ended: {', '.join(f'{endings.count(s)} {s}' for s in sorted(set(endings)))}")
    print(f"seen interrupted: {len(interrupted)}" + (f" (#{', #'.join(map(str, interrupted))})" if interrupted else ""))


if __name__ == "__main__":
    main()
