"""runs/intake.py: the checks the CLI, the REST API and the page share before anything is stored
(the name, the config from a TOML file or a JSON body, overrides), and the settling of ended worker
processes, against real subprocesses and a real SQLite store."""

from __future__ import annotations

import subprocess
import sys

import pytest

import cli
from api import app as api_app
from database import ExperimentStore
from experiment_config import ExperimentConfig
from runs import intake


def exiting(code: int) -> subprocess.Popen[bytes]:
    """A process that has exited with `code` (waited for, so its exit status is in)."""
    process = subprocess.Popen([sys.executable, "-c", f"import sys; sys.exit({code})"])
    process.wait(timeout=60)
    return process


@pytest.fixture
def sleeper():
    """A process that stays alive until the test ends; stopped by its own handle."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait(timeout=60)


def test_the_cli_and_the_api_use_the_one_copy():
    assert cli.build_config is intake.build_config and cli.checked_name is intake.checked_name
    assert api_app.intake is intake


@pytest.mark.parametrize(("name", "says"), [
    ("x" * (intake.MAX_NAME_CHARS + 1), f"--name must be at most {intake.MAX_NAME_CHARS} characters, got 201"),
    ("line\nbreak", "--name must be printable text, got line\\nbreak"),
    ("nul\x00", "--name must be printable text"),
])  # fmt: skip
def test_names_the_database_cannot_store_are_refused_in_one_line(name, says):
    with pytest.raises(ValueError, match="^" + says.replace("\\", "\\\\")) as raised:
        intake.checked_name(name)
    assert "\n" not in str(raised.value)


def test_a_storable_name_is_kept_as_given():
    assert intake.checked_name("") == "" and intake.checked_name("  lr 0.05 · Ω  ") == "  lr 0.05 · Ω  "


def test_a_toml_file_and_the_same_json_body_build_the_same_config(tmp_path):
    path = tmp_path / "base.toml"
    path.write_text('[model]\nname = "mlp"\n[federation]\nrounds = 3\n', encoding="utf-8")
    body = {"model": {"name": "mlp"}, "federation": {"rounds": 3}}
    overrides = ["federation.num_clients=4", "federation.clients_per_round=2"]
    expected = ExperimentConfig().replace("model", name="mlp").replace(
        "federation", rounds=3, num_clients=4, clients_per_round=2)  # fmt: skip

    assert intake.build_config(str(path), overrides) == expected
    assert intake.build_config(path, overrides) == expected
    assert intake.build_config(body, overrides) == expected
    assert intake.build_config(None, []) == ExperimentConfig() == intake.build_config({}, [])


def test_a_bad_override_is_a_value_error_naming_the_field():
    with pytest.raises(ValueError, match="federation.rounds"):
        intake.build_config({"model": {"name": "mlp"}}, ["federation.rounds=0"])


def test_ended_workers_are_reaped_and_removed_and_live_ones_kept(sleeper):
    handles = {1: exiting(0), 2: sleeper, 3: exiting(7)}

    ended = intake.ended_workers(handles)

    assert ended == {1: 0, 3: 7}
    assert handles == {2: sleeper}


def test_a_run_whose_worker_exited_before_starting_it_fails_with_the_exit_code(db_url, sleeper):
    store = ExperimentStore(db_url)
    config = ExperimentConfig().to_dict()
    never_started, started, still_queued = (store.create_experiment(config) for _ in range(3))
    store.mark_running(started)  # this process is its worker: alive
    handles = {never_started: exiting(3), started: exiting(0), still_queued: sleeper}

    intake.settle_workers(store, handles)

    failed = store.get_experiment(never_started)
    assert failed.status == "failed"
    assert failed.error == "the worker exited with code 3 before it started the run"
    assert store.get_experiment(started).status == "running"  # it started: its own worker settles it
    assert store.get_experiment(still_queued).status == "queued" and list(handles) == [still_queued]


def test_a_running_run_whose_worker_is_gone_is_marked_interrupted(db_url):
    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment(ExperimentConfig().to_dict())
    gone = exiting(0)
    store.mark_running(experiment_id, pid=gone.pid)

    intake.settle_workers(store, {})

    assert store.get_experiment(experiment_id).status == "interrupted"
