"""Progress inside a round and a stop within it: the engine counts clients back and local steps
taken as they happen (this machine's trainers share a live step counter), the runs service
stores it every few seconds, and a stop (SIGTERM, the page's Stop) gives up the running round
at the clients' next step instead of waiting for its end; the round is not recorded and a
resume runs it again from the last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from database import ExperimentStore
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun

REPO = Path(__file__).resolve().parents[1]


def mlp(*, workers: int = 1, epochs: int = 1, rounds: int = 1, **privacy: Any) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "data": {"max_train_examples": 900, "max_test_examples": 300},
        "model": {"name": "mlp"},
        "federation": {"num_clients": 3, "clients_per_round": 3, "rounds": rounds, "batch_size": 10,
                       "local_epochs": epochs},
        "privacy": {"audit_examples": 0, **privacy},
        "system": {"num_workers": workers, "seed": 3},
    })  # fmt: skip


def watch(run: FederatedRun, until: threading.Event, seen: list[dict[str, Any]]) -> None:
    while not until.is_set():
        if (progress := run.progress()) is not None:
            seen.append(progress)
        time.sleep(0.005)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_round_reports_clients_and_steps_as_they_happen(workers: int) -> None:
    run = FederatedRun(mlp(workers=workers, epochs=2))
    seen: list[dict[str, Any]] = []
    done = threading.Event()
    watcher = threading.Thread(target=watch, args=(run, done, seen))
    watcher.start()
    try:
        [result] = list(run.rounds())
    finally:
        done.set()
        watcher.join()

    total = sum(run.full_steps)  # 3 clients × 2 epochs × 30 batches
    assert total == 180 and sum(c.steps for c in result.clients) == total
    assert {p["batches_total"] for p in seen} == {total} and {p["clients_total"] for p in seen} == {3}
    steps = [p["batches_done"] for p in seen]
    assert steps == sorted(steps)  # never goes back
    assert any(0 < s < total for s in steps) and steps[-1] == total  # seen inside the round, and at its end
    assert {p["clients_done"] for p in seen} >= {0, 3} and all(p["round"] == 1 for p in seen)
    assert run.progress() is None  # between rounds


def test_a_stop_inside_a_round_gives_it_up_at_the_clients_next_step() -> None:
    run = FederatedRun(mlp(workers=2, epochs=50))  # 3,000 steps a client: far longer than the test
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.extend(run.rounds()))
    thread.start()
    while (run.progress() or {}).get("batches_done", 0) < 20:
        time.sleep(0.01)
    assert run.abandon_round()
    thread.join(timeout=60)

    assert not thread.is_alive() and results == []
    assert run.stop_reason == "stopped on request during round 1, which was not finished"
    assert run.state.completed_rounds == 0
    assert run.progress()["batches_done"] < 3 * 3000  # stopped long before the round's end


def test_under_local_dp_a_round_is_never_given_up_part_way() -> None:
    # Each client's accountant must see every DP-SGD step it took: the round finishes first.
    run = FederatedRun(mlp(mode="local", noise_multiplier=1.0))
    assert not run.abandon_round()  # between rounds: nothing to give up
    seen: list[bool] = []

    def stop_early() -> None:
        while run.progress() is None:
            time.sleep(0.005)
        seen.append(run.abandon_round())

    thread = threading.Thread(target=stop_early)
    thread.start()
    results = list(run.rounds())
    thread.join()
    assert seen == [False] and len(results) == 1 and run.stop_reason is None


def test_sigterm_during_an_endless_round_stops_the_cli_within_seconds(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'runs.db'}"
    config = tmp_path / "long.toml"
    config.write_text(
        '[data]\nmax_train_examples = 900\nmax_test_examples = 300\n[model]\nname = "mlp"\n'
        "[federation]\nnum_clients = 3\nclients_per_round = 3\nrounds = 3\nbatch_size = 10\nlocal_epochs = 500\n"
        "[privacy]\naudit_examples = 0\n[system]\nnum_workers = 2\n"
    )
    process = subprocess.Popen(
        [sys.executable, "cli.py", "run", "--config", str(config), "--db", db_url, "--json"], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
    )  # fmt: skip
    try:
        store = ExperimentStore(db_url)
        deadline = time.monotonic() + 120
        progress = None
        while time.monotonic() < deadline and not (progress and progress.get("batches_done", 0) > 0):
            time.sleep(0.5)
            experiments = store.list_experiments() if Path(tmp_path / "runs.db").exists() else []
            progress = store.get_experiment(experiments[0].id).progress if experiments else None
        assert progress and progress["round"] == 1 and progress["batches_total"] == 3 * 500 * 30, progress
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        took = time.monotonic() - stopped_at
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    experiment = store.list_experiments()[0]
    assert experiment.status == "stopped" and experiment.rounds_done == 0, (experiment, process.stderr.read())
    assert "during round 1" in experiment.stop_reason
    assert took < 30  # the round alone would take many minutes
