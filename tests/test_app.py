"""The page, driven by Streamlit's AppTest against a temporary SQLite database.

Most tests fabricate experiments through `ExperimentStore` (fast, no worker); one
presses Start with a tiny config and lets the real worker run it to completion.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from streamlit.testing.v1 import AppTest

import cli
from app_pages.common import rounds_csv, strategy_text
from app_pages.config_fields import labelled
from database import ExperimentStore
from experiment_config import BOUNDS, ExperimentConfig
from runs import workers

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LIVE = ":material/monitoring: Live"  # the tab labels, also the values of st.session_state["view"]
HISTORY = ":material/history: History"
COMPARE = ":material/compare_arrows: Compare"
NUMBER_KEYS = [
    "dirichlet_alpha", "num_clients", "clients_per_round", "rounds", "local_epochs", "batch_size",
    "learning_rate", "seed", "max_train_examples", "max_test_examples", "num_workers",
    "noise_multiplier", "max_grad_norm", "target_epsilon", "max_epsilon", "delta", "audit_examples",
    "target_quantile", "clip_learning_rate",
]  # fmt: skip
SELECT_KEYS = ["dataset", "model", "partition", "strategy", "privacy_mode", "accountant", "client_sampling", "mechanism"]
# The scenario expanders: widget key -> the config key it sets.
SCENARIO_KEYS = {
    **{key: ("federation", key) for key in [
        "proximal_mu", "server_learning_rate", "server_momentum", "beta1", "beta2", "tau", "trim_fraction",
        "byzantine_clients", "multi_krum_keep", "weighting_exponent", "qffl_q", "qffl_lipschitz", "selection",
        "selection_candidates", "server_ema",
        "dropout_probability", "dropout_stage", "dropout_heterogeneous", "min_clients", "speed_spread",
        "round_deadline", "straggler_policy", "client_holdout", "personalization", "finetune_epochs",
        "secure_aggregation", "secagg_threshold", "secagg_neighbours", "exclusion", "exclusion_flags",
        "exclusion_window", "buffer_size", "max_concurrency", "staleness_exponent",
    ]},
    "federation_mode": ("federation", "mode"),
    **{f"attack_{key}": ("attack", key) for key in ["fraction", "behaviour", "scale", "noise_std"]},
    "distributed_noise": ("privacy", "distributed_noise"),
    **{key: ("communication", key) for key in [
        "compression", "topk_fraction", "error_feedback", "quantization_bits", "topk_momentum",
        "topk_warmup_rounds", "bandwidth_mbps",
        "bandwidth_spread", "latency_ms", "latency_spread",
    ]},
}  # fmt: skip
SCENARIO_SELECT_KEYS = [
    "selection", "dropout_stage", "straggler_policy", "personalization", "attack_behaviour", "compression",
    "exclusion", "distributed_noise", "federation_mode",
]  # fmt: skip
SCENARIO_CHECKBOX_KEYS = ["dropout_heterogeneous", "error_feedback", "secure_aggregation"]
SELECT_KEYS += SCENARIO_SELECT_KEYS
NUMBER_KEYS += [key for key in SCENARIO_KEYS if key not in SCENARIO_SELECT_KEYS + SCENARIO_CHECKBOX_KEYS]
# The "NGSS rubric scoring" group: widget key -> the config key it sets (and the CSV upload, key csv_upload).
NGSS_KEYS = {
    "ngss_task": ("data", "ngss_task"),
    **{key: ("model", key) for key in ["pretrained", "lora_rank", "lora_alpha", "lora_dropout", "max_length",
                                         "lora_targets", "pooling", "lora_layers"]},
    "bucket_by_length": ("federation", "bucket_by_length"),
}  # fmt: skip
SELECT_KEYS += ["ngss_task", "pooling", "runtime", "backend", "client_optimizer"]  # all but ngss_task and pooling: under Advanced
SELECT_KEYS += ["precision"]  # Advanced: system.precision
NUMBER_KEYS += ["lora_rank", "lora_alpha", "lora_dropout", "max_length", "lora_layers"]
NUMBER_KEYS += ["audit_canaries", "augmentations", "image_size", "image_channels", "sweep_parallel"]  # Advanced, Your own images, Sweep
SELECT_KEYS += ["audit", "sweep_objective"]
CHECKBOX_KEYS = SCENARIO_CHECKBOX_KEYS + ["pretrained", "bucket_by_length"]
TEXT_KEYS = ["lora_targets", "data_dir"]
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
def no_workers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Replace the worker launch; returns one tuple of experiment ids per worker that would have started."""
    launched: list[tuple[int, ...]] = []

    def launch(store: ExperimentStore, *experiment_ids: int) -> IdleWorker:
        launched.append(experiment_ids)
        return IdleWorker()

    monkeypatch.setattr(workers, "launch_worker", launch)
    return launched


def page(view: str = LIVE) -> AppTest:
    app = AppTest.from_file(str(REPO / "main.py"), default_timeout=30)
    app.session_state["view"] = view
    return app.run()


def fill(app: AppTest, values: dict) -> None:
    for key, value in values.items():
        widget(app, key).set_value(value)


def widget(app: AppTest, key: str):
    if key in SELECT_KEYS:
        return app.selectbox(key=key)
    if key in CHECKBOX_KEYS:
        return app.checkbox(key=key)
    if key in TEXT_KEYS:
        return app.text_input(key=key)
    return app.number_input(key=key)


def fabricate(
    store: ExperimentStore, *, rounds: int = 2, status: str = "completed", accuracy: float = 0.9,
    epsilon: float = 0.0, audit: dict | None = None, name: str = "", round_fields: dict | None = None, **config,
):  # fmt: skip
    """A finished (or running) experiment with `rounds` recorded rounds of 2 clients; ε grows linearly to `epsilon`;
    `round_fields` adds to every round (e.g. noise_multiplier, simulated_seconds)."""
    base = {"model": {"name": "mlp"}, "federation": {"num_clients": 2, "clients_per_round": 2, "rounds": 3}}
    overrides = [f"{key}={value}" for key, value in config.items()]
    config_dict = ExperimentConfig.from_dict(base).with_overrides(overrides).to_dict()
    experiment_id = store.create_experiment(config_dict, name=name)
    store.mark_running(experiment_id)  # this process: alive, so never marked interrupted
    store.set_label_counts(experiment_id, [[3, 1, 0], [0, 2, 5]])
    for number in range(1, rounds + 1):
        store.record_round(experiment_id, {
            "round": number, "accuracy": accuracy * number / rounds, "loss": 2.0 / number, "seconds": 1.0,
            "eval_seconds": 0.5, "bytes_up": 1_000, "bytes_down": 2_000, "epsilon": epsilon * number / rounds,
            "delta": 1e-5 if epsilon else 0.0, **(round_fields or {}),
            "clients": [{"id": c, "num_examples": 30, "steps": 3, "loss": 1.0 / number + c} for c in range(2)],
        })  # fmt: skip
    if audit is not None:
        store.set_audit(experiment_id, audit)
    if status != "running":
        store.finish(experiment_id, status, error="boom: out of memory" if status == "failed" else None,
                     final={"accuracy": accuracy, "epsilon": epsilon})  # fmt: skip
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


def test_scenario_widgets_sit_in_folded_groups_with_config_defaults(store):
    app = page()
    defaults = ExperimentConfig()

    groups = {expander.label: expander for expander in app.sidebar.expander}
    assert list(groups) == [
        "NGSS rubric scoring", "Your own images", "Aggregation strategy", "Selection & unreliable clients",
        "Personalization", "Attack", "Communication", "Secure aggregation", "Advanced", "Sweep a grid of settings",
    ]  # fmt: skip
    assert {w.key for w in groups["Secure aggregation"].checkbox} == {"secure_aggregation"}
    for key, (section, name) in SCENARIO_KEYS.items():
        default, shown = getattr(getattr(defaults, section), name), widget(app, key)
        assert shown.value == (pytest.approx(default) if isinstance(default, float) else default), key
        assert shown.help, key
    assert {w.key for w in groups["Aggregation strategy"].number_input} >= {"trim_fraction", "byzantine_clients"}
    assert {w.key for w in groups["Attack"].selectbox} == {"attack_behaviour", "exclusion"}
    assert {w.key for w in groups["Advanced"].selectbox} == {"client_optimizer", "runtime", "backend", "precision", "audit"}
    assert app.selectbox(key="client_optimizer").value == defaults.federation.client_optimizer
    precision = app.selectbox(key="precision")
    assert precision.value == "fp32" and precision.options == ["fp32", "bf16"]
    assert app.selectbox(key="strategy").options == ["fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam",
        "fedyogi", "scaffold", "fednova", "median", "trimmed_mean", "krum", "multi_krum", "bulyan",
        "adaptive_weighting", "qfedavg"]  # fmt: skip


def test_the_untouched_form_starts_the_default_config(store, no_workers):
    app = page()

    app.button(key="start").click().run()

    (experiment,) = store.list_experiments()
    assert experiment.config == ExperimentConfig().to_dict()  # no widget rounds or drops a default


def test_scenario_settings_reach_the_stored_config(store, no_workers):
    app = page()
    fill(app, {
        "strategy": "trimmed_mean", "trim_fraction": 0.1, "attack_fraction": 0.3, "attack_behaviour": "sign_flip",
        "compression": "topk", "topk_fraction": 0.05, "error_feedback": False, "dropout_probability": 0.3,
        "dropout_stage": "during", "client_holdout": 0.1, "personalization": "fedper",
    })  # fmt: skip

    app.button(key="start").click().run()

    (experiment,) = store.list_experiments()
    expected = (
        ExperimentConfig()
        .replace("federation", strategy="trimmed_mean", trim_fraction=0.1, dropout_probability=0.3,
                 dropout_stage="during", client_holdout=0.1, personalization="fedper")
        .replace("attack", fraction=0.3, behaviour="sign_flip")
        .replace("communication", compression="topk", topk_fraction=0.05, error_feedback=False)
    )  # fmt: skip
    assert ExperimentConfig.from_dict(experiment.config) == expected
    assert len(no_workers) == 1 and not app.sidebar.error


def test_exclusion_window_dgc_and_qffl_settings_reach_the_stored_config(store, no_workers):
    app = page()
    fill(app, {
        "strategy": "qfedavg", "qffl_q": 0.5, "qffl_lipschitz": 2.0, "exclusion": "flagged", "exclusion_flags": 2,
        "exclusion_window": 3, "compression": "topk", "topk_momentum": 0.5, "topk_warmup_rounds": 4,
    })  # fmt: skip

    app.button(key="start").click().run()

    (experiment,) = store.list_experiments()
    expected = (
        ExperimentConfig()
        .replace("federation", strategy="qfedavg", qffl_q=0.5, qffl_lipschitz=2.0, exclusion="flagged",
                 exclusion_flags=2, exclusion_window=3)
        .replace("communication", compression="topk", topk_momentum=0.5, topk_warmup_rounds=4)
    )  # fmt: skip
    assert ExperimentConfig.from_dict(experiment.config) == expected
    assert len(no_workers) == 1 and not app.sidebar.error


def test_async_settings_reach_the_stored_config(store, no_workers):
    app = page()
    fill(app, {"federation_mode": "async", "buffer_size": 3, "max_concurrency": 5, "staleness_exponent": 1.0})

    app.button(key="start").click().run()

    (experiment,) = store.list_experiments()
    expected = ExperimentConfig().replace("federation", mode="async", buffer_size=3, max_concurrency=5,
                                          staleness_exponent=1.0)  # fmt: skip
    assert ExperimentConfig.from_dict(experiment.config) == expected
    assert len(no_workers) == 1 and not app.sidebar.error


def test_more_flags_than_the_window_shows_the_error_and_starts_nothing(store, no_workers):
    app = page()
    fill(app, {"exclusion": "flagged", "exclusion_flags": 3, "exclusion_window": 2})

    app.button(key="start").click().run()

    assert store.list_experiments() == [] and no_workers == []
    assert any("**Flags k** (3) must be <= **Window m**" in error.value for error in app.sidebar.error)
    low, high = BOUNDS["federation.exclusion_window"]  # the range the help states comes from experiment_config
    assert f"Allowed: between {low} and {high:,}." in app.number_input(key="exclusion_window").help


def test_krum_with_too_many_byzantine_clients_shows_the_error_and_starts_nothing(store, no_workers):
    with pytest.raises(ValueError) as expected:  # 10 clients per round; krum with f = 4 needs 2f + 3 = 11
        ExperimentConfig().replace("federation", strategy="krum", byzantine_clients=4)
    app = page()
    fill(app, {"strategy": "krum", "byzantine_clients": 4})

    app.button(key="start").click().run()

    assert [error.value for error in app.sidebar.error] == [f"Invalid configuration: {labelled(str(expected.value))}"]
    assert "byzantine_clients" in str(expected.value) and "**Byzantine clients f**" in app.sidebar.error[0].value
    assert store.list_experiments() == [] and no_workers == []


def test_adaptive_clipping_checkbox_reaches_the_stored_config(store, no_workers):
    app = page()
    assert app.checkbox(key="adaptive_clipping").value is False
    fill(app, {"num_clients": 400, "clients_per_round": 100, "privacy_mode": "central"})
    app.checkbox(key="adaptive_clipping").check()
    app.number_input(key="target_quantile").set_value(0.7)

    app.button(key="start").click().run()

    (experiment,) = store.list_experiments()
    privacy = ExperimentConfig.from_dict(experiment.config).privacy
    assert (privacy.mode, privacy.adaptive_clipping, privacy.target_quantile) == ("central", True, 0.7)
    assert len(no_workers) == 1


def test_invalid_config_shows_the_error_and_writes_nothing(store, no_workers):
    app = page()
    fill(app, {"num_clients": 2, "clients_per_round": 5})

    app.button(key="start").click().run()

    assert [error.value for error in app.sidebar.error] == [  # named as the sidebar names them
        "Invalid configuration: **Per round** (5) must be <= **Clients** (2)"
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
    monkeypatch.setattr(workers, "launch_worker", lambda store, *experiment_ids: subprocess.Popen(failing_worker))
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


# -- the federation panel ---------------------------------------------------------------

PROFILES = [  # as client_population.ClientProfile.to_dict writes them; client 2 is the attacker
    {"id": c, "num_examples": 30, "speed": speed, "dropout_probability": 0.3, "bandwidth_mbps": 20.0,
     "latency_ms": 50.0, "malicious": c == 2}
    for c, speed in enumerate([1.0, 0.6, 1.4])
]  # fmt: skip
STATUSES = [["ok", "partial", "ok"], ["dropped", "lost", "ok"], ["ok", "late", "ok"]]  # [round][client]
SKIP_REASON = "1 update(s) arrived, fewer than federation.min_clients = 2"
PERSONALIZATION = {
    "method": "fedper",
    "clients": [{"client": c, "examples": 3, "global_accuracy": g, "personalized_accuracy": p}
                for c, (g, p) in enumerate([(0.5, 0.7), (0.6, 0.9), (0.55, 0.725)])],
    "mean_global_accuracy": 0.55,
    "mean_personalized_accuracy": 0.775,
}  # fmt: skip


def fabricate_federation(store: ExperimentStore) -> int:
    """A finished 3-client, 3-round run with stragglers, dropouts, an attacker, top-k uploads and FedPer."""
    config = ExperimentConfig.from_dict({
        "model": {"name": "mlp"},
        "federation": {"num_clients": 3, "clients_per_round": 3, "rounds": 3, "dropout_probability": 0.3,
                       "min_clients": 2, "speed_spread": 0.5, "client_holdout": 0.1, "personalization": "fedper"},
        "attack": {"fraction": 0.34, "behaviour": "sign_flip"},
        "communication": {"compression": "topk"},
    })  # fmt: skip
    experiment_id = store.create_experiment(config.to_dict(), name="unreliable")
    store.mark_running(experiment_id)
    store.set_label_counts(experiment_id, [[3, 1, 0], [0, 2, 5], [1, 1, 1]])
    store.set_client_profiles(experiment_id, PROFILES)
    for number, statuses in enumerate(STATUSES, start=1):
        clients = []
        for client, status in enumerate(statuses):
            trained, arrived = status not in ("dropped", "late"), status in ("ok", "partial")
            clients.append({
                "id": client, "num_examples": 30, "steps": 3 if trained else 0, "status": status,
                "loss": 1.0 / number + client if trained else 0.0, "malicious": client == 2,
                "bytes_up": 80 if arrived else 0, "bytes_down": 0 if status == "dropped" else 4_000,
            })  # fmt: skip
        store.record_round(experiment_id, {
            "round": number, "accuracy": 0.3 * number, "loss": 2.0 / number, "seconds": 1.0, "eval_seconds": 0.5,
            "bytes_up": sum(c["bytes_up"] for c in clients), "bytes_down": sum(c["bytes_down"] for c in clients),
            "skipped": SKIP_REASON if number == 2 else "", "simulated_seconds": 2.0 + number, "clients": clients,
        })  # fmt: skip
    store.set_personalization(experiment_id, PERSONALIZATION)
    store.finish(experiment_id, "completed", final={"accuracy": 0.9})
    return experiment_id


def test_run_view_shows_the_federation_as_set_up_and_what_happened(store):
    fabricate_federation(store)

    app = page()

    assert not app.exception
    assert "##### :material/hub: Federation" in [markdown.value for markdown in app.markdown]
    metrics = {metric.label: metric for metric in app.metric}
    assert metrics["Arrived"].value == "6/9"  # 3 + 1 + 2 of 3 selected per round
    assert "1 partial, 1 lost, 1 late, 1 dropped" in metrics["Arrived"].help
    assert metrics["Skipped"].value == "1 of 3"
    assert metrics["Malicious"].value == "1 of 3" and "sign_flip" in metrics["Malicious"].help
    assert metrics["Compression"].value == "50.0×"  # 6 arrivals: 6 × 4000 B dense, sent as 6 × 80 B
    assert metrics["Global model"].value == "55.00%"
    personalized = metrics["Personalized"]
    assert (personalized.value, personalized.delta) == ("77.50%", "+22.50 pp") and "fedper" in personalized.help
    skipped = app.dataframe[0].value
    assert skipped.values.tolist() == [[2, SKIP_REASON]]

    traces = chart_traces(app)
    assert len(traces) == 10  # the six charts, then speeds, status grid, upload, personalization
    _, _, client_loss, _, _, time_chart, speeds, status, upload, personalization = traces
    by_client = {trace["name"]: trace["x"] for trace in client_loss}
    assert by_client == {"client 0": [1, 3], "client 1": [1, 2], "client 2": [1, 2, 3]}  # no dropped, no late
    assert time_chart[-1]["name"] == "simulated (network, speeds)" and time_chart[-1]["y"] == [3.0, 4.0, 5.0]
    assert [(trace["name"], trace["y"]) for trace in speeds] == [("honest", [1.0, 0.6]), ("malicious", [1.4])]
    grid, attacker = status
    assert grid["customdata"] == [list(column) for column in zip(*STATUSES)]  # rows: clients, columns: rounds
    assert (attacker["x"], attacker["y"]) == ([1, 2, 3], ["client 2"] * 3)
    assert [trace["y"] for trace in upload] == [[240, 80, 160], [12_000, 4_000, 8_000]]  # arrived: 3, 1, 2
    assert [trace["y"] for trace in personalization] == [[0.5, 0.6, 0.55], [0.7, 0.9, 0.725]]


def test_failed_personalization_is_reported_in_the_federation_panel(store):
    experiment_id = fabricate(store)
    store.set_personalization(experiment_id, {"error": "RuntimeError: out of memory"})

    app = page()

    assert [warning.value for warning in app.warning] == ["Personalization failed: RuntimeError: out of memory"]
    assert len(app.get("plotly_chart")) == 6


def test_a_plain_run_has_no_federation_panel(store):
    experiment_id = fabricate(store)
    store.set_client_profiles(experiment_id, [{**profile, "speed": 1.0, "malicious": False} for profile in PROFILES])

    app = page()

    assert not any("Federation" in markdown.value for markdown in app.markdown)
    assert len(app.get("plotly_chart")) == 6 and not app.dataframe


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
    assert newest.id != original and no_workers == [(newest.id,)]
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
    differences = app.dataframe[0].value.set_index("Setting")
    assert differences.loc["Local epochs"].tolist() == ["1", "3"]  # the sidebar's label, not federation.local_epochs


ATTACKED = {"attack.fraction": 0.3, "attack.behaviour": '"sign_flip"', "federation.strategy": '"median"'}


def test_history_table_shows_strategy_attack_and_compression(store):
    fabricate(store)
    fabricate(store, **ATTACKED, **{"communication.compression": '"topk"', "communication.topk_fraction": 0.05})
    fabricate(store, **{"federation.strategy": '"trimmed_mean"', "communication.compression": '"qsgd"'})

    app = page(HISTORY)

    table = app.dataframe[0].value
    assert table[["Strategy", "Attack", "Compression"]].values.tolist() == [
        ["trimmed_mean (β=0.2)", "none", "qsgd 8-bit"],
        ["median", "30% sign_flip", "topk 5%"],
        ["fedavg", "none", "none"],
    ]


def test_compare_legend_tells_a_clean_run_from_an_attacked_one(store):
    clean, attacked = fabricate(store, name="base"), fabricate(store, name="base", **ATTACKED)
    app = page(COMPARE)

    app.multiselect(key="compare_ids").set_value([clean, attacked]).run()

    accuracy, loss = chart_traces(app)
    expected = [f"#{clean} · base · fedavg · no attack", f"#{attacked} · base · median · attack 30% sign_flip"]
    assert [trace["name"] for trace in accuracy] == [trace["name"] for trace in loss] == expected


# -- privacy: budget, audit, report, baseline, sweep -------------------------------------


LOCAL = {"privacy.mode": '"local"', "privacy.target_epsilon": 3.0, "privacy.max_epsilon": 4.0}
AUDIT = {  # as privacy_audit.audit_model returns it
    "auc": 0.52, "advantage": 0.04, "threshold": 0.3, "members": 100, "non_members": 100,
    "member_loss": 0.35, "non_member_loss": 0.37, "attack": "loss threshold (Yeom et al. 2018)",
}  # fmt: skip


def test_private_run_shows_epsilon_beside_accuracy_with_target_and_budget_lines(store):
    fabricate(store, rounds=2, status="running", epsilon=2.0, **LOCAL)

    app = page()

    traces = chart_traces(app)
    assert len(traces) == 7
    curve, target, budget = traces[1]  # second chart, beside accuracy
    assert curve["y"] == pytest.approx([1.0, 2.0])
    assert (target["name"], target["x"], target["y"]) == ("target ε = 3", [1, 3], [3.0, 3.0])  # to the planned round
    assert (budget["name"], budget["x"], budget["y"]) == ("budget ε = 4", [1, 3], [4.0, 4.0])


def test_private_run_shows_its_audit_and_the_most_any_attack_could_achieve(store):
    # e^ε = 3 and δ = 1e-5: no attack can beat TPR − FPR = (3 − 1 + 2e-5) / (3 + 1) ≈ 0.500
    fabricate(store, epsilon=math.log(3), audit=AUDIT, **{"privacy.mode": '"central"'})

    app = page()

    metrics = {metric.label: metric for metric in app.metric}
    assert metrics["Attack AUC"].value == "0.520" and "100 trained-on and 100 held-out" in metrics["Attack AUC"].help
    assert metrics["Attack advantage"].value == "0.040"
    assert metrics["Attack advantage"].help.endswith("allows any attack at most 0.500.")


def test_failed_audit_is_reported_instead_of_metrics(store):
    fabricate(store, epsilon=1.0, audit={"error": "ValueError: no held-out data"}, **LOCAL)

    app = page()

    assert "Privacy audit failed: ValueError: no held-out data" in [caption.value for caption in app.caption]
    assert not [metric for metric in app.metric if metric.label.startswith("Attack")]


def test_private_run_offers_its_privacy_report(store):
    fabricate(store, epsilon=1.0, audit=AUDIT, **LOCAL)

    app = page()

    assert not app.exception
    labels = [button.proto.label for button in app.get("download_button")]
    assert labels == ["Privacy report (.md)"]


def test_history_plots_accuracy_and_attack_auc_against_epsilon_of_private_runs(store):
    local = fabricate(store, accuracy=0.7, epsilon=1.0, audit=AUDIT, **LOCAL)
    central = fabricate(store, accuracy=0.8, epsilon=4.0, **{"privacy.mode": '"central"'})  # not audited
    fabricate(store, accuracy=0.6, epsilon=2.0, status="failed", **LOCAL)  # no result: not plotted
    fabricate(store, accuracy=0.95)  # no privacy: not plotted, selected in the history

    app = page(HISTORY)

    utility, audit = chart_traces(app)[:2]
    by_mode = {trace["name"]: trace for trace in utility}
    assert (by_mode["local DP"]["x"], by_mode["local DP"]["y"]) == ([1.0], [0.7])
    assert (by_mode["central DP"]["x"], by_mode["central DP"]["y"]) == ([4.0], [0.8])
    assert (by_mode["local DP"]["text"], by_mode["central DP"]["text"]) == ([f"#{local}"], [f"#{central}"])
    assert [(trace["name"], trace["x"], trace["y"]) for trace in audit] == [("local DP", [1.0], [0.52])]
    table = app.dataframe[0].value
    assert table["Privacy"].tolist() == ["none", "local", "central", "local"]
    assert table["Final ε"].tolist()[1:] == [2.0, 4.0, 1.0]
    assert "baseline" not in [button.key for button in app.button]  # the selected run has no privacy to remove


def test_history_without_private_runs_has_no_privacy_chart(store):
    fabricate(store)

    app = page(HISTORY)

    assert len(chart_traces(app)) == 6  # only the selected run's charts


def test_run_without_privacy_starts_the_same_config_without_privacy_and_compares(store, no_workers):
    private = fabricate(store, epsilon=2.0, name="dp", **{**LOCAL, "system.seed": 7})
    app = page(HISTORY)

    app.button(key="baseline").click().run()

    baseline = store.list_experiments()[0]
    assert baseline.id != private and no_workers == [(baseline.id,)]
    original = store.get_experiment(private).config
    assert baseline.config["privacy"]["mode"] == "none" and baseline.config["system"]["seed"] == 7
    assert {**baseline.config, "privacy": {**baseline.config["privacy"], "mode": "local"}} == original
    assert baseline.name == "dp without privacy"
    assert app.session_state["view"] == COMPARE and not app.exception
    assert app.multiselect(key="compare_ids").value == [private, baseline.id]
    accuracy, _, epsilon = chart_traces(app)  # the baseline has no rounds yet; ε only for the private run
    assert len(accuracy) == 1 and epsilon[0]["y"] == pytest.approx([1.0, 2.0])


def test_sweep_stores_one_experiment_per_target_epsilon_for_one_worker(store, no_workers):
    app = page()
    fill(app, {**TINY, "privacy_mode": "central", "max_epsilon": 10.0})
    app.text_input(key="sweep_epsilons").set_value(" 0.5, 2,8 ")

    app.button(key="sweep").click().run()

    experiments = store.list_experiments()[::-1]  # in the order they run
    assert [e.config["privacy"]["target_epsilon"] for e in experiments] == [0.5, 2.0, 8.0]
    assert {(e.config["privacy"]["mode"], e.config["privacy"]["max_epsilon"], e.config["model"]["name"])
            for e in experiments} == {("central", 10.0, "mlp")}  # fmt: skip
    assert [e.name for e in experiments] == ["sweep · target ε 0.5", "sweep · target ε 2", "sweep · target ε 8"]
    assert no_workers == [tuple(e.id for e in experiments)]
    assert not app.exception and app.session_state["live_id"] == experiments[0].id


@pytest.mark.parametrize(
    ("text", "settings", "message"),
    [
        ("1, two", {}, "'two' is not a number; every target ε must be a number > 0"),
        ("1, -2", {}, "every target ε must be a number > 0, got -2"),
        ("0", {}, "every target ε must be a number > 0, got 0"),
        (" , ", {}, "enter target ε values separated by commas, e.g. 0.5, 1, 2, 4"),
        ("1, 2", {"privacy_mode": "none"}, "a target-ε sweep needs privacy mode local or central (set Privacy above)"),
        ("2, 8", {"max_epsilon": 4.0}, "**Budget ε** (4.0) is below **Target ε** (8.0)"),
    ],
)
def test_invalid_sweep_shows_the_error_and_writes_nothing(store, no_workers, text, settings, message):
    app = page()
    fill(app, {"privacy_mode": "local", **settings})
    app.text_input(key="sweep_epsilons").set_value(text)

    app.button(key="sweep").click().run()

    assert [error.value for error in app.sidebar.error] == [f"Invalid sweep: {message}"]
    assert store.list_experiments() == [] and no_workers == []


def test_worker_runs_its_experiments_in_order_each_with_its_own_status(store):
    """No training needed: a stored config that no longer validates fails, a run stopped while queued never starts."""
    broken = ExperimentConfig().to_dict()
    broken["federation"]["rounds"] = 0
    first, stopped = store.create_experiment(broken), store.create_experiment(ExperimentConfig().to_dict())
    store.request_stop(stopped)

    code = cli.main(["worker", str(first), "999", str(stopped), "--db", store.url])

    assert code == cli.EXIT_FAILED  # the last failure: experiment 999 does not exist; the others still ran
    failed = store.get_experiment(first)
    assert failed.status == "failed" and failed.error.startswith("invalid stored config: federation.rounds")
    later = store.get_experiment(stopped)
    assert (later.status, later.stop_reason, later.rounds_done) == ("stopped", "stopped before it started", 0)
    assert failed.finished_at <= later.finished_at


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


def test_the_sidebar_imports_neither_pandas_nor_alembic():
    """main.py draws the sidebar before it imports the tabs: what the sidebar needs must not pull in
    pandas (~0.4 s) or Alembic (~0.2 s; a store at head opens without it), or Start shows later."""
    script = "import sys, app_pages.sidebar; print(sorted(m for m in ('pandas', 'alembic') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_secure_aggregation_runs_show_their_protocol_cost_and_are_marked(store):
    stats = {
        "threshold": 2, "participants": 2, "survivors": 2, "dropouts_recovered": 0, "bytes_keys": 512,
        "bytes_shares": 2_048, "bytes_masked": 3_200_000, "bytes_unmasking": 1_024, "crypto_seconds": 0.0125,
        "mask_seconds": 0.25, "server_seconds": 0.1,
    }  # fmt: skip
    experiment_id = store.create_experiment(
        ExperimentConfig.from_dict({"model": {"name": "mlp"}, "federation": {"num_clients": 2, "clients_per_round": 2,
                                    "rounds": 1, "secure_aggregation": True}}).to_dict()
    )  # fmt: skip
    store.mark_running(experiment_id)
    store.record_round(experiment_id, {
        "round": 1, "accuracy": 0.5, "loss": 1.0, "seconds": 1.0, "eval_seconds": 0.5, "bytes_up": 10,
        "bytes_down": 10, "secure_aggregation": stats,
        "clients": [{"id": c, "num_examples": 30, "steps": 3, "loss": 1.0} for c in range(2)],
    })  # fmt: skip
    store.finish(experiment_id, "completed", final={"accuracy": 0.5})

    app = page()

    assert not app.exception
    (table,) = [frame.value for frame in app.dataframe if "Masked vectors" in frame.value.columns]
    assert table["Clients (t)"].tolist() == ["2/2 (t=2)"] and table["Crypto s"].tolist() == [0.013]
    assert strategy_text(ExperimentConfig.from_dict({"federation": {"secure_aggregation": True}}).to_dict()) == (
        "fedavg + secure aggregation"
    )


# -- NGSS rubric scoring: sidebar, run view, centralized baseline, Score tab ----------------------------

SCORE = ":material/grading: Score"
NGSS_SETTINGS = {
    "dataset": "ngss", "partition": "natural", "model": "tinyllama-lora", "num_clients": 9, "clients_per_round": 9,
    "ngss_task": "anna_vs_carla", "lora_rank": 4, "lora_alpha": 16.0, "max_length": 64, "lora_targets": "q_proj",
    "pooling": "mean",
}  # fmt: skip


def test_ngss_group_has_the_task_titles_text_model_options_and_a_csv_upload(store):
    from ngss.data import TASKS

    app = page()

    group = {expander.label: expander for expander in app.sidebar.expander}["NGSS rubric scoring"]
    assert {w.key for w in group.selectbox} == {"ngss_task", "pooling"}
    assert {w.key for w in group.checkbox} == {"pretrained", "bucket_by_length"}
    assert {w.key for w in group.number_input} == {"lora_rank", "lora_alpha", "lora_dropout", "max_length", "lora_layers"}
    assert app.selectbox(key="ngss_task").options == [task.title for task in TASKS.values()]
    assert app.file_uploader(key="csv_upload").allowed_type == [".csv"]
    assert any("synthetic responses — not real student data" in c.value for c in group.caption)
    defaults = ExperimentConfig()
    for key, (section, name) in NGSS_KEYS.items():
        assert widget(app, key).value == getattr(getattr(defaults, section), name), key
    assert "tinyllama-lora" in app.selectbox(key="model").help and "mnist" in app.selectbox(key="dataset").help


def test_ngss_settings_with_pretrained_off_start_that_experiment(store, no_workers):
    app = page()
    fill(app, NGSS_SETTINGS)
    app.checkbox(key="pretrained").uncheck()

    app.button(key="start").click().run()

    (experiment,) = store.list_experiments()
    expected = ExperimentConfig.from_dict({
        "data": {"dataset": "ngss", "partition": "natural", "ngss_task": "anna_vs_carla"},
        "model": {"name": "tinyllama-lora", "pretrained": False, "lora_rank": 4, "lora_alpha": 16.0, "max_length": 64,
                  "lora_targets": "q_proj", "pooling": "mean"},
        "federation": {"num_clients": 9, "clients_per_round": 9},
    })  # fmt: skip
    assert ExperimentConfig.from_dict(experiment.config) == expected
    assert no_workers == [(experiment.id,)] and not app.sidebar.error and not app.exception


def lab_files(tmp_path: Path, task: str = "anna_vs_carla") -> tuple[bytes, bytes]:
    """A two-school dataset in the lab's CSV layout: (train bytes, test bytes)."""
    from ngss import data as ngss_data

    generated = ngss_data.generate(task, seed=1)
    pick = lambda split, n: ngss_data.NgssSplit(split.texts[:n], split.labels[:n], split.schools[:n] % 2)  # noqa: E731
    two = ngss_data.NgssDataset(task=task, label_names=generated.label_names, source="imported",
                                school_names=["North", "South"], train=pick(generated.train, 40),
                                test=pick(generated.test, 10))  # fmt: skip
    train, test = ngss_data.write_csv(two, tmp_path / "written")
    return train.read_bytes(), test.read_bytes()


def test_a_valid_csv_upload_is_saved_under_its_digest_and_started(store, no_workers, tmp_path):
    import hashlib

    train, test = lab_files(tmp_path)
    app = page()
    fill(app, {"dataset": "csv", "partition": "natural", "model": "tinyllama-lora", "num_clients": 2,
               "clients_per_round": 2, "data_dir": str(tmp_path / "data")})  # fmt: skip
    app.file_uploader(key="csv_upload").set_value(
        [("anna_vs_carla_train.csv", train, "text/csv"), ("anna_vs_carla_test.csv", test, "text/csv")]
    )

    app.button(key="start").click().run()

    assert not app.sidebar.error and not app.exception
    (experiment,) = store.list_experiments()
    digest = hashlib.sha256()
    for name, data in (("anna_vs_carla_train.csv", train), ("anna_vs_carla_test.csv", test)):
        digest.update(f"{name}\0{len(data)}\0".encode() + data)
    folder = tmp_path / "data" / "uploads" / digest.hexdigest()[:16]
    assert experiment.config["data"]["csv_path"] == str(folder / "anna_vs_carla_train.csv")
    assert (folder / "anna_vs_carla_train.csv").read_bytes() == train
    assert (folder / "anna_vs_carla_test.csv").read_bytes() == test
    assert sorted(p.name for p in (tmp_path / "data" / "uploads").iterdir()) == [folder.name]  # nothing partial
    assert no_workers == [(experiment.id,)]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([("lab_train.csv", b"text,E1\nhello,2\n")],
         "Invalid CSV: lab_train.csv: line 2, column E1: '2' is not 0, 1 or -1 (-1 = unscored)"),
        ([("lab_train.csv", b"text,E1\nhello,1\n"), ("other_test.csv", b"text,E1\nbye,0\n")],
         "Invalid CSV: other_test.csv: the test file of lab_train.csv must be named lab_test.csv"),
        ([("responses.csv", b"text,E1\nhello,1\n")],
         "Invalid CSV: responses.csv: name the files {task}_train.csv and {task}_test.csv (letters, digits, _ . -)"),
        ([], "Dataset csv needs the lab's files: upload {task}_train.csv (and optionally its _test.csv) under NGSS "
             "rubric scoring."),
    ],
)  # fmt: skip
def test_a_bad_csv_upload_shows_its_error_and_creates_nothing(store, no_workers, tmp_path, files, message):
    app = page()
    fill(app, {"dataset": "csv", "model": "tinyllama-lora", "data_dir": str(tmp_path / "data")})
    if files:
        app.file_uploader(key="csv_upload").set_value([(name, data, "text/csv") for name, data in files])

    app.button(key="start").click().run()

    assert [error.value for error in app.sidebar.error] == [message]
    assert store.list_experiments() == [] and no_workers == [] and not (tmp_path / "data").exists()


def test_the_same_upload_is_saved_once_and_a_test_file_needs_its_train_file(tmp_path):
    from app_pages.csv_upload import check_upload
    from ngss import data as ngss_data

    train, test = lab_files(tmp_path)
    upload = check_upload([("anna_vs_carla_test.csv", test), ("anna_vs_carla_train.csv", train)])

    first, second = upload.save(tmp_path / "data"), upload.save(tmp_path / "data")

    assert first == second == upload.train_path(tmp_path / "data") and first.read_bytes() == train
    assert len(list((tmp_path / "data" / "uploads").iterdir())) == 1
    saved, given = ngss_data.load_csv(first), ngss_data.load_csv(train, test)
    assert saved.test.texts == given.test.texts and len(saved.test) == 10  # the saved test file is found beside
    with pytest.raises(ngss_data.CsvImportError, match="a test file needs its anna_vs_carla_train.csv"):
        check_upload([("anna_vs_carla_test.csv", test)])


def test_an_invalid_config_with_a_valid_upload_writes_no_file(store, no_workers, tmp_path):
    train, _ = lab_files(tmp_path)
    app = page()
    fill(app, {"dataset": "csv", "model": "cnn", "data_dir": str(tmp_path / "data")})  # cnn cannot read text
    app.file_uploader(key="csv_upload").set_value(("anna_vs_carla_train.csv", train, "text/csv"))

    app.button(key="start").click().run()

    assert app.sidebar.error[0].value.startswith("Invalid configuration: **Dataset** = 'csv' is rubric scoring")
    assert store.list_experiments() == [] and not (tmp_path / "data").exists()


def rubric_round(predictions: list[list[int]], labels: list[list[int]], schools: list[int]) -> dict:
    from ngss import data as ngss_data

    return ngss_data.rubric_metrics(np.array(predictions), np.array(labels), np.array(schools), ["North", "South"])


LABELS = [[1, 0, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0]]  # four test responses, three elements
SCHOOLS = [0, 0, 1, 1]
ROUND_PREDICTIONS = [
    [[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]],
    [[1, 0, 1], [1, 1, 0], [0, 0, 1], [1, 0, 0]],  # round 2: only response 3's E3 is wrong
]
NGSS_CONFIG = {
    "data": {"dataset": "ngss", "partition": "natural"},
    "model": {"name": "tinyllama-lora", "pretrained": False, "max_length": 32},
    "federation": {"num_clients": 9, "clients_per_round": 9, "rounds": 2},
    "system": {"seed": 5},
}  # fmt: skip


def fabricate_ngss(store: ExperimentStore, *, name: str = "balloons", federation: dict | None = None, **data) -> int:
    """A finished 2-round NGSS run with rubric metrics per round and per school (2 schools), 9 clients of 66 kB."""
    config = ExperimentConfig.from_dict({
        **NGSS_CONFIG, "data": {**NGSS_CONFIG["data"], **data},
        "federation": {**NGSS_CONFIG["federation"], **(federation or {})},
    })  # fmt: skip
    experiment_id = store.create_experiment(config.to_dict(), name=name)
    store.mark_running(experiment_id)
    source = "imported" if config.data.dataset == "csv" else "synthetic"
    info = {"source": source, "task": "gas_filled_balloons", "labels": ["E1", "E2", "E3"],
            "schools": ["North", "South"], "train_responses": 958, "test_responses": 4, "max_tokens": 32}  # fmt: skip
    store.set_dataset_info(experiment_id, info | ({"csv_path": config.data.csv_path} if source == "imported" else {}))
    update = 4 * (16_384 + 64 * 3)  # bytes of LoRA + head
    for number, predictions in enumerate(ROUND_PREDICTIONS, start=1):
        metrics = rubric_round(predictions, LABELS, SCHOOLS)
        store.record_round(experiment_id, {
            "round": number, "accuracy": metrics["per_label_accuracy"], "loss": 0.7 / number, "seconds": 2.0,
            "eval_seconds": 0.5, "bytes_up": 9 * update, "bytes_down": 9 * update, "metrics": metrics,
            "clients": [{"id": c, "num_examples": 20, "steps": 2, "loss": 0.6, "bytes_up": update,
                         "bytes_down": update} for c in range(9)],
        })  # fmt: skip
    store.finish(experiment_id, "completed", final={"accuracy": metrics["per_label_accuracy"], "loss": 0.35})
    return experiment_id


def test_ngss_run_view_shows_rubric_metrics_schools_and_the_synthetic_badge(store):
    fabricate_ngss(store)

    app = page()

    assert not app.exception
    assert ":orange-badge[:material/science: Synthetic data]" in [markdown.value for markdown in app.markdown]
    metrics = {metric.label: metric for metric in app.metric}
    # round 2: 11 of 12 entries right (4/4, 4/4, 3/4 per label); all rows but one; 5 true positives and one false:
    # micro-F1 2·5 / (2·5 + 1); the total score is one point off for one of four responses
    assert (metrics["Per-label accuracy"].value, metrics["Per-label accuracy"].delta) == ("91.67%", "+16.67 pp")
    assert (metrics["Exact match"].value, metrics["Exact match"].delta) == ("75.00%", "+50.00 pp")
    assert metrics["Micro-F1"].value == f"{10 / 11:.3f}" and metrics["Score MAE"].value == "0.250"
    assert "Accuracy" not in metrics and "16,576 values" in metrics["Data exchanged"].help
    assert "TinyLLama-v0" in metrics["Data exchanged"].help
    (schools,) = [frame.value for frame in app.dataframe if "School" in frame.value.columns]
    assert schools["School"].tolist() == ["North", "South"] and schools["Responses"].tolist() == [2, 2]
    assert schools["Exact match"].tolist() == [1.0, 0.5] and schools["Per-label accuracy"].tolist()[0] == 1.0
    traces = chart_traces(app)
    assert len(traces) == 8  # the six charts (rubric metrics first), the per-school heatmap, per element
    per_label, exact = traces[0][:2]
    assert per_label["y"] == pytest.approx([0.75, 11 / 12]) and exact["y"] == pytest.approx([0.25, 0.75])
    heatmap, (accuracy, f1) = traces[6][0], traces[7]
    assert heatmap["y"] == ["North", "South"] and accuracy["x"] == ["E1", "E2", "E3"]
    assert accuracy["y"] == pytest.approx([1.0, 1.0, 0.75]) and f1["y"] == pytest.approx([1.0, 1.0, 2 / 3])


def test_an_imported_run_names_its_file_and_history_says_what_data_each_run_used(store):
    fabricate(store)
    fabricate_ngss(store, name="lab", dataset="csv", csv_path="/lab/uploads/ab12/gas_filled_balloons_train.csv")
    fabricate_ngss(store)

    app = page(HISTORY)

    assert app.dataframe[0].value["Data"].tolist() == [
        "NGSS Gas Filled Balloons (synthetic)", "NGSS Gas Filled Balloons (imported)", "MNIST",
    ]  # fmt: skip
    app.selectbox(key="history_selected").set_value(app.dataframe[0].value["ID"][1]).run()
    badges = [markdown.value for markdown in app.markdown if "badge" in markdown.value]
    assert badges == [":blue-badge[:material/upload_file: Imported: gas_filled_balloons_train.csv]"]


def test_centralized_baseline_pools_the_data_in_one_client_and_compares(store, no_workers):
    federated = fabricate_ngss(store, name="balloons")
    app = page(HISTORY)
    assert "baseline" not in [button.key for button in app.button]  # no privacy to remove

    app.button(key="centralized").click().run()

    baseline = store.list_experiments()[0]
    assert no_workers == [(baseline.id,)] and baseline.name == "balloons · centralized"
    original = store.get_experiment(federated).config
    federation = {**original["federation"], "num_clients": 1, "clients_per_round": 1, "strategy": "fedavg"}
    assert baseline.config == {**original, "data": {**original["data"], "partition": "iid"}, "federation": federation}
    assert app.session_state["view"] == COMPARE and not app.exception
    assert "learning rate 0.05)" in app.success[0].value  # SGD: the run's own rate
    assert app.multiselect(key="compare_ids").value == [federated, baseline.id]
    accuracy, _, exact_match, micro_f1 = chart_traces(app)  # the baseline has no rounds yet
    assert exact_match[0]["y"] == pytest.approx([0.25, 0.75]) and len(micro_f1) == 1


def test_an_adamw_runs_centralized_baseline_starts_at_a_capped_rate_the_user_can_change(store, no_workers):
    federated = fabricate_ngss(store, name="recipe", federation={"client_optimizer": "adamw", "learning_rate": 0.003})
    app = page(HISTORY)
    rate = app.number_input(key=f"centralized_lr_{federated}")
    assert rate.value == pytest.approx(0.001)  # pooled AdamW diverged at the schools' 0.003

    rate.set_value(0.0005).run()
    app.button(key="centralized").click().run()

    baseline = store.list_experiments()[0]
    assert baseline.config["federation"]["learning_rate"] == pytest.approx(0.0005)
    assert baseline.config["federation"]["client_optimizer"] == "adamw" and not app.exception


def test_score_tab_without_stored_weights_says_how_to_get_them(store):
    fabricate_ngss(store)

    app = page(SCORE)

    assert not app.exception and app.info[0].value.startswith("No NGSS run with a stored model yet")


def test_score_tab_scores_pasted_and_uploaded_responses_with_the_stored_weights(store):
    import torch

    from engine.workloads import build_model, score_responses
    from model import flatten, get_parameters
    from ngss.data import TASKS

    experiment_id = fabricate_ngss(store)
    config = ExperimentConfig.from_dict(store.get_experiment(experiment_id).config)
    trained = flatten(get_parameters(build_model(config, 3, seed=config.system.seed)))  # the right size, seeded
    trained = trained + 0.05 * torch.randn(trained.shape, generator=torch.Generator().manual_seed(0))
    store.save_weights(experiment_id, trained.numpy().astype("<f4").tobytes(), trained.numel())
    texts = ["Gases A and D are the same, both flammable with the same density.", "idk", "B and C differ"]
    expected = score_responses(config, trained, texts)
    app = page(SCORE)
    elements = app.dataframe[0].value
    assert elements.values.tolist() == [[e.label, e.meaning] for e in TASKS["gas_filled_balloons"].elements]

    app.text_area(key="score_text").set_value(f"{texts[0]}\n\n  {texts[1]}  \n")
    app.file_uploader(key="score_csv").set_value(("more.csv", f"id,Response\n7,{texts[2]}\n".encode(), "text/csv"))
    app.button(key="score_submit").click().run()

    assert not app.exception and not app.error
    scores = app.dataframe[1].value
    assert scores["Response"].tolist() == texts
    probabilities = scores[[f"E{k} probability" for k in (1, 2, 3)]].to_numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-6)
    earned = (expected >= 0.5).astype(int)
    assert scores[["E1", "E2", "E3"]].to_numpy().tolist() == earned.tolist()
    assert scores["Total score"].tolist() == earned.sum(axis=1).tolist()
    (download,) = [button for button in app.get("download_button") if button.proto.label == "Scores CSV"]
    assert app.markdown[0].value == ":orange-badge[:material/science: Synthetic data]"


# -- resume --------------------------------------------------------------------------


def test_an_interrupted_run_with_a_checkpoint_offers_resume_and_resumes_it(store, no_workers):
    older = fabricate(store, rounds=2, status="interrupted")  # no checkpoint (e.g. from before checkpoints)
    experiment_id = fabricate(store, rounds=1, status="running")
    store.record_round(experiment_id, {
        "round": 2, "accuracy": 0.5, "loss": 1.0, "seconds": 1.0, "bytes_up": 0, "bytes_down": 0, "clients": [],
    }, checkpoint=b"the state after round 2")  # fmt: skip
    store.finish(experiment_id, "interrupted", error="the worker process ended without finishing the run")
    app = page()
    app.session_state["live_id"] = older
    app.run()
    assert "live-resume" not in [button.key for button in app.button]
    app.session_state["live_id"] = experiment_id
    app.run()
    assert app.warning[0].value.startswith("Interrupted: the worker process ended")

    app.button(key="live-resume").click().run()

    assert no_workers == [(experiment_id,)]
    resumed = store.get_experiment(experiment_id)
    assert (resumed.status, resumed.error, resumed.rounds_done) == ("queued", None, 2)
    assert not app.exception and not app.error


def test_the_scoring_recipe_button_sets_the_measured_recipe_and_starts_it(store, no_workers):
    from app_pages.config_fields import NGSS_RECIPE

    app = AppTest.from_file(str(REPO / "main.py"), default_timeout=30)
    # Settings the form holds (here from the URL, as after a reload; in the browser also typed, not yet started):
    # the recipe sets only its own fields. A value set but never submitted is not sent by AppTest at all.
    from ngss.data import TASKS

    app.query_params.update({"ngss_task": TASKS["layers_in_test_tube"].title, "lora_rank": "4"})  # as shown
    app.run()
    assert (widget(app, "ngss_task").value, widget(app, "lora_rank").value) == ("layers_in_test_tube", 4)

    app.button(key="ngss_recipe").click().run()

    assert {key: widget(app, key).value for key, _ in NGSS_RECIPE} == dict(NGSS_RECIPE)
    assert not app.warning and not app.exception
    app.button(key="start").click().run()
    (experiment,) = store.list_experiments()
    expected = ExperimentConfig.from_dict({
        "data": {"dataset": "ngss", "partition": "natural", "ngss_task": "layers_in_test_tube"},
        "model": {"name": "minilm-lora", "lora_rank": 4,  # what the recipe does not name stays as it was
                  "lora_layers": 2, "lora_targets": "query,key,value"},
        "federation": {"num_clients": 9, "clients_per_round": 9, "rounds": 10, "local_epochs": 3, "batch_size": 4,
                       "learning_rate": 0.003, "client_optimizer": "adamw", "bucket_by_length": True},
    })  # fmt: skip
    assert ExperimentConfig.from_dict(experiment.config) == expected
    assert no_workers == [(experiment.id,)] and not app.sidebar.error


# -- issue 17: no surprises in the sidebar, honest privacy numbers, legible views ----------------


def chart_layouts(app: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec)["layout"] for chart in app.get("plotly_chart")]


def test_the_scoring_recipe_is_a_button_outside_the_form_so_enter_cannot_press_it(store):
    app = page()

    recipe, start = app.button(key="ngss_recipe"), app.button(key="start")

    assert not recipe.proto.is_form_submitter and start.proto.is_form_submitter
    assert recipe.proto.form_id == "" and start.proto.form_id == "experiment_form"


def test_out_of_range_fields_block_start_with_each_problem_by_its_sidebar_label(store, no_workers):
    app = page()
    fill(app, {"num_clients": 0, "learning_rate": -0.1, "delta": 1.0})

    app.button(key="start").click().run()

    (error,) = app.sidebar.error
    assert error.value == (
        "Cannot start: fix these fields:\n"
        "- **Clients** must be between 1 and 100,000, got 0\n"
        "- **Learning rate** must be between 1e-08 and 100, got -0.1\n"
        "- **δ** must be between 1e-12 and 0.5, got 1"
    )
    assert store.list_experiments() == [] and no_workers == []


def test_a_hollow_delta_warns_at_start_and_a_second_press_starts_it(store, no_workers):
    app = page()
    fill(app, {**TINY, "privacy_mode": "central", "num_clients": 10, "clients_per_round": 5, "delta": 0.2})

    app.button(key="start").click().run()

    (warning,) = app.sidebar.warning
    assert warning.value.startswith("δ = 0.2 is not below 1/N = 0.1 (N = 10 clients)")
    assert warning.value.endswith("Press **Start** again to run with this δ anyway.")
    assert store.list_experiments() == [] and no_workers == []
    app.button(key="start").click().run()
    (experiment,) = store.list_experiments()
    assert experiment.config["privacy"]["delta"] == 0.2 and len(no_workers) == 1


def test_a_run_with_delta_one_half_is_flagged_in_its_view(store):
    fabricate(store, epsilon=1.0, **{"privacy.mode": '"central"', "privacy.delta": 0.5})

    app = page()

    assert any(w.value.startswith("δ = 0.5 promises nothing") for w in app.warning)


def test_the_epsilon_card_shows_three_decimals_and_sigma_clip_and_accountant(store):
    fabricate(store, epsilon=2.995, round_fields={"noise_multiplier": 1.1, "max_grad_norm": 0.5,
                                                  "accountant": "prv"}, **LOCAL)  # fmt: skip

    app = page()

    (card,) = [metric for metric in app.metric if metric.label.startswith("ε")]
    assert card.value == "2.995"  # not "3": just under a target ε of 3
    assert "local DP · σ 1.1 · C 0.5 · prv" in [caption.value for caption in app.caption]


def test_the_attack_advantage_shows_what_chance_alone_reaches(store):
    fabricate(store, epsilon=1.0, audit=AUDIT, **LOCAL)

    app = page()

    advantage = {metric.label: metric for metric in app.metric}["Attack advantage"]
    # one-sided KS at 95%, 100 members and 100 non-members: sqrt(ln 20 · 200 / (2 · 100 · 100)) = 0.173
    assert advantage.delta == "chance < 0.173"


def test_the_csv_export_leaves_epsilon_and_delta_empty_without_privacy(store):
    public, private = fabricate(store), fabricate(store, epsilon=2.0, **LOCAL)
    experiments = [store.get_experiment(public), store.get_experiment(private)]

    text = rounds_csv(store.rounds_frame([public, private]), experiments)

    frame = pd.read_csv(io.StringIO(text))
    by_run = {eid: rows for eid, rows in frame.groupby("experiment_id")}
    assert by_run[public]["epsilon"].isna().all() and by_run[public]["delta"].isna().all()
    assert by_run[private]["epsilon"].tolist() == [1.0, 2.0] and by_run[private]["delta"].tolist() == [1e-5, 1e-5]
    assert by_run[public]["accuracy"].tolist() == [0.45, 0.9]


def test_the_privacy_utility_chart_tells_runs_of_different_delta_apart(store):
    fabricate(store, accuracy=0.7, epsilon=1.0, **LOCAL)
    fabricate(store, accuracy=0.8, epsilon=1.0, **LOCAL, **{"privacy.delta": 1e-3})

    app = page(HISTORY)

    utility = chart_traces(app)[0]
    assert sorted(trace["name"] for trace in utility) == ["local DP, δ = 1e-03", "local DP, δ = 1e-05"]
    assert all("δ %{customdata[1]" in trace["hovertemplate"] for trace in utility)


def test_no_simulated_time_without_a_network_and_a_line_with_one(store):
    fabricate(store, round_fields={"simulated_seconds": 2.0})
    app = page()
    assert [trace["name"] for trace in chart_traces(app)[-1]] == ["training", "evaluation"]

    fabricate(store, round_fields={"simulated_seconds": 2.0}, **{"communication.latency_ms": 200.0})
    app = page()
    assert [trace["name"] for trace in chart_traces(app)[-1]][-1] == "simulated (network, speeds)"


def test_history_shows_final_accuracy_and_epsilon_among_the_first_columns(store):
    fabricate(store, epsilon=1.0, **LOCAL)

    app = page(HISTORY)

    columns = list(app.dataframe[0].value.columns)
    assert columns[:5] == ["ID", "Name", "Status", "Final accuracy", "Final ε"]


def test_compare_keeps_colours_per_run_and_gives_the_epsilon_chart_a_legend(store):
    public, private = fabricate(store), fabricate(store, epsilon=2.0, **LOCAL)
    app = page(COMPARE)

    app.multiselect(key="compare_ids").set_value([private]).run()
    alone = chart_traces(app)[0][0]["line"]["color"]
    app.multiselect(key="compare_ids").set_value([public, private]).run()

    accuracy = chart_traces(app)[0]
    assert accuracy[1]["line"]["color"] == alone  # adding a run does not repaint the others
    assert accuracy[1]["name"] == f"#{private} · local DP, δ = 1e-05"  # and says the δ its ε is at
    epsilon = chart_layouts(app)[2]
    assert epsilon["title"]["text"] == "Privacy budget spent (ε)" and epsilon["showlegend"] is True
    differences = app.dataframe[0].value.set_index("Setting")
    assert "Privacy" in differences.index and "privacy.mode" not in differences.index


def test_ngss_clients_are_named_by_school_and_labels_by_rubric_element(store):
    experiment_id = fabricate_ngss(store)
    schools = [f"School {letter}" for letter in "ABCDEFGHI"]
    info = store.get_experiment(experiment_id).dataset_info
    store.set_dataset_info(experiment_id, info | {"schools": schools})
    store.set_label_counts(experiment_id, [[1, 2, 3]] * 9)

    app = page()

    traces = chart_traces(app)
    assert [trace["name"] for trace in traces[2]] == schools  # per-client loss
    (heatmap,) = traces[3]
    assert heatmap["x"] == ["E1", "E2", "E3"] and heatmap["y"] == schools


def test_settings_in_the_url_fill_the_sidebar_after_a_reload(store, no_workers):
    app = AppTest.from_file(str(REPO / "main.py"), default_timeout=30)
    app.query_params["rounds"] = "5"
    app.query_params["model"] = "mlp"

    app.run()

    assert (widget(app, "rounds").value, widget(app, "model").value) == (5, "mlp")
    app.button(key="start").click().run()
    (experiment,) = store.list_experiments()
    assert (experiment.config["federation"]["rounds"], experiment.config["model"]["name"]) == (5, "mlp")


def test_load_into_sidebar_copies_a_runs_settings_to_start_them_again(store, no_workers):
    original = fabricate(store, name="tuned", **{"federation.rounds": 7, "federation.learning_rate": 0.02})
    app = page(HISTORY)

    app.button(key="load_config").click().run()

    assert (widget(app, "rounds").value, widget(app, "model").value, widget(app, "num_clients").value) == (7, "mlp", 2)
    assert app.text_input(key="experiment_name").value == "tuned"
    app.button(key="start").click().run()
    newest = store.list_experiments()[0]
    assert newest.id != original and newest.config == store.get_experiment(original).config


def test_a_failed_run_without_rounds_shows_its_error_and_no_empty_charts(store):
    fabricate(store, rounds=0, status="failed")

    app = page()

    assert [error.value for error in app.error] == ["The run failed: boom: out of memory"]
    assert app.get("plotly_chart") == [] and not app.metric


def test_start_refuses_what_the_data_cannot_serve_before_anything_is_stored(store, no_workers):
    # 100,000 clients on MNIST's 60,000 training examples: the CLI's preflight check, at Start.
    app = page()
    fill(app, {"num_clients": 100_000, "clients_per_round": 10})

    app.button(key="start").click().run()

    assert store.list_experiments() == [] and no_workers == []
    (message,) = [e.value for e in app.sidebar.error]
    assert message.startswith("Cannot start:") and "100000" in message.replace(",", "") and "60000" in message.replace(",", "")


def test_export_to_mlflow_from_the_run_view_says_when_the_server_is_down(store, monkeypatch):
    # A loopback port bound then closed: nothing answers there. The export fails in one line,
    # the run is untouched.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    experiment_id = fabricate(store)
    app = page(HISTORY)
    app.text_input(key=f"mlflow_uri_{experiment_id}").set_value(f"http://127.0.0.1:{port}")
    app.button(key="mlflow_export").click().run(timeout=120)

    assert app.error[0].value.startswith(f"Export of #{experiment_id} to MLflow failed:")
    assert store.get_experiment(experiment_id).status == "completed"
