"""DP-FedAvg's server side: the noised sum by the server, and spread over the clients under
secure aggregation (distributed noise), checked against numpy and the plain central sum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import differential_privacy as dp
from engine.client_population import stream_seed
from privacy.dp_fedavg import NOISE_SHARE_TAG, CentralSum, DistributedNoiseSum, noise_floor, plan_privacy
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun, run_experiment


def central_config(*, secure: bool, **federation) -> ExperimentConfig:
    values = {
        "num_clients": 10, "clients_per_round": 5, "rounds": 2, "batch_size": 20, "learning_rate": 0.1,
        "secure_aggregation": secure, "secagg_threshold": 0.8, **federation,
    }  # fmt: skip
    return ExperimentConfig.from_dict(
        {
            "data": {"max_train_examples": 1_000, "max_test_examples": 500},
            "model": {"name": "mlp"},
            "federation": values,
            "privacy": {"mode": "central", "noise_multiplier": 0.8, "max_grad_norm": 0.5},
            "system": {"num_workers": 1, "seed": 3},
        }
    )


def distributed(run: FederatedRun, start: torch.Tensor) -> DistributedNoiseSum:
    """Round 1's distributed-noise sum of `run`, from `start`, at the run's C."""
    return DistributedNoiseSum(run.config, run.privacy, start, 1, clip_norm=run.state.clip_norm, profiles=run.profiles)


def test_plan_privacy_takes_the_schedule_not_the_run():
    config = central_config(secure=False).replace("privacy", mode="local", target_epsilon=2.0)
    every_round = plan_privacy(config, partition_sizes=[100] * 10)
    half = plan_privacy(config, partition_sizes=[100] * 10, participation=dict.fromkeys(range(10), 1))
    # Fewer rounds of training per client need less noise for the same ε; more data, too.
    assert half.noise_multiplier < every_round.noise_multiplier
    assert plan_privacy(config, partition_sizes=[400] * 10).noise_multiplier < every_round.noise_multiplier
    assert dp.epsilon_from_history(
        [(every_round.noise_multiplier, 20 / 100, 2 * 5)], 1e-5
    ) == pytest.approx(2.0, abs=0.02)  # 2 rounds × 1 epoch × 5 steps at q = 20/100


def test_noise_floor_is_the_threshold_share_of_the_population():
    assert noise_floor(central_config(secure=True, secagg_threshold=0.8)) == 8
    assert noise_floor(central_config(secure=True, secagg_threshold=0.01)) == 2
    assert noise_floor(central_config(secure=True, secagg_threshold=0.55)) == 6  # ⌈5.5⌉


def test_distributed_sum_is_clipped_updates_plus_every_participants_noise_share(mnist):
    config = central_config(secure=True)
    run = FederatedRun(config, data=mnist)
    clients = run.sample_clients(1)
    statuses = run._plan_round(1, clients)
    start = torch.zeros(300)
    updates = {c: torch.randn(300, generator=torch.Generator().manual_seed(c)) * (0.02 + 0.1 * c) for c in clients}
    total = distributed(run, start)
    for client, update in updates.items():
        total.add(client, update)
    summed = total.result(statuses)
    new_weights, skipped = summed.weights, summed.skipped
    # Reference in numpy: clip each sampled update to C, add each of the n clients' noise share
    # N(0, σ²C²/m) drawn from its own stream, divide by the expected count q·n.
    sigma, clip, floor = 0.8, 0.5, noise_floor(config)
    expected_sum = np.zeros(300)
    for update in updates.values():
        vector = update.double().numpy()
        expected_sum += vector * min(1.0, clip / np.linalg.norm(vector))
    for client in range(10):
        share = np.random.default_rng(stream_seed(3, 1, client, NOISE_SHARE_TAG)).normal(0.0, 1.0, 301)
        expected_sum += share[:-1] * sigma * clip / math.sqrt(floor)
    assert skipped == ""
    np.testing.assert_allclose(new_weights.double().numpy(), expected_sum / (0.5 * 10), atol=1e-6)  # 2^-24 grid
    stats = summed.secure_aggregation
    assert stats["participants"] == 10 and stats["cover_clients"] == 10 - len(clients)
    assert stats["distributed_noise"] and stats["noise_floor"] == floor


@pytest.mark.parametrize(("threshold", "ratio"), [(1.0, 1.0), (0.5, math.sqrt(2.0))])
def test_released_noise_is_never_below_the_accounted_gaussian(mnist, threshold, ratio):
    # All 10 clients stay; each adds σ²C²/m: the sum carries 10/m times the central variance.
    config = central_config(secure=True, secagg_threshold=threshold)
    run = FederatedRun(config, data=mnist)
    summed = distributed(run, torch.zeros(40_000)).result(run._plan_round(1, []))
    released, skipped = summed.weights, summed.skipped
    assert skipped == ""
    central_std = 0.8 * 0.5 / (0.5 * 10)  # σC / (q·n): what CentralSum adds
    assert float(released.double().std()) == pytest.approx(central_std * ratio, rel=0.02)
    # The server-side sum for comparison: the same standard deviation as threshold 1.0.
    server = CentralSum(config, run.privacy, torch.zeros(40_000), 1, clip_norm=0.5).result({}).weights
    assert float(server.double().std()) == pytest.approx(central_std, rel=0.02)


def test_too_few_clients_left_for_the_noise_releases_nothing(mnist):
    config = central_config(secure=True, secagg_threshold=0.9, dropout_probability=0.5, dropout_stage="during")
    run = FederatedRun(config, data=mnist)
    start = torch.ones(50)
    summed = distributed(run, start).result(run._plan_round(1, run.sample_clients(1)))
    released, skipped = summed.weights, summed.skipped
    assert "distributed noise needs 9" in skipped
    assert torch.equal(released, start)


def test_adaptive_clipping_moves_the_clip_norm_from_the_securely_summed_count(mnist):
    config = central_config(secure=True, secagg_threshold=1.0).replace(
        "privacy", adaptive_clipping=True, target_quantile=0.5, clip_learning_rate=0.2, noise_multiplier=0.3
    )
    run = FederatedRun(config, data=mnist)
    clients = run.sample_clients(1)
    total = distributed(run, torch.zeros(20))
    for client in clients:
        total.add(client, torch.full((20,), 1e-3))  # norm far below C: every update unclipped
    summed = total.result(run._plan_round(1, clients))
    # The count share noise is σ_b/√m each; each sampled client sends its indicator − ½ (here 1 − ½);
    # rebuild b̃ = Σ/(q·n) + ½ in numpy and apply C·exp(−η(b̃ − γ)).
    expected = 0.5 * 10
    count = len(clients) / 2 + sum(
        np.random.default_rng(stream_seed(3, 1, c, NOISE_SHARE_TAG)).normal(0.0, 1.0, 21)[-1]
        * dp.count_noise_stddev(expected) / math.sqrt(10)
        for c in range(10)
    )
    assert summed.next_clip_norm == pytest.approx(0.5 * math.exp(-0.2 * (count / expected + 0.5 - 0.5)), rel=1e-6)
    assert run.state.clip_norm == 0.5  # the sum returns the next C; it writes nothing into the run


def test_central_dp_under_secure_aggregation_trains_with_the_same_epsilon(mnist):
    # Little noise (σ = 0.02) so that 5 expected clients can learn; ε is large but accounted the same.
    secure = run_experiment(central_config(secure=True, rounds=2).replace("privacy", noise_multiplier=0.02), data=mnist)
    plain = run_experiment(central_config(secure=False, rounds=2).replace("privacy", noise_multiplier=0.02), data=mnist)
    assert [r.epsilon for r in secure] == pytest.approx([r.epsilon for r in plain])  # same accountant, same σ
    assert all(r.skipped == "" and r.secure_aggregation["distributed_noise"] for r in secure)
    assert secure[-1].accuracy > 0.5 and plain[-1].accuracy > 0.5
