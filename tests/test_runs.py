"""The runs service (runs/): execute and record a run through a reporter, the same path for a
remote trainer (what the Flower ServerApp uses), the rows read back exactly as the engine wrote
them, the heartbeat kept until the status is final, comparison configs, the advantage bound."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest

from database import ExperimentStore
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun
from privacy.audit import advantage_bound
from runs import service
from runs.comparisons import CENTRALIZED_ADAMW_MAX_LR, centralized_config, suggested_centralized_lr, without_privacy
from runs.workers import StopSignals, beating, code_version


def tiny(**federation: Any) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "data": {"max_train_examples": 600, "max_test_examples": 300},
        "model": {"name": "mlp"},
        "federation": {"num_clients": 3, "clients_per_round": 3, "rounds": 2, "batch_size": 20, **federation},
        "privacy": {"audit_examples": 50},
        "system": {"num_workers": 1, "seed": 4},
    })  # fmt: skip


class Recorder:
    """A `service.Reporter` that keeps what it heard."""

    def __init__(self) -> None:
        self.rounds: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.errors: list[str] = []

    def round(self, row: dict[str, Any]) -> None:
        self.rounds.append(row)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def error(self, text: str) -> None:
        self.errors.append(text)


class CountingRemote:
    """A `service.Remote` whose trainer is the in-process one, counting the tasks it was handed:
    the hook the Flower ServerApp uses, without Flower."""

    def __init__(self, refuse: dict[str, str] | None = None) -> None:
        self.tasks = 0
        self.refuse = refuse or {}
        self.closed = False

    def build_run(self, config: ExperimentConfig) -> FederatedRun:
        return FederatedRun(config)

    def trainer(self, run: FederatedRun) -> Any:
        inner, remote = run.make_trainer(), self

        class Counting:
            results, corrections = inner.results, inner.corrections

            def train(self, weights: Any, tasks: Any) -> Any:
                remote.tasks += len(tasks)
                return inner.train(weights, tasks)

            def close(self) -> None:
                remote.closed = True
                inner.close()

        return Counting()

    def cannot_store(self, config: ExperimentConfig) -> dict[str, str]:
        return self.refuse


def test_execute_reports_every_round_and_stores_the_same_rows(db_url):
    store, recorder, config = ExperimentStore(db_url), Recorder(), tiny()
    experiment_id = service.create(store, config, name="a")

    outcome = service.execute(store, experiment_id, config, reporter=recorder, signals=StopSignals(handle=False))

    assert outcome.status == "completed" and outcome.final["rounds"] == 2
    assert [row["round"] for row in recorder.rounds] == [1, 2]
    # What the database gives back is what the engine reported, field for field (one schema).
    stored = store.round_rows(experiment_id)
    assert stored == [{**row, "clients": sorted(row["clients"], key=lambda c: c["id"])} for row in recorder.rounds]
    assert store.round_rows(experiment_id, after_round=1) == stored[1:]
    summary = store.get_experiment(experiment_id)
    assert summary.status == "completed" and summary.code_version == code_version()
    assert summary.audit is not None and "auc" in summary.audit


def test_a_remote_trainer_runs_the_same_loop_to_the_same_results(db_url):
    store, config = ExperimentStore(db_url), tiny()
    local_id, remote_id = service.create(store, config), service.create(store, config)
    remote = CountingRemote()

    service.execute(store, local_id, config, reporter=Recorder(), signals=StopSignals(handle=False))
    service.execute(store, remote_id, config, reporter=Recorder(), signals=StopSignals(handle=False), remote=remote)

    assert remote.tasks == 3 * 2 and remote.closed
    local, far = store.round_rows(local_id), store.round_rows(remote_id)
    timing = ("seconds", "eval_seconds", "simulated_seconds")
    strip = [{k: v for k, v in row.items() if k not in timing and k != "clients"} for row in local]
    assert strip == [{k: v for k, v in row.items() if k not in timing and k != "clients"} for row in far]
    assert store.load_checkpoint(local_id)[1] == store.load_checkpoint(remote_id)[1]  # the same state, bit for bit


def test_what_a_remote_cannot_store_is_recorded_as_such(db_url):
    store, config = ExperimentStore(db_url), tiny(rounds=1)
    experiment_id = service.create(store, config)
    remote = CountingRemote(refuse={"audit": "the training data are at the sites"})

    service.execute(store, experiment_id, config, reporter=Recorder(), signals=StopSignals(handle=False), remote=remote)

    assert store.get_experiment(experiment_id).audit == {"error": "ValueError: the training data are at the sites"}


def test_a_failing_run_is_stored_failed_with_its_error_and_reported(db_url, monkeypatch):
    store, recorder, config = ExperimentStore(db_url), Recorder(), tiny()
    experiment_id = service.create(store, config)

    def broken(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr(FederatedRun, "run_round", broken)
    outcome = service.execute(store, experiment_id, config, reporter=recorder, signals=StopSignals(handle=False))

    assert outcome.status == "failed" and "the disk is on fire" in outcome.final["error"]
    assert recorder.errors == ["RuntimeError: the disk is on fire"]
    assert store.get_experiment(experiment_id).error == "RuntimeError: the disk is on fire"


def test_the_heartbeat_goes_on_until_the_status_is_final(db_url, monkeypatch):
    # The audit runs after the last round: the run must still look alive meanwhile.
    store, config = ExperimentStore(db_url), tiny(rounds=1)
    experiment_id = service.create(store, config)
    beats: list[str] = []
    original = FederatedRun.audit

    def slow_audit(self: FederatedRun, num_examples: int) -> Any:
        before = store.get_experiment(experiment_id)
        time.sleep(0.35)
        after = store.get_experiment(experiment_id)
        beats.append(f"{before.status}:{int(after.worker_pid is not None)}")
        return original(self, num_examples)

    monkeypatch.setattr(FederatedRun, "audit", slow_audit)
    monkeypatch.setattr(service, "beating", lambda s, i: beating(s, i, interval=0.05))
    touched = []
    real_heartbeat = ExperimentStore.heartbeat
    monkeypatch.setattr(ExperimentStore, "heartbeat", lambda self, i: (touched.append(time.monotonic()),
                                                                        real_heartbeat(self, i)))

    service.execute(store, experiment_id, config, reporter=Recorder(), signals=StopSignals(handle=False))

    assert beats == ["running:1"]
    assert len(touched) >= 4  # beats kept coming through the 0.35 s audit after the last round


def test_beating_touches_the_heartbeat_from_a_thread_and_stops(db_url):
    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment(tiny().to_dict())
    store.mark_running(experiment_id)
    first = store.get_experiment(experiment_id)
    with beating(store, experiment_id, interval=0.05):
        time.sleep(0.3)
    assert not [t for t in threading.enumerate() if t.name == f"heartbeat-{experiment_id}"]
    with store.sessions() as session:
        from database import Experiment

        assert session.get(Experiment, experiment_id).heartbeat_at > first.started_at


def test_without_privacy_and_centralized_configs():
    private = tiny().replace("privacy", mode="central", noise_multiplier=1.0, adaptive_clipping=True,
                             target_quantile=0.5)  # fmt: skip
    assert without_privacy(private).privacy.mode == "none"
    assert without_privacy(private).federation == private.federation
    pooled = centralized_config(tiny(num_clients=3, clients_per_round=2, learning_rate=0.2), 0.01)
    assert (pooled.federation.num_clients, pooled.federation.clients_per_round) == (1, 1)
    assert pooled.federation.learning_rate == 0.01 and pooled.data.partition == "iid"
    adamw = tiny(client_optimizer="adamw", learning_rate=0.003).to_dict()
    assert suggested_centralized_lr(adamw) == CENTRALIZED_ADAMW_MAX_LR
    assert suggested_centralized_lr(tiny(learning_rate=0.2).to_dict()) == 0.2


@pytest.mark.parametrize(("epsilon", "delta"), [(0.0, 0.0), (1.0, 0.0), (1.0, 1e-5), (3.0, 1e-5), (8.0, 1e-5)])
def test_the_advantage_bound_is_the_hypothesis_testing_limit(epsilon, delta):
    # Hand-derived: the best test has FPR = f and TPR = e^ε·f + δ with 1 − f = e^ε·(1 − TPR) + δ.
    f = (1 - delta) / (math.exp(epsilon) + 1)
    tpr = math.exp(epsilon) * f + delta
    assert advantage_bound(epsilon, delta) == pytest.approx(min(tpr - f, 1.0), abs=1e-12)
    assert advantage_bound(1e6, 0.0) == 1.0
    with pytest.raises(ValueError):
        advantage_bound(-1.0, 0.0)
