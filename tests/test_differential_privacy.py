"""differential_privacy: ε from Opacus's accountants, real clipping and noise, fail-closed checks.

References are independent of the module: published accountant values (REFERENCES.md),
Opacus accountants stepped by hand, and per-sample gradients from `torch.func`.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from torch import nn
from torch.func import functional_call, grad, vmap

import differential_privacy
import experiment_config
from differential_privacy import (
    DPSGDModel,
    PrivacyError,
    accountant_from_history,
    calibrate_noise,
    central_epsilon,
    central_noise,
    clip_update,
    epsilon_from_history,
    local_sample_rate,
    make_accountant,
    poisson_batches,
    steps_per_epoch,
    would_exceed,
)
from model import create_model, flatten, get_parameters

DELTA = 1e-5
MODES = ("bookkeeping", "ghost", "hooks")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine lose a lot to them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic(num_examples: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N,1,28,28) whose label is written in one pixel row, so they are learnable."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (num_examples,), generator=generator)
    x = 0.1 * torch.randn(num_examples, 1, 28, 28, generator=generator)
    x[torch.arange(num_examples), 0, y, :] += 1.0
    return x, y


def by_hand(noise_multiplier: float, sample_rate: float, steps: int, accountant: type = RDPAccountant) -> float:
    reference = accountant()
    for _ in range(steps):
        reference.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return reference.get_epsilon(delta=DELTA)


def per_sample_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, P) per-example gradients of the cross-entropy, in `model.flatten` order, by torch.func."""
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([grads[name].reshape(len(x), -1) for name in params], dim=1)


def clipped_sum(per_sample: torch.Tensor, max_norm: float) -> torch.Tensor:
    factors = (max_norm / per_sample.norm(dim=1)).clamp(max=1.0)
    return (per_sample * factors[:, None]).sum(0)


def one_full_batch_step(mode: str, x, y, *, noise_multiplier: float, max_norm: float, learning_rate: float, seed: int):
    """One DP-SGD step with q = 1 (every example in the batch): (weights before, weights after)."""
    model = create_model("mlp", seed=0)
    before = flatten(get_parameters(model)).clone()
    dp_model = DPSGDModel(model, max_grad_norm=max_norm, grad_sample_mode=mode)
    result = dp_model.train(
        x, y, np.arange(len(y)), local_epochs=1, batch_size=len(y), learning_rate=learning_rate,
        noise_multiplier=noise_multiplier, accountant=make_accountant("rdp"), seed=seed,
    )  # fmt: skip
    assert result.steps == 1 and result.sample_rate == 1.0
    return before, flatten(dp_model.get_parameters())


def train_round(dp_model: DPSGDModel, history, x, y, indices, *, seed: int, local_epochs: int = 1, batch_size: int = 12,
                noise_multiplier: float = 1.0, learning_rate: float = 0.1, accountant: str = "rdp"):
    """One client's round as `engine.client_trainers` runs it: the server's stored history in, an
    accountant rebuilt from it, DP-SGD, the grown history out. Returns (DPTrainResult, history)."""
    restored = accountant_from_history(history, accountant)
    result = dp_model.train(
        x, y, indices, local_epochs=local_epochs, batch_size=batch_size, learning_rate=learning_rate,
        noise_multiplier=noise_multiplier, accountant=restored, seed=seed,
    )  # fmt: skip
    return result, tuple((float(s), float(q), int(n)) for s, q, n in restored.history)


# -- accounting --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accountant", "noise_multiplier", "sample_rate", "steps", "expected", "tolerance"),
    [
        ("rdp", 1.5, 0.04, 2250, 7.329, 0.005),
        ("prv", 1.5, 0.04, 2250, 6.779, 0.02),
        ("rdp", 1.1, 256 / 60000, 14062, 2.597, 0.005),
        ("rdp", 1.1, 250 / 60000, 3600, 1.265, 0.005),
    ],
)
def test_epsilon_matches_published_accountant_values(
    accountant, noise_multiplier, sample_rate, steps, expected, tolerance
):
    epsilon = epsilon_from_history([(noise_multiplier, sample_rate, steps)], DELTA, accountant)
    assert epsilon == pytest.approx(expected, abs=tolerance)


def test_make_accountant_returns_opacus_accountants():
    assert isinstance(make_accountant("rdp"), RDPAccountant)
    assert isinstance(make_accountant("prv"), PRVAccountant)
    with pytest.raises(ValueError, match="accountant must be one of"):
        make_accountant("gdp")


def test_epsilon_of_nothing_is_zero_and_of_no_noise_is_infinite():
    assert epsilon_from_history([], DELTA) == 0.0
    for accountant in ("rdp", "prv"):
        assert epsilon_from_history([(0.0, 0.1, 5)], DELTA, accountant) == math.inf


def test_central_epsilon_equals_rdp_accountant_stepped_by_hand():
    expected = by_hand(1.2, 0.1, 200)
    assert central_epsilon(noise_multiplier=1.2, sample_rate=0.1, rounds=200, delta=DELTA) == pytest.approx(expected)
    assert central_epsilon(noise_multiplier=1.2, sample_rate=0.1, rounds=0, delta=DELTA) == 0.0


@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
def test_calibrate_noise_reaches_target_from_below(target):
    sigma = calibrate_noise(target_epsilon=target, delta=DELTA, sample_rate=0.02, steps=1500)
    reference = RDPAccountant()
    reference.history = [(sigma, 0.02, 1500)]
    assert 0.9 * target <= reference.get_epsilon(delta=DELTA) <= target


def test_calibrate_noise_with_prv_and_impossible_target():
    sigma = calibrate_noise(target_epsilon=3.0, delta=DELTA, sample_rate=0.05, steps=200, accountant="prv")
    assert 2.7 <= epsilon_from_history([(sigma, 0.05, 200)], DELTA, "prv") <= 3.0
    with pytest.raises(PrivacyError, match="no noise multiplier"):
        calibrate_noise(target_epsilon=1e-9, delta=DELTA, sample_rate=1.0, steps=10_000)


def test_would_exceed_compares_the_next_round_with_the_budget():
    history, next_round = [(1.0, 0.1, 100)], [(1.0, 0.1, 100)]
    after = by_hand(1.0, 0.1, 200)
    assert would_exceed(history, next_round, delta=DELTA, max_epsilon=0.99 * after)
    assert not would_exceed(history, next_round, delta=DELTA, max_epsilon=1.01 * after)


# -- local DP-SGD -------------------------------------------------------------------------


def test_local_epsilon_is_cumulative_and_history_restores_it():
    x, y = synthetic(120)
    indices = np.arange(120)
    dp_model = DPSGDModel(create_model("mlp", seed=0), max_grad_norm=1.0)
    assert local_sample_rate(120, 12) == 0.1 and steps_per_epoch(0.1) == 10
    history, epsilons = (), []
    for round_number in range(3):
        result, history = train_round(dp_model, history, x, y, indices, seed=round_number)
        assert result.steps == 10
        epsilons.append(epsilon_from_history(history, DELTA))
    assert epsilons[0] < epsilons[1] < epsilons[2]
    assert history == ((1.0, 0.1, 30),)
    assert epsilons[2] == pytest.approx(by_hand(1.0, 0.1, 30))

    # The server keeps the history as JSON; another process picks the client up from it.
    stored = json.loads(json.dumps(history))
    assert epsilon_from_history(stored, DELTA) == epsilons[2]
    elsewhere = DPSGDModel(create_model("mlp"), max_grad_norm=1.0)
    elsewhere.set_weights(flatten(dp_model.get_parameters()))
    result, history = train_round(elsewhere, stored, x, y, indices, seed=3, local_epochs=2)
    assert result.steps == 20 and history == ((1.0, 0.1, 50),)
    assert epsilon_from_history(history, DELTA) == pytest.approx(by_hand(1.0, 0.1, 50))


def test_same_seed_same_round_in_any_process():
    x, y = synthetic(60)
    runs = []
    for _ in range(2):
        dp_model = DPSGDModel(create_model("mlp", seed=0), max_grad_norm=1.0)
        result, history = train_round(dp_model, [(1.0, 0.2, 5)], x, y, np.arange(60), seed=7)
        runs.append((flatten(dp_model.get_parameters()), result.loss, history))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1:] == runs[1][1:]
    assert runs[0][2] == ((1.0, 0.2, 10),)


def test_one_dp_model_serves_clients_with_their_own_accountants():
    x, y = synthetic(100)
    dp_model = DPSGDModel(create_model("mlp", seed=0), max_grad_norm=1.0)
    small = accountant_from_history([], "rdp")
    large = accountant_from_history([(1.0, 0.5, 4)], "rdp")  # a client seen before
    dp_model.train(
        x,
        y,
        np.arange(20),
        local_epochs=1,
        batch_size=5,
        learning_rate=0.1,
        noise_multiplier=1.0,
        accountant=small,
        seed=1,
    )
    dp_model.train(
        x,
        y,
        np.arange(20, 100),
        local_epochs=1,
        batch_size=5,
        learning_rate=0.1,
        noise_multiplier=1.0,
        accountant=large,
        seed=2,
    )
    assert small.history == [(1.0, 0.25, 4)]
    assert large.history == [(1.0, 0.5, 4), (1.0, 0.0625, 16)]


@pytest.mark.parametrize("mode", MODES)
def test_parameter_names_are_clean_and_weights_load(mode):
    plain = create_model("cnn", seed=1)
    dp_model = DPSGDModel(create_model("cnn", seed=2), max_grad_norm=1.0, grad_sample_mode=mode)
    prefixed = any(name.startswith("_module.") for name, _ in dp_model.module.named_parameters())
    assert prefixed == (mode != "bookkeeping")  # Opacus wraps the model; bookkeeping hooks it in place
    assert list(dp_model.get_parameters()) == list(get_parameters(plain))
    dp_model.set_weights(flatten(get_parameters(plain)))
    assert torch.equal(flatten(dp_model.get_parameters()), flatten(get_parameters(plain)))


def test_poisson_batches_include_each_example_with_probability_q():
    indices = torch.arange(1000)
    batches = list(poisson_batches(indices, sample_rate=0.05, steps=400, generator=torch.Generator().manual_seed(0)))
    sizes = torch.tensor([len(b) for b in batches], dtype=torch.float64)
    assert len(batches) == 400
    assert sizes.mean().item() == pytest.approx(50, rel=0.03)  # binomial(1000, 0.05): sd of the mean 0.34
    assert sizes.var().item() == pytest.approx(1000 * 0.05 * 0.95, rel=0.25)
    counts = torch.bincount(torch.cat(batches), minlength=1000).to(torch.float64)
    assert counts.mean().item() == pytest.approx(20, rel=0.03)


@pytest.mark.parametrize("mode", MODES)
def test_clipping_bounds_a_huge_example(mode):
    x, y = synthetic(8)
    x[3] *= 1e4  # one example whose gradient is enormous
    learning_rate, max_norm = 0.1, 0.5
    per_sample = per_sample_gradients(create_model("mlp", seed=0), x, y)
    assert per_sample.norm(dim=1).max() > 1e3 * max_norm

    before, after = one_full_batch_step(
        mode, x, y, noise_multiplier=0.0, max_norm=max_norm, learning_rate=learning_rate, seed=0
    )

    update = after - before
    assert update.norm() <= learning_rate * max_norm * (1 + 1e-4)
    expected = -learning_rate * clipped_sum(per_sample, max_norm) / len(y)  # mean over E[B] = N
    torch.testing.assert_close(update, expected, atol=1e-6, rtol=1e-3)


@pytest.mark.parametrize("mode", MODES)
def test_noise_on_the_summed_gradient_has_std_sigma_c(mode):
    x, y = synthetic(8)
    learning_rate, max_norm, sigma = 0.1, 0.5, 1.5
    clipped = clipped_sum(per_sample_gradients(create_model("mlp", seed=0), x, y), max_norm)
    noises = []
    for seed in range(3):
        before, after = one_full_batch_step(
            mode, x, y, noise_multiplier=sigma, max_norm=max_norm, learning_rate=learning_rate, seed=seed
        )
        noise = -(after - before) * len(y) / learning_rate - clipped  # (P,) the added Gaussian
        assert noise.std().item() == pytest.approx(sigma * max_norm, rel=0.02)  # P ≈ 2e5 draws
        assert abs(noise.mean().item()) < 5 * sigma * max_norm / math.sqrt(noise.numel())
        noises.append(noise)
    assert not torch.allclose(noises[0], noises[1])
    _, again = one_full_batch_step(
        mode, x, y, noise_multiplier=sigma, max_norm=max_norm, learning_rate=learning_rate, seed=0
    )
    torch.testing.assert_close(-(again - before) * len(y) / learning_rate - clipped, noises[0])


@pytest.mark.parametrize("noise_multiplier", [0.0, 1.0])
@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn-dp"])
def test_bookkeeping_steps_equal_opacus_per_sample_gradient_steps(name, noise_multiplier, monkeypatch):
    x, y = synthetic(4)
    x[2] *= 1e4  # clipped whenever it is drawn
    batches = []

    def recorded(indices, **kwargs):
        for batch in poisson_batches(indices, **kwargs):
            batches.append(batch.tolist())
            yield batch

    monkeypatch.setattr(differential_privacy, "poisson_batches", recorded)
    after = {}
    for mode in ("hooks", "bookkeeping"):
        model = create_model(name, seed=0)
        before = flatten(get_parameters(model)).clone()
        accountant = make_accountant("rdp")
        DPSGDModel(model, max_grad_norm=0.5, grad_sample_mode=mode).train(
            x, y, np.arange(4), local_epochs=2, batch_size=1, learning_rate=0.1,
            noise_multiplier=noise_multiplier, accountant=accountant, seed=4,
        )  # fmt: skip
        assert accountant.history == [(noise_multiplier, 0.25, 8)]  # empty batches are steps too
        after[mode] = flatten(get_parameters(model))

    assert batches[:8] == batches[8:]  # both modes saw the same batches, among them:
    assert [] in batches and any(2 in batch and len(batch) > 1 for batch in batches)
    assert not torch.allclose(after["bookkeeping"], before)
    torch.testing.assert_close(after["bookkeeping"], after["hooks"], rtol=0, atol=1e-5)


def with_hidden(layer: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), layer, nn.Flatten(), nn.Linear(16, 10))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (with_hidden(nn.LayerNorm(16)), r"layer 2 \(LayerNorm\)"),
        (with_hidden(nn.PReLU()), r"layer 2 \(PReLU\)"),
        (with_hidden(nn.Conv2d(16, 16, 1, groups=4)), r"groups=1.* 2 \(Conv2d\)"),
        (nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 10)), r"layer 0 \(Embedding\)"),
    ],
)
def test_bookkeeping_refuses_layers_it_cannot_clip(model, message):
    with pytest.raises(PrivacyError, match=message):
        DPSGDModel(model, max_grad_norm=1.0, grad_sample_mode="bookkeeping")


def test_training_survives_empty_poisson_batches_and_learns():
    x, y = synthetic(10)
    dp_model = DPSGDModel(create_model("mlp", seed=0), max_grad_norm=1.0)
    result, history = train_round(
        dp_model, (), x, y, np.arange(10), seed=0, local_epochs=3, batch_size=1, noise_multiplier=0.3,
        learning_rate=0.5,
    )  # P(empty) = 0.35 a step
    assert result.steps == 30 and history == ((0.3, 0.1, 30),)
    assert all(torch.isfinite(p).all() for p in dp_model.get_parameters().values())

    x, y = synthetic(400, seed=1)
    learner, history, losses = DPSGDModel(create_model("mlp", seed=0), max_grad_norm=1.0), (), []
    for round_number in range(3):
        result, history = train_round(
            learner, history, x, y, np.arange(400), seed=round_number, batch_size=40, noise_multiplier=0.5,
            learning_rate=0.5,
        )  # fmt: skip
        losses.append(result.loss)
    assert losses[2] < 0.8 * losses[0]


# -- central DP ----------------------------------------------------------------------------


def test_clip_update_bounds_the_norm_and_keeps_small_updates():
    generator = torch.Generator().manual_seed(0)
    large = 10 * torch.randn(10_000, generator=generator)
    clipped, norm = clip_update(large, 2.0)
    assert norm == pytest.approx(large.double().norm().item())
    assert clipped.norm().item() == pytest.approx(2.0, rel=1e-6)
    torch.testing.assert_close(clipped, large * (2.0 / norm))
    small = torch.full((100,), 0.01)
    unchanged, small_norm = clip_update(small, 2.0)
    assert torch.equal(unchanged, small) and small_norm == pytest.approx(0.1)
    with pytest.raises(ValueError, match="non-finite"):
        clip_update(torch.tensor([1.0, math.nan]), 1.0)


def test_central_noise_std_is_sigma_c_over_expected_participants():
    total = torch.randn(200_000, generator=torch.Generator().manual_seed(1))
    sigma, max_norm, participants = 1.3, 0.7, 10.0
    averaged = central_noise(
        total,
        noise_multiplier=sigma,
        max_norm=max_norm,
        expected_participants=participants,
        generator=torch.Generator().manual_seed(2),
    )
    noise = averaged - total / participants
    assert noise.std().item() == pytest.approx(sigma * max_norm / participants, rel=0.02)
    assert abs(noise.mean().item()) < 5 * sigma * max_norm / participants / math.sqrt(noise.numel())
    again = central_noise(
        total,
        noise_multiplier=sigma,
        max_norm=max_norm,
        expected_participants=participants,
        generator=torch.Generator().manual_seed(2),
    )
    assert torch.equal(again, averaged)


# -- failing closed -------------------------------------------------------------------------


@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_model_is_refused(affine):
    # affine=False has no parameters, so Opacus's own validator lets it through; it still
    # normalises each example by its batch-mates in training, so we refuse it too.
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, affine=affine), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    for mode in MODES:
        with pytest.raises(PrivacyError, match="BatchNorm"):
            DPSGDModel(model, max_grad_norm=1.0, grad_sample_mode=mode)


def model_with(**changes):
    settings = dict(max_grad_norm=1.0)
    return lambda: DPSGDModel(create_model("mlp"), **{**settings, **changes})


def training_with(**changes):
    """A DP-SGD round of 10 examples with one setting changed."""
    x, y = synthetic(10)
    settings = dict(local_epochs=1, batch_size=2, learning_rate=0.1, noise_multiplier=1.0, seed=0)
    indices = changes.pop("indices", np.arange(10))
    accountant = make_accountant("rdp")
    return lambda: DPSGDModel(create_model("mlp"), max_grad_norm=1.0).train(
        x, y, indices, accountant=accountant, **{**settings, **changes}
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (training_with(noise_multiplier=-0.1), r"noise_multiplier must be >= 0, got -0.1"),
        (model_with(max_grad_norm=0.0), r"max_grad_norm must be > 0"),
        (model_with(max_grad_norm=-1.0), "max_grad_norm"),
        (training_with(indices=np.arange(0)), r"num_examples must be an integer >= 1, got 0"),
        (training_with(batch_size=0), "batch_size"),
        (training_with(local_epochs=0), "local_epochs"),
        (training_with(learning_rate=0.0), "learning_rate"),
        (training_with(max_steps=-1), "max_steps"),
        (lambda: accountant_from_history([], "moments"), "accountant must be one of rdp, prv, pld; got 'moments'"),
        (lambda: epsilon_from_history([], DELTA, "moments"), "accountant must be one of"),
        (lambda: accountant_from_history([(1.0, 0.1)], "rdp"), "history entries are"),
        (lambda: accountant_from_history([(1.0, 0.1, -1)], "rdp"), "steps"),
        (model_with(grad_sample_mode="ew"), "grad_sample_mode must be one of bookkeeping, ghost, hooks"),
        (lambda: clip_update(torch.ones(3), 0.0), "max_norm"),
        (
            lambda: central_noise(
                torch.ones(3), noise_multiplier=-1.0, max_norm=1.0, expected_participants=1, generator=None
            ),
            "noise_multiplier",
        ),
        (
            lambda: central_noise(
                torch.ones(3), noise_multiplier=1.0, max_norm=1.0, expected_participants=0, generator=None
            ),
            "expected_participants",
        ),
        (lambda: central_epsilon(noise_multiplier=-1.0, sample_rate=0.1, rounds=10, delta=DELTA), "noise_multiplier"),
        (lambda: central_epsilon(noise_multiplier=1.0, sample_rate=1.5, rounds=10, delta=DELTA), "sample_rate"),
        (lambda: central_epsilon(noise_multiplier=1.0, sample_rate=0.1, rounds=10, delta=1.0), "delta"),
        (lambda: epsilon_from_history([(1.0, 0.1, 10)], 0.0), r"delta must be in \(0, 1\), got 0.0"),
        (lambda: epsilon_from_history([(1.0, 0.0, 10)], DELTA), r"sample_rate must be in \(0, 1\], got 0.0"),
        (lambda: calibrate_noise(target_epsilon=1.0, delta=DELTA, sample_rate=1.2, steps=10), "sample_rate"),
        (lambda: calibrate_noise(target_epsilon=0.0, delta=DELTA, sample_rate=0.1, steps=10), "target_epsilon"),
        (
            lambda: calibrate_noise(target_epsilon=1.0, delta=DELTA, sample_rate=0.1, steps=10, epsilon_tolerance=0.0),
            "epsilon_tolerance",
        ),
        (lambda: calibrate_noise(target_epsilon=1.0, delta=2.0, sample_rate=0.1, steps=10), "delta"),
        (lambda: would_exceed([], [(1.0, 0.1, 1)], delta=DELTA, max_epsilon=0.0), "max_epsilon"),
        (lambda: local_sample_rate(0, 10), "num_examples"),
    ],
)
def test_bad_parameters_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# -- adaptive clipping (Andrew et al. 2021) ---------------------------------------------------


def test_adaptive_update_noise_keeps_the_total_rdp_of_sigma():
    from differential_privacy import adaptive_update_noise

    # RDP of a Gaussian with multiplier z at order α is α / (2 z²); the count query has
    # sensitivity 1/2 relative to its std, so the two compose to α / (2σ²) exactly.
    sigma, count_stddev = 1.3, 0.8
    update_noise = adaptive_update_noise(noise_multiplier=sigma, count_stddev=count_stddev)
    assert update_noise > sigma
    assert 1 / update_noise**2 + 1 / (2 * count_stddev) ** 2 == pytest.approx(1 / sigma**2, rel=1e-12)
    with pytest.raises(PrivacyError, match="adaptive clipping needs"):
        adaptive_update_noise(noise_multiplier=1.0, count_stddev=0.4)  # needs σ < 2σ_b


def test_clip_norm_follows_the_geometric_rule():
    from differential_privacy import adapt_clip_norm, count_noise_stddev

    generator = torch.Generator().manual_seed(0)
    noise = float(torch.normal(0.0, 1e-3, size=(1,), generator=torch.Generator().manual_seed(0)))
    clip, fraction = adapt_clip_norm(
        2.0, unclipped_count=8, participants=10, expected_participants=10, target_quantile=0.5, learning_rate=0.2,
        count_stddev=1e-3, generator=generator,
    )  # fmt: skip
    assert fraction == pytest.approx((8 + noise) / 10)
    assert clip == pytest.approx(2.0 * math.exp(-0.2 * (fraction - 0.5)))  # most fit: C shrinks
    grown, _ = adapt_clip_norm(
        2.0, unclipped_count=1, participants=10, expected_participants=10, target_quantile=0.5, learning_rate=0.2,
        count_stddev=1e-3, generator=None,
    )  # fmt: skip
    assert grown > 2.0 and count_noise_stddev(100) == 5.0


def test_the_unclipped_count_is_centred_so_one_client_moves_it_by_a_half():
    """Andrew et al.'s σ_Δ (adaptive_update_noise) assumes the released count moves by at most ½ when
    one client is added or removed: Σ(b_k − ½). Without noise, adding a client whose update fits
    (b = 1) or not (b = 0) moves the released fraction by exactly ±½ / expected participants."""
    from differential_privacy import adapt_clip_norm

    def fraction(unclipped: int, participants: int) -> float:
        return adapt_clip_norm(
            1.0, unclipped_count=unclipped, participants=participants, expected_participants=10,
            target_quantile=0.5, learning_rate=0.2, count_stddev=1e-12, generator=None,
        )[1]  # fmt: skip

    base = fraction(4, 7)
    assert base == pytest.approx((4 - 3.5) / 10 + 0.5)  # hand-computed: 0.55
    assert fraction(5, 8) - base == pytest.approx(0.05)  # + a client that fits: +½/10
    assert fraction(4, 8) - base == pytest.approx(-0.05)  # + a client that is clipped: −½/10
    assert fraction(10, 10) == pytest.approx(1.0) and fraction(0, 10) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="unclipped_count"):
        fraction(8, 7)


@pytest.mark.parametrize("name", list(experiment_config.IMAGE_MODELS))
@pytest.mark.parametrize("mode", MODES)
def test_every_image_model_the_app_offers_trains_under_dp_sgd(name, mode):
    from model import create_model, flatten, get_parameters

    model = create_model(name, seed=0)
    before = flatten(get_parameters(model)).clone()
    x, y = torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,))
    accountant = make_accountant("rdp")
    result = DPSGDModel(model, max_grad_norm=1.0, grad_sample_mode=mode).train(
        x, y, np.arange(40), local_epochs=1, batch_size=10, learning_rate=0.1,
        noise_multiplier=1.0, accountant=accountant, seed=0,
    )  # fmt: skip
    assert result.steps == 4 and accountant.history == [(1.0, 0.25, 4)]
    assert not torch.equal(before, flatten(get_parameters(model)))


@pytest.mark.parametrize("name", list(experiment_config.TEXT_MODELS))
@pytest.mark.parametrize("mode", MODES)
def test_text_models_train_lora_under_dp_sgd_or_fail_closed(name, mode):
    from model import create_model, flatten, get_parameters

    model = create_model(name, num_classes=3, seed=0, pretrained=name == "minilm-lora", lora_dropout=0.0)
    before = flatten(get_parameters(model)).clone()
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(5, 900, (24, 12), generator=generator)  # token ids, no padding
    y = torch.randint(0, 2, (24, 3), generator=generator).float()
    y[0, 1] = -1.0  # an unscored label
    private = DPSGDModel(model, max_grad_norm=1.0, grad_sample_mode=mode)
    train = functools.partial(
        private.train, x, y, np.arange(24), local_epochs=1, batch_size=8, learning_rate=0.1,
        noise_multiplier=1.0, accountant=make_accountant("rdp"), seed=0,
    )  # fmt: skip
    if mode == "bookkeeping":  # Linear layers over (B, T, features): no per-example bound, so no training
        with pytest.raises(PrivacyError, match="bookkeeping clipping needs"):
            train()
        return
    assert train().steps == 3
    assert not torch.equal(before, flatten(get_parameters(model)))
