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


# -- the federation ------------------------------------------------------------------------


@pytest.fixture
def client_rounds() -> pd.DataFrame:
    """Three rounds of clients 0-2 (not all selected each round); client 2 is malicious; sizes in bytes."""
    return pd.DataFrame({
        "round": [1, 1, 1, 2, 2, 3],
        "client_id": [0, 1, 2, 0, 2, 1],
        "status": ["ok", "dropped", "partial", "lost", "late", "ok"],
        "malicious": [False, False, True, False, True, False],
        "loss": [1.5, 0.0, 1.7, 1.2, 0.0, 0.9],
        "bytes_up": [100, 0, 120, 0, 0, 90],
        "bytes_down": [4_000, 0, 4_000, 4_000, 4_000, 4_000],
    })  # fmt: skip


def test_client_loss_figure_leaves_out_clients_that_never_trained(client_rounds):
    figure = viz.client_loss_figure(client_rounds)

    by_name = {trace.name: xy(trace) for trace in figure.data}
    # dropped (client 1, round 1) and late (client 2, round 2) carry loss 0, not a measurement; lost trained
    assert by_name == {"client 0": ([1, 2], [1.5, 1.2]), "client 1": ([3], [0.9]), "client 2": ([1], [1.7])}


def test_time_figure_adds_the_simulated_round_time_when_recorded(rounds):
    one = rounds[rounds.experiment_id == 7].assign(simulated_seconds=[4.0, 5.0, 6.0])

    training, evaluation, simulated = viz.time_figure(one).data

    assert (simulated.name, xy(simulated)) == ("simulated (network, speeds)", ([1, 2, 3], [5.0, 4.0, 6.0]))
    assert isinstance(simulated, go.Scatter) and xy(training) == ([1, 2, 3], [2.0, 1.0, 3.0])


def test_time_figure_without_simulated_time_has_only_the_bars(rounds):
    figure = viz.time_figure(rounds[rounds.experiment_id == 7].assign(simulated_seconds=0.0))

    assert [trace.name for trace in figure.data] == ["training", "evaluation"]


def test_client_profile_figure_draws_speeds_with_the_malicious_apart():
    profiles = [
        {"id": 2, "num_examples": 30, "speed": 0.5, "dropout_probability": 0.1, "bandwidth_mbps": 8.0,
         "latency_ms": 40.0, "malicious": True},
        {"id": 0, "num_examples": 20, "speed": 1.3, "dropout_probability": 0.0, "bandwidth_mbps": 20.0,
         "latency_ms": 50.0, "malicious": False},
        {"id": 1, "num_examples": 25, "speed": 0.9, "dropout_probability": 0.2, "bandwidth_mbps": 30.0,
         "latency_ms": 60.0, "malicious": False},
    ]  # fmt: skip

    figure = viz.client_profile_figure(profiles)

    honest, malicious = figure.data
    assert (honest.name, xy(honest)) == ("honest", (["client 0", "client 1"], [1.3, 0.9]))
    assert (malicious.name, xy(malicious)) == ("malicious", (["client 2"], [0.5]))
    assert honest.marker.color != malicious.marker.color
    np.testing.assert_array_equal(np.asarray(malicious.customdata), [[30, 0.1, 8.0, 40.0]])
    assert list(figure.layout.xaxis.categoryarray) == ["client 0", "client 1", "client 2"]
    (nominal,) = figure.layout.shapes
    assert (nominal.y0, nominal.y1) == (1.0, 1.0)


def test_client_profile_figure_of_an_honest_federation_has_one_unlabelled_series():
    figure = viz.client_profile_figure([{"id": 0, "speed": 1.0}, {"id": 1, "speed": 2.0}])

    (honest,) = figure.data
    assert xy(honest) == (["client 0", "client 1"], [1.0, 2.0]) and figure.layout.showlegend is False


def test_client_status_figure_maps_every_status_to_its_cell_and_colour(client_rounds):
    figure = viz.client_status_figure(client_rounds)

    grid, malicious = figure.data
    assert list(grid.x) == [1, 2, 3] and list(grid.y) == ["client 0", "client 1", "client 2"]
    expected = [["ok", "lost", None], ["dropped", None, "ok"], ["partial", "late", None]]  # None: not selected
    assert [list(row) for row in grid.customdata] == [[s or "not selected" for s in row] for row in expected]
    codes = np.asarray(grid.z, dtype=float)
    assert np.array_equal(np.isnan(codes), np.array([[s is None for s in row] for row in expected]))
    # Each status' code must land, after Plotly's normalisation to [0, 1], in a band of that status' colour.
    for row, statuses in zip(codes, expected):
        for code, status in zip(row, statuses):
            if status is None:
                continue
            position = (code - grid.zmin) / (grid.zmax - grid.zmin)
            band = [color for (low, color), (high, _) in zip(grid.colorscale, grid.colorscale[1:])
                    if low <= position <= high and low < high]  # fmt: skip
            assert band and set(band) == {viz.STATUS_COLORS[status]}, (status, position)
    assert list(grid.colorbar.ticktext) == ["ok", "partial", "lost", "late", "dropped", "failed", "excluded"]
    assert (malicious.name, xy(malicious)) == ("malicious", ([1, 2], ["client 2", "client 2"]))


def test_client_status_figure_without_malicious_clients_has_only_the_grid(client_rounds):
    figure = viz.client_status_figure(client_rounds.assign(malicious=False))

    assert len(figure.data) == 1 and figure.layout.showlegend is False


def test_upload_figure_compares_what_arrived_with_its_uncompressed_size(client_rounds):
    sent, uncompressed = viz.upload_figure(client_rounds).data

    # Arrived: round 1 clients 0 (ok) and 2 (partial), round 2 none (lost, late), round 3 client 1 (ok)
    assert (sent.name, xy(sent)) == ("sent", ([1, 2, 3], [220, 0, 90]))
    assert (uncompressed.name, xy(uncompressed)) == ("uncompressed", ([1, 2, 3], [8_000, 0, 4_000]))
    assert viz.upload_figure(client_rounds).layout.yaxis.type == "log"  # 12 kB vs 310 B: bars visible on a log axis


def test_upload_figure_keeps_a_linear_axis_when_little_is_saved(client_rounds):
    figure = viz.upload_figure(client_rounds.assign(bytes_up=client_rounds["bytes_down"] // 2))

    assert figure.layout.yaxis.type is None


def test_personalization_figure_sets_global_beside_personalized_accuracy_per_client():
    personalization = {
        "method": "finetune",
        "clients": [
            {"client": 1, "examples": 5, "global_accuracy": 0.6, "personalized_accuracy": 0.8},
            {"client": 0, "examples": 4, "global_accuracy": 0.5, "personalized_accuracy": 0.75},
        ],
        "mean_global_accuracy": 0.55,
        "mean_personalized_accuracy": 0.775,
    }  # fmt: skip

    figure = viz.personalization_figure(personalization)

    global_model, personalized = figure.data
    assert (global_model.name, xy(global_model)) == ("global model", (["client 0", "client 1"], [0.5, 0.6]))
    assert (personalized.name, xy(personalized)) == ("personalized (finetune)", (["client 0", "client 1"], [0.75, 0.8]))
    assert figure.layout.barmode == "group"


@pytest.mark.parametrize(
    ("make", "empty"),
    [
        (viz.client_profile_figure, None),
        (viz.client_profile_figure, []),
        (viz.client_status_figure, pd.DataFrame(columns=["round", "client_id", "status", "malicious"])),
        (viz.upload_figure, pd.DataFrame(columns=["round", "status", "bytes_up", "bytes_down"])),
        (viz.personalization_figure, None),
        (viz.personalization_figure, {"error": "RuntimeError: out of memory"}),
    ],
)
def test_federation_figures_without_data_are_empty_with_a_note(make, empty):
    figure = make(empty)

    assert len(figure.data) == 0
    assert [annotation.text for annotation in figure.layout.annotations] == ["no data yet"]


# -- NGSS rubric scoring --------------------------------------------------------------


def rubric(per_label: float, exact: float, micro: float, mae: float, **extra) -> dict:
    """A round's `metrics` as ngss_data.rubric_metrics writes them (only the keys the figures read)."""
    return {"per_label_accuracy": per_label, "exact_match": exact, "micro_f1": micro, "macro_f1": micro - 0.1,
            "score_mae": mae, **extra}  # fmt: skip


def test_rubric_rows_take_the_metrics_of_rubric_rounds_only():
    rounds = pd.DataFrame({
        "experiment_id": [4, 4, 5, 6],
        "round": [2, 1, 1, 1],
        "metrics": [rubric(0.8, 0.5, 0.7, 0.4), rubric(0.7, 0.25, 0.6, None), None, {"other": 1.0}],
    })  # fmt: skip

    rows = viz.rubric_rows(rounds)

    assert rows[["experiment_id", "round"]].values.tolist() == [[4, 2], [4, 1]]  # MNIST rounds have none
    assert rows["exact_match"].tolist() == [0.5, 0.25]
    assert rows["macro_f1"].tolist() == pytest.approx([0.6, 0.5])
    assert rows["score_mae"].iloc[0] == 0.4 and np.isnan(rows["score_mae"].iloc[1])  # None: no scored rows
    assert viz.rubric_rows(pd.DataFrame({"experiment_id": [], "round": [], "metrics": []})).empty


def test_rubric_figure_plots_the_shares_on_the_left_and_the_score_error_on_the_right():
    rows = viz.rubric_rows(pd.DataFrame({
        "experiment_id": [4, 4], "round": [2, 1],
        "metrics": [rubric(0.8, 0.5, 0.7, 0.4), rubric(0.7, 0.25, 0.6, 0.9)],
    }))  # fmt: skip

    figure = viz.rubric_figure(rows)

    assert [trace.name for trace in figure.data] == ["per-label accuracy", "exact match", "micro-F1", "score MAE"]
    assert xy(figure.data[0]) == ([1, 2], [0.7, 0.8])
    assert xy(figure.data[1]) == ([1, 2], [0.25, 0.5])
    assert xy(figure.data[3]) == ([1, 2], [0.9, 0.4]) and figure.data[3].yaxis == "y2"
    assert figure.layout.yaxis2.overlaying == "y" and figure.layout.yaxis.tickformat == ".0%"
    assert figure.layout.annotations == ()  # "no data yet" only when empty
    assert viz.rubric_figure(rows.iloc[:0]).layout.annotations[0].text == "no data yet"


def test_rubric_overlay_draws_one_line_per_experiment():
    rows = viz.rubric_rows(pd.DataFrame({
        "experiment_id": [4, 9, 4], "round": [1, 1, 2],
        "metrics": [rubric(0.7, 0.25, 0.6, 0.9), rubric(0.75, 0.3, 0.65, 0.8), rubric(0.8, 0.5, 0.7, 0.4)],
    }))  # fmt: skip

    figure = viz.rubric_overlay_figure(rows, "exact_match", {4: "federated", 9: "centralized"})

    assert [(trace.name, *xy(trace)) for trace in figure.data] == [
        ("federated", [1, 2], [0.25, 0.5]), ("centralized", [1], [0.3]),
    ]  # fmt: skip
    assert figure.layout.title.text == "Exact match"


PER_GROUP = {
    "School A": {**rubric(0.9, 0.6, 0.8, 0.5), "num_examples": 30},
    "School B": {**rubric(0.6, 0.2, 0.5, 1.25), "num_examples": 12},
}


def test_school_frame_and_heatmap_show_each_school_of_the_last_round():
    schools = viz.school_frame({"per_group": PER_GROUP})

    assert schools["school"].tolist() == ["School A", "School B"] and schools["examples"].tolist() == [30, 12]
    assert schools["score_mae"].tolist() == [0.5, 1.25]
    figure = viz.school_heatmap(schools)
    (heatmap,) = figure.data
    assert list(heatmap.x) == ["per-label accuracy", "exact match", "micro-F1", "macro-F1"]
    assert list(heatmap.y) == ["School A", "School B"]
    np.testing.assert_allclose(heatmap.z, [[0.9, 0.6, 0.8, 0.7], [0.6, 0.2, 0.5, 0.4]])
    assert np.asarray(heatmap.customdata).tolist() == [[30] * 4, [12] * 4]  # responses, for the hover
    assert (heatmap.zmin, heatmap.zmax) == (0, 1)
    assert viz.school_frame(None).empty and viz.school_heatmap(viz.school_frame({})).data == ()


def test_label_figure_shows_accuracy_and_f1_per_rubric_element():
    metrics = {"label_accuracy": [0.9, 0.75, None], "label_f1": [0.8, 0.5, None]}

    figure = viz.label_figure(metrics, ["E1", "E2", "E4"])

    accuracy, f1 = figure.data
    assert (accuracy.name, list(accuracy.x)) == ("accuracy", ["E1", "E2", "E4"])
    assert list(accuracy.y)[:2] == [0.9, 0.75] and np.isnan(accuracy.y[2])  # E4 had no scored response
    assert list(f1.y)[:2] == [0.8, 0.5]
    assert [trace.name for trace in viz.label_figure(metrics, []).data] == ["accuracy", "F1"]
    assert list(viz.label_figure(metrics, []).data[0].x) == ["E1", "E2", "E3"]  # no names: numbered


# -- legibility (issue 17) ----------------------------------------------------------------------


def test_legends_sit_below_the_plot_never_beside_the_title(rounds, points):
    figures = [
        viz.accuracy_figure(rounds, labels={7: "seven", 9: "nine"}),
        viz.epsilon_figure(rounds[rounds.experiment_id == 7], budget=1.0, last_round=3),
        viz.bytes_figure(rounds),
        viz.time_figure(rounds),
        viz.privacy_utility_figure(points),
    ]

    for figure in figures:
        legend = figure.layout.legend
        assert (legend.yanchor, legend.xanchor) == ("top", "left") and legend.y < 0, figure.layout.title.text


def test_an_experiment_keeps_its_colour_whatever_is_drawn_beside_it(rounds):
    alone = viz.accuracy_figure(rounds[rounds.experiment_id == 9])
    together = viz.accuracy_figure(rounds, labels={7: "seven", 9: "nine"})

    assert together.data[1].line.color == alone.data[0].line.color == viz.experiment_color(9)
    assert together.data[0].line.color != together.data[1].line.color


def test_an_overlay_with_labels_shows_its_legend_even_for_one_run(rounds):
    figure = viz.epsilon_figure(rounds[rounds.experiment_id == 7], labels={7: "#7 · local DP"})

    assert figure.layout.showlegend is True and figure.data[0].name == "#7 · local DP"


def test_time_figure_leaves_out_the_simulated_time_when_no_network_was_set_up(rounds):
    figure = viz.time_figure(rounds.assign(simulated_seconds=1.0), show_simulated=False)

    assert [trace.name for trace in figure.data] == ["training", "evaluation"]


def test_privacy_points_that_differ_in_delta_are_grouped_and_hovered_by_delta(points):
    figure = viz.privacy_utility_figure(points.assign(delta=[1e-5, 1e-3, 1e-5, 1e-5]))

    by_name = {trace.name: trace for trace in figure.data}
    assert set(by_name) == {"local DP, δ = 1e-05", "local DP, δ = 1e-03", "central DP, δ = 1e-05"}
    assert xy(by_name["local DP, δ = 1e-03"]) == ([1.0], [0.7])
    assert by_name["local DP, δ = 1e-05"].marker.symbol != by_name["local DP, δ = 1e-03"].marker.symbol
    assert "δ %{customdata[1]:.0e}" in by_name["central DP, δ = 1e-05"].hovertemplate


def test_clients_and_labels_take_the_names_they_are_given():
    clients = pd.DataFrame({"round": [1, 1], "client_id": [0, 1], "loss": [0.5, 0.7]})
    schools = ["School A", "School B"]

    loss = viz.client_loss_figure(clients, client_names=schools)
    heatmap = viz.label_heatmap([[3, 1, 0], [0, 2, 5]], label_names=["E1", "E2", "E3"], client_names=schools)

    assert [trace.name for trace in loss.data] == schools
    assert list(heatmap.data[0].x) == ["E1", "E2", "E3"] and list(heatmap.data[0].y) == schools
    assert heatmap.layout.xaxis.title.text == "rubric element"
