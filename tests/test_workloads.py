"""The NGSS rubric-scoring workload end to end: synthetic and imported data, schools as
clients, a TinyLLama-v0-shaped model (random weights, local tokenizer) with LoRA."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ngss import data as ngss_data
from conftest import REPO
from database import ExperimentStore
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun
from model import flatten, get_parameters
from engine.workloads import load_data


def ngss_config(**federation) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "data": {"dataset": "ngss", "partition": "natural", "ngss_task": "gas_filled_balloons",
                 "max_train_examples": 270, "max_test_examples": 90},
        "model": {"name": "tinyllama-lora", "pretrained": False, "max_length": 64},
        "federation": {"num_clients": 9, "clients_per_round": 9, "rounds": 1, "batch_size": 16,
                       "learning_rate": 0.05, **federation},
        "privacy": {"audit_examples": 0},
        "system": {"num_workers": 1, "seed": 4},
    })  # fmt: skip


@pytest.fixture(scope="module")
def ngss_run_data():
    return load_data(ngss_config())


def test_synthetic_ngss_loads_as_token_ids_with_schools(ngss_run_data):
    data = ngss_run_data
    reference = ngss_data.generate("gas_filled_balloons", seed=4)
    assert data.train_x.dtype == torch.int64 and data.train_x.shape[0] == len(reference.train) == 958
    assert data.train_x.shape[1] <= 64 and data.num_classes == 3
    assert torch.equal(data.train_y, torch.from_numpy(reference.train.labels.astype(np.float32)))
    assert np.array_equal(data.train_groups, reference.train.schools) and len(data.group_names) == 9
    assert data.info["source"] == "synthetic" and data.info["task"] == "gas_filled_balloons"
    assert data.multilabel


def test_schools_are_clients_and_only_lora_and_head_travel(ngss_run_data):
    run = FederatedRun(ngss_config(), data=ngss_run_data)
    groups = run.data.train_groups
    for client, indices in enumerate(run.partitions):
        assert len(indices) > 0 and set(groups[indices]) == {client}  # each school is one client
    (result,) = list(run.rounds())
    exchanged = flatten(get_parameters(run.model)).numel()
    total = sum(p.numel() for p in run.model.parameters())
    assert exchanged == 16_384 + 64 * 3  # LoRA r=8 on q_proj, v_proj + a bias-free 64×3 head
    assert all(c.bytes_down == 4 * exchanged for c in result.clients)
    assert 4 * exchanged < 0.01 * 4 * total  # under 1% of the full model's bytes
    metrics = result.metrics
    assert metrics["per_label_accuracy"] == pytest.approx(result.accuracy)
    assert set(metrics["per_group"]) == set(run.data.group_names)
    assert {"exact_match", "micro_f1", "macro_f1", "score_mae"} <= set(metrics)


def test_text_runs_are_reproducible_in_any_trainer_process(ngss_run_data):
    # LoRA dropout draws from torch's global generator: seeded per client task.
    weights = []
    for workers in (1, 1, 2):
        run = FederatedRun(ngss_config(clients_per_round=3).replace("system", num_workers=workers), data=ngss_run_data)
        list(run.rounds())
        weights.append(flatten(get_parameters(run.model)))
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)
    torch.testing.assert_close(weights[0], weights[2], rtol=0, atol=1e-6)


def test_a_two_school_csv_runs_end_to_end_through_the_cli(tmp_path, db_url):
    generated = ngss_data.generate("anna_vs_carla", seed=1)
    two = ngss_data.NgssDataset(
        task="anna_vs_carla", label_names=generated.label_names, source="synthetic", school_names=["North", "South"],
        train=_two_schools(generated.train, 40), test=_two_schools(generated.test, 15),
    )  # fmt: skip
    train_path, _ = ngss_data.write_csv(two, tmp_path)
    result = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "run", "--json", "--db", db_url,
         "--set", "data.dataset=csv", "--set", f"data.csv_path={train_path}", "--set", "data.partition=natural",
         "--set", "model.name=tinyllama-lora", "--set", "model.pretrained=false",
         "--set", "federation.num_clients=2", "--set", "federation.clients_per_round=2",
         "--set", "federation.rounds=1", "--set", "federation.batch_size=8", "--set", "system.num_workers=1"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    (row,), final = lines[:-1], lines[-1]
    assert [c["num_examples"] for c in row["clients"]] == [40, 40]
    assert set(row["metrics"]["per_group"]) == {"North", "South"}
    store = ExperimentStore(db_url)
    stored = store.get_experiment(final["experiment_id"])
    assert stored.status == "completed"
    assert stored.dataset_info["source"] == "imported" and stored.dataset_info["schools"] == ["North", "South"]
    rounds = store.rounds_frame([final["experiment_id"]])
    assert rounds["metrics"].iloc[0]["exact_match"] == row["metrics"]["exact_match"]


def _two_schools(split: ngss_data.NgssSplit, per_school: int) -> ngss_data.NgssSplit:
    rows = np.concatenate([np.flatnonzero(split.schools == s)[:per_school] for s in (0, 1)])
    return ngss_data.NgssSplit([split.texts[r] for r in rows], split.labels[rows], split.schools[rows])


def test_natural_partition_of_a_file_without_schools_is_a_clear_error(tmp_path, ngss_run_data):
    generated = ngss_data.generate("anna_vs_carla", seed=1)
    flat = ngss_data.NgssDataset(
        task="anna_vs_carla", label_names=generated.label_names, source="synthetic", school_names=["all"],
        train=ngss_data.NgssSplit(generated.train.texts[:30], generated.train.labels[:30], np.zeros(30, np.int64)),
        test=ngss_data.NgssSplit(generated.test.texts[:10], generated.test.labels[:10], np.zeros(10, np.int64)),
        has_groups=False,
    )  # fmt: skip
    train_path, _ = ngss_data.write_csv(flat, tmp_path)
    config = ngss_config().replace("data", dataset="csv", csv_path=str(train_path), max_train_examples=0)
    config = config.replace("federation", num_clients=2, clients_per_round=2)
    with pytest.raises(ValueError, match="needs a school for every response"):
        FederatedRun(config)


def test_local_dp_trains_the_lora_parameters_of_a_text_model(ngss_run_data):
    # Opacus hooks give per-example gradients of LoRA and head over (B, T, features) inputs.
    config = ngss_config(clients_per_round=2, batch_size=8).replace("data", max_train_examples=90)
    config = config.replace("privacy", mode="local", noise_multiplier=1.0, max_grad_norm=1.0)
    run = FederatedRun(config, data=ngss_run_data)
    before = flatten(get_parameters(run.model)).clone()
    (result,) = list(run.rounds())
    assert result.epsilon > 0 and result.accountant == "rdp"
    trained = [c for c in result.clients if c.steps > 0]
    assert trained and all(c.epsilon > 0 for c in trained)
    assert not torch.equal(flatten(get_parameters(run.model)), before)


def test_lora_on_the_top_layers_exchanges_only_theirs_and_runs_alike_in_any_trainer_process(ngss_run_data):
    # model.lora_layers = 2: adapters on TinyLLama's layers 6 and 7; layers 0–5 are computed once per response
    # and cached in whichever process trains or evaluates (ngss/frozen_layers.py).
    config = ngss_config(clients_per_round=3)
    weights = []
    for workers in (1, 2):
        run = FederatedRun(config.replace("model", lora_layers=2).replace("system", num_workers=workers),
                           data=ngss_run_data)  # fmt: skip
        names = get_parameters(run.model).keys()
        assert flatten(get_parameters(run.model)).numel() == 2 * 2 * 8 * (64 + 64) + 64 * 3
        assert {n.split(".layers.")[1].split(".")[0] for n in names if ".lora_" in n} == {"6", "7"}
        (result,) = list(run.rounds())
        assert result.accuracy > 0 and all(c.bytes_down == 4 * (4096 + 192) for c in result.clients)
        weights.append(flatten(get_parameters(run.model)))
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=1e-6)
    every_layer = FederatedRun(config, data=ngss_run_data)
    list(every_layer.rounds())
    assert not torch.allclose(flatten(get_parameters(every_layer.model))[-192:], weights[0][-192:])  # another model


def test_local_dp_trains_lora_on_the_top_layers(ngss_run_data):
    config = ngss_config(clients_per_round=2, batch_size=8).replace("data", max_train_examples=90)
    config = config.replace("privacy", mode="local", noise_multiplier=1.0, max_grad_norm=1.0)
    run = FederatedRun(config.replace("model", lora_layers=1), data=ngss_run_data)
    before = flatten(get_parameters(run.model)).clone()
    (result,) = list(run.rounds())
    assert result.epsilon > 0 and any(c.steps > 0 for c in result.clients)
    after = flatten(get_parameters(run.model))
    assert after.numel() == 2 * 8 * (64 + 64) + 64 * 3 and not torch.equal(after, before)
