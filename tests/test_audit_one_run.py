"""The one-run audit (Steinke, Nasr & Jagielski 2023): the bound against the paper's Algorithm 2 written
independently (scipy), hand-computed values and a simulation of ε-DP guessing; the canaries where the
partitions are built; a tiny non-private run that provably leaks; and the result stored, reported, printed."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
import torch
from scipy import stats

from data_handler import client_partitions, insert_canaries, split_holdout, subset
from database import ExperimentStore
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun
from model import flatten, get_parameters
from privacy.one_run_audit import count_correct, epsilon_lower_bound, one_run_audit, p_value
from privacy.report import render_markdown
from runs import service
from runs.workers import StopSignals

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def paper_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The paper's Algorithm 2 (Appendix D) as printed, loop and all, on scipy's binomial."""
    q = 1 / (1 + math.exp(-eps))
    beta = stats.binom.sf(v - 1, r, q)  # P[Binomial(r, q) >= v]
    alpha, window = 0.0, 0.0
    for i in range(1, v + 1):
        window += stats.binom.pmf(v - i, r, q)  # P[v > Binomial(r, q) >= v − i]
        alpha = max(alpha, window / i)
    return min(beta + alpha * delta * 2 * m, 1.0)


@pytest.mark.parametrize(
    "m, r, v, eps, delta",
    [(1000, 100, 80, 1.0, 1e-5), (1000, 100, 80, 0.0, 0.0), (50, 20, 15, 2.0, 1e-3), (10_000, 2000, 1200, 0.5, 1e-5),
     (1000, 1000, 1000, 8.0, 1e-5), (200, 200, 3, 0.1, 0.01), (30, 7, 7, 3.0, 0.0), (5000, 40, 39, 6.0, 1e-4)],
)  # fmt: skip
def test_p_value_is_the_papers_algorithm_2(m, r, v, eps, delta):
    expected = paper_p_value(m, r, v, eps, delta)

    assert p_value(canaries=m, guesses=r, correct=v, epsilon=eps, delta=delta) == pytest.approx(expected, rel=1e-9)


def test_known_values_by_hand():
    # ε = 0, δ = 0: a fair coin per guess. 4 of 4 right: 1/16; 3 or more of 4: 5/16.
    assert p_value(canaries=10, guesses=4, correct=4, epsilon=0.0, delta=0.0) == pytest.approx(1 / 16)
    assert p_value(canaries=10, guesses=4, correct=3, epsilon=0.0, delta=0.0) == pytest.approx(5 / 16)
    # δ term by hand, r = 2, v = 1, ε = 0: P[Bin >= 1] = 3/4, max_i P[1 − i <= Bin < 1]/i = P[Bin = 0] = 1/4.
    assert p_value(canaries=10, guesses=2, correct=1, epsilon=0.0, delta=0.01) == pytest.approx(0.75 + 0.25 * 0.2)
    # All r guesses right, δ = 0: p = q^r, so the bound solves q^r = 0.05: ε = logit(0.05^(1/r)).
    for r in (5, 10, 40):
        q = 0.05 ** (1 / r)
        assert epsilon_lower_bound(canaries=r, guesses=r, correct=r, delta=0.0) == pytest.approx(
            math.log(q / (1 - q)), abs=1e-9
        )
    assert epsilon_lower_bound(canaries=10, guesses=10, correct=10, delta=0.0) == pytest.approx(1.0518732, abs=1e-6)
    # Four right guesses of four cannot reject even ε = 0 at 95% (1/16 > 0.05); nothing right, nothing shown.
    assert epsilon_lower_bound(canaries=4, guesses=4, correct=4, delta=0.0) == 0.0
    assert epsilon_lower_bound(canaries=100, guesses=50, correct=0, delta=1e-5) == 0.0


def test_the_bound_sits_where_the_p_value_crosses_five_percent():
    args = {"canaries": 1000, "guesses": 200, "correct": 170, "delta": 1e-5}
    bound = epsilon_lower_bound(**args)

    assert bound > 0
    assert p_value(epsilon=bound, **args) < 0.05 <= p_value(epsilon=bound + 1e-6, **args)


def test_the_bound_grows_with_right_guesses_and_shrinks_with_delta_and_canaries():
    by_correct = [epsilon_lower_bound(canaries=1000, guesses=200, correct=v, delta=1e-5) for v in range(110, 201, 10)]
    by_delta = [epsilon_lower_bound(canaries=1000, guesses=200, correct=180, delta=d) for d in (0, 1e-6, 1e-4, 1e-3)]
    by_canaries = [epsilon_lower_bound(canaries=m, guesses=200, correct=180, delta=1e-4) for m in (200, 1000, 4000)]
    by_confidence = [epsilon_lower_bound(canaries=1000, guesses=200, correct=180, delta=1e-5, confidence=c)
                     for c in (0.5, 0.9, 0.95, 0.99)]  # fmt: skip

    assert all(a < b for a, b in itertools.pairwise(by_correct))
    assert all(a > b for a, b in itertools.pairwise(by_delta))
    assert all(a > b for a, b in itertools.pairwise(by_canaries))
    assert all(a > b for a, b in itertools.pairwise(by_confidence))


@pytest.mark.parametrize("true_epsilon", [0.5, 1.0, 2.0])
def test_epsilon_dp_guessing_beats_its_epsilon_at_most_five_percent_of_the_time(true_epsilon):
    # Against an ε-DP run the best guesser is randomized response: each of r guesses right with
    # probability q = e^ε/(1+e^ε). Exactly, over every count of right guesses: the 95% lower bound may
    # exceed the true ε with probability at most 5%, and (as the test is tight) not far below it.
    guesses, q = 200, 1 / (1 + math.exp(-true_epsilon))
    bounds = np.array([epsilon_lower_bound(canaries=1000, guesses=guesses, correct=v, delta=0.0)
                       for v in range(guesses + 1)])  # fmt: skip

    too_high = stats.binom.pmf(np.nonzero(bounds > true_epsilon)[0], guesses, q).sum()

    assert 0.02 < too_high <= 0.05
    assert np.all(np.diff(bounds) >= 0)


def test_count_correct_is_brute_force_guessing():
    generator = np.random.default_rng(3)
    for _ in range(20):
        scores, included = generator.integers(0, 5, size=30).astype(float), generator.random(30) < 0.5
        k = int(generator.integers(0, 16))
        order = sorted(range(30), key=lambda i: (-scores[i], i))  # highest first, ties in canary order
        expected = sum(included[i] for i in order[:k]) + sum(not included[i] for i in order[30 - k :])
        assert count_correct(scores, included, k) == expected


def test_scores_that_separate_prove_leakage_and_noise_proves_none():
    generator = np.random.default_rng(0)
    included = generator.random(1000) < 0.5

    leaky = one_run_audit(np.where(included, 1.0, 0.0) + generator.normal(0, 0.5, 1000), included, delta=1e-5)
    blind = one_run_audit(generator.normal(size=1000), included, delta=1e-5)

    assert leaky["epsilon_lower_bound"] > 1.0 and leaky["correct"] > 0.8 * leaky["guesses"]
    assert blind["epsilon_lower_bound"] == 0.0 and blind["guesses"] == 1000  # nothing shown: every guess reported
    # The best of several guess counts is paid for: never above that count's own 95% bound.
    alone = epsilon_lower_bound(canaries=1000, guesses=leaky["guesses"], correct=leaky["correct"], delta=1e-5)
    assert leaky["epsilon_lower_bound"] < alone
    assert (leaky["canaries"], leaky["included"]) == (1000, int(included.sum()))
    single = one_run_audit(np.where(included, 1.0, 0.0), included, delta=1e-5, fractions=(0.2,))
    assert single["guesses"] == 200 and single["correct"] == count_correct(np.where(included, 1.0, 0.0), included, 100)
    assert single["epsilon_lower_bound"] == epsilon_lower_bound(canaries=1000, guesses=200, correct=single["correct"],
                                                                delta=1e-5)  # fmt: skip


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="correct <= guesses <= canaries"):
        p_value(canaries=10, guesses=20, correct=5, epsilon=1.0, delta=0.0)
    with pytest.raises(ValueError, match="both included and excluded"):
        one_run_audit([0.1, 0.2, 0.3], [True, True, True], delta=1e-5)


@pytest.mark.parametrize(
    "values, message",
    [({"privacy": {"audit": "one_run"}, "system": {"runtime": "flower"}}, "system.runtime = 'in-process'"),
     ({"privacy": {"audit": "one_run"}, "data": {"dataset": "ngss"}, "model": {"name": "minilm-lora"}},
      "data.dataset = 'mnist'"),
     ({"privacy": {"audit": "one_run", "audit_canaries": 1}}, "between 2 and 9999"),
     ({"privacy": {"audit": "one_run"}, "data": {"max_test_examples": 800}}, "between 2 and 799"),
     ({"privacy": {"audit": "all"}}, "privacy.audit must be one of loss, one_run")],
)  # fmt: skip
def test_configs_the_canaries_cannot_serve_are_refused(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ExperimentConfig.from_dict(values)
    assert ExperimentConfig.from_dict({"privacy": {"audit": "one_run", "audit_canaries": 0},
                                       "system": {"runtime": "flower"}}).privacy.audit_size() == 0  # fmt: skip


# -- the canaries, where the partitions are built ----------------------------------------------------


def test_canaries_are_relabelled_test_images_half_of_them_in_one_client_each(mnist):
    data = subset(mnist, max_train=600, max_test=1000, seed=0)
    parts = [np.arange(0, 300), np.arange(300, 600)]

    canaried, joined, canaries = insert_canaries(data, parts, count=400, seed=5)

    rows = torch.from_numpy(canaries.rows)
    assert len(canaried.train_y) == 1000 and len(canaried.test_y) == 600  # taken out of the test split
    assert torch.equal(canaried.train_x[:600], data.train_x)
    # Every canary image is a test image (gone from the test split) with a label that is not its own.
    flat_test = data.test_x.flatten(1)
    for row in canaries.rows[:50]:
        (source,) = torch.nonzero((flat_test == canaried.train_x[row].flatten()).all(dim=1)).flatten().tolist()
        assert canaried.train_y[row] != data.test_y[source]
        assert not (canaried.test_x.flatten(1) == canaried.train_x[row].flatten()).all(dim=1).any()
    assert canaried.train_y[rows].min() >= 0 and canaried.train_y[rows].max() < 10
    # Included canaries are in exactly one partition, excluded ones in none; the rest is as it was.
    members = np.concatenate(joined)
    assert sorted(members[members >= 600]) == sorted(canaries.rows[canaries.included])
    assert [np.array_equal(j[j < 600], p) for j, p in zip(joined, parts)] == [True, True]
    assert 160 < canaries.included.sum() < 240
    again = insert_canaries(data, parts, count=400, seed=5)[2]
    assert np.array_equal(again.included, canaries.included)  # seeded
    assert not np.array_equal(insert_canaries(data, parts, count=400, seed=6)[2].included, canaries.included)


def test_without_the_audit_nothing_changes(mnist):
    data = subset(mnist, max_train=600, max_test=1000, seed=0)
    parts = [np.arange(0, 300), np.arange(300, 600)]

    same_data, same_parts, canaries = insert_canaries(data, parts, count=0, seed=5)

    assert same_data is data and same_parts is parts and canaries is None


def tiny(audit: str = "one_run", canaries: int = 200, **federation: int) -> ExperimentConfig:
    """Two clients memorising 300 examples: non-private, quick, and leaky enough to show."""
    values = {"num_clients": 2, "clients_per_round": 2, "rounds": 1, "local_epochs": 20, "batch_size": 20}
    return ExperimentConfig.from_dict({
        "model": {"name": "mlp"},
        "data": {"max_train_examples": 300, "max_test_examples": 1000},
        "federation": {**values, **federation, "learning_rate": 0.1},
        "privacy": {"audit": audit, "audit_canaries": canaries},
        "system": {"num_workers": 1, "seed": 0},
    })  # fmt: skip


def test_runs_without_canaries_are_bit_identical(mnist):
    def final_weights(config: ExperimentConfig) -> torch.Tensor:
        run = FederatedRun(config, data=mnist)
        list(run.rounds())
        return flatten(get_parameters(run.model))

    off = FederatedRun(tiny("one_run", 0, local_epochs=1), data=mnist)
    reference = split_holdout(client_partitions(off.config, off.data), 0.0, seed=0)[0]

    assert off.canaries is None and [np.array_equal(a, b) for a, b in zip(off.partitions, reference)] == [True, True]
    loss_audit = final_weights(tiny("loss", local_epochs=1))
    assert torch.equal(final_weights(tiny("one_run", 0, local_epochs=1)), loss_audit)
    assert not torch.equal(final_weights(tiny("one_run", 200, local_epochs=1)), loss_audit)  # the test can fail


def test_a_tiny_non_private_run_provably_leaks(mnist):
    run = FederatedRun(tiny(), data=mnist)
    list(run.rounds())

    audit = run.audit(0)

    assert audit["method"] == "one_run" and audit["canaries"] == 200
    assert audit["epsilon_lower_bound"] > 0.5
    assert audit["included_loss"] < audit["excluded_loss"]
    assert run.audit(0) == audit  # the canaries and their scores are seeded


def test_the_result_is_stored_reported_and_printed(db_url, capsys):
    import cli

    store, config = ExperimentStore(db_url), tiny(local_epochs=1)
    experiment_id = service.create(store, config, name="one run")
    service.execute(store, experiment_id, config, reporter=service.SilentReporter(), signals=StopSignals(handle=False))

    experiment = store.get_experiment(experiment_id)
    audit = experiment.audit
    assert audit["method"] == "one_run" and "auc" not in audit
    text = render_markdown(experiment, store.rounds_frame([experiment_id]))
    assert "## Empirical ε (one training run)" in text
    assert f"{audit['correct']} of {audit['guesses']} guesses" in text and "no formal guarantee" in text
    assert cli.main(["show", str(experiment_id), "--db", db_url]) == 0
    assert "empirical ε >=" in capsys.readouterr().out
