"""tracking/records.py: the names a run is exported under, checked against hand-written rows and
values; the config file that an export writes reads back as the same config."""

from __future__ import annotations

import math
from dataclasses import fields

import pandas as pd
import pytest

from experiment_config import ExperimentConfig, check_tracking_uri
from engine.results import RoundResult
from tracking.records import ROUND_METRICS, config_params, config_toml, round_metrics, rounds_csv, run_key


def hand_row() -> dict:
    """A round as `RoundResult.to_dict()` gives it: two clients trained, one dropped out, rubric metrics."""
    return {
        "round": 3, "accuracy": 0.75, "loss": 0.5, "epsilon": 1.25, "delta": 1e-5, "seconds": 2.0,
        "eval_seconds": 0.25, "bytes_up": 1000, "bytes_down": 2000, "simulated_seconds": 3.5,
        "noise_multiplier": 1.1, "max_grad_norm": 1.0, "sample_rate": 0.02, "privacy_steps": 30,
        "accountant": "rdp", "skipped": "", "secure_aggregation": None,
        "metrics": {
            "exact_match": 0.4, "per_label": [{"f1": 0.5}, {"f1": float("nan")}], "per_group": {"s 1": {"mae": 0.1}},
        },
        "clients": [
            {"id": 0, "num_examples": 60, "steps": 3, "loss": 0.4, "epsilon": 1.25, "status": "ok", "bytes_up": 500,
             "bytes_down": 1000, "validation_accuracy": None},
            {"id": 4, "num_examples": 40, "steps": 2, "loss": 0.6, "epsilon": 1.0, "status": "partial", "bytes_up": 500,
             "bytes_down": 1000, "validation_accuracy": 0.9},
            {"id": 7, "num_examples": 50, "steps": 0, "loss": 0.0, "epsilon": 0.0, "status": "dropped", "bytes_up": 0,
             "bytes_down": 0, "validation_accuracy": None},
        ],
    }  # fmt: skip


def test_a_round_is_logged_under_its_own_names_with_rubric_and_client_metrics():
    metrics = round_metrics(hand_row())

    assert metrics["accuracy"] == 0.75 and metrics["loss"] == 0.5 and metrics["epsilon"] == 1.25
    assert metrics["delta"] == 1e-5 and metrics["bytes_up"] == 1000.0 and metrics["seconds"] == 2.0
    assert metrics["clients_arrived"] == 2.0  # ok + partial; the dropped client never arrived
    assert metrics["rubric/exact_match"] == 0.4 and metrics["rubric/per_label/0/f1"] == 0.5
    assert "rubric/per_label/1/f1" not in metrics  # NaN is left out, not logged
    assert metrics["rubric/per_group/s 1/mae"] == 0.1
    assert metrics["client/0/loss"] == 0.4 and metrics["client/4/validation_accuracy"] == 0.9
    assert metrics["client/4/num_examples"] == 40.0 and metrics["client/4/steps"] == 2.0
    assert "client/0/validation_accuracy" not in metrics  # None: no held-out split
    assert not any(name.startswith("client/7/") for name in metrics)  # dropped before training
    assert "accountant" not in metrics and "skipped" not in metrics  # text is not a metric


def test_a_diverged_round_drops_its_nan_loss_and_keeps_the_rest():
    row = {**hand_row(), "loss": math.nan, "metrics": None, "clients": []}

    metrics = round_metrics(row)

    assert "loss" not in metrics and metrics["accuracy"] == 0.75 and metrics["clients_arrived"] == 0.0


def test_fairness_across_clients_is_logged_in_the_rounds_that_measured_it():
    fair = {"client_accuracy_mean": 0.625, "client_accuracy_worst10": 0.125, "client_accuracy_variance": 0.0859375,
            "client_accuracy_gini": 0.25}  # fmt: skip

    measured, unmeasured = round_metrics({**hand_row(), **fair}), round_metrics(hand_row())

    assert {name: measured[name] for name in fair} == fair
    assert not any(name.startswith("client_accuracy_") for name in unmeasured)  # no holdout: None, not logged


def test_every_numeric_field_of_a_round_is_logged():
    """A number added to the round record is exported too (the fairness metrics once were not)."""
    numeric = {field.name for field in fields(RoundResult)
               if str(field.type).replace(" | None", "") in ("int", "float")}  # fmt: skip

    assert numeric - {"round"} <= set(ROUND_METRICS)  # the round is the step, not a metric
    assert numeric >= {"client_accuracy_worst10", "client_accuracy_gini", "bytes_up", "accuracy"}


def test_params_are_the_config_flattened():
    config = ExperimentConfig().with_overrides(["federation.rounds=3", "model.name=mlp"])
    expected = {f"{s}.{k}" for s, values in config.to_dict().items() for k in values}

    params = config_params(config.to_dict())

    assert set(params) == expected
    assert params["federation.rounds"] == "3" and params["model.name"] == "mlp"
    assert params["privacy.adaptive_clipping"] == "false" and params["privacy.delta"] == "1e-05"


def test_the_config_file_reads_back_as_the_same_config(tmp_path):
    odd = 'a "quoted" \\ path\twith\nnewline, DEL \x7f and Ω'
    config = ExperimentConfig().with_overrides(["model.name=mlp", "privacy.delta=1e-7", "system.mlflow_uri=http://h:1"])
    config = config.replace("data", csv_path=odd)
    path = tmp_path / "config.toml"

    path.write_text(config_toml(config.to_dict()), encoding="utf-8")

    assert ExperimentConfig.from_toml(path) == config


def test_the_run_key_names_one_database_and_id_and_hides_the_password(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative, absolute = "sqlite:///runs.db", f"sqlite:///{tmp_path / 'runs.db'}"

    assert run_key(relative, 1) == run_key(absolute, 1)  # the same file, however it was named
    assert run_key(absolute, 1) != run_key(absolute, 2)
    assert run_key(absolute, 1) != run_key(f"sqlite:///{tmp_path / 'other.db'}", 1)
    # The password is masked before hashing: changing it names the same database.
    assert run_key("postgresql://u:secret@h/db", 1) == run_key("postgresql://u:other@h/db", 1)


def test_rounds_csv_keeps_nested_metrics_as_json():
    frame = pd.DataFrame([{"experiment_id": 1, "round": 1, "accuracy": 0.5, "metrics": {"exact_match": 0.25}}])

    text = rounds_csv(frame)

    assert text.splitlines()[0] == "round,accuracy,metrics"
    assert '"{""exact_match"": 0.25}"' in text


@pytest.mark.parametrize(
    "uri", ["", "databricks", "http://127.0.0.1:5000", "https://user@mlflow.lab/x", "sqlite:///m.db"]
)
def test_tracking_uris_that_are_accepted(uri):
    assert check_tracking_uri("system.mlflow_uri", uri) == uri


@pytest.mark.parametrize(("uri", "says"), [
    ("mlruns", "must be empty or a tracking URI"), ("ftp://host", "must be empty or a tracking URI"),
    ("http://user:secret@host:5000", "must not hold a password"), ("ftp://u:secret@host", "must not hold a password"),
])  # fmt: skip
def test_tracking_uris_that_are_refused_name_the_field_and_never_show_a_password(uri, says):
    with pytest.raises(ValueError, match=says) as raised:
        check_tracking_uri("system.mlflow_uri", uri)
    assert "system.mlflow_uri" in str(raised.value) and "secret" not in str(raised.value)
