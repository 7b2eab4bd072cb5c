"""The per-client accuracy chart (where clients hold out examples) and charts that read on the light and the
dark theme: hand-made client rows in, traces out; every figure without a background or text colour of its own."""

from __future__ import annotations

import inspect

import pandas as pd
import plotly.graph_objects as go
import pytest
import test_app
from sqlalchemy import text
from test_app import chart_traces, fabricate, page

import visualization as viz

store = test_app.store  # the fixture: a temporary SQLite database the page opens


def client_rows(accuracies: dict[tuple[int, int], float | None]) -> pd.DataFrame:
    """(round, client) → validation accuracy (None: not recorded), given out of order."""
    return pd.DataFrame([
        {"round": r, "client_id": c, "loss": 0.5, "status": "ok", "validation_accuracy": a}
        for (r, c), a in accuracies.items()
    ])  # fmt: skip


def test_client_accuracy_figure_draws_each_clients_recorded_accuracy_per_round():
    rows = client_rows({(2, 1): 0.7, (1, 0): 0.5, (1, 1): 0.6, (2, 0): None, (3, 0): 0.9})

    figure = viz.client_accuracy_figure(rows, client_names=["School A", "School B"])

    assert [trace.name for trace in figure.data] == ["School A", "School B"]
    assert (list(figure.data[0].x), list(figure.data[0].y)) == ([1, 3], [0.5, 0.9])  # round 2 not recorded
    assert (list(figure.data[1].x), list(figure.data[1].y)) == ([1, 2], [0.6, 0.7])
    assert figure.layout.yaxis.tickformat == ".0%"
    assert not figure.layout.annotations


@pytest.mark.parametrize("rows", [
    client_rows({(1, 0): None, (1, 1): None}),  # clients that hold nothing out report no accuracy
    pd.DataFrame(columns=["round", "client_id", "loss", "status", "validation_accuracy"]),
    pd.DataFrame({"round": [1], "client_id": [0], "loss": [0.5]}),  # rows from before the column existed
])  # fmt: skip
def test_client_accuracy_figure_without_any_recorded_value_is_empty_with_a_note(rows):
    figure = viz.client_accuracy_figure(rows)
    assert len(figure.data) == 0
    assert figure.layout.annotations[0].text == "no data yet"


def test_the_run_view_adds_the_per_client_accuracy_chart_only_where_clients_report_one(store):
    fabricate(store)
    app = page()
    assert len(chart_traces(app)) == 6  # accuracy, loss, client loss, labels, bytes, time

    with_holdout = fabricate(store, **{"federation.client_holdout": "0.2"})
    rows = [(1, 0.4), (2, 0.8)]
    with store.engine.begin() as connection:  # what a client_holdout run records per client per round
        for number, accuracy in rows:
            connection.execute(text(
                "UPDATE client_rounds SET validation_accuracy = :a WHERE round_id IN "
                "(SELECT id FROM rounds WHERE experiment_id = :e AND round = :r)"
            ), {"a": accuracy, "e": with_holdout, "r": number})  # fmt: skip
    app = page()
    traces = chart_traces(app)
    assert len(traces) == 7
    accuracy = traces[3]
    assert [trace["name"] for trace in accuracy] == ["client 0", "client 1"]
    assert all(trace["y"] == pytest.approx([0.4, 0.8]) for trace in accuracy)


def figures() -> list[go.Figure]:
    """Every public figure function of `visualization` on empty input (each draws its frame and annotation)."""
    empty_rounds = pd.DataFrame(columns=["experiment_id", "round", "accuracy", "loss", "epsilon", "seconds",
                                         "eval_seconds", "bytes_up", "bytes_down"])  # fmt: skip
    return [
        viz.accuracy_figure(empty_rounds),
        viz.loss_figure(empty_rounds),
        viz.epsilon_figure(empty_rounds),
        viz.client_loss_figure(pd.DataFrame(columns=["round", "client_id", "loss"])),
        viz.client_accuracy_figure(client_rows({(1, 0): 0.5})),
        viz.label_heatmap([[1, 2], [3, 4]]),
        viz.bytes_figure(empty_rounds),
        viz.time_figure(empty_rounds),
    ]


@pytest.mark.parametrize("figure", figures())
def test_charts_have_no_background_or_text_colour_of_their_own(figure):
    """On the dark theme a white paper or black text would be a white box or unreadable: the figure leaves both
    to Streamlit's chart theme, which follows the page."""
    layout = figure.layout
    assert layout.template.layout.paper_bgcolor is None and layout.template.layout.font.color is None
    for background in (layout.paper_bgcolor, layout.plot_bgcolor):
        assert background is None or background.replace(" ", "") == "rgba(0,0,0,0)", background
    assert layout.font.color is None and layout.title.font.color is None


def test_no_figure_function_names_white_or_black():
    source = inspect.getsource(viz).lower()
    for colour in ("plotly_white", '"white"', '"black"', "#ffffff", "#000000", '"#fff"', '"#000"'):
        assert colour not in source, colour
