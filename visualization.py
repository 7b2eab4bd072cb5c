"""Plotly figures for the page: metric rows (pandas DataFrames) in, figures out.

Pure functions with no Streamlit and no I/O, so they are tested on hand-made frames:

    rounds = store.rounds_frame([3, 4])          # experiment_id, round, accuracy, ...
    accuracy_figure(rounds, labels={3: "#3 cnn", 4: "#4 mlp"})  # one line per experiment
    client_loss_figure(store.client_rounds_frame(3))            # one line per client
    label_heatmap(experiment.label_counts)                      # clients x classes
    epsilon_figure(rounds, budget=4.0, target=3.0, last_round=20)  # ε with dashed limits
    privacy_utility_figure(points)   # final accuracy vs final ε, one point per private run
    audit_figure(points)             # membership-inference AUC vs final ε

Every figure shares one look (`_style`): white template, compact margins, a
horizontal legend above the plot, and an annotation instead of an empty plot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

FIGURE_HEIGHT = 320  # px; two charts side by side fit a laptop screen
PALETTE = (
    "#2563eb", "#f97316", "#16a34a", "#dc2626", "#9333ea",
    "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d",
)  # fmt: skip


def accuracy_figure(
    rounds: pd.DataFrame, labels: Mapping[int, str] | None = None, *, title: str = "Test accuracy"
) -> go.Figure:
    """Accuracy (0-1, shown as %) per round; one line per `experiment_id`, for overlays."""
    figure = _per_experiment_lines(rounds, "accuracy", labels)
    _style(figure, title=title, x_title="round", y_title="accuracy", empty=rounds.empty)
    figure.update_yaxes(tickformat=".0%", rangemode="tozero")
    return figure


def loss_figure(
    rounds: pd.DataFrame, labels: Mapping[int, str] | None = None, *, title: str = "Test loss"
) -> go.Figure:
    """Test loss (mean cross-entropy) per round; one line per `experiment_id`."""
    figure = _per_experiment_lines(rounds, "loss", labels)
    _style(figure, title=title, x_title="round", y_title="loss", empty=rounds.empty)
    return figure


def epsilon_figure(
    rounds: pd.DataFrame,
    labels: Mapping[int, str] | None = None,
    *,
    budget: float | None = None,
    target: float | None = None,
    last_round: int | None = None,
    title: str = "Privacy budget spent (ε)",
) -> go.Figure:
    """Cumulative ε per round; one line per `experiment_id`.

    `budget` (the run stops before exceeding it) and `target` (σ was calibrated to end
    there) add a horizontal dashed / dotted line when > 0, drawn from round 1 to
    `last_round` (the planned rounds; default: the last recorded one).
    """
    figure = _per_experiment_lines(rounds, "epsilon", labels)
    if not rounds.empty:
        end = max(int(rounds["round"].max()), last_round or 0, 2)  # a line needs two distinct x
        limits = (("target ε", target, "dot", "#6b7280"), ("budget ε", budget, "dash", "#dc2626"))
        for name, value, dash, color in limits:
            if value is not None and value > 0:
                figure.add_trace(
                    go.Scatter(
                        x=[1, end],
                        y=[value, value],
                        mode="lines",
                        name=f"{name} = {value:g}",
                        line={"color": color, "width": 1.5, "dash": dash},
                        hoverinfo="skip",
                    )
                )
        if labels is None and rounds["experiment_id"].nunique() == 1:
            figure.data[0].name = "ε spent"  # beside the limits, "#7" would say nothing
        figure.update_layout(showlegend=len(figure.data) > 1)
    _style(figure, title=title, x_title="round", y_title="ε", empty=rounds.empty)
    figure.update_yaxes(rangemode="tozero")
    return figure


MODE_COLORS = {"local": PALETTE[0], "central": PALETTE[1]}


def privacy_utility_figure(points: pd.DataFrame, *, title: str = "Privacy vs utility") -> go.Figure:
    """Final test accuracy (y) against final ε (x), one marker per private experiment.

    `points` has columns experiment_id, label (the text beside the marker), name (for
    the hover), mode (local | central: one colour each), epsilon, accuracy; rows with
    a missing epsilon or accuracy are left out.
    """
    usable = points.dropna(subset=["epsilon", "accuracy"]) if not points.empty else points
    figure = _points_by_mode(usable, "accuracy", "accuracy %{y:.2%}")
    _style(figure, title=title, x_title="final ε", y_title="final accuracy",
           empty=usable.empty, x_is_round=False)  # fmt: skip
    figure.update_yaxes(tickformat=".0%")
    if not usable.empty:
        _headroom(figure, 0.0, float(usable["accuracy"].max()))
    _epsilon_axis(figure, usable)
    return figure


def audit_figure(points: pd.DataFrame, *, title: str = "Membership inference vs ε") -> go.Figure:
    """Membership-inference AUC (y) against final ε (x), one marker per audited private run.

    Same `points` as `privacy_utility_figure` plus an `auc` column; rows without an
    audit (auc missing) are left out. A dashed line marks AUC 0.5, a guessing attacker.
    """
    usable = points.dropna(subset=["epsilon", "auc"]) if not points.empty and "auc" in points else points.iloc[:0]
    figure = _points_by_mode(usable, "auc", "AUC %{y:.3f}")
    _style(figure, title=title, x_title="final ε", y_title="attack AUC",
           empty=usable.empty, x_is_round=False)  # fmt: skip
    if not usable.empty:
        _headroom(figure, min(0.5, float(usable["auc"].min())), max(0.5, float(usable["auc"].max())))
        figure.add_hline(
            y=0.5, line={"color": "#6b7280", "dash": "dash", "width": 1},
            annotation_text="guessing (0.5)", annotation_position="bottom right",
        )  # fmt: skip
    _epsilon_axis(figure, usable)
    return figure


def _points_by_mode(points: pd.DataFrame, column: str, value_hover: str) -> go.Figure:
    figure = go.Figure()
    if points.empty:
        return figure
    for index, (mode, rows) in enumerate(points.sort_values("epsilon").groupby("mode", sort=True)):
        figure.add_trace(
            go.Scatter(
                x=rows["epsilon"].to_numpy(dtype=float),
                y=rows[column].to_numpy(dtype=float),
                mode="markers+text",
                name=f"{mode} DP",
                text=rows["label"].tolist(),
                textposition="top center",
                cliponaxis=False,  # a label above the highest point stays readable
                customdata=rows["name"].tolist(),
                marker={"color": MODE_COLORS.get(str(mode), PALETTE[(index + 2) % len(PALETTE)]), "size": 10},
                hovertemplate="%{customdata}<br>ε %{x:.3g} · " + value_hover + "<extra>%{fullData.name}</extra>",
            )
        )
    return figure


def _headroom(figure: go.Figure, low: float, high: float) -> None:
    """A y range from `low` with room above `high` for the point labels (which sit above the markers)."""
    span = max(high - low, 0.02)
    figure.update_yaxes(range=[low - 0.05 * span if low > 0 else low, high + 0.25 * span])


def _epsilon_axis(figure: go.Figure, points: pd.DataFrame) -> None:
    """A log ε axis once the values span 10x or more (sweeps go 0.5 … 8), else linear from 0."""
    if points.empty:
        return
    low, high = float(points["epsilon"].min()), float(points["epsilon"].max())
    if low > 0 and high / low >= 10:
        figure.update_xaxes(type="log", title_text="final ε (log scale)")
    else:
        figure.update_xaxes(rangemode="tozero")


def client_loss_figure(clients: pd.DataFrame, *, title: str = "Local training loss per client") -> go.Figure:
    """Mean local training loss per round; one line per `client_id` (columns round, client_id, loss)."""
    figure = go.Figure()
    if not clients.empty:
        for index, (client_id, rows) in enumerate(clients.sort_values("round").groupby("client_id", sort=True)):
            figure.add_trace(
                go.Scatter(
                    x=rows["round"].to_numpy(),
                    y=rows["loss"].to_numpy(),
                    mode="lines+markers",
                    name=f"client {client_id}",
                    line={"color": PALETTE[index % len(PALETTE)], "width": 1.5},
                    marker={"size": 5},
                )
            )
    _style(figure, title=title, x_title="round", y_title="loss", empty=clients.empty)
    if not clients.empty and clients["client_id"].nunique() > len(PALETTE):
        figure.update_layout(showlegend=False)  # a legend of 50 clients hides the plot
    return figure


def label_heatmap(label_counts: Sequence[Sequence[int]] | None, *, title: str = "Labels per client") -> go.Figure:
    """Examples per class (columns) held by each client (rows), from the partition."""
    figure = go.Figure()
    counts = np.asarray(label_counts if label_counts else [], dtype=np.int64)
    if counts.ndim == 2 and counts.size:
        num_clients, num_classes = counts.shape
        figure.add_trace(
            go.Heatmap(
                z=counts,
                x=[str(label) for label in range(num_classes)],
                y=[f"client {client}" for client in range(num_clients)],
                colorscale="Blues",
                colorbar={"title": {"text": "examples"}, "thickness": 12},
                texttemplate="%{z}" if counts.size <= 200 else None,
                hovertemplate="%{y}, label %{x}: %{z} examples<extra></extra>",
            )
        )
        figure.update_yaxes(autorange="reversed", type="category")
        figure.update_xaxes(type="category")
    _style(figure, title=title, x_title="label", y_title="", empty=not counts.size, x_is_round=False)
    return figure


def bytes_figure(rounds: pd.DataFrame, *, title: str = "Bytes exchanged per round") -> go.Figure:
    """Bytes sent to clients (down) and back to the server (up) per round, as grouped bars.

    With several experiments in `rounds` the bars show their sum per round.
    """
    series = (("bytes_down", "server → clients", PALETTE[0]), ("bytes_up", "clients → server", PALETTE[1]))
    figure = _per_round_bars(rounds, series, barmode="group", hover="%{y:.3s}B")
    _style(figure, title=title, x_title="round", y_title="bytes", empty=rounds.empty)
    figure.update_yaxes(tickformat=".2s", ticksuffix="B")
    return figure


def time_figure(rounds: pd.DataFrame, *, title: str = "Seconds per round") -> go.Figure:
    """Wall-clock seconds of each round, stacked: client training (`seconds`) then evaluation."""
    series = (("seconds", "training", PALETTE[0]), ("eval_seconds", "evaluation", PALETTE[2]))
    figure = _per_round_bars(rounds, series, barmode="stack", hover="%{y:.2f} s")
    _style(figure, title=title, x_title="round", y_title="seconds", empty=rounds.empty)
    return figure


def _per_round_bars(
    rounds: pd.DataFrame, series: tuple[tuple[str, str, str], ...], *, barmode: str, hover: str
) -> go.Figure:
    """One bar trace per (column, name, colour), summed per round over the experiments in `rounds`."""
    figure = go.Figure()
    if rounds.empty:
        return figure
    per_round = rounds.groupby("round", sort=True)[[column for column, _, _ in series]].sum().reset_index()
    for column, name, color in series:
        figure.add_trace(
            go.Bar(
                x=per_round["round"].to_numpy(),
                y=per_round[column].to_numpy(),
                name=name,
                marker_color=color,
                hovertemplate=f"round %{{x}}: {hover}<extra>{name}</extra>",
            )
        )
    figure.update_layout(barmode=barmode, bargap=0.25)
    return figure


def _per_experiment_lines(rounds: pd.DataFrame, column: str, labels: Mapping[int, str] | None) -> go.Figure:
    figure = go.Figure()
    if rounds.empty:
        return figure
    groups = rounds.sort_values("round").groupby("experiment_id", sort=True)
    for index, (experiment_id, rows) in enumerate(groups):
        name = (labels or {}).get(int(experiment_id), f"#{experiment_id}")
        figure.add_trace(
            go.Scatter(
                x=rows["round"].to_numpy(),
                y=rows[column].to_numpy(),
                mode="lines+markers",
                name=name,
                line={"color": PALETTE[index % len(PALETTE)], "width": 2},
                marker={"size": 6},
            )
        )
    figure.update_layout(showlegend=groups.ngroups > 1)
    return figure


def _style(
    figure: go.Figure, *, title: str, x_title: str, y_title: str, empty: bool, x_is_round: bool = True
) -> None:
    figure.update_layout(
        template="plotly_white",
        title={"text": title, "x": 0.0, "xanchor": "left", "font": {"size": 15}},
        height=FIGURE_HEIGHT,
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
        hovermode="x unified" if x_is_round else "closest",
    )
    figure.update_xaxes(title_text=x_title, showgrid=False)
    figure.update_yaxes(title_text=y_title)
    if x_is_round:
        # Rounds are integers: without dtick=1 a 2-round run gets ticks at 1, 1.5, 2.
        last_round = max((max(trace.x) for trace in figure.data if trace.x is not None and len(trace.x)), default=0)
        figure.update_xaxes(tickformat="d", dtick=1 if last_round <= 20 else None)
    if empty:
        figure.add_annotation(
            text="no data yet", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font={"color": "#6b7280"}
        )
        figure.update_xaxes(showticklabels=False)
        figure.update_yaxes(showticklabels=False)
