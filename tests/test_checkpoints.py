"""Checkpoints and resume: a run restored from its checkpoint after round k ends exactly where
the uninterrupted run ends (weights, accuracy, ε), whatever state its strategy, privacy and
client population carry between rounds; a checkpoint of another config or format is refused."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from runs.workers import beating, pid_alive
from database import STALE_HEARTBEAT_SECONDS, ExperimentStore, utcnow
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun
from model import flatten, get_parameters


def config_with(**sections) -> ExperimentConfig:
    federation = {
        "num_clients": 4, "clients_per_round": 2, "rounds": 3, "batch_size": 25, "learning_rate": 0.1,
        **sections.pop("federation", {}),
    }  # fmt: skip
    return ExperimentConfig.from_dict({
        "data": {"max_train_examples": 600, "max_test_examples": 300},
        "model": {"name": "mlp"},
        "federation": federation,
        "privacy": {"audit_examples": 0, **sections.pop("privacy", {})},
        "system": {"num_workers": 1, "seed": 3},
        **sections,
    })  # fmt: skip


# Each carries state from round to round that a resume must restore.
STATEFUL = {
    "fedavgm momentum": config_with(federation={"strategy": "fedavgm"}),
    "fedadam moments": config_with(federation={"strategy": "fedadam"}),
    "scaffold control variates": config_with(federation={"strategy": "scaffold"}),
    "local DP accountants": config_with(privacy={"mode": "local", "noise_multiplier": 1.0, "max_grad_norm": 1.0}),
    "central DP, adaptive clip norm": config_with(
        federation={"num_clients": 6, "clients_per_round": 3},
        privacy={"mode": "central", "noise_multiplier": 0.2, "max_grad_norm": 0.5, "adaptive_clipping": True},
    ),
    "top-k error feedback": config_with(communication={"compression": "topk", "topk_fraction": 0.05}),
    "fedper heads": config_with(federation={"personalization": "fedper", "client_holdout": 0.1, "clients_per_round": 4}),
    "availability tally": config_with(
        federation={"selection": "availability", "dropout_probability": 0.4, "dropout_heterogeneous": True}
    ),
    "power of choice": config_with(federation={"selection": "power_of_choice", "selection_candidates": 3}),
}


def outcome(result) -> tuple:
    """What a round decides (no wall-clock times)."""
    clients = [(c.id, c.status, c.steps, c.loss, c.epsilon, c.bytes_up, c.validation_accuracy) for c in result.clients]
    return (result.accuracy, result.loss, result.epsilon, result.max_grad_norm, result.privacy_steps, clients)


def weights(run: FederatedRun) -> torch.Tensor:
    return flatten(get_parameters(run.model))


@pytest.mark.parametrize("config", STATEFUL.values(), ids=STATEFUL.keys())
def test_resumed_run_ends_exactly_where_the_uninterrupted_one_does(config, mnist):
    straight = FederatedRun(config, data=mnist)
    expected = list(straight.rounds())

    first = FederatedRun(config, data=mnist)
    rounds = first.rounds()
    before = next(rounds)  # round 1, then the worker "dies": the generator is dropped mid-run
    saved = first.checkpoint()
    rounds.close()

    resumed = FederatedRun(config, data=mnist)
    assert resumed.restore(saved) == 1
    after = list(resumed.rounds())
    assert [r.round for r in after] == [2, 3]
    for got, want in zip([before, *after], expected, strict=True):
        assert outcome(got) == outcome(want)
    assert torch.equal(weights(resumed), weights(straight))


def test_a_checkpoint_taken_at_the_last_round_resumes_to_nothing_left(mnist):
    config = config_with(federation={"rounds": 2})
    run = FederatedRun(config, data=mnist)
    list(run.rounds())
    again = FederatedRun(config, data=mnist)
    assert again.restore(run.checkpoint()) == 2
    assert list(again.rounds()) == []
    assert torch.equal(weights(again), weights(run))


def test_a_checkpoint_holds_only_tensors_and_plain_values(mnist):
    """It is read with weights_only=True: no pickled code, so a tampered database cannot run any."""
    config = STATEFUL["scaffold control variates"]
    run = FederatedRun(config, data=mnist)
    next(run.rounds())
    state = torch.load(io.BytesIO(run.checkpoint()), weights_only=True)
    assert state["round"] == 1 and state["config"] == config.to_dict()
    assert set(state["strategy"]) == {"server_control", "client_controls"}


def test_restore_refuses_another_config_a_damaged_checkpoint_and_another_format(mnist):
    config = config_with()
    run = FederatedRun(config, data=mnist)
    next(run.rounds())
    saved = run.checkpoint()
    other = FederatedRun(config.replace("federation", learning_rate=0.2), data=mnist)
    with pytest.raises(ValueError, match="another config"):
        other.restore(saved)
    with pytest.raises(ValueError, match="cannot be read"):
        FederatedRun(config, data=mnist).restore(saved[: len(saved) // 2])
    state = torch.load(io.BytesIO(saved), weights_only=True)
    state["format"] = 99
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with pytest.raises(ValueError, match="format"):
        FederatedRun(config, data=mnist).restore(buffer.getvalue())


def test_a_checkpoint_from_before_a_config_key_existed_still_resumes(mnist):
    config = config_with()
    run = FederatedRun(config, data=mnist)
    next(run.rounds())
    state = torch.load(io.BytesIO(run.checkpoint()), weights_only=True)
    del state["config"]["model"]["pooling"]  # as the version before model.pooling wrote it
    buffer = io.BytesIO()
    torch.save(state, buffer)

    resumed = FederatedRun(config, data=mnist)

    assert resumed.restore(buffer.getvalue()) == 1 and torch.equal(weights(resumed), weights(run))


def test_a_stored_minilm_config_without_pooling_means_cls_as_migration_0005_says():
    ngss = {"data": {"dataset": "ngss", "partition": "natural"}, "federation": {"num_clients": 9, "clients_per_round": 9}}
    old = ExperimentConfig.from_stored({**ngss, "model": {"name": "minilm-lora"}})
    assert old.model.pooling == "cls"
    assert ExperimentConfig.from_stored({**ngss, "model": {"name": "minilm-lora", "pooling": ""}}).model.pooling == ""
    assert ExperimentConfig.from_stored({**ngss, "model": {"name": "tinyllama-lora"}}).model.pooling == ""


# -- the worker killed with SIGKILL mid-round, then resumed through the CLI ---------------

REPO = Path(__file__).resolve().parents[1]
# Local DP (per-client accountants across rounds) with SCAFFOLD (control variates) in 2 trainer processes.
KILLED_RUN = [
    "model.name=mlp", "data.max_train_examples=4000", "data.max_test_examples=500", "federation.num_clients=4",
    "federation.clients_per_round=2", "federation.rounds=5", "federation.batch_size=50", "federation.local_epochs=3",
    "federation.strategy=scaffold", "privacy.mode=local", "privacy.noise_multiplier=1.0", "privacy.audit_examples=0",
    "system.num_workers=2", "system.seed=11",
]  # fmt: skip


def cli_command(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "cli.py"), *args]


def checkpoint_state(store: ExperimentStore, experiment_id: int) -> dict:
    _round, state = store.load_checkpoint(experiment_id)
    return torch.load(io.BytesIO(state), weights_only=True)


def test_a_worker_killed_mid_round_shows_interrupted_and_resumes_to_the_same_weights_and_epsilon(tmp_path):
    reference = f"sqlite:///{tmp_path / 'reference.db'}"
    done = subprocess.run(
        cli_command("run", "--db", reference, "--json", *sum((["--set", s] for s in KILLED_RUN), [])),
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    url = f"sqlite:///{tmp_path / 'killed.db'}"
    worker = subprocess.Popen(
        cli_command("run", "--db", url, "--json", *sum((["--set", s] for s in KILLED_RUN), [])),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True,
    )  # fmt: skip
    try:
        for line in worker.stdout:  # wait for round 2, then kill the worker at once: round 3 has begun
            if json.loads(line).get("round") == 2:
                break
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        killed_at = time.monotonic()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    store = ExperimentStore(url)
    (experiment,) = store.list_experiments()
    assert experiment.status == "running" and experiment.rounds_done in (2, 3)  # as the database last saw it
    assert store.mark_interrupted_if_dead(pid_alive) == [experiment.id]
    assert time.monotonic() - killed_at < 5
    assert store.get_experiment(experiment.id).status == "interrupted"
    shown = subprocess.run(cli_command("show", str(experiment.id), "--db", url), capture_output=True, text=True, cwd=REPO)
    assert f"resumable from round {experiment.rounds_done + 1} of 5: python cli.py resume {experiment.id}" in shown.stdout
    deadline = time.monotonic() + 10  # its trainer processes notice and exit
    while any(pid_alive(int(p)) for p in _session_pids(worker.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _session_pids(worker.pid)

    resumed = subprocess.run(
        cli_command("resume", str(experiment.id), "--db", url, "--json"),
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(resumed.stdout.splitlines()[-1])
    assert final["status"] == "completed" and final["rounds"] == 5

    expected_store = ExperimentStore(reference)
    (expected,) = expected_store.list_experiments()
    got, want = store.rounds_frame([experiment.id]), expected_store.rounds_frame([expected.id])
    assert got["round"].tolist() == [1, 2, 3, 4, 5]  # every round exactly once
    assert got["accuracy"].tolist() == want["accuracy"].tolist()
    assert got["epsilon"].tolist() == want["epsilon"].tolist()
    assert store.get_experiment(experiment.id).final_epsilon == expected_store.get_experiment(expected.id).final_epsilon
    clients_got = store.client_rounds_frame(experiment.id)[["round", "client_id", "epsilon", "steps"]]
    clients_want = expected_store.client_rounds_frame(expected.id)[["round", "client_id", "epsilon", "steps"]]
    assert clients_got.values.tolist() == clients_want.values.tolist()
    assert torch.equal(checkpoint_state(store, experiment.id)["weights"], checkpoint_state(expected_store, expected.id)["weights"])


def _session_pids(session_id: int) -> list[str]:
    """PIDs of live processes in a session (the worker's trainers outlive it briefly)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session_id and fields[0] != "Z":
                pids.append(entry.name)
    return pids


# -- the database side -------------------------------------------------------------------


def test_a_round_and_its_checkpoint_are_one_write_and_reopen_clears_the_end(every_db_url):
    store = ExperimentStore(every_db_url)
    experiment_id = store.create_experiment(config_with().to_dict())
    store.mark_running(experiment_id)
    started = store.get_experiment(experiment_id).started_at
    assert store.load_checkpoint(experiment_id) is None
    row = {"round": 1, "accuracy": 0.5, "loss": 1.0, "seconds": 1.0, "bytes_up": 0, "bytes_down": 0, "clients": []}
    store.record_round(experiment_id, row, checkpoint=b"state 1")
    store.record_round(experiment_id, {**row, "round": 2}, checkpoint=b"state 2")
    assert store.load_checkpoint(experiment_id) == (2, b"state 2") and store.checkpoint_round(experiment_id) == 2
    with pytest.raises(ValueError, match="running"):
        store.reopen(experiment_id)
    store.finish(experiment_id, "interrupted", error="killed", final={"accuracy": 0.5})
    assert store.reopen(experiment_id, worker_pid=12345) == 2
    reopened = store.get_experiment(experiment_id)
    assert (reopened.status, reopened.error, reopened.final_accuracy, reopened.worker_pid) == ("queued", None, None, 12345)
    store.mark_running(experiment_id)
    assert store.get_experiment(experiment_id).started_at == started  # a resumed run keeps its start
    store.finish(experiment_id, "completed")
    with pytest.raises(ValueError, match="completed"):
        store.reopen(experiment_id)
    store.delete_experiment(experiment_id)
    assert store.load_checkpoint(experiment_id) is None


def test_reopen_refuses_runs_without_a_checkpoint_or_rounds_left(db_url):
    store = ExperimentStore(db_url)
    fresh = store.create_experiment(config_with().to_dict())
    store.finish(fresh, "failed", error="no data")
    with pytest.raises(ValueError, match="no checkpoint"):
        store.reopen(fresh)
    finished = store.create_experiment(config_with(federation={"rounds": 1}).to_dict())
    row = {"round": 1, "accuracy": 0.5, "loss": 1.0, "seconds": 1.0, "bytes_up": 0, "bytes_down": 0, "clients": []}
    store.record_round(finished, row, checkpoint=b"state")
    store.finish(finished, "stopped")
    with pytest.raises(ValueError, match="all 1 rounds"):
        store.reopen(finished)
    with pytest.raises(KeyError):
        store.reopen(999)


def test_a_silent_heartbeat_marks_a_run_of_another_machine_interrupted(every_db_url):
    store = ExperimentStore(every_db_url)
    silent, beating = (store.create_experiment(config_with().to_dict()) for _ in range(2))
    for experiment_id in (silent, beating):
        store.mark_running(experiment_id, pid=4242)
        store._update(experiment_id, worker_host="another-machine")  # its PID means nothing here
    store._update(silent, heartbeat_at=utcnow() - timedelta(seconds=STALE_HEARTBEAT_SECONDS + 5))
    store._update(beating, heartbeat_at=utcnow() - timedelta(seconds=STALE_HEARTBEAT_SECONDS - 10))
    assert store.mark_interrupted_if_dead(lambda pid: pytest.fail("a PID of another machine was checked")) == [silent]
    assert store.get_experiment(silent).status == "interrupted"
    assert "heartbeat" in store.get_experiment(silent).error
    assert store.get_experiment(beating).status == "running"


def test_the_heartbeat_beats_while_the_block_runs_and_stops_after(db_url):
    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment(config_with().to_dict())
    store.mark_running(experiment_id)
    old = utcnow() - timedelta(hours=1)
    store._update(experiment_id, heartbeat_at=old)
    with beating(store, experiment_id, interval=0.05):
        time.sleep(0.5)
    beats = _heartbeat(store, experiment_id)
    assert beats > old + timedelta(minutes=59)
    time.sleep(0.3)
    assert _heartbeat(store, experiment_id) == beats  # the thread is gone


def _heartbeat(store: ExperimentStore, experiment_id: int):
    from sqlalchemy import select

    from database import Experiment

    with store.sessions() as session:
        return session.scalar(select(Experiment.heartbeat_at).where(Experiment.id == experiment_id))
