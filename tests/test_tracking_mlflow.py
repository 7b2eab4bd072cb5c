"""tracking/: runs logged to a real `mlflow server` (SQLite backend, loopback, started and stopped by
PID) as they go and exported again, read back through MLflow's own client and compared with the
rounds the database stored; a dead tracking server never fails a run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import cli
from database import ExperimentStore
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun
from privacy.report import render_markdown
from runs import service
from runs.workers import StopSignals
from tracking.mlflow_export import MLFLOW_EXPERIMENT, MlflowMirror, TrackingError, export_to_mlflow
from tracking.records import round_metrics, run_key

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SERVER_START_SECONDS = 120  # a loaded machine; it is ready in ~10 s on an idle one


def tiny(uri: str = "") -> ExperimentConfig:
    """MNIST MLP, 3 clients, 2 rounds, 600 training examples, no audit: seconds on a CPU."""
    return ExperimentConfig.from_dict({
        "data": {"max_train_examples": 600, "max_test_examples": 300},
        "model": {"name": "mlp"},
        "federation": {"num_clients": 3, "clients_per_round": 3, "rounds": 2, "batch_size": 20},
        "privacy": {"audit_examples": 0},
        "system": {"num_workers": 1, "seed": 4, "mlflow_uri": uri},
    })  # fmt: skip


class Recorder:
    """A `service.Reporter` that keeps what it heard."""

    def __init__(self) -> None:
        self.rounds: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def round(self, row: dict[str, Any]) -> None:
        self.rounds.append(row)

    def note(self, text: str) -> None:
        pass

    def error(self, text: str) -> None:
        self.errors.append(text)


def free_port() -> int:
    """A loopback port nobody listens on: bound, then closed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(autouse=True)
def quick_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """No retries, short timeouts; no tracking URI from the environment."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on a free loopback port, its own process group, stopped by its PID."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"),
    ]  # fmt: skip
    log = open(folder / "server.log", "wb")  # noqa: SIM115 (closed below)
    # No job runner (huey consumers: GenAI jobs this test never uses, slow to stop on a busy machine).
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(uri, server, folder / "server.log")
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started: its own process group
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(server.pid, signal.SIGKILL)  # whatever of that group is still there
        except ProcessLookupError:
            pass
        server.wait(timeout=10)
        log.close()


def _wait_until_ready(uri: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited ({server.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server not ready after {SERVER_START_SECONDS} s: {log.read_text()[-2000:]}")


def mirrors(uri: str, db_url: str, experiment_id: int) -> list[Any]:
    """The MLflow runs that carry this stored run's key (searched with MLflow's own client)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], f"tags.`fpl.run_key` = '{run_key(db_url, experiment_id)}'")


def history(uri: str, run_id: str, name: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, name))


def test_a_run_logged_live_holds_every_round_the_params_and_the_files_and_a_reexport_adds_no_run(
    mlflow_uri: str, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture
):
    from mlflow import MlflowClient

    store, recorder, config = ExperimentStore(db_url), Recorder(), tiny(mlflow_uri)
    experiment_id = service.create(store, config, name="live")

    outcome = service.execute(store, experiment_id, config, reporter=recorder, signals=StopSignals(handle=False))

    assert outcome.status == "completed" and recorder.errors == []
    (run,) = mirrors(mlflow_uri, db_url, experiment_id)
    stored = store.round_rows(experiment_id)
    for name in ("accuracy", "loss", "epsilon", "delta", "bytes_up", "bytes_down", "seconds"):
        assert history(mlflow_uri, run.info.run_id, name) == [(r["round"], pytest.approx(r[name])) for r in stored]
    client_zero = [(r["round"], c["loss"]) for r in stored for c in r["clients"] if c["id"] == 0]
    assert history(mlflow_uri, run.info.run_id, "client/0/loss") == [(s, pytest.approx(v)) for s, v in client_zero]
    params = run.data.params
    assert len(params) == sum(len(values) for values in config.to_dict().values())
    assert (params["federation.rounds"], params["model.name"], params["system.seed"]) == ("2", "mlp", "4")
    tags = run.data.tags
    assert (tags["fpl.status"], tags["fpl.dataset"], tags["fpl.privacy_mode"]) == ("completed", "mnist", "none")
    assert tags["fpl.code_version"] == store.get_experiment(experiment_id).code_version
    assert tags["mlflow.runName"] == "live" and run.info.status == "FINISHED"

    client = MlflowClient(mlflow_uri)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"privacy_report.md", "config.toml", "rounds.csv", "clients.csv", "final_weights.npy"} <= names
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path)))
    assert ExperimentConfig.from_toml(local / "config.toml") == config
    weights = np.load(local / "final_weights.npy")
    assert weights.shape == (784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10,)  # the 2NN MLP, by hand
    assert np.isfinite(weights).all()
    assert pd.read_csv(local / "rounds.csv")["accuracy"].tolist() == pytest.approx([r["accuracy"] for r in stored])
    rounds = store.rounds_frame([experiment_id]).drop(columns=["experiment_id", "created_at"])
    assert (local / "privacy_report.md").read_text() == render_markdown(store.get_experiment(experiment_id), rounds)

    # Exporting again, from the API and from the CLI, updates the same MLflow run: no new run, no repeated step.
    assert export_to_mlflow(store, experiment_id, mlflow_uri) == run.info.run_id
    assert cli.main(["export", str(experiment_id), "--mlflow", mlflow_uri, "--db", db_url, "--json"]) == cli.EXIT_OK
    # stdout is one JSON object (MLflow's "View run" lines go to stderr)
    assert json.loads(capsys.readouterr().out) == {"experiment_id": experiment_id, "mlflow_run_id": run.info.run_id}
    (again,) = mirrors(mlflow_uri, db_url, experiment_id)
    assert again.info.run_id == run.info.run_id
    assert [step for step, _ in history(mlflow_uri, run.info.run_id, "accuracy")] == [1, 2]


def test_a_run_without_a_tracking_uri_is_not_logged_and_exports_later(mlflow_uri: str, db_url: str):
    store, config = ExperimentStore(db_url), tiny()
    experiment_id = service.create(store, config)
    service.execute(store, experiment_id, config, reporter=Recorder(), signals=StopSignals(handle=False))
    assert mirrors(mlflow_uri, db_url, experiment_id) == []  # nothing was logged while it ran

    run_id = export_to_mlflow(store, experiment_id, mlflow_uri)

    (run,) = mirrors(mlflow_uri, db_url, experiment_id)
    stored = store.round_rows(experiment_id)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert history(mlflow_uri, run_id, "accuracy") == [(r["round"], pytest.approx(r["accuracy"])) for r in stored]


def test_a_failed_run_is_marked_failed_in_mlflow(mlflow_uri: str, db_url: str, monkeypatch: pytest.MonkeyPatch):
    store, recorder, config = ExperimentStore(db_url), Recorder(), tiny(mlflow_uri)
    experiment_id = service.create(store, config)

    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr(FederatedRun, "run_round", broken)
    outcome = service.execute(store, experiment_id, config, reporter=recorder, signals=StopSignals(handle=False))

    assert outcome.status == "failed" and recorder.errors == ["RuntimeError: the disk is on fire"]
    (run,) = mirrors(mlflow_uri, db_url, experiment_id)
    assert run.info.status == "FAILED" and run.data.tags["fpl.status"] == "failed"
    assert run.data.tags["fpl.error"] == "RuntimeError: the disk is on fire"


def test_a_dead_tracking_server_never_fails_the_run_and_says_so_once(db_url: str, capsys: pytest.CaptureFixture):
    dead = f"http://127.0.0.1:{free_port()}"  # bound, then closed: connection refused

    settings = [
        "model.name=mlp", "federation.rounds=2", "federation.num_clients=3", "federation.clients_per_round=3",
        "data.max_train_examples=600", "data.max_test_examples=300", "privacy.audit_examples=0",
        "system.num_workers=1", f"system.mlflow_uri={dead}",
    ]  # fmt: skip

    code = cli.main(["run", *(part for setting in settings for part in ("--set", setting)), "--db", db_url])

    assert code == cli.EXIT_OK
    out, err = capsys.readouterr()
    assert "experiment 1 completed after 2 rounds" in out
    assert err.count("\n") == 1 and "MLflow at http://127.0.0.1" in err and "connection refused" in err
    assert "goes on without MLflow logging" in err
    store = ExperimentStore(db_url)
    assert store.get_experiment(1).status == "completed" and len(store.round_rows(1)) == 2

    # The export can be retried later; against the dead server it is one line and exit 1.
    with pytest.raises(TrackingError, match="connection refused"):
        export_to_mlflow(store, 1, dead)
    assert cli.main(["export", "1", "--mlflow", dead, "--db", db_url]) == cli.EXIT_FAILED
    assert capsys.readouterr().err.count("\n") == 1


def test_export_refuses_bad_input_with_one_line_and_exit_2(db_url: str, capsys: pytest.CaptureFixture):
    ExperimentStore(db_url)
    for argv in (["export", "1"], ["export", "1", "--mlflow", "mlruns"], ["export", "1", "--tensorboard", " "],
                 ["export", "1", "--mlflow", "http://user:secret@127.0.0.1:5000"]):  # fmt: skip
        assert cli.main([*argv, "--db", db_url]) == cli.EXIT_BAD_CONFIG, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "secret" not in err, argv
    assert cli.main(["export", "9", "--mlflow", "http://127.0.0.1:1", "--db", db_url]) == cli.EXIT_FAILED
    assert "no experiment 9" in capsys.readouterr().err


class StopAfterFirstRound(Recorder):
    """Asks the store to stop the run as round 1 is reported: the run ends `stopped` after it."""

    def __init__(self, store: ExperimentStore, experiment_id: int) -> None:
        super().__init__()
        self.store, self.experiment_id = store, experiment_id

    def round(self, row: dict[str, Any]) -> None:
        super().round(row)
        self.store.request_stop(self.experiment_id)


def test_a_stopped_run_is_killed_in_mlflow_and_its_resume_continues_the_same_run(mlflow_uri: str, db_url: str):
    store, config = ExperimentStore(db_url), tiny(mlflow_uri)
    experiment_id = service.create(store, config)
    stopper = StopAfterFirstRound(store, experiment_id)

    first = service.execute(store, experiment_id, config, reporter=stopper, signals=StopSignals(handle=False))

    assert first.status == "stopped" and stopper.errors == []
    (run,) = mirrors(mlflow_uri, db_url, experiment_id)
    assert run.info.status == "KILLED" and run.data.tags["fpl.status"] == "stopped"
    assert [step for step, _ in history(mlflow_uri, run.info.run_id, "accuracy")] == [1]

    resumed = service.resume(store, store.get_experiment(experiment_id), reporter=Recorder())

    assert resumed.status == "completed"
    (after,) = mirrors(mlflow_uri, db_url, experiment_id)
    stored = store.round_rows(experiment_id)
    assert after.info.run_id == run.info.run_id and after.info.status == "FINISHED"
    assert history(mlflow_uri, run.info.run_id, "accuracy") == [
        (r["round"], pytest.approx(r["accuracy"])) for r in stored
    ]


def test_a_round_of_many_clients_is_logged_in_batches_mlflow_accepts(mlflow_uri: str):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    run = client.create_run(client.create_experiment("many clients"))
    clients = [{"id": i, "num_examples": 10, "steps": 1, "loss": i / 1000, "epsilon": 0.0, "status": "ok",
                "bytes_up": 1, "bytes_down": 1, "validation_accuracy": None} for i in range(300)]  # fmt: skip
    row = {"round": 1, "accuracy": 0.5, "loss": 1.0, "clients": clients}
    assert len(round_metrics(row)) > 1000  # more than MLflow takes in one call

    MlflowMirror(client, run.info.run_id, 0).log_rounds([row])

    logged = client.get_run(run.info.run_id)
    assert logged.data.tags["fpl.rounds_logged"] == "1"
    assert history(mlflow_uri, run.info.run_id, "client/299/loss") == [(1, pytest.approx(0.299))]
    assert len(logged.data.metrics) == len(round_metrics(row))


def test_a_server_lost_mid_run_is_said_once_and_the_rounds_still_reach_the_reporter(db_url: str):
    from mlflow import MlflowClient

    from tracking.live import LiveMlflow

    dead = f"http://127.0.0.1:{free_port()}"
    inner = Recorder()
    live = LiveMlflow(inner, ExperimentStore(db_url), 1, dead)
    live.mirror = MlflowMirror(MlflowClient(dead), "a-run-id", 0)  # it was reachable when the run began
    rows = [{"round": r, "accuracy": 0.5, "loss": 1.0, "clients": []} for r in (1, 2, 3)]

    for row in rows:
        live.round(row)
    live.finish()

    assert inner.rounds == rows
    assert len(inner.errors) == 1 and "connection refused" in inner.errors[0] and live.mirror is None
