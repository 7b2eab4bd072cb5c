from __future__ import annotations

import numpy as np
import pytest
import torch

import experiment_config
from strategies import STRATEGIES, ClientUpdate, FedAvg, make_strategy, weighted_average


def test_fedavg_matches_numpy_weighted_average():
    rng = np.random.default_rng(0)
    sizes = [10, 250, 3_000]
    weights = [rng.normal(size=1_000).astype(np.float32) * (i + 1) for i in range(3)]
    updates = [ClientUpdate(i, torch.from_numpy(w), n, 1, 0.0) for i, (w, n) in enumerate(zip(weights, sizes))]
    result = FedAvg().aggregate(torch.zeros(1_000), updates)
    np.testing.assert_allclose(result.numpy(), np.average(np.stack(weights), axis=0, weights=sizes), rtol=1e-6, atol=1e-6)


def test_fedavg_of_one_client_is_that_client():
    weights = torch.randn(50)
    assert torch.equal(FedAvg().aggregate(torch.zeros(50), [ClientUpdate(0, weights, 7, 1, 0.0)]), weights)


def test_weighted_average_rejects_bad_weights():
    with pytest.raises(ValueError):
        weighted_average([torch.ones(2)], [0])
    with pytest.raises(ValueError):
        weighted_average([torch.ones(2), torch.ones(2)], [1])
    with pytest.raises(ValueError):
        weighted_average([torch.ones(2), torch.ones(2)], [2, -1])


def test_registry_matches_config_names():
    assert set(STRATEGIES) == set(experiment_config.STRATEGIES)
    assert all(make_strategy(name).name == name for name in STRATEGIES)
    with pytest.raises(ValueError, match="federation.strategy"):
        make_strategy("nope")
