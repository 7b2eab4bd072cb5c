"""visualization: hand-made frames in, the traces they must produce out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

import visualization as viz


@pytest.fixture
def rounds() -> pd.DataFrame:
    """Two experiments, 3 and 2 rounds, given out of order to check sorting."""
    return pd.DataFrame({
        "experiment_id": [7, 7, 7, 9, 9],
        "round": [2, 1, 3, 1, 2],
        "accuracy": [0.60, 0.30, 0.80, 0.50, 0.70],
        "loss": [1.2, 2.0, 0.7, 1.5, 1.0],
        "epsilon": [0.4, 0.2, 0.6, 0.0, 0.0],
        "delta": [1e-5] * 5,
        "seconds": [1.0, 2.0, 3.0, 0.5, 0.5],
        "eval_seconds": [0.1, 0.2, 0.3, 0.05, 0.05],
        "bytes_up": [100, 200, 300, 10, 20],
        "bytes_down": [1_000, 2_000, 3_000, 50, 60],
    })  # fmt: skip


def xy(trace) -> tuple[list, list]:
    return list(trace.x), list(trace.y)


def test_accuracy_figure_draws_one_sorted_line_per_experiment(rounds):
    figure = viz.accuracy_figure(rounds, labels={7: "seven", 9: "nine"})

    assert isinstance(figure, go.Figure)
    assert [trace.name for trace in figure.data] == ["seven", "nine"]
    assert xy(figure.data[0]) == ([1, 2, 3], [0.30, 0.60, 0.80])
    assert xy(figure.data[1]) == ([1, 2], [0.50, 0.70])
    assert figure.layout.yaxis.tickformat == ".0%"
    assert figure.layout.showlegend is True


def test_single_experiment_has_no_legend_and_a_default_name(rounds):
    figure = viz.loss_figure(rounds[rounds.experiment_id == 9])

    assert len(figure.data) == 1
    assert figure.data[0].name == "#9"
    assert xy(figure.data[0]) == ([1, 2], [1.5, 1.0])
    assert figure.layout.showlegend is False


def test_epsilon_figure_plots_the_cumulative_budget(rounds):
    figure = viz.epsilon_figure(rounds[rounds.experiment_id == 7])

    assert xy(figure.data[0]) == ([1, 2, 3], [0.2, 0.4, 0.6])


def test_client_loss_figure_draws_one_line_per_client():
    clients = pd.DataFrame({
        "round": [1, 1, 2, 2, 3],
        "client_id": [0, 3, 0, 3, 3],
        "num_examples": [10] * 5,
        "steps": [1] * 5,
        "loss": [2.0, 2.2, 1.5, 1.8, 1.1],
        "epsilon": [0.0] * 5,
    })  # fmt: skip

    figure = viz.client_loss_figure(clients)

    assert [trace.name for trace in figure.data] == ["client 0", "client 3"]
    assert xy(figure.data[0]) == ([1, 2], [2.0, 1.5])
    assert xy(figure.data[1]) == ([1, 2, 3], [2.2, 1.8, 1.1])


def test_label_heatmap_shows_the_counts_unchanged():
    counts = [[5, 0, 3], [1, 7, 2]]

    figure = viz.label_heatmap(counts)

    (heatmap,) = figure.data
    assert isinstance(heatmap, go.Heatmap)
    np.testing.assert_array_equal(np.asarray(heatmap.z), np.array(counts))
    assert list(heatmap.x) == ["0", "1", "2"]
    assert list(heatmap.y) == ["client 0", "client 1"]


def test_bytes_figure_has_download_and_upload_bars_per_round(rounds):
    one = rounds[rounds.experiment_id == 7]

    figure = viz.bytes_figure(one)

    down, up = figure.data
    assert (down.name, up.name) == ("server → clients", "clients → server")
    assert xy(down) == ([1, 2, 3], [2_000, 1_000, 3_000])
    assert xy(up) == ([1, 2, 3], [200, 100, 300])
    assert figure.layout.barmode == "group"


def test_bytes_figure_sums_several_experiments_per_round(rounds):
    down, up = viz.bytes_figure(rounds).data

    assert xy(down) == ([1, 2, 3], [2_050, 1_060, 3_000])
    assert xy(up) == ([1, 2, 3], [210, 120, 300])


def test_time_figure_stacks_training_and_evaluation_seconds(rounds):
    training, evaluation = viz.time_figure(rounds[rounds.experiment_id == 7]).data

    assert xy(training) == ([1, 2, 3], [2.0, 1.0, 3.0])
    assert xy(evaluation) == ([1, 2, 3], [0.2, 0.1, 0.3])


@pytest.mark.parametrize(
    "make",
    [viz.accuracy_figure, viz.loss_figure, viz.epsilon_figure, viz.bytes_figure, viz.time_figure],
)
def test_empty_rounds_give_an_empty_figure_with_a_note(rounds, make):
    figure = make(rounds.iloc[:0])

    assert len(figure.data) == 0
    assert [annotation.text for annotation in figure.layout.annotations] == ["no data yet"]


def test_no_client_rounds_give_an_empty_client_figure():
    figure = viz.client_loss_figure(pd.DataFrame(columns=["round", "client_id", "loss"]))

    assert len(figure.data) == 0 and figure.layout.annotations[0].text == "no data yet"


@pytest.mark.parametrize("label_counts", [None, []])
def test_missing_label_counts_give_an_empty_heatmap(label_counts):
    figure = viz.label_heatmap(label_counts)

    assert len(figure.data) == 0
    assert figure.layout.annotations[0].text == "no data yet"


def test_few_rounds_get_integer_ticks(rounds):
    assert viz.accuracy_figure(rounds).layout.xaxis.dtick == 1


def test_epsilon_figure_draws_the_budget_and_target_as_flat_lines_to_the_planned_round(rounds):
    figure = viz.epsilon_figure(rounds[rounds.experiment_id == 7], budget=4.0, target=3.0, last_round=10)

    curve, target, budget = figure.data
    assert (curve.name, xy(curve)) == ("ε spent", ([1, 2, 3], [0.2, 0.4, 0.6]))
    assert (target.name, xy(target), target.line.dash) == ("target ε = 3", ([1, 10], [3.0, 3.0]), "dot")
    assert (budget.name, xy(budget), budget.line.dash) == ("budget ε = 4", ([1, 10], [4.0, 4.0]), "dash")
    assert figure.layout.showlegend is True


@pytest.mark.parametrize("budget", [None, 0.0])
def test_epsilon_figure_without_a_budget_has_only_the_curve(rounds, budget):
    figure = viz.epsilon_figure(rounds[rounds.experiment_id == 7], budget=budget, target=0.0)

    assert len(figure.data) == 1 and figure.layout.showlegend is False


def test_budget_line_after_one_round_still_spans_two_rounds(rounds):
    first = rounds[(rounds.experiment_id == 7) & (rounds["round"] == 1)]

    _, budget = viz.epsilon_figure(first, budget=2.0).data

    assert list(budget.x) == [1, 2]


@pytest.fixture
def points() -> pd.DataFrame:
    """Four private runs (one not audited, one without a final ε) and their audits."""
    return pd.DataFrame({
        "experiment_id": [3, 4, 5, 6],
        "label": ["#3", "#4", "#5", "#6"],
        "name": ["#3 sweep ε=8", "#4 sweep ε=1", "#5 central", "#6 broken"],
        "mode": ["local", "local", "central", "local"],
        "epsilon": [8.0, 1.0, 2.5, None],
        "accuracy": [0.9, 0.7, 0.8, 0.5],
        "auc": [0.56, None, 0.51, 0.6],
    })  # fmt: skip


def test_privacy_utility_figure_puts_each_run_at_its_epsilon_and_accuracy_by_mode(points):
    figure = viz.privacy_utility_figure(points)

    by_mode = {trace.name: trace for trace in figure.data}
    assert set(by_mode) == {"local DP", "central DP"}
    assert xy(by_mode["local DP"]) == ([1.0, 8.0], [0.7, 0.9])  # sorted by ε; #6 has no ε
    assert list(by_mode["local DP"].text) == ["#4", "#3"]
    assert xy(by_mode["central DP"]) == ([2.5], [0.8])
    assert by_mode["local DP"].marker.color != by_mode["central DP"].marker.color
    assert figure.layout.xaxis.type is None  # 1 … 8 is not spread enough for a log axis


def test_privacy_utility_figure_uses_a_log_axis_for_a_wide_sweep(points):
    wide = points.assign(epsilon=[0.5, 8.0, 2.0, 1.0])

    assert viz.privacy_utility_figure(wide).layout.xaxis.type == "log"


def test_audit_figure_skips_runs_without_an_audit_and_marks_guessing(points):
    figure = viz.audit_figure(points)

    by_mode = {trace.name: trace for trace in figure.data}
    assert xy(by_mode["local DP"]) == ([8.0], [0.56])
    assert xy(by_mode["central DP"]) == ([2.5], [0.51])
    (guessing,) = figure.layout.shapes
    assert (guessing.y0, guessing.y1) == (0.5, 0.5)


@pytest.mark.parametrize("make", [viz.privacy_utility_figure, viz.audit_figure])
def test_no_private_runs_give_an_empty_privacy_figure_with_a_note(points, make):
    figure = make(points.iloc[:0])

    assert len(figure.data) == 0
    assert [annotation.text for annotation in figure.layout.annotations] == ["no data yet"]


def test_audit_figure_without_any_audit_is_empty(points):
    assert len(viz.audit_figure(points.assign(auc=None)).data) == 0
