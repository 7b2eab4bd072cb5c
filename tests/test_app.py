"""The page, driven by Streamlit's AppTest against a temporary SQLite database.

Most tests fabricate experiments through `ExperimentStore` (fast, no worker); one
presses Start with a tiny config and lets the real worker run it to completion.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import cli
from conftest import REPO
from database import ExperimentStore
from experiment_config import ExperimentConfig

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LIVE = ":material/monitoring: Live"  # the tab labels, also the values of st.session_state["view"]
HISTORY = ":material/history: History"
COMPARE = ":material/compare_arrows: Compare"
NUMBER_KEYS = [
    "dirichlet_alpha", "num_clients", "clients_per_round", "rounds", "local_epochs", "batch_size",
    "learning_rate", "seed", "max_train_examples", "max_test_examples", "num_workers",
    "noise_multiplier", "max_grad_norm", "target_epsilon", "max_epsilon", "delta",
]  # fmt: skip
SELECT_KEYS = ["dataset", "model", "partition", "strategy", "privacy_mode", "accountant"]
TINY = {
    "model": "mlp", "num_clients": 2, "clients_per_round": 2, "rounds": 2,
    "max_train_examples": 600, "max_test_examples": 500, "num_workers": 1,
}  # fmt: skip


class IdleWorker:
    """Stands in for a worker process that never ends (tests that must not train)."""

    pid = 0
    returncode = None

    def poll(self) -> None:
        return None


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ExperimentStore:
    url = f"sqlite:///{tmp_path / 'experiments.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("FPL_DATA_DIR", str(SHARED_DATA))
    return ExperimentStore(url)


@pytest.fixture
def no_workers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace the worker launch; returns the experiment ids that would have started."""
    launched: list[int] = []

    def launch(store: ExperimentStore, experiment_id: int) -> IdleWorker:
        launched.append(experiment_id)
        return IdleWorker()

    monkeypatch.setattr(cli, "launch_worker", launch)
    return launched


def page(view: str = LIVE) -> AppTest:
    app = AppTest.from_file(str(REPO / "main.py"), default_timeout=30)
    app.session_state["view"] = view
    return app.run()


def fill(app: AppTest, values: dict) -> None:
    for key, value in values.items():
        widget = app.selectbox(key=key) if key in SELECT_KEYS else app.number_input(key=key)
        widget.set_value(value)


def fabricate(store: ExperimentStore, *, rounds: int = 2, status: str = "completed", accuracy: float = 0.9, **config):
    """A finished (or running) experiment with `rounds` recorded rounds of 2 clients."""
    base = {"model": {"name": "mlp"}, "federation": {"num_clients": 2, "clients_per_round": 2, "rounds": 3}}
    overrides = [f"{key}={value}" for key, value in config.items()]
    experiment_id = store.create_experiment(ExperimentConfig.from_dict(base).with_overrides(overrides).to_dict())
    store.mark_running(experiment_id)  # this process: alive, so never marked interrupted
    store.set_label_counts(experiment_id, [[3, 1, 0], [0, 2, 5]])
    for number in range(1, rounds + 1):
        store.record_round(experiment_id, {
            "round": number, "accuracy": accuracy * number / rounds, "loss": 2.0 / number, "seconds": 1.0,
            "eval_seconds": 0.5, "bytes_up": 1_000, "bytes_down": 2_000,
            "clients": [{"id": c, "num_examples": 30, "steps": 3, "loss": 1.0 / number + c} for c in range(2)],
        })  # fmt: skip
    if status != "running":
        store.finish(experiment_id, status, error="boom: out of memory" if status == "failed" else None,
                     final={"accuracy": accuracy})  # fmt: skip
    return experiment_id


def chart_traces(app: AppTest) -> list[list[dict]]:
    """The traces of every Plotly chart on the page, typed arrays decoded to lists."""
    return [[decode(trace) for trace in json.loads(chart.proto.spec)["data"]] for chart in app.get("plotly_chart")]


def decode(value):
    """Plotly sends numpy arrays as {"dtype", "bdata" (base64), "shape"?}; anything else as is."""
    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        return array.reshape([int(n) for n in str(shape).split(",")] if shape else -1).tolist()
    if isinstance(value, dict):
        return {key: decode(item) for key, item in value.items()}
    return value


def progress_text(app: AppTest) -> list[str]:
    return [bar.proto.text for bar in app.get("progress")]


# -- sidebar -------------------------------------------------------------------------


def test_sidebar_has_every_widget_by_key_with_config_defaults_and_help(store):
    app = page()
    defaults = ExperimentConfig()

    assert not app.exception
    numbers = {widget.key: widget for widget in app.sidebar.number_input}
    selects = {widget.key: widget for widget in app.sidebar.selectbox}
    assert set(numbers) == set(NUMBER_KEYS) and set(selects) == set(SELECT_KEYS)
    assert numbers["rounds"].value == defaults.federation.rounds
    assert numbers["learning_rate"].value == pytest.approx(defaults.federation.learning_rate)
    assert selects["model"].value == defaults.model.name and selects["strategy"].value == "fedavg"
    assert app.text_input(key="data_dir").value == str(SHARED_DATA)  # from FPL_DATA_DIR
    assert all(widget.help for widget in [*numbers.values(), *selects.values()])
    assert app.button(key="start").label == "Start"
    assert app.info[0].value.startswith("No experiments yet")


def test_invalid_config_shows_the_error_and_writes_nothing(store, no_workers):
    app = page()
    fill(app, {"num_clients": 2, "clients_per_round": 5})

    app.button(key="start").click().run()

    assert [error.value for error in app.sidebar.error] == [
        "Invalid configuration: federation.clients_per_round (5) must be <= federation.num_clients (2)"
    ]
    assert store.list_experiments() == [] and no_workers == []


def test_start_runs_a_tiny_experiment_to_completion(store):
    app = page()
    fill(app, TINY)

    app.button(key="start").click().run()

    (experiment,) = store.list_experiments()
    assert experiment.status in ("queued", "running") and not app.exception
    config = ExperimentConfig.from_dict(experiment.config)
    assert (config.model.name, config.federation.rounds, config.data.max_train_examples) == ("mlp", 2, 600)
    deadline = time.monotonic() + 60
    while store.get_experiment(experiment.id).status in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
    finished = store.get_experiment(experiment.id)
    assert (finished.status, finished.rounds_done, finished.error) == ("completed", 2, None)

    app.run()
    assert progress_text(app) == [f"Round 2/2 · completed · {finished.duration_seconds:.1f} s"]
    assert len(app.get("plotly_chart")) == 6

    app.session_state["view"] = HISTORY
    app.run()
    table = app.dataframe[0].value
    assert table[["ID", "Status", "Model", "Rounds"]].values.tolist() == [[experiment.id, "completed", "mlp", "2/2"]]
    assert table["Final accuracy"][0] == pytest.approx(finished.final_accuracy)


def test_a_private_run_from_the_sidebar_reports_its_epsilon(store):
    app = page()
    fill(app, {**TINY, "privacy_mode": "local", "target_epsilon": 3.0})

    app.button(key="start").click().run()

    (experiment,) = store.list_experiments()
    deadline = time.monotonic() + 90
    while store.get_experiment(experiment.id).status in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
    finished = store.get_experiment(experiment.id)
    assert finished.status == "completed", finished.error
    assert 0.9 * 3.0 <= finished.final_epsilon <= 3.0 and finished.noise_multiplier > 0
    rounds = store.rounds_frame([experiment.id])
    assert rounds["epsilon"].is_monotonic_increasing and set(rounds["accountant"]) == {"rdp"}

    app.run()
    assert len(app.get("plotly_chart")) == 7  # the ε curve joins the six charts
    (epsilon_metric,) = [m for m in app.metric if m.label.startswith("ε")]
    assert float(epsilon_metric.value) == pytest.approx(finished.final_epsilon, rel=1e-2)


# -- live view ------------------------------------------------------------------------


def test_live_view_shows_progress_eta_and_every_chart_of_a_running_experiment(store):
    experiment_id = fabricate(store, rounds=2, status="running")

    app = page()

    # 2 of 3 rounds done at 1.5 s (train + eval) per round: 1.5 s left
    assert progress_text(app) == ["Round 2/3 · running · ETA 1.5 s"]
    traces = chart_traces(app)
    assert len(traces) == 6
    accuracy, _, client_loss, labels, _, _ = traces
    assert accuracy[0]["y"] == pytest.approx([0.45, 0.9])
    assert [trace["name"] for trace in client_loss] == ["client 0", "client 1"]
    assert labels[0]["z"] == [[3, 1, 0], [0, 2, 5]]
    assert app.metric[0].value == "90.00%"
    assert app.button(key="live-stop")
    assert store.get_experiment(experiment_id).stop_requested is False


def test_stop_asks_the_running_worker_to_end_after_its_round(store):
    experiment_id = fabricate(store, rounds=1, status="running")
    app = page()

    app.button(key="live-stop").click().run()

    assert store.get_experiment(experiment_id).stop_requested is True
    assert any("Stop requested" in info.value for info in app.info)


def test_failed_run_shows_its_status_and_error(store):
    fabricate(store, rounds=1, status="failed")

    app = page()

    assert "failed" in progress_text(app)[0]
    assert [error.value for error in app.error] == ["The run failed: boom: out of memory"]


def test_worker_that_exits_before_starting_fails_its_run(store, monkeypatch):
    failing_worker = [sys.executable, "-c", "raise SystemExit(3)"]
    monkeypatch.setattr(cli, "launch_worker", lambda store, experiment_id: subprocess.Popen(failing_worker))
    app = page()
    fill(app, TINY)
    app.button(key="start").click().run()
    (experiment,) = store.list_experiments()
    assert experiment.status == "queued"

    deadline = time.monotonic() + 10
    while store.get_experiment(experiment.id).status == "queued" and time.monotonic() < deadline:
        time.sleep(0.2)
        app.run()

    failed = store.get_experiment(experiment.id)
    assert (failed.status, failed.error) == ("failed", "the worker exited with code 3 before it started the run")
    assert app.error[0].value == f"The run failed: {failed.error}"


def test_dead_worker_is_marked_interrupted_when_listing(store):
    experiment_id = store.create_experiment(ExperimentConfig().to_dict())
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    store.mark_running(experiment_id, pid=dead.pid)

    app = page()

    assert store.get_experiment(experiment_id).status == "interrupted"
    assert app.warning[0].value.startswith("Interrupted:")


# -- history and compare --------------------------------------------------------------


def test_history_lists_experiments_and_shows_the_selected_ones_charts_and_config(store):
    first = fabricate(store, accuracy=0.5)
    second = fabricate(store, accuracy=0.8, **{"data.partition": '"dirichlet"'})

    app = page(HISTORY)

    table = app.dataframe[0].value
    assert table["ID"].tolist() == [second, first]  # newest first
    assert table["Partition"].tolist() == ["dirichlet", "iid"]
    assert app.selectbox(key="history_selected").value == second
    app.selectbox(key="history_selected").set_value(first).run()
    assert chart_traces(app)[0][0]["y"] == pytest.approx([0.25, 0.5])
    assert app.json[0].value == json.dumps(store.get_experiment(first).config)
    assert app.get("download_button")[0].proto.label == "Rounds CSV"


def test_rerun_starts_a_new_experiment_with_the_same_config(store, no_workers):
    original = fabricate(store, **{"federation.rounds": 7})
    app = page(HISTORY)

    app.button(key="rerun").click().run()

    newest = store.list_experiments()[0]
    assert newest.id != original and no_workers == [newest.id]
    assert newest.config == store.get_experiment(original).config
    assert app.session_state["view"] == LIVE
    assert app.success[0].value == f"Started #{newest.id}, a re-run of #{original}."


def test_delete_removes_the_experiment_after_confirmation(store):
    keep, remove = fabricate(store), fabricate(store)
    app = page(HISTORY)
    assert app.selectbox(key="history_selected").value == remove

    app.button(key="delete_confirm").click().run()

    assert [experiment.id for experiment in store.list_experiments()] == [keep]
    assert store.rounds_frame([remove]).empty
    assert app.dataframe[0].value["ID"].tolist() == [keep]


def test_compare_overlays_the_accuracy_of_the_chosen_experiments(store):
    first, second = fabricate(store, accuracy=0.5), fabricate(store, accuracy=0.8, **{"federation.local_epochs": 3})
    app = page(COMPARE)
    assert app.info[0].value.startswith("Pick experiments")

    app.multiselect(key="compare_ids").set_value([first, second]).run()

    accuracy, loss = chart_traces(app)
    assert [trace["y"][-1] for trace in accuracy] == pytest.approx([0.5, 0.8])
    assert len(loss) == 2
    differences = app.dataframe[0].value
    assert differences.loc["federation.local_epochs"].tolist() == ["1", "3"]


def test_page_imports_no_torch(tmp_path):
    """The page must be interactive in seconds: torch loads only in the worker."""
    script = (
        "import sys; from streamlit.testing.v1 import AppTest; "
        "AppTest.from_file('main.py', default_timeout=30).run(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'federated_learning', 'torchvision')))"
    )
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'experiments.db'}"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
