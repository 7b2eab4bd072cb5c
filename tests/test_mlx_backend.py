"""MLX local training against the torch trainer it stands in for: same exchange vector,
same logits, same SGD steps (batch order, loss, FedProx/SCAFFOLD terms, FedPer heads),
and the same FedAvg accuracy after a few rounds. Skipped where mlx is not installed."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("mlx.core")

from mlx_runtime import trainer as mlx_backend  # noqa: E402
from engine.client_trainers import InProcessTrainer, TrainSettings, TrainTask, accuracy_on  # noqa: E402
from data_handler import partition_iid, subset  # noqa: E402
from mlx_runtime.trainer import (  # noqa: E402
    ExchangeLayout, MlxTrainer, create_mlx_model, flatten_mlx, image_layout, images_to_nhwc, load_flat,
)  # fmt: skip
from model import create_model, flatten, get_parameters, set_parameters, unflatten  # noqa: E402


@functools.cache
def layout(name: str) -> ExchangeLayout:
    return image_layout(name, 10)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small(mnist):
    return subset(mnist, max_train=6000, max_test=2000, seed=0)


def both_trainers(data, train_settings: TrainSettings, slots: int = 1):
    num_params = layout(train_settings.model_name).size
    torch_trainer = InProcessTrainer(data, train_settings, num_params, slots)
    return torch_trainer, MlxTrainer(data, train_settings, num_params, slots)


@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn-dp"])
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_flat_to_mlx_to_flat_is_the_identity(name, seed):
    flat = torch.randn(layout(name).size, generator=torch.Generator().manual_seed(seed))
    model = create_mlx_model(name)

    load_flat(model, layout(name), flat)
    back = flatten_mlx(model, layout(name))

    assert torch.equal(back, flat)


def test_layouts_are_nhwc_and_fc1_columns_follow_h_w_c(small):
    torch_cnn = create_model("cnn", seed=3)
    mlx_cnn = create_mlx_model("cnn")
    load_flat(mlx_cnn, layout("cnn"), flatten(get_parameters(torch_cnn)))

    conv = np.asarray(mlx_cnn.conv2.weight)  # (O, kH, kW, I)
    fc1 = np.asarray(mlx_cnn.fc1.weight)  # (512, 7·7·64), column h·448 + w·64 + c

    np.testing.assert_array_equal(conv, torch_cnn.conv2.weight.detach().permute(0, 2, 3, 1).numpy())
    torch_fc1 = torch_cnn.fc1.weight.detach().numpy()
    for c, h, w in [(0, 0, 1), (5, 3, 2), (63, 6, 6)]:
        np.testing.assert_array_equal(fc1[:, h * 448 + w * 64 + c], torch_fc1[:, c * 49 + h * 7 + w])


@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn-dp"])
def test_mlx_and_torch_models_give_the_same_logits(small, name):
    torch_model = create_model(name, seed=1)
    mlx_model = create_mlx_model(name)
    load_flat(mlx_model, layout(name), flatten(get_parameters(torch_model)))
    images = small.test_x[:200]

    with torch.no_grad():
        expected = torch_model(images).numpy()
    logits = np.asarray(mlx_model(images_to_nhwc(images)))

    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("name", "examples", "batch_size", "epochs", "max_steps"), [
    ("cnn", 500, 50, 1, 1),  # one step: loss, gradient and SGD agree
    ("cnn-dp", 200, 50, 1, 2),  # strided convolutions, pooling with stride 1, tanh
    ("mlp", 130, 50, 2, 0),  # reshuffled epochs and a short last batch: the same data order
])  # fmt: skip
def test_local_steps_match_torch(small, name, examples, batch_size, epochs, max_steps):
    train_settings = TrainSettings(name, 10, local_epochs=epochs, batch_size=batch_size, learning_rate=0.1)
    torch_trainer, mlx_trainer = both_trainers(small, train_settings)
    start = flatten(get_parameters(create_model(name, seed=2)))
    task = TrainTask(0, 7, np.arange(100, 100 + examples), seed=11, max_steps=max_steps)

    expected = torch_trainer.train(start, [task])[0]
    outcome = mlx_trainer.train(start, [task])[0]

    assert outcome.steps == expected.steps == (max_steps or epochs * 3)
    assert outcome.loss == pytest.approx(expected.loss, abs=1e-5)
    assert (mlx_trainer.results[0] - start).abs().max() > 1e-3  # it trained
    torch.testing.assert_close(mlx_trainer.results[0], torch_trainer.results[0], atol=1e-4, rtol=0)


def test_fedprox_and_scaffold_terms_match_torch(small):
    train_settings = TrainSettings(
        "mlp", 10, local_epochs=1, batch_size=20, learning_rate=0.1, proximal_mu=0.5, corrections=True
    )
    plain = MlxTrainer(small, TrainSettings("mlp", 10, 1, 20, 0.1), layout("mlp").size, 1)
    torch_trainer, mlx_trainer = both_trainers(small, train_settings)
    assert mlx_trainer.corrections is not None and not mlx_trainer.corrections.any()
    start = flatten(get_parameters(create_model("mlp", seed=4)))
    correction = torch.randn(start.numel(), generator=torch.Generator().manual_seed(5)) * 0.05
    torch_trainer.corrections[0] = correction
    mlx_trainer.corrections[0] = correction
    task = TrainTask(0, 3, np.arange(120), seed=6)

    torch_trainer.train(start, [task])
    mlx_trainer.train(start, [task])
    plain.train(start, [task])

    assert (mlx_trainer.results[0] - plain.results[0]).abs().max() > 1e-2  # the terms changed the result
    torch.testing.assert_close(mlx_trainer.results[0], torch_trainer.results[0], atol=1e-5, rtol=0)


def test_flipped_labels_head_and_holdout_match_torch(small):
    train_settings = TrainSettings("mlp", 10, local_epochs=2, batch_size=50, learning_rate=0.2)
    torch_trainer, mlx_trainer = both_trainers(small, train_settings, slots=2)
    start = flatten(get_parameters(create_model("mlp", seed=8)))
    head = torch.randn(2010, generator=torch.Generator().manual_seed(9)) * 0.1  # fc3: 200·10 + 10
    tasks = [
        TrainTask(1, 0, np.arange(300), seed=1, flip_labels=True, holdout=np.arange(300, 500)),
        TrainTask(0, 1, np.arange(500, 800), seed=2, head=head, holdout=np.arange(800, 1000), max_steps=5),
    ]

    expected = torch_trainer.train(start, tasks)
    outcomes = mlx_trainer.train(start, tasks)

    assert [o.task.slot for o in outcomes] == [1, 0] and [o.steps for o in outcomes] == [12, 5]
    for ours, theirs in zip(outcomes, expected, strict=True):
        assert ours.validation_accuracy == pytest.approx(theirs.validation_accuracy, abs=0.01)
        assert ours.loss == pytest.approx(theirs.loss, abs=1e-4) and ours.seconds > 0
    assert outcomes[0].validation_accuracy < 0.2  # it learned y → 9 − y
    torch.testing.assert_close(mlx_trainer.results, torch_trainer.results, atol=1e-4, rtol=0)


def fedavg(trainer, parts: list[np.ndarray], initial: torch.Tensor, rounds: int) -> torch.Tensor:
    """FedAvg written out: every client trains, the server takes the example-weighted mean."""
    weights, sizes = initial, [len(p) for p in parts]
    for round_number in range(rounds):
        tasks = [TrainTask(i, i, part, seed=1000 * round_number + i) for i, part in enumerate(parts)]
        trainer.train(weights, tasks)
        weights = torch.from_numpy(np.average(trainer.results.numpy(), axis=0, weights=sizes).astype(np.float32))
    return weights


def accuracy_of(name: str, weights: torch.Tensor, data) -> float:
    model = create_model(name)
    set_parameters(model, unflatten(weights, get_parameters(model)))
    return accuracy_on(model, data.test_x, data.test_y, np.arange(len(data.test_y)))


# The CNN's sizes are small because mlx[cpu] on Linux links the reference BLAS: one
# B=50 CNN step takes over a second there (see bench/mlx.py).
@pytest.mark.parametrize(("name", "clients", "examples", "batch_size", "learning_rate", "floor"), [
    ("mlp", 10, 600, 50, 0.05, 0.7),
    ("cnn", 2, 60, 30, 0.1, 0.25),
])  # fmt: skip
def test_three_fedavg_rounds_reach_the_same_accuracy_on_both_backends(
    small, name, clients, examples, batch_size, learning_rate, floor
):
    parts = [p[:examples] for p in partition_iid(small.train_y.numpy(), num_clients=clients, seed=0)]
    train_settings = TrainSettings(name, 10, local_epochs=1, batch_size=batch_size, learning_rate=learning_rate)
    torch_trainer, mlx_trainer = both_trainers(small, train_settings, slots=clients)
    initial = flatten(get_parameters(create_model(name, seed=0)))

    torch_accuracy = accuracy_of(name, fedavg(torch_trainer, parts, initial, 3), small)
    mlx_accuracy = accuracy_of(name, fedavg(mlx_trainer, parts, initial, 3), small)

    print(f"{name}: torch {torch_accuracy:.4f}, mlx {mlx_accuracy:.4f}")
    assert torch_accuracy > floor  # it learned
    assert abs(mlx_accuracy - torch_accuracy) <= 0.01


def test_local_dp_is_refused(small):
    private = TrainSettings("mlp", 10, 1, 50, 0.05, local_dp=True, noise_multiplier=1.0, max_grad_norm=1.0)

    with pytest.raises(ValueError, match="does not implement local DP"):
        MlxTrainer(small, private, layout("mlp").size, 1)


def test_adamw_steps_match_torch_and_start_afresh_for_each_client(small):
    # torch.optim.AdamW is made anew in every train_client call: MLX's moments must not carry over.
    adamw = TrainSettings("mlp", 10, local_epochs=1, batch_size=50, learning_rate=0.001, optimizer="adamw")
    torch_trainer, mlx_trainer = both_trainers(small, adamw, slots=2)
    start = flatten(get_parameters(create_model("mlp", seed=12)))
    tasks = [TrainTask(0, 0, np.arange(150), seed=1), TrainTask(1, 1, np.arange(150, 300), seed=2)]

    expected = torch_trainer.train(start, tasks)
    outcomes = mlx_trainer.train(start, tasks)

    assert [o.loss for o in outcomes] == pytest.approx([o.loss for o in expected], abs=1e-5)
    assert (mlx_trainer.results - start).abs().max() > 1e-3  # it trained
    # Adam divides by √v: where a gradient is ~0, float rounding moves a weight by up to ~lr/10.
    torch.testing.assert_close(mlx_trainer.results, torch_trainer.results, atol=1e-4, rtol=0)


def test_an_unknown_client_optimizer_is_refused(small):
    with pytest.raises(ValueError, match="sgd or adamw"):
        MlxTrainer(small, TrainSettings("mlp", 10, 1, 50, 0.001, optimizer="lion"), layout("mlp").size, 1)


def test_wrong_model_size_or_data_is_refused(small):
    with pytest.raises(ValueError, match="model.name"):
        create_mlx_model("tinyllama-lora")
    with pytest.raises(ValueError, match="parameters"):
        MlxTrainer(small, TrainSettings("mlp", 10, 1, 50, 0.05), layout("mlp").size + 1, 1)
    tokens = dataclasses.replace(small, train_x=torch.zeros(len(small.train_y), 16, dtype=torch.int64))
    with pytest.raises(ValueError, match="MNIST workload only"):
        MlxTrainer(tokens, TrainSettings("mlp", 10, 1, 50, 0.05), layout("mlp").size, 1)


def test_missing_mlx_says_how_to_install_it(small, monkeypatch):
    from mlx_runtime import exchange

    monkeypatch.setattr(exchange, "_IMPORT_ERROR", ImportError("No module named 'mlx'"))

    assert not mlx_backend.available()
    with pytest.raises(ImportError, match=r"pip install (mlx|'mlx\[cpu\]')"):
        MlxTrainer(small, TrainSettings("mlp", 10, 1, 50, 0.05), layout("mlp").size, 1)


def test_the_engine_runs_on_mlx_with_system_backend(mnist):
    # The whole engine (sampling, FedAvg, evaluation) with MLX doing the local training.
    from experiment_config import ExperimentConfig
    from federated_learning import run_experiment

    def config(backend: str) -> ExperimentConfig:
        return ExperimentConfig.from_dict({
            "data": {"max_train_examples": 600, "max_test_examples": 500}, "model": {"name": "mlp"},
            "federation": {"num_clients": 3, "clients_per_round": 3, "rounds": 2, "batch_size": 20, "learning_rate": 0.1},
            "system": {"num_workers": 1, "backend": backend},
        })  # fmt: skip

    on_mlx, on_torch = run_experiment(config("mlx"), data=mnist), run_experiment(config("torch"), data=mnist)
    assert [r.accuracy for r in on_mlx] == pytest.approx([r.accuracy for r in on_torch], abs=0.01)
    assert on_mlx[-1].accuracy > 0.6
