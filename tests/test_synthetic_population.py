"""data.examples_per_client: a synthetic population larger than the data (issue 22's 100,000 clients),
each client a seeded draw of distinct examples, refused where it would misstate privacy."""

from __future__ import annotations

import numpy as np
import pytest

from data_handler import split_holdout, synthetic_population
from experiment_config import ExperimentConfig


def test_each_client_draws_distinct_examples_and_the_clients_outnumber_the_data():
    parts = synthetic_population(50, num_clients=2_000, per_client=5, seed=3)
    assert len(parts) == 2_000
    assert all(len(p) == 5 and len(np.unique(p)) == 5 and np.all(np.diff(p) > 0) for p in parts)
    assert all(p.min() >= 0 and p.max() < 50 for p in parts)
    counts = np.bincount(np.concatenate(parts), minlength=50)  # 10,000 draws over 50 examples: ~200 each
    assert counts.min() > 130 and counts.max() < 270
    again = synthetic_population(50, num_clients=2_000, per_client=5, seed=3)
    other = synthetic_population(50, num_clients=2_000, per_client=5, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_the_population_is_one_array_whatever_its_size():
    """100,000 clients are one (clients, n) array, each client's row a view made when asked for, and nothing is
    held out: the training parts come back as they are, with one shared empty array for every holdout."""
    parts = synthetic_population(60_000, num_clients=100_000, per_client=6, seed=0)
    assert parts.rows.shape == (100_000, 6) and parts[7].base is parts.rows
    assert np.array_equal(parts[-1], parts.rows[99_999]) and len(parts[10:20]) == 10
    assert np.array_equal(np.stack(list(parts[:3])), parts.rows[:3])
    with pytest.raises(IndexError):
        parts[100_000]
    train, held_out = split_holdout(parts, 0.0, seed=0)
    assert train is parts and len(held_out) == 100_000 and len({id(h) for h in held_out}) == 1
    assert len(held_out[5]) == 0 and held_out[5].dtype == np.int64
    train, held_out = split_holdout(synthetic_population(50, num_clients=4, per_client=10, seed=1), 0.2, seed=0)
    assert [len(t) for t in train] == [8] * 4 and [len(h) for h in held_out] == [2] * 4


def test_a_client_may_take_every_example_but_not_more():
    assert [list(p) for p in synthetic_population(4, num_clients=3, per_client=4, seed=0)] == [[0, 1, 2, 3]] * 3
    with pytest.raises(ValueError, match="between 1 and the 4 training examples"):
        synthetic_population(4, num_clients=3, per_client=5, seed=0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data": {"examples_per_client": 6, "partition": "dirichlet"}}, "needs data.partition = 'iid'"),
        ({"data": {"examples_per_client": 6}, "privacy": {"mode": "local"}}, "needs privacy.mode = 'none'"),
        ({"data": {"examples_per_client": 6}, "privacy": {"mode": "central"}}, "needs privacy.mode = 'none'"),
    ],
)
def test_refusals(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_dict(changes)


def test_a_run_over_more_clients_than_examples_trains(mnist):
    from federated_learning import FederatedRun

    config = ExperimentConfig.from_dict({
        "model": {"name": "mlp"}, "data": {"max_train_examples": 300, "max_test_examples": 200, "examples_per_client": 6},
        "federation": {"num_clients": 1_000, "clients_per_round": 20, "rounds": 2},
        "privacy": {"audit_examples": 0}, "system": {"num_workers": 1},
    })  # fmt: skip
    run = FederatedRun(config, data=mnist)
    results = list(run.rounds())
    assert len(run.partitions) == 1_000 and all(len(p) == 6 for p in run.partitions)
    assert [len(r.clients) for r in results] == [20, 20]
    assert all(c.num_examples == 6 for r in results for c in r.clients)
