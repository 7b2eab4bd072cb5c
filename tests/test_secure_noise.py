"""Secure noise (`privacy.secure_noise`): DP noise from the OS's CSPRNG instead of the seed. Runs with
the same seed differ only when it is on, and the noise keeps its scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import differential_privacy as dp
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CENTRAL = [
    "model.name=mlp", "data.max_train_examples=300", "data.max_test_examples=100", "privacy.audit_examples=0",
    "system.num_workers=1", "federation.num_clients=6", "federation.clients_per_round=3", "federation.rounds=2",
    "privacy.mode=central", "privacy.noise_multiplier=1.0", "privacy.max_grad_norm=0.5",
]  # fmt: skip


def test_secure_normal_is_standard_normal_scaled_and_unseeded():
    torch.manual_seed(0)
    first = dp.secure_normal((200_000,), std=3.0)
    torch.manual_seed(0)
    second = dp.secure_normal((200_000,), std=3.0)

    assert first.dtype == torch.float64 and first.shape == (200_000,)
    assert not torch.equal(first, second)  # no seed reproduces it
    assert float(first.mean()) == pytest.approx(0.0, abs=0.05)  # sd of the mean: 3/√200000 ≈ 0.007
    assert float(first.std()) == pytest.approx(3.0, rel=0.02)
    assert stats.kstest(first.numpy() / 3.0, "norm").pvalue > 1e-4
    assert torch.isfinite(first).all()


def test_central_noise_repeats_with_a_seed_only_when_not_secure():
    zeros = torch.zeros(50_000)

    def noised(secure: bool) -> torch.Tensor:
        return dp.central_noise(zeros, noise_multiplier=2.0, max_norm=0.5, expected_participants=1.0,
                                generator=torch.Generator().manual_seed(7), secure=secure)  # fmt: skip

    assert torch.equal(noised(False), noised(False))
    secure = noised(True)
    assert not torch.equal(secure, noised(True))
    assert float(secure.std()) == pytest.approx(float(noised(False).std()), rel=0.03)  # both σC = 1
    assert float(secure.std()) == pytest.approx(1.0, rel=0.03)


def final_weights(*overrides: str, data) -> tuple[torch.Tensor, list[list[int]]]:
    run = FederatedRun(ExperimentConfig().with_overrides([*CENTRAL, *overrides]), data=data)
    picked = [[c.id for c in result.clients] for result in run.rounds()]
    return run.state.weights.clone(), picked


def test_two_central_runs_with_one_seed_differ_only_with_secure_noise(mnist):
    seeded_a, picked_a = final_weights(data=mnist)
    seeded_b, picked_b = final_weights(data=mnist)
    secure_a, _ = final_weights("privacy.secure_noise=true", data=mnist)
    secure_b, _ = final_weights("privacy.secure_noise=true", data=mnist)

    assert torch.equal(seeded_a, seeded_b) and picked_a == picked_b
    assert not torch.equal(secure_a, secure_b)
    assert not torch.equal(secure_a, seeded_a)


def test_secure_client_sampling_keeps_the_scheme(mnist):
    from engine.client_population import ParticipationTally, make_profiles, select_clients

    config = ExperimentConfig().with_overrides(
        [*CENTRAL, "privacy.secure_noise=true", "federation.client_sampling=fixed", "federation.rounds=200"]
    )
    profiles = make_profiles(config, [50] * 6)
    rounds = [select_clients(config, r, profiles=profiles, tally=ParticipationTally()) for r in range(1, 201)]

    assert all(len(ids) == 3 == len(set(ids)) and ids == sorted(ids) for ids in rounds)
    assert len({tuple(ids) for ids in rounds}) > 5
    poisson = ExperimentConfig().with_overrides([*CENTRAL, "privacy.secure_noise=true"])
    counts = [len(select_clients(poisson, r, profiles=profiles, tally=ParticipationTally())) for r in range(1, 401)]
    # Binomial(6, 0.5): mean 3, sd of the mean over 400 rounds ≈ 0.06.
    assert np.mean(counts) == pytest.approx(3.0, abs=0.3) and len(set(counts)) > 2


@pytest.mark.parametrize("mode", ["bookkeeping", "hooks"])
def test_dp_sgd_secure_noise_has_the_scale_of_the_seeded_noise(mode: str):
    """A bias-free linear model on all-zero inputs has zero gradients: one DP-SGD step moves each
    weight by −lr·N(0, σ²C²)/(q·N) alone, so the weights' change shows the noise."""
    x, y, indices = torch.zeros(100, 50), torch.zeros(100, dtype=torch.long), np.arange(100)

    def step(secure: bool) -> torch.Tensor:
        model = nn.Linear(50, 40, bias=False)
        nn.init.zeros_(model.weight)
        dp_model = dp.DPSGDModel(model, max_grad_norm=0.5, grad_sample_mode=mode)
        dp_model.train(
            x, y, indices, local_epochs=1, batch_size=100, learning_rate=1.0, noise_multiplier=4.0,
            accountant=dp.make_accountant("rdp"), seed=3, max_steps=1, secure_noise=secure,
        )  # fmt: skip
        return model.weight.detach().flatten().clone()

    seeded, secure = step(False), step(True)
    expected = 4.0 * 0.5 / 100  # σC over the expected batch of q·N = 100

    assert torch.equal(seeded, step(False))
    assert not torch.equal(secure, step(True))
    assert float(secure.std()) == pytest.approx(expected, rel=0.1)  # 2,000 weights: sd of the sd ≈ 1.6%
    assert float(seeded.std()) == pytest.approx(expected, rel=0.1)


def test_secure_noise_without_privacy_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="privacy.secure_noise needs privacy.mode = 'local' or 'central'.*no noise"):
        ExperimentConfig().with_overrides(["privacy.mode=none", "privacy.secure_noise=true"])


def test_two_local_dp_runs_with_one_seed_differ_only_with_secure_noise(mnist):
    # The setting reaches every client trainer: DP-SGD's noise and batches come from os.urandom.
    local = ["privacy.mode=local", "privacy.adaptive_clipping=false"]
    runs = {secure: [final_weights(*local, f"privacy.secure_noise={secure}", data=mnist)[0] for _ in range(2)]
            for secure in ("false", "true")}  # fmt: skip
    assert torch.equal(*runs["false"])
    assert not torch.equal(*runs["true"]) and not torch.equal(runs["true"][0], runs["false"][0])


def test_distributed_noise_shares_are_secure_too(mnist):
    """Under secure aggregation the clients add the noise: with secure noise their shares come from
    os.urandom, so the same round released twice differs; seeded shares repeat. Scale: the released
    sum of zero updates is the noise alone, N(0, σ²C²·s/m) per coordinate over q·n (s inputs, floor m)."""
    from privacy.dp_fedavg import DistributedNoiseSum, noise_floor

    overrides = [*CENTRAL, "federation.secure_aggregation=true", "federation.secagg_threshold=1.0",
                 "federation.num_clients=4", "federation.clients_per_round=2"]  # fmt: skip

    def released(*extra: str) -> torch.Tensor:
        run = FederatedRun(ExperimentConfig().with_overrides([*overrides, *extra]), data=mnist)
        start = torch.zeros(20_000)
        total = DistributedNoiseSum(run.config, run.privacy, start, 1, clip_norm=0.5, profiles=run.profiles)
        return total.result({}).weights.double()

    seeded, secure = released(), released("privacy.secure_noise=true")
    assert torch.equal(seeded, released())
    assert not torch.equal(secure, released("privacy.secure_noise=true"))
    # 4 inputs, floor m = 4: variance σ²C² exactly; divided by q·n = 2.
    config = ExperimentConfig().with_overrides(overrides)
    assert noise_floor(config) == 4
    assert float(secure.std()) == pytest.approx(1.0 * 0.5 / 2, rel=0.05)
    assert float(seeded.std()) == pytest.approx(1.0 * 0.5 / 2, rel=0.05)
