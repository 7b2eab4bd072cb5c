from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine.client_trainers import ClientTrainer, LocalObjective, TrainSettings, TrainTask, accuracy_on, full_steps, train_client
from model import create_model, flatten, get_parameters


def tiny_data(n: int = 64, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def manual_steps(model, x, y, indices, *, batch_size, lr, seed, mu=0.0, anchor=None, correction=None, steps=None):
    """Plain SGD written out: w ← w − lr·(∇loss + μ(w − anchor) + correction), same batch order."""
    generator = torch.Generator().manual_seed(seed)
    index_tensor = torch.from_numpy(indices)
    order = index_tensor[torch.randperm(len(index_tensor), generator=generator)]
    params = list(model.parameters())
    taken = 0
    for start in range(0, len(order), batch_size):
        if steps is not None and taken >= steps:
            break
        batch = order[start : start + batch_size]
        model.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        with torch.no_grad():
            flat_w = torch.cat([p.reshape(-1) for p in params])
            grad = torch.cat([p.grad.reshape(-1) for p in params])
            if mu:
                grad += mu * (flat_w - anchor)
            if correction is not None:
                grad += correction
            new = flat_w - lr * grad
            offset = 0
            for p in params:
                p.copy_(new[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        taken += 1


def test_fedprox_and_scaffold_terms_equal_adding_them_to_the_gradient():
    x, y = tiny_data()
    indices = np.arange(64)
    start = create_model("mlp", seed=1)
    anchor = flatten(get_parameters(start)).clone() + 0.01  # a global model different from the start
    correction = torch.randn(anchor.numel(), generator=torch.Generator().manual_seed(2)) * 0.1

    ours = create_model("mlp", seed=1)
    objective = LocalObjective(list(get_parameters(ours).values()), anchor, mu=0.5, correction=correction, learning_rate=0.1)
    train_client(ours, x, y, indices, local_epochs=1, batch_size=16, learning_rate=0.1, seed=3, objective=objective)

    reference = create_model("mlp", seed=1)
    manual_steps(reference, x, y, indices, batch_size=16, lr=0.1, seed=3, mu=0.5, anchor=anchor, correction=correction)
    torch.testing.assert_close(flatten(get_parameters(ours)), flatten(get_parameters(reference)), rtol=1e-5, atol=1e-6)


def test_max_steps_stops_early():
    x, y = tiny_data()
    indices = np.arange(64)
    ours, reference = create_model("mlp", seed=1), create_model("mlp", seed=1)
    steps, _ = train_client(ours, x, y, indices, local_epochs=2, batch_size=16, learning_rate=0.1, seed=3, max_steps=3)
    manual_steps(reference, x, y, indices, batch_size=16, lr=0.1, seed=3, steps=3)
    assert steps == 3
    torch.testing.assert_close(flatten(get_parameters(ours)), flatten(get_parameters(reference)))
    assert full_steps(64, local_epochs=2, batch_size=16) == 8 and full_steps(65, local_epochs=1, batch_size=16) == 5


def test_client_trainer_flips_labels_keeps_a_head_and_reports_validation_accuracy():
    x, y = tiny_data(200)
    settings = TrainSettings(model_name="mlp", num_classes=10, local_epochs=30, batch_size=50, learning_rate=0.5)
    trainer = ClientTrainer(x, y, settings)
    weights = flatten(get_parameters(create_model("mlp", seed=0)))
    out = torch.empty_like(weights)
    outcome = trainer.run(TrainTask(0, 0, np.arange(200), 1, flip_labels=True, holdout=np.arange(200)), weights, out)
    flipped = accuracy_on(trainer.model, x, 9 - y, np.arange(200))
    assert flipped > 0.9 and outcome.validation_accuracy < 0.2  # it learned y → 9 − y on its own examples
    assert outcome.seconds > 0 and outcome.steps == 30 * 4

    head = torch.full((2010,), 0.25)
    trainer.run(TrainTask(0, 0, np.arange(200), 1, max_steps=1, head=head), weights, out)
    short = ClientTrainer(x, y, settings)
    start = weights.clone()
    start[-2010:] = 0.25
    expected = torch.empty_like(weights)
    short.run(TrainTask(0, 0, np.arange(200), 1, max_steps=1), start, expected)
    torch.testing.assert_close(out, expected)


def manual_adamw_round(model, x, y, indices, *, batch_size, lr, seed, epochs, mu=0.0, anchor=None):
    """One round written out with a new torch.optim.AdamW: same batch order, loss + μ/2·‖w − anchor‖²."""
    generator = torch.Generator().manual_seed(seed)
    index_tensor = torch.from_numpy(indices)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    params = list(model.parameters())
    for _ in range(epochs):
        order = index_tensor[torch.randperm(len(index_tensor), generator=generator)]
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            if mu:
                with torch.no_grad():
                    offset = 0
                    for p in params:
                        p.grad += mu * (p - anchor[offset : offset + p.numel()].view_as(p))
                        offset += p.numel()
            optimizer.step()


def test_adamw_takes_fresh_adamw_steps_each_round_and_sgd_is_unchanged():
    x, y = tiny_data()
    indices = np.arange(64)
    ours, reference = create_model("mlp", seed=1), create_model("mlp", seed=1)
    for round_seed in (3, 4):  # two rounds: the optimizer's moments start from zero in each
        train_client(ours, x, y, indices, local_epochs=2, batch_size=16, learning_rate=1e-3, seed=round_seed,
                     optimizer_name="adamw")  # fmt: skip
        manual_adamw_round(reference, x, y, indices, batch_size=16, lr=1e-3, seed=round_seed, epochs=2)
    assert torch.equal(flatten(get_parameters(ours)), flatten(get_parameters(reference)))

    sgd, plain = create_model("mlp", seed=1), create_model("mlp", seed=1)
    train_client(sgd, x, y, indices, local_epochs=1, batch_size=16, learning_rate=1e-3, seed=3, optimizer_name="sgd")
    manual_steps(plain, x, y, indices, batch_size=16, lr=1e-3, seed=3)
    torch.testing.assert_close(flatten(get_parameters(sgd)), flatten(get_parameters(plain)))
    start = flatten(get_parameters(create_model("mlp", seed=1)))
    adamw_move = (flatten(get_parameters(ours)) - start).abs().max()
    assert adamw_move > 10 * (flatten(get_parameters(sgd)) - start).abs().max()  # the step sizes differ in kind


def test_fedprox_with_adamw_adds_the_proximal_term_to_the_gradient():
    x, y = tiny_data()
    indices = np.arange(64)
    start = create_model("mlp", seed=1)
    anchor = flatten(get_parameters(start)).clone() + 0.05  # a global model different from the start

    ours = create_model("mlp", seed=1)
    objective = LocalObjective(list(get_parameters(ours).values()), anchor, mu=0.5, correction=None, learning_rate=1e-3)
    train_client(ours, x, y, indices, local_epochs=1, batch_size=16, learning_rate=1e-3, seed=3, objective=objective,
                 optimizer_name="adamw")  # fmt: skip

    reference = create_model("mlp", seed=1)
    manual_adamw_round(reference, x, y, indices, batch_size=16, lr=1e-3, seed=3, epochs=1, mu=0.5, anchor=anchor)
    torch.testing.assert_close(flatten(get_parameters(ours)), flatten(get_parameters(reference)), rtol=0, atol=1e-7)


def test_client_trainer_uses_the_settings_optimizer_and_refuses_it_with_local_dp():
    x, y = tiny_data()
    settings = TrainSettings(model_name="mlp", num_classes=10, local_epochs=1, batch_size=16, learning_rate=1e-3,
                             optimizer="adamw")  # fmt: skip
    weights = flatten(get_parameters(create_model("mlp", seed=1)))
    out = torch.empty_like(weights)
    outcome = ClientTrainer(x, y, settings).run(TrainTask(0, 0, np.arange(64), 3), weights, out)

    reference = create_model("mlp", seed=1)
    manual_adamw_round(reference, x, y, np.arange(64), batch_size=16, lr=1e-3, seed=3, epochs=1)
    assert outcome.error == "" and outcome.steps == 4
    assert torch.equal(out, flatten(get_parameters(reference)))
    with pytest.raises(ValueError, match="local DP runs DP-SGD"):
        ClientTrainer(x, y, TrainSettings("mlp", 10, 1, 16, 1e-3, local_dp=True, optimizer="adamw"))
    with pytest.raises(ValueError, match="one of sgd, adamw; got 'adam'"):
        ClientTrainer(x, y, TrainSettings("mlp", 10, 1, 16, 1e-3, optimizer="adam"))


def test_the_engine_tells_every_trainer_the_configured_optimizer():
    from experiment_config import ExperimentConfig
    from federated_learning import train_settings

    adamw = ExperimentConfig.from_dict({"federation": {"client_optimizer": "adamw", "learning_rate": 0.001}})
    assert train_settings(adamw, 10, noise_multiplier=0.0).optimizer == "adamw"
    assert train_settings(ExperimentConfig(), 10, noise_multiplier=0.0).optimizer == "sgd"


def test_a_conv_trainer_trains_in_channels_last_layout_to_the_default_layouts_weights():
    """`cpu_layout`: the trainer's CNN holds its conv weights channels-last (oneDNN's faster kernels); the flat
    weights it loads and reports keep their order and values, and FedProx's anchor lines up with them, so its
    result is the written-out SGD of a default-layout model (to float rounding). DP-SGD keeps the default layout."""
    x, y = tiny_data(120)
    settings = TrainSettings(model_name="cnn", num_classes=10, local_epochs=1, batch_size=40, learning_rate=0.1,
                             proximal_mu=0.5)  # fmt: skip
    trainer = ClientTrainer(x, y, settings)
    conv = trainer.model.conv2.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    start = flatten(get_parameters(create_model("cnn", seed=3)))
    out = torch.empty_like(start)
    indices = np.arange(120)
    outcome = trainer.run(TrainTask(0, 0, indices, 7), start, out)
    assert outcome.steps == 3 and not outcome.error

    reference = create_model("cnn", seed=3).double()  # float64: either layout's float32 only approximates it
    manual_steps(reference, x.double(), y, indices, batch_size=40, lr=0.1, seed=7, mu=0.5, anchor=start.double())
    expected = torch.cat([p.detach().reshape(-1) for p in reference.parameters()])
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-6)
    assert (out - start).abs().max() > 1e-3

    private = ClientTrainer(x, y, TrainSettings(model_name="cnn", num_classes=10, local_epochs=1, batch_size=40,
                                                learning_rate=0.1, local_dp=True, noise_multiplier=1.0,
                                                max_grad_norm=1.0))  # fmt: skip
    assert private.model.conv2.weight.is_contiguous()
