"""Fairness across clients (engine/fairness.py): the spread measures against hand-computed values,
the per-client accuracies against a model scored client by client, and the round loop, the
database and the figure carrying them."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from database import ExperimentStore
from engine.fairness import client_accuracies, fairness_summary, gini, with_client_accuracies, worst_fraction_mean
from engine.results import ClientResult, RoundResult
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun
from visualization import fairness_figure


@pytest.mark.parametrize(("values", "expected"), [
    ([0.5, 0.5, 0.5], 0.0),        # all equal
    ([0.0, 0.0], 0.0),             # all zero: equal, not undefined
    ([0.0, 1.0], 0.5),             # Σ|xi − xj| = 2; 2 / (2·2²·0.5)
    ([1.0, 2.0, 3.0, 4.0], 0.25),  # Σ|xi − xj| = 2·(1+2+3+1+2+1) = 20; 20 / (2·4²·2.5)
    ([0.0, 0.0, 0.0, 1.0], 0.75),  # one holds all: (n − 1)/n
])  # fmt: skip
def test_gini_by_hand(values, expected):
    assert gini(values) == pytest.approx(expected, abs=1e-12)
    assert gini(list(reversed(values))) == pytest.approx(expected, abs=1e-12)  # order does not matter


def test_gini_matches_the_double_sum_definition():
    values = np.random.default_rng(4).uniform(0, 1, size=23)
    double_sum = sum(abs(a - b) for a, b in itertools.product(values, values))
    assert gini(values) == pytest.approx(double_sum / (2 * len(values) ** 2 * values.mean()), rel=1e-12)


def test_gini_refuses_negative_or_no_values():
    with pytest.raises(ValueError, match="non-negative"):
        gini([0.5, -0.1])
    with pytest.raises(ValueError, match="at least one"):
        gini([])


def test_worst_ten_percent_by_hand():
    twenty = [i / 20 for i in range(20)][::-1]
    assert worst_fraction_mean(twenty) == pytest.approx((0.0 + 0.05) / 2)  # ⌊0.1·20⌋ = 2 worst
    assert worst_fraction_mean([0.9, 0.4, 0.7]) == pytest.approx(0.4)  # fewer than 10: the single worst
    assert worst_fraction_mean([0.9, 0.4, 0.7, 0.1], fraction=0.5) == pytest.approx(0.25)


def test_summary_by_hand():
    summary = fairness_summary([0.2, 0.4, 0.6])
    assert summary.mean == pytest.approx(0.4)
    assert summary.variance == pytest.approx((0.04 + 0.0 + 0.04) / 3)  # population variance
    assert summary.worst10 == pytest.approx(0.2)
    assert summary.gini == pytest.approx((2 * (0.2 + 0.4 + 0.2)) / (2 * 9 * 0.4))
    assert fairness_summary([]) is None


def test_client_accuracies_score_each_holdout_alone():
    """One forward pass over all holdouts must give what scoring each client separately gives."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 5, generator=generator), torch.randint(0, 3, (60,), generator=generator)
    model = nn.Linear(5, 3)
    holdouts = [np.array([0, 4, 9]), np.array([], dtype=np.int64), np.arange(10, 40), np.array([59])]
    got = client_accuracies(model, x, y, holdouts)
    with torch.no_grad():
        expected = {c: float((model(x[h]).argmax(1) == y[h]).float().mean()) for c, h in enumerate(holdouts) if len(h)}
    assert got.keys() == {0, 2, 3}
    assert got == pytest.approx(expected)
    assert client_accuracies(model, x, y, [np.array([], dtype=np.int64)] * 2) == {}


def round_result(clients: list[int]) -> RoundResult:
    return RoundResult(round=1, accuracy=0.5, loss=1.0, epsilon=0.0, delta=0.0, seconds=1.0, eval_seconds=0.1,
                       bytes_up=0, bytes_down=0,
                       clients=[ClientResult(id=c, num_examples=10, steps=1, loss=0.3) for c in clients])  # fmt: skip


def test_with_client_accuracies_fills_the_rows_and_the_summary():
    result = with_client_accuracies(round_result([1, 3]), {0: 0.9, 1: 0.5, 2: 0.7, 3: 0.1})
    assert [c.global_accuracy for c in result.clients] == [0.5, 0.1]
    assert result.client_accuracy_mean == pytest.approx(0.55)
    assert result.client_accuracy_worst10 == pytest.approx(0.1)
    assert result.client_accuracy_variance == pytest.approx(np.var([0.9, 0.5, 0.7, 0.1]))
    assert result.client_accuracy_gini == pytest.approx(gini([0.9, 0.5, 0.7, 0.1]))
    untouched = with_client_accuracies(round_result([1]), {})
    assert untouched.client_accuracy_gini is None and untouched.clients[0].global_accuracy is None


def holdout_config(**federation) -> ExperimentConfig:
    values = {"num_clients": 5, "clients_per_round": 2, "rounds": 2, "batch_size": 20, "learning_rate": 0.1,
              "client_holdout": 0.2, **federation}  # fmt: skip
    return ExperimentConfig.from_dict({
        "data": {"max_train_examples": 1_500, "max_test_examples": 500, "partition": "dirichlet",
                 "dirichlet_alpha": 0.1},
        "model": {"name": "mlp"}, "federation": values, "system": {"num_workers": 1, "seed": 0},
    })  # fmt: skip


def test_every_round_scores_the_aggregated_global_model_on_every_clients_holdout(mnist):
    run = FederatedRun(holdout_config(), data=mnist)
    *_, last = list(run.rounds())
    expected = {
        c: float((run.model(run.data.train_x[h]).argmax(1) == run.data.train_y[h]).float().mean())
        for c, h in enumerate(run.holdouts)
        if len(h)
    }  # the final global model, scored client by client
    summary = fairness_summary(list(expected.values()))
    assert len(expected) == 5  # all clients, not only the round's two
    assert last.client_accuracy_mean == pytest.approx(summary.mean)
    assert last.client_accuracy_worst10 == pytest.approx(min(expected.values()))
    assert last.client_accuracy_gini == pytest.approx(summary.gini)
    assert last.client_accuracy_variance == pytest.approx(summary.variance)
    for client in last.clients:  # not the local model's validation accuracy: the global one's
        assert client.global_accuracy == pytest.approx(expected[client.id])
        assert client.validation_accuracy is not None


def test_without_a_holdout_nothing_is_measured(mnist):
    (result,) = list(FederatedRun(holdout_config(client_holdout=0.0, rounds=1), data=mnist).rounds())
    assert result.client_accuracy_worst10 is None and all(c.global_accuracy is None for c in result.clients)


def test_the_store_keeps_the_fairness_columns(tmp_path):
    store = ExperimentStore(f"sqlite:///{tmp_path / 'experiments.db'}")
    experiment_id = store.create_experiment({})
    result = with_client_accuracies(round_result([0, 2]), {0: 0.8, 1: 0.6, 2: 0.2})
    store.record_round(experiment_id, result.to_dict())
    store.record_round(experiment_id, {**round_result([0]).to_dict(), "round": 2})  # nothing measured
    rounds = store.rounds_frame([experiment_id]).set_index("round")
    assert rounds.loc[1, "client_accuracy_worst10"] == pytest.approx(0.2)
    assert rounds.loc[1, "client_accuracy_gini"] == pytest.approx(gini([0.8, 0.6, 0.2]))
    assert pd.isna(rounds.loc[2, "client_accuracy_mean"])
    clients = store.client_rounds_frame(experiment_id)
    assert clients.loc[clients["round"] == 1, "global_accuracy"].tolist() == pytest.approx([0.8, 0.2])


def test_the_figure_draws_mean_and_worst_per_run_and_skips_unmeasured_rounds():
    rounds = pd.DataFrame({
        "experiment_id": [1, 1, 2, 2, 3], "round": [2, 1, 1, 2, 1],
        "client_accuracy_mean": [0.8, 0.7, 0.6, None, None], "client_accuracy_worst10": [0.5, 0.3, 0.2, None, None],
    })  # fmt: skip
    figure = fairness_figure(rounds, labels={1: "fedavg", 2: "qfedavg"})
    assert [trace.name for trace in figure.data] == ["fedavg mean", "fedavg worst 10%", "qfedavg mean",
                                                     "qfedavg worst 10%"]  # fmt: skip
    assert list(figure.data[1].y) == [0.3, 0.5] and list(figure.data[1].x) == [1, 2]
    assert figure.data[0].line.color == figure.data[1].line.color != figure.data[2].line.color
    assert figure.data[1].line.dash == "dash"
    assert not fairness_figure(pd.DataFrame({"experiment_id": [1], "round": [1]})).data  # older runs: empty
