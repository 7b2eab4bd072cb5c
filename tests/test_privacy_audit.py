"""The membership-inference audit: AUC and advantage against brute force, and on real models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from experiment_config import ExperimentConfig
from engine import analysis
from federated_learning import FederatedRun
from model import create_model
from privacy.audit import (
    advantage_chance_level,
    audit_model,
    auc_chance_sd,
    example_losses,
    membership_advantage,
    membership_auc,
)


def brute_auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """Every (member, non-member) pair: 1 if the member scores higher, 1/2 if tied."""
    wins = members[:, None] > nonmembers[None, :]
    ties = members[:, None] == nonmembers[None, :]
    return float(wins.mean() + 0.5 * ties.mean())


def brute_advantage(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """TPR − FPR of "member iff score >= t" for every candidate t, including ±inf."""
    candidates = [*np.concatenate([members, nonmembers]), np.inf, -np.inf]
    return max(float((members >= t).mean() - (nonmembers >= t).mean()) for t in candidates)


@pytest.mark.parametrize("seed", range(6))
def test_auc_and_advantage_match_brute_force_with_ties(seed):
    generator = np.random.default_rng(seed)
    members = generator.integers(0, 6, size=generator.integers(1, 40)).astype(float)  # many ties
    nonmembers = generator.integers(0, 5, size=generator.integers(1, 40)).astype(float)

    auc = membership_auc(members, nonmembers)
    advantage, threshold = membership_advantage(members, nonmembers)

    assert auc == pytest.approx(brute_auc(members, nonmembers), abs=1e-12)
    u = stats.mannwhitneyu(members, nonmembers, alternative="two-sided").statistic  # U of the first sample
    assert auc == pytest.approx(u / (len(members) * len(nonmembers)), abs=1e-12)
    assert advantage == pytest.approx(brute_advantage(members, nonmembers), abs=1e-12)
    at_threshold = (members >= threshold).mean() - (nonmembers >= threshold).mean()
    assert at_threshold == pytest.approx(advantage, abs=1e-12)


def test_continuous_scores_match_brute_force_and_scipy_ks():
    generator = np.random.default_rng(7)
    members, nonmembers = generator.normal(0.3, 1, 57), generator.normal(0, 1.2, 81)

    advantage, _ = membership_advantage(members, nonmembers)

    assert membership_auc(members, nonmembers) == pytest.approx(brute_auc(members, nonmembers), abs=1e-12)
    assert advantage == pytest.approx(brute_advantage(members, nonmembers), abs=1e-12)
    # The advantage is the one-sided two-sample KS statistic: members' CDF below non-members'.
    assert advantage == pytest.approx(stats.ks_2samp(members, nonmembers, alternative="less").statistic, abs=1e-12)


def test_separated_scores_give_auc_one_and_full_advantage():
    members, nonmembers = np.array([5.0, 6.0, 7.0]), np.array([-1.0, 0.0, 4.9])
    assert membership_auc(members, nonmembers) == 1.0
    assert membership_auc(nonmembers, members) == 0.0
    advantage, threshold = membership_advantage(members, nonmembers)
    assert advantage == 1.0 and 4.9 < threshold <= 5.0
    assert membership_advantage(nonmembers, members)[0] == 0.0  # never negative


def test_identical_distributions_give_chance():
    generator = np.random.default_rng(1)
    members, nonmembers = generator.normal(size=3000), generator.normal(size=3000)
    assert membership_auc(members, nonmembers) == pytest.approx(0.5, abs=4 * auc_chance_sd(3000, 3000))
    assert membership_advantage(members, nonmembers)[0] < advantage_chance_level(3000, 3000, level=0.999)
    same = np.full(10, 0.25)
    assert membership_auc(same, same) == 0.5 and membership_advantage(same, same)[0] == 0.0


def test_chance_levels_hold_under_the_null():
    generator = np.random.default_rng(2)
    n, m, repeats = 150, 120, 400
    aucs, advantages = [], []
    for _ in range(repeats):
        members, nonmembers = generator.normal(size=n), generator.normal(size=m)
        aucs.append(membership_auc(members, nonmembers))
        advantages.append(membership_advantage(members, nonmembers)[0])
    assert np.std(aucs) == pytest.approx(auc_chance_sd(n, m), rel=0.15)
    below = np.mean(np.array(advantages) <= advantage_chance_level(n, m, level=0.95))
    assert 0.9 <= below <= 0.995  # asymptotic 95%, a little conservative at these sizes


@pytest.mark.parametrize("bad", [[], [0.0, float("nan")], [float("inf")]])
def test_empty_or_non_finite_scores_are_rejected(bad):
    with pytest.raises(ValueError, match="member_scores"):
        membership_auc(bad, [0.0])
    with pytest.raises(ValueError, match="nonmember_scores"):
        membership_advantage([0.0], bad)


def test_example_losses_match_cross_entropy_and_restore_mode():
    model = create_model("mlp", seed=3)
    model.train()
    x, y = torch.randn(25, 1, 28, 28), torch.randint(0, 10, (25,))

    losses = example_losses(model, x, y, batch_size=7)

    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(x), y, reduction="none").double().numpy()
    assert losses.shape == (25,) and np.allclose(losses, expected, atol=1e-6)
    assert model.training


def overfit_config(**federation: int) -> ExperimentConfig:
    values = {"num_clients": 1, "clients_per_round": 1, "rounds": 1, "local_epochs": 40, "batch_size": 20}
    values.update(federation)
    return ExperimentConfig.from_dict({
        "model": {"name": "mlp"},
        "data": {"max_train_examples": 300, "max_test_examples": 1000},
        "federation": {**values, "learning_rate": 0.1},
        "system": {"num_workers": 1, "seed": 0},
    })  # fmt: skip


def test_an_overfit_model_leaks_membership(mnist):
    run = FederatedRun(overfit_config(), data=mnist)
    assert run.audit(300) is None  # nothing trained yet
    results = list(run.rounds())
    assert results[-1].accuracy > 0.6  # it learned something, and memorised the 300 examples

    audit = run.audit(1000)

    assert (audit["members"], audit["non_members"]) == (300, 300)  # all trained examples, as many held out
    assert audit["auc"] > 0.6 and audit["advantage"] > 0.15
    assert audit["member_loss"] < audit["non_member_loss"]
    assert run.audit(1000) == audit  # seeded
    assert run.audit(0) is None


def test_a_fresh_model_shows_no_leakage(mnist):
    generator = np.random.default_rng(0)
    members = torch.from_numpy(generator.choice(len(mnist.train_y), 1000, replace=False))
    held_out = torch.from_numpy(generator.choice(len(mnist.test_y), 1000, replace=False))

    audit = audit_model(
        create_model("mlp", seed=0), mnist.train_x[members], mnist.train_y[members],
        mnist.test_x[held_out], mnist.test_y[held_out],
    )  # fmt: skip

    assert audit["auc"] == pytest.approx(0.5, abs=0.05)
    assert audit["advantage"] < 0.1
    assert (audit["members"], audit["non_members"]) == (1000, 1000)


def test_members_come_only_from_clients_that_trained(mnist, monkeypatch):
    run = FederatedRun(overfit_config(num_clients=4, local_epochs=1), data=mnist)
    list(run.rounds())
    (trained,) = run.state.trained_clients
    seen = {}

    def record(model, members_x, members_y, nonmembers_x, nonmembers_y):
        seen.update(members=members_x, held_out=nonmembers_x)
        return {}

    monkeypatch.setattr(analysis, "audit_model", record)
    run.audit(1000)

    own = run.data.train_x[torch.from_numpy(run.partitions[trained])].flatten(1)
    assert len(seen["members"]) == len(own) == len(seen["held_out"])
    matches = (seen["members"].flatten(1)[:, None, :] == own[None, :, :]).all(dim=2)  # (members, own)
    assert matches.any(dim=1).all()  # every member is one of that client's examples
