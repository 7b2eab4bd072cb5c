"""q-FedAvg's Lipschitz estimate L (`federation.qffl_lipschitz`): the step against the paper's
Algorithm 3 written out in numpy at that L, its default L = 1/learning_rate, and the config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.strategies import ClientUpdate, QFedAvg, fedavg, make_strategy
from experiment_config import ExperimentConfig


def updates_with(losses: list[float], sizes: list[int], seed: int = 0) -> tuple[torch.Tensor, list[ClientUpdate]]:
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(9, generator=generator, dtype=torch.float64)
    updates = [
        ClientUpdate(client, start + 0.5 * torch.randn(9, generator=generator, dtype=torch.float64), size, steps=4,
                     loss=7.0, global_loss=loss)
        for client, (loss, size) in enumerate(zip(losses, sizes, strict=True))
    ]  # fmt: skip
    return start, updates


def paper_step(w: np.ndarray, local: list[np.ndarray], losses: list[float], sizes: list[int], *, q: float,
               lipschitz: float) -> np.ndarray:  # fmt: skip
    """Algorithm 3 with L given: Δw_k = L(w − w̄_k), Δ_k = F_k^q Δw_k, h_k = q F_k^(q−1)‖Δw_k‖² + L F_k^q,
    each weighted by p_k = n_k/Σn; w − ΣΔ_k / Σh_k."""
    p = np.asarray(sizes) / np.sum(sizes)
    deltas, hs = [], []
    for w_k, f_k, p_k in zip(local, losses, p, strict=True):
        f_k = f_k + 1e-10
        grad = lipschitz * (w - w_k)
        deltas.append(p_k * f_k**q * grad)
        hs.append(p_k * (q * f_k ** (q - 1) * np.sum(grad**2) + lipschitz * f_k**q))
    return w - np.sum(deltas, axis=0) / np.sum(hs)


@pytest.mark.parametrize(("q", "lipschitz"), [(1.0, 2.0), (0.1, 0.5), (3.0, 40.0)])
def test_the_step_at_a_given_lipschitz_estimate_is_the_papers(q, lipschitz):
    start, updates = updates_with([0.4, 1.9, 1.1], [30, 50, 20])
    expected = paper_step(start.numpy(), [u.weights.numpy() for u in updates], [0.4, 1.9, 1.1], [30, 50, 20],
                          q=q, lipschitz=lipschitz)  # fmt: skip

    result = QFedAvg(q=q, client_learning_rate=0.05, lipschitz=lipschitz).aggregate(start, updates)

    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-12)


def test_no_estimate_means_one_over_the_learning_rate_as_in_the_paper():
    start, updates = updates_with([0.4, 1.9], [10, 10])

    default = QFedAvg(q=1.0, client_learning_rate=0.05).aggregate(start, updates)

    torch.testing.assert_close(default, QFedAvg(q=1.0, client_learning_rate=0.05, lipschitz=20.0).aggregate(
        start, updates), rtol=1e-12, atol=0)  # fmt: skip


def test_a_smaller_estimate_takes_a_longer_step_and_q_zero_ignores_it():
    start, updates = updates_with([0.8, 1.5], [10, 40], seed=2)

    steps = [float((start - QFedAvg(q=1.0, client_learning_rate=0.05, lipschitz=lip).aggregate(start, updates)).norm())
             for lip in (20.0, 2.0, 0.2)]  # fmt: skip

    assert steps[0] < steps[1] < steps[2]
    for lipschitz in (0.2, 20.0):  # q = 0: FedAvg, whatever L
        result = QFedAvg(q=0.0, client_learning_rate=0.05, lipschitz=lipschitz).aggregate(start, updates)
        torch.testing.assert_close(result, fedavg(start, updates), rtol=1e-12, atol=1e-14)


def test_the_config_key_reaches_the_strategy_and_is_checked():
    federation = ExperimentConfig.from_dict(
        {"federation": {"strategy": "qfedavg", "qffl_q": 0.5, "qffl_lipschitz": 1.5}}).federation  # fmt: skip
    strategy = make_strategy(federation)

    assert isinstance(strategy, QFedAvg) and strategy.lipschitz == 1.5
    assert make_strategy(ExperimentConfig().replace("federation", strategy="qfedavg").federation).lipschitz == 20.0
    with pytest.raises(ValueError, match=r"federation\.qffl_lipschitz"):
        ExperimentConfig.from_dict({"federation": {"strategy": "qfedavg", "qffl_lipschitz": -1.0}})
