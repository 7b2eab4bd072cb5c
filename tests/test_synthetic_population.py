"""data.examples_per_client: a synthetic population larger than the data (issue 22's 100,000 clients),
each client a seeded draw of distinct examples, refused where it would misstate privacy."""

from __future__ import annotations

import numpy as np
import pytest

from data_handler import synthetic_population
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
