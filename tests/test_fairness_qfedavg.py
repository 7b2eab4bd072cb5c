"""q-FedAvg (Li et al. 2020): the aggregation rule against the paper's formulas written out in numpy,
q = 0 against FedAvg, its config checks, and the round loop handing it F_k of the GLOBAL model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.client_trainers import candidate_loss
from engine.strategies import ClientUpdate, QFedAvg, fedavg, make_strategy, qfedavg, with_global_losses
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun
from model import create_model, flatten, get_parameters, set_parameters, unflatten

LEARNING_RATE = 0.1


def updates_with(sizes: list[int], losses: list[float | None], *, seed: int = 0) -> tuple[torch.Tensor, list]:
    generator = torch.Generator().manual_seed(seed)
    global_weights = torch.randn(7, generator=generator, dtype=torch.float64)
    updates = [
        ClientUpdate(client, global_weights + 0.3 * torch.randn(7, generator=generator, dtype=torch.float64),
                     size, steps=3, loss=9.9, global_loss=loss)  # `loss` is local training's: never read
        for client, (size, loss) in enumerate(zip(sizes, losses, strict=True))
    ]  # fmt: skip
    return global_weights, updates


def paper_update(
    w: np.ndarray, local: list[np.ndarray], losses: list[float], q: float, lr: float, p: list[float]
) -> np.ndarray:
    """Algorithm 3 of the paper, each device's Δ_k and h_k weighted by p_k, written out in numpy."""
    lipschitz = 1 / lr
    deltas, hs = [], []
    for w_k, f_k, p_k in zip(local, losses, p, strict=True):
        f_k = f_k + 1e-10
        grad = lipschitz * (w - w_k)
        deltas.append(p_k * f_k**q * grad)
        hs.append(p_k * (q * f_k ** (q - 1) * np.sum(grad**2) + lipschitz * f_k**q))
    return w - np.sum(deltas, axis=0) / np.sum(hs)


@pytest.mark.parametrize("q", [0.5, 1.0, 5.0])
def test_equal_sizes_match_the_papers_unweighted_sums(q: float):
    global_weights, updates = updates_with([40, 40, 40], [0.3, 1.7, 2.4])
    expected = paper_update(global_weights.numpy(), [u.weights.numpy() for u in updates], [0.3, 1.7, 2.4],
                            q, LEARNING_RATE, [1.0, 1.0, 1.0])  # fmt: skip
    result = qfedavg(global_weights, updates, q=q, learning_rate=LEARNING_RATE)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-12)


def test_unequal_sizes_weight_both_sums_by_their_share_of_examples():
    global_weights, updates = updates_with([10, 30, 60], [0.8, 0.2, 1.5])
    expected = paper_update(global_weights.numpy(), [u.weights.numpy() for u in updates], [0.8, 0.2, 1.5],
                            2.0, LEARNING_RATE, [0.1, 0.3, 0.6])  # fmt: skip
    result = make_strategy(
        ExperimentConfig().federation.__class__(strategy="qfedavg", qffl_q=2.0, learning_rate=LEARNING_RATE)
    ).aggregate(global_weights, updates)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-12)


def test_q_zero_is_fedavg_with_unequal_sizes_and_losses():
    global_weights, updates = updates_with([5, 50, 500], [0.1, 3.0, 0.7], seed=3)
    result = QFedAvg(q=0.0, client_learning_rate=0.05).aggregate(global_weights, updates)
    reference = np.average(np.stack([u.weights.numpy() for u in updates]), axis=0, weights=[5, 50, 500])
    np.testing.assert_allclose(result.numpy(), reference, rtol=1e-12)
    torch.testing.assert_close(result, fedavg(global_weights, updates), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("q", [0.0, 1.0, 3.0])
def test_each_clients_share_of_the_step_grows_as_its_loss_to_the_q(q: float):
    """w − w_new = Σ_k c_k (w − w̄_k) with c_k ∝ p_k F_k^q: solve for c by least squares and compare ratios."""
    global_weights, updates = updates_with([50, 50], [0.1, 2.0], seed=1)
    step = global_weights - QFedAvg(q=q, client_learning_rate=LEARNING_RATE).aggregate(global_weights, updates)
    directions = np.stack([(global_weights - u.weights).numpy() for u in updates], axis=1)  # (P, 2)
    shares, *_ = np.linalg.lstsq(directions, step.numpy(), rcond=None)
    assert shares[1] / shares[0] == pytest.approx((2.0 / 0.1) ** q, rel=1e-6)


def test_the_result_keeps_the_dtype_of_the_global_weights():
    global_weights, updates = updates_with([10, 20], [0.5, 1.0])
    single = [ClientUpdate(u.client_id, u.weights.float(), u.num_examples, u.steps, u.loss, global_loss=u.global_loss)
              for u in updates]  # fmt: skip
    result = QFedAvg(q=1.0, client_learning_rate=LEARNING_RATE).aggregate(global_weights.float(), single)
    assert result.dtype == torch.float32


@pytest.mark.parametrize("losses", [[0.5, None], [0.5, -1.0], [0.5, float("nan")]])
def test_a_missing_or_invalid_global_loss_is_refused(losses):
    global_weights, updates = updates_with([10, 20], losses)
    with pytest.raises(ValueError, match="global_loss"):
        qfedavg(global_weights, updates, q=1.0, learning_rate=LEARNING_RATE)


def test_with_global_losses_fills_them_in_order():
    _, updates = updates_with([10, 20], [None, None])
    filled = with_global_losses(updates, [0.25, 1.5])
    assert [u.global_loss for u in filled] == [0.25, 1.5] and [u.loss for u in filled] == [9.9, 9.9]
    with pytest.raises(ValueError, match="one global loss per update"):
        with_global_losses(updates, [0.25])


def test_config_checks_name_the_field():
    with pytest.raises(ValueError, match=r"federation\.qffl_q"):
        ExperimentConfig.from_dict({"federation": {"strategy": "qfedavg", "qffl_q": -1.0}})
    with pytest.raises(ValueError, match="client_optimizer must be 'sgd'"):
        ExperimentConfig.from_dict({"federation": {"strategy": "qfedavg", "client_optimizer": "adamw"}})
    with pytest.raises(ValueError, match="qfedavg.*privacy.mode = 'local'"):
        ExperimentConfig.from_dict({"federation": {"strategy": "qfedavg"}, "privacy": {"mode": "local"}})
    with pytest.raises(ValueError, match="secure_aggregation"):
        ExperimentConfig.from_dict({"federation": {"strategy": "qfedavg", "secure_aggregation": True}})
    strategy = make_strategy(ExperimentConfig.from_dict(
        {"federation": {"strategy": "qfedavg", "qffl_q": 3.0, "learning_rate": 0.2}}).federation)  # fmt: skip
    assert (strategy.q, strategy.client_learning_rate, strategy.needs_global_losses) == (3.0, 0.2, True)


def small_config(strategy: str, **federation) -> ExperimentConfig:
    values = {"num_clients": 4, "clients_per_round": 3, "rounds": 2, "batch_size": 20, "learning_rate": 0.1,
              "strategy": strategy, **federation}  # fmt: skip
    return ExperimentConfig.from_dict({
        "data": {"max_train_examples": 1_200, "max_test_examples": 500, "partition": "dirichlet",
                 "dirichlet_alpha": 0.3},
        "model": {"name": "mlp"}, "federation": values, "system": {"num_workers": 1, "seed": 0},
    })  # fmt: skip


def test_q_zero_runs_exactly_like_fedavg(mnist):
    """The whole loop (F_k computed, handed over, ignored by q = 0) gives FedAvg's rounds."""
    fedavg_run = FederatedRun(small_config("fedavg"), data=mnist)
    qfedavg_run = FederatedRun(small_config("qfedavg", qffl_q=0.0), data=mnist)
    expected, got = list(fedavg_run.rounds()), list(qfedavg_run.rounds())
    torch.testing.assert_close(qfedavg_run.state.weights, fedavg_run.state.weights, rtol=1e-5, atol=1e-6)
    assert [r.accuracy for r in got] == pytest.approx([r.accuracy for r in expected], abs=1e-3)


class Recording(QFedAvg):
    """q-FedAvg that keeps the updates it was handed."""

    def aggregate(self, global_weights, updates):
        self.seen = list(updates)
        return super().aggregate(global_weights, updates)


def test_the_loop_hands_over_the_round_start_global_models_loss(mnist):
    """F_k must be the loss of the model the clients started from, on their training data, not the
    mean loss of their local training (`ClientUpdate.loss`)."""
    run = FederatedRun(small_config("qfedavg", qffl_q=1.0, rounds=1), data=mnist)
    run.state.strategy = recording = Recording(q=1.0, client_learning_rate=0.1)
    start = run.state.weights.clone()
    list(run.rounds())
    reference = create_model("mlp")
    set_parameters(reference, unflatten(start, get_parameters(reference)))
    expected = [candidate_loss(reference, run.data.train_x, run.data.train_y, run.partitions[u.client_id], seed=0,
                               round_number=1, client=u.client_id) for u in recording.seen]  # fmt: skip
    assert [u.global_loss for u in recording.seen] == pytest.approx(expected, rel=1e-5)
    assert all(u.global_loss > u.loss for u in recording.seen)  # local training lowers the loss from the start
    assert not torch.equal(flatten(get_parameters(run.model)), start)
