"""Plotly figures for the page: metric rows (pandas DataFrames) in, figures out.

Pure functions with no Streamlit and no I/O, so they are tested on hand-made frames:

    rounds = store.rounds_frame([3, 4])          # experiment_id, round, accuracy, ...
    accuracy_figure(rounds, labels={3: "#3 cnn", 4: "#4 mlp"})  # one line per experiment
    client_loss_figure(store.client_rounds_frame(3))            # one line per client
    client_accuracy_figure(store.client_rounds_frame(3))        # local accuracy per client, where recorded
    label_heatmap(experiment.label_counts)                      # clients x classes
    epsilon_figure(rounds, budget=4.0, target=3.0, last_round=20)  # ε with dashed limits
    privacy_utility_figure(points)   # final accuracy vs final ε, one point per private run
    audit_figure(points)             # membership-inference AUC vs final ε
    client_profile_figure(experiment.client_profiles)    # speed per client, malicious marked
    client_status_figure(store.client_rounds_frame(3))   # clients x rounds: ok, partial, lost, ...
    upload_figure(store.client_rounds_frame(3))          # bytes sent vs uncompressed, per round
    personalization_figure(experiment.personalization)  # global vs personalized accuracy per client
    rubric_figure(rubric_rows(rounds))    # NGSS: per-label accuracy, exact match, micro-F1, score MAE
    school_heatmap(school_frame(metrics))  # NGSS: the final round per school
    label_figure(metrics, ["E1", "E2"])    # NGSS: accuracy and F1 per rubric element

Every figure shares one look (`_style`): a transparent background and no text colour of its own
(so it reads on the page's light and dark theme alike), compact margins, a horizontal legend,
and an annotation instead of an empty plot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

FIGURE_HEIGHT = 320  # px; two charts side by side fit a laptop screen
LEGEND_Y = -0.3  # the legend's top, as a fraction of the plot's height: below the x axis and its title
PALETTE = (
    "#2563eb", "#f97316", "#16a34a", "#dc2626", "#9333ea",
    "#0891b2", "#ca8a04", "#db2777", "#64748b", "#65a30d",
)  # fmt: skip
# What happened to a selected client in a round (database.ClientRound.status), in the status grid's order.
CLIENT_STATUSES = ("ok", "partial", "lost", "late", "dropped", "failed", "excluded")
STATUS_COLORS = {
    "ok": "#16a34a",  # trained, update arrived
    "partial": "#eab308",  # straggler: fewer local steps, arrived
    "lost": "#f97316",  # trained, update never arrived
    "late": "#9333ea",  # could not finish before the deadline
    "dropped": "#9ca3af",  # never started
    "failed": "#dc2626",  # raised, or sent NaN/inf: excluded
    "excluded": "#0891b2",  # arrived, left out as suspicious (federation.exclusion = "flagged")
}
ARRIVED_STATUSES = ("ok", "partial")
ABSENT_STATUSES = ("dropped", "late")  # selected, but never trained: steps 0, loss 0
MALICIOUS_COLOR = PALETTE[3]
GRID_COLOR = "rgba(128, 128, 128, 0.25)"  # grey at a quarter: faint on white and on the dark theme's near-black


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
        figure.update_layout(showlegend=len(figure.data) > 1 or labels is not None)
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


DELTA_SYMBOLS = ("circle", "diamond", "square", "triangle-up", "cross", "star")


def _points_by_mode(points: pd.DataFrame, column: str, value_hover: str) -> go.Figure:
    """One trace per privacy mode; where the runs' δ differ (an optional `delta` column), one per (mode, δ),
    each δ its own marker symbol and named in the legend, since ε alone does not compare across δ. The hover
    gives δ whenever it is known."""
    figure = go.Figure()
    if points.empty:
        return figure
    points = points.assign(delta=points.get("delta", np.nan))
    deltas = sorted(points["delta"].dropna().unique())
    by_delta = len(deltas) > 1
    keys = ["mode", "delta"] if by_delta else ["mode"]
    for index, (key, rows) in enumerate(points.sort_values("epsilon").groupby(keys, sort=True, dropna=False)):
        mode, delta = (key if by_delta else (key[0] if isinstance(key, tuple) else key, None))
        name = f"{mode} DP" + (f", δ = {delta:.0e}" if by_delta else "")
        known = rows["delta"].notna().all()
        hover_delta = " · δ %{customdata[1]:.0e}" if known else ""
        symbol = DELTA_SYMBOLS[deltas.index(delta) % len(DELTA_SYMBOLS)] if by_delta and delta in deltas else "circle"
        figure.add_trace(
            go.Scatter(
                x=rows["epsilon"].to_numpy(dtype=float),
                y=rows[column].to_numpy(dtype=float),
                mode="markers+text",
                name=name,
                text=rows["label"].tolist(),
                textposition="top center",
                cliponaxis=False,  # a label above the highest point stays readable
                customdata=list(zip(rows["name"].tolist(), rows["delta"].astype(float).tolist())),
                marker={"color": MODE_COLORS.get(str(mode), PALETTE[(index + 2) % len(PALETTE)]), "size": 10,
                        "symbol": symbol},
                hovertemplate="%{customdata[0]}<br>ε %{x:.3g}" + hover_delta + " · " + value_hover
                + "<extra>%{fullData.name}</extra>",
            )
        )  # fmt: skip
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


def client_loss_figure(
    clients: pd.DataFrame, *, client_names: Sequence[str] | None = None, title: str = "Local training loss per client"
) -> go.Figure:
    """Mean local training loss per round; one line per `client_id` (columns round, client_id, loss), named by
    `client_name`.

    Clients that never trained in a round (`status` dropped or late: loss 0) are left out.
    """
    figure = go.Figure()
    if "status" in clients:
        clients = clients[~clients["status"].isin(ABSENT_STATUSES)]
    if not clients.empty:
        for index, (client_id, rows) in enumerate(clients.sort_values("round").groupby("client_id", sort=True)):
            figure.add_trace(
                go.Scatter(
                    x=rows["round"].to_numpy(),
                    y=rows["loss"].to_numpy(),
                    mode="lines+markers",
                    name=client_name(int(client_id), client_names),
                    line={"color": PALETTE[index % len(PALETTE)], "width": 1.5},
                    marker={"size": 5},
                )
            )
    _style(figure, title=title, x_title="round", y_title="loss", empty=clients.empty)
    if not clients.empty and clients["client_id"].nunique() > len(PALETTE):
        figure.update_layout(showlegend=False)  # a legend of 50 clients hides the plot
    return figure


def client_accuracy_figure(
    clients: pd.DataFrame, *, client_names: Sequence[str] | None = None,
    title: str = "Local accuracy per client (own held-out split)",
) -> go.Figure:  # fmt: skip
    """Each client's accuracy (0-1, shown as %) on its own held-out examples with its new local weights, per
    round it trained in; one line per `client_id` (columns round, client_id, validation_accuracy).

    Only recorded values are drawn: a client reports one only when federation.client_holdout > 0 and it
    trained that round; rounds without one leave a gap, and no value at all gives an annotated empty plot.
    """
    figure = go.Figure()
    recorded = clients[clients["validation_accuracy"].notna()] if "validation_accuracy" in clients else clients.iloc[0:0]
    for index, (client_id, rows) in enumerate(recorded.sort_values("round").groupby("client_id", sort=True)):
        figure.add_trace(
            go.Scatter(
                x=rows["round"].to_numpy(),
                y=rows["validation_accuracy"].to_numpy(dtype=float),
                mode="lines+markers",
                name=client_name(int(client_id), client_names),
                line={"color": PALETTE[index % len(PALETTE)], "width": 1.5},
                marker={"size": 5},
            )
        )
    _style(figure, title=title, x_title="round", y_title="accuracy", empty=recorded.empty)
    figure.update_yaxes(tickformat=".0%", rangemode="tozero")
    if not recorded.empty and recorded["client_id"].nunique() > len(PALETTE):
        figure.update_layout(showlegend=False)  # a legend of 50 clients hides the plot
    return figure


def label_heatmap(
    label_counts: Sequence[Sequence[int]] | None,
    *,
    label_names: Sequence[str] | None = None,
    client_names: Sequence[str] | None = None,
    title: str = "Labels per client",
) -> go.Figure:
    """Examples per class (columns) held by each client (rows), from the partition; columns named by
    `label_names` (NGSS: the rubric elements E1, E2, …, each column the examples that earned it) when it has one
    name per column, rows by `client_name`."""
    figure = go.Figure()
    counts = np.asarray(label_counts if label_counts else [], dtype=np.int64)
    if counts.ndim == 2 and counts.size:
        num_clients, num_classes = counts.shape
        figure.add_trace(
            go.Heatmap(
                z=counts,
                x=list(label_names) if label_names and len(label_names) == num_classes
                else [str(label) for label in range(num_classes)],
                y=[client_name(client, client_names) for client in range(num_clients)],
                colorscale="Blues",
                colorbar={"title": {"text": "examples"}, "thickness": 12},
                texttemplate="%{z}" if counts.size <= 200 else None,
                hovertemplate="%{y}, label %{x}: %{z} examples<extra></extra>",
            )
        )
        figure.update_yaxes(autorange="reversed", type="category")
        figure.update_xaxes(type="category")
    x_title = "rubric element" if label_names and counts.ndim == 2 and len(label_names) == counts.shape[1] else "label"
    _style(figure, title=title, x_title=x_title, y_title="", empty=not counts.size, x_is_round=False)
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


def time_figure(rounds: pd.DataFrame, *, show_simulated: bool = True, title: str = "Seconds per round") -> go.Figure:
    """Wall-clock seconds of each round, stacked: client training (`seconds`) then evaluation.

    Where `simulated_seconds` is recorded (> 0) and `show_simulated` (the run set up a network or client
    speeds worth showing), a line adds the round's duration as the simulation has it: the slowest arriving
    client's download, compute at its speed and upload.
    """
    series = (("seconds", "training", PALETTE[0]), ("eval_seconds", "evaluation", PALETTE[2]))
    figure = _per_round_bars(rounds, series, barmode="stack", hover="%{y:.2f} s")
    if show_simulated and "simulated_seconds" in rounds and (rounds["simulated_seconds"] > 0).any():
        per_round = rounds.groupby("round", sort=True)["simulated_seconds"].sum()
        name = "simulated (network, speeds)"
        figure.add_trace(
            go.Scatter(
                x=per_round.index.to_numpy(),
                y=per_round.to_numpy(),
                mode="lines+markers",
                name=name,
                line={"color": PALETTE[1], "width": 2},
                marker={"size": 6},
                hovertemplate=f"round %{{x}}: %{{y:.2f}} s<extra>{name}</extra>",
            )
        )
    _style(figure, title=title, x_title="round", y_title="seconds", empty=rounds.empty)
    return figure


# -- the federation: clients as set up and what happened to them ------------------------


def client_profile_figure(
    profiles: Sequence[Mapping] | None,
    *,
    client_names: Sequence[str] | None = None,
    title: str = "Client speed (malicious marked)",
) -> go.Figure:
    """Relative compute speed per client (1 = nominal) as bars, honest and malicious in two colours.

    `profiles`: one dict per client with id, speed, malicious and (for the hover)
    num_examples, dropout_probability, bandwidth_mbps, latency_ms.
    """
    figure = go.Figure()
    frame = pd.DataFrame(list(profiles or []))
    if not frame.empty:
        defaults = {"malicious": False, "num_examples": 0, "dropout_probability": 0.0,
                    "bandwidth_mbps": 0.0, "latency_ms": 0.0}  # fmt: skip
        for key, value in defaults.items():  # profiles stored by an older version may lack some
            frame[key] = frame[key].fillna(value) if key in frame else value
        frame = frame.sort_values("id")
        frame["malicious"] = frame["malicious"].astype(bool)
        details = ["num_examples", "dropout_probability", "bandwidth_mbps", "latency_ms"]  # for the hover
        for malicious, name, color in ((False, "honest", PALETTE[0]), (True, "malicious", MALICIOUS_COLOR)):
            rows = frame[frame["malicious"] == malicious]
            if rows.empty:
                continue
            figure.add_trace(
                go.Bar(
                    x=[client_name(int(client), client_names) for client in rows["id"]],
                    y=rows["speed"].to_numpy(dtype=float),
                    name=name,
                    marker_color=color,
                    customdata=rows[details].to_numpy(dtype=float),
                    hovertemplate="%{x}: speed %{y:.2f} · %{customdata[0]:.0f} examples · dropout "
                    "%{customdata[1]:.0%} · %{customdata[2]:.3g} Mbit/s · %{customdata[3]:.0f} ms"
                    f"<extra>{name}</extra>",
                )
            )
        order = [client_name(int(client), client_names) for client in frame["id"]]
        figure.update_xaxes(type="category", categoryorder="array", categoryarray=order)
        figure.add_hline(y=1.0, line={"color": "#6b7280", "dash": "dot", "width": 1})
        figure.update_layout(showlegend=len(figure.data) > 1)
    _style(figure, title=title, x_title="", y_title="speed factor", empty=frame.empty, x_is_round=False)
    return figure


def client_status_figure(
    clients: pd.DataFrame, *, client_names: Sequence[str] | None = None, title: str = "Clients per round"
) -> go.Figure:
    """What happened to each selected client (rows) in each round (columns): ok, partial, lost,
    late or dropped, one colour each; blank where a client was not selected. Malicious clients'
    cells carry an ✕, cells flagged as suspicious (`engine.suspicion`) a ring. `clients`: columns
    round, client_id, status and (optionally) malicious, flagged and suspicion."""
    figure = go.Figure()
    if not clients.empty:
        rounds = sorted(int(r) for r in clients["round"].unique())
        ids = sorted(int(c) for c in clients["client_id"].unique())
        row_of, column_of = {c: i for i, c in enumerate(ids)}, {r: j for j, r in enumerate(rounds)}
        codes = np.full((len(ids), len(rounds)), np.nan)  # (clients, rounds); NaN: not selected
        names = [["not selected"] * len(rounds) for _ in ids]
        for number, client, status in zip(clients["round"], clients["client_id"], clients["status"]):
            i, j = row_of[int(client)], column_of[int(number)]
            codes[i, j] = CLIENT_STATUSES.index(status) if status in CLIENT_STATUSES else np.nan
            names[i][j] = str(status)
        last = len(CLIENT_STATUSES)
        colorscale = [  # one flat band per status: code k maps to k / (last − 1), inside band k
            [edge / last, STATUS_COLORS[status]] for k, status in enumerate(CLIENT_STATUSES) for edge in (k, k + 1)
        ]
        labels = [client_name(client, client_names) for client in ids]
        figure.add_trace(
            go.Heatmap(
                z=codes,
                x=rounds,
                y=labels,
                zmin=0,
                zmax=last - 1,
                colorscale=colorscale,
                customdata=names,
                xgap=1,
                ygap=1,
                hoverongaps=False,
                hovertemplate="%{y}, round %{x}: %{customdata}<extra></extra>",
                colorbar={"tickvals": list(range(last)), "ticktext": list(CLIENT_STATUSES), "thickness": 12},
            )
        )
        if "malicious" in clients:
            bad = clients[clients["malicious"].fillna(False).astype(bool)]
            if not bad.empty:
                figure.add_trace(
                    go.Scatter(
                        x=bad["round"].to_numpy(),
                        y=[client_name(int(client), client_names) for client in bad["client_id"]],
                        mode="markers",
                        name="malicious",
                        marker={"symbol": "x-thin", "size": 9, "line": {"width": 2, "color": "#111827"}},
                        hovertemplate="%{y}, round %{x}: malicious<extra></extra>",
                    )
                )
        if "flagged" in clients:
            suspects = clients[clients["flagged"].fillna(False).astype(bool)]
            if not suspects.empty:
                figure.add_trace(
                    go.Scatter(
                        x=suspects["round"].to_numpy(),
                        y=[client_name(int(client), client_names) for client in suspects["client_id"]],
                        customdata=suspects["suspicion"].to_numpy() if "suspicion" in suspects else None,
                        mode="markers",
                        name="flagged",
                        marker={"symbol": "circle-open", "size": 15, "line": {"width": 2, "color": MALICIOUS_COLOR}},
                        hovertemplate="%{y}, round %{x}: flagged, suspicion %{customdata:.2f}<extra></extra>",
                    )
                )
        figure.update_yaxes(type="category", autorange="reversed", categoryorder="array", categoryarray=labels)
        figure.update_layout(showlegend=len(figure.data) > 1)
    _style(figure, title=title, x_title="round", y_title="", empty=clients.empty)
    figure.update_layout(hovermode="closest")
    return figure


def upload_figure(clients: pd.DataFrame, *, title: str = "Upload per round") -> go.Figure:
    """Bytes the arriving updates took on the wire (bars) against their uncompressed size (a line).

    The uncompressed size of an update is what the client downloaded (the same weights, dense
    float32), so per round: sent = Σ bytes_up, uncompressed = Σ bytes_down, over the clients whose
    update arrived (status ok or partial).
    """
    figure = go.Figure()
    if not clients.empty:
        arrived = clients["status"].isin(ARRIVED_STATUSES) if "status" in clients else True
        frame = clients.assign(
            sent=clients["bytes_up"].where(arrived, 0), dense=clients["bytes_down"].where(arrived, 0)
        )
        per_round = frame.groupby("round", sort=True)[["sent", "dense"]].sum().reset_index()
        figure.add_trace(
            go.Bar(
                x=per_round["round"].to_numpy(),
                y=per_round["sent"].to_numpy(),
                name="sent",
                marker_color=PALETTE[1],
                hovertemplate="round %{x}: %{y:.3s}B<extra>sent</extra>",
            )
        )
        figure.add_trace(
            go.Scatter(
                x=per_round["round"].to_numpy(),
                y=per_round["dense"].to_numpy(),
                mode="lines+markers",
                name="uncompressed",
                line={"color": "#6b7280", "dash": "dash", "width": 1.5},
                hovertemplate="round %{x}: %{y:.3s}B<extra>uncompressed</extra>",
            )
        )
    _style(figure, title=title, x_title="round", y_title="bytes", empty=clients.empty)
    figure.update_yaxes(tickformat=".2s", ticksuffix="B", rangemode="tozero")
    if not clients.empty and per_round["sent"].sum() > 0 and per_round["dense"].sum() >= 10 * per_round["sent"].sum():
        figure.update_yaxes(type="log", title_text="bytes (log scale)")  # else the sent bars are too thin to see
    return figure


def personalization_figure(
    personalization: Mapping | None,
    *,
    client_names: Sequence[str] | None = None,
    title: str = "Accuracy on each client's own held-out data",
) -> go.Figure:
    """Per client, the global model's and the personalized model's held-out accuracy (grouped bars).

    `personalization`: {method, clients: [{client, examples, global_accuracy,
    personalized_accuracy}], ...} as the run stores it; None or {"error": ...} draws nothing.
    """
    figure = go.Figure()
    clients = pd.DataFrame(list((personalization or {}).get("clients") or []))
    if not clients.empty:
        clients = clients.sort_values("client")
        method = (personalization or {}).get("method", "personalized")
        labels = [client_name(int(client), client_names) for client in clients["client"]]
        for column, name, color in (
            ("global_accuracy", "global model", PALETTE[0]),
            ("personalized_accuracy", f"personalized ({method})", PALETTE[2]),
        ):
            figure.add_trace(
                go.Bar(
                    x=labels,
                    y=clients[column].to_numpy(dtype=float),
                    name=name,
                    marker_color=color,
                    hovertemplate=f"%{{x}}: %{{y:.2%}}<extra>{name}</extra>",
                )
            )
        figure.update_xaxes(type="category")
        figure.update_layout(barmode="group", bargap=0.25)
    _style(figure, title=title, x_title="", y_title="accuracy", empty=clients.empty, x_is_round=False)
    figure.update_yaxes(tickformat=".0%", rangemode="tozero")
    return figure


# -- NGSS rubric scoring: `rounds.metrics` is ngss_data.rubric_metrics of the global model -----------

RUBRIC_COLUMNS = ("per_label_accuracy", "exact_match", "micro_f1", "macro_f1", "score_mae")
RUBRIC_NAMES = {
    "per_label_accuracy": "per-label accuracy", "exact_match": "exact match", "micro_f1": "micro-F1",
    "macro_f1": "macro-F1", "score_mae": "score MAE",
}  # fmt: skip


def rubric_rows(rounds: pd.DataFrame) -> pd.DataFrame:
    """experiment_id, round and the `RUBRIC_COLUMNS` of every round whose `metrics` holds rubric metrics
    (None → NaN); empty for runs without them (MNIST)."""
    rows = [
        {"experiment_id": e, "round": r, **{c: metrics.get(c) for c in RUBRIC_COLUMNS}}
        for e, r, metrics in zip(rounds["experiment_id"], rounds["round"], rounds.get("metrics", []))
        if isinstance(metrics, Mapping) and "exact_match" in metrics
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["experiment_id", "round", *RUBRIC_COLUMNS]).astype(
        {c: float for c in RUBRIC_COLUMNS}
    )


def rubric_figure(rows: pd.DataFrame, *, title: str = "Rubric scoring per round") -> go.Figure:
    """Per-label accuracy, exact match and micro-F1 (0–1, left axis) and the total score's MAE (points, right
    axis, dashed) per round of one experiment (`rubric_rows`)."""
    figure = go.Figure()
    rows = rows.sort_values("round")
    for index, column in enumerate(("per_label_accuracy", "exact_match", "micro_f1")):
        figure.add_trace(go.Scatter(
            x=rows["round"].to_numpy(), y=rows[column].to_numpy(), mode="lines+markers", name=RUBRIC_NAMES[column],
            line={"color": PALETTE[index], "width": 2}, marker={"size": 6},
            hovertemplate=f"%{{y:.2%}}<extra>{RUBRIC_NAMES[column]}</extra>",
        ))  # fmt: skip
    figure.add_trace(go.Scatter(
        x=rows["round"].to_numpy(), y=rows["score_mae"].to_numpy(), mode="lines+markers", name="score MAE",
        yaxis="y2", line={"color": PALETTE[3], "width": 1.5, "dash": "dash"}, marker={"size": 5},
        hovertemplate="%{y:.3f} points<extra>score MAE</extra>",
    ))  # fmt: skip
    _style(figure, title=title, x_title="round", y_title="share", empty=rows.empty)
    figure.update_yaxes(tickformat=".0%", range=[0, 1.02])
    figure.update_layout(
        yaxis2={"title": {"text": "score MAE (points)"}, "overlaying": "y", "side": "right", "rangemode": "tozero",
                "showgrid": False},
        margin={"b": 70},
    )  # fmt: skip
    return figure


def rubric_overlay_figure(
    rows: pd.DataFrame, column: str, labels: Mapping[int, str] | None = None, *, title: str | None = None
) -> go.Figure:
    """One rubric metric (`RUBRIC_COLUMNS`) per round, one line per `experiment_id`, for Compare."""
    figure = _per_experiment_lines(rows, column, labels)
    name = RUBRIC_NAMES[column]
    _style(figure, title=title or name[0].upper() + name[1:], x_title="round", y_title=name,
           empty=rows.empty)  # fmt: skip
    if column != "score_mae":
        figure.update_yaxes(tickformat=".0%", rangemode="tozero")
    return figure


def school_frame(metrics: Mapping | None) -> pd.DataFrame:
    """One row per school of a round's `per_group` metrics: school, examples and the `RUBRIC_COLUMNS`."""
    groups = (metrics or {}).get("per_group") or {}
    rows = [
        {"school": school, "examples": int(values.get("num_examples", 0)), **{c: values.get(c) for c in RUBRIC_COLUMNS}}
        for school, values in groups.items()
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["school", "examples", *RUBRIC_COLUMNS])
    return frame.astype({c: float for c in RUBRIC_COLUMNS})


def school_heatmap(schools: pd.DataFrame, *, title: str = "Final round per school") -> go.Figure:
    """Schools (rows) × per-label accuracy, exact match, micro-F1, macro-F1 (columns), coloured on 0–1 with the
    value in each cell (`school_frame`)."""
    figure = go.Figure()
    columns = ["per_label_accuracy", "exact_match", "micro_f1", "macro_f1"]
    if not schools.empty:
        values = schools[columns].to_numpy(dtype=float)  # (schools, 4)
        figure.add_trace(go.Heatmap(
            z=values, x=[RUBRIC_NAMES[c] for c in columns], y=schools["school"].tolist(), zmin=0, zmax=1,
            colorscale="Blues", customdata=np.repeat(schools[["examples"]].to_numpy(), len(columns), axis=1),
            texttemplate="%{z:.2f}", colorbar={"thickness": 12, "tickformat": ".0%"},
            hovertemplate="%{y}, %{x}: %{z:.2%} (%{customdata} responses)<extra></extra>",
        ))  # fmt: skip
        figure.update_yaxes(autorange="reversed", type="category")
    _style(figure, title=title, x_title="", y_title="", empty=schools.empty, x_is_round=False)
    return figure


def label_figure(
    metrics: Mapping | None, label_names: Sequence[str], *, title: str = "Final round per rubric element"
) -> go.Figure:
    """Accuracy and F1 of each rubric element (grouped bars) from a round's `label_accuracy` / `label_f1`."""
    figure = go.Figure()
    metrics = metrics or {}
    accuracy, f1 = metrics.get("label_accuracy") or [], metrics.get("label_f1") or []
    names = list(label_names) if len(label_names) == len(accuracy) else [f"E{k + 1}" for k in range(len(accuracy))]
    for values, name, color in ((accuracy, "accuracy", PALETTE[0]), (f1, "F1", PALETTE[2])):
        if values:
            figure.add_trace(go.Bar(
                x=names, y=[np.nan if v is None else v for v in values], name=name, marker_color=color,
                hovertemplate=f"%{{x}}: %{{y:.2%}}<extra>{name}</extra>",
            ))  # fmt: skip
    figure.update_layout(barmode="group", bargap=0.25)
    figure.update_xaxes(type="category")
    _style(figure, title=title, x_title="rubric element", y_title="", empty=not accuracy, x_is_round=False)
    figure.update_yaxes(tickformat=".0%", range=[0, 1.02])
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
    for experiment_id, rows in groups:
        name = (labels or {}).get(int(experiment_id), f"#{experiment_id}")
        figure.add_trace(
            go.Scatter(
                x=rows["round"].to_numpy(),
                y=rows[column].to_numpy(),
                mode="lines+markers",
                name=name,
                line={"color": experiment_color(int(experiment_id)), "width": 2},
                marker={"size": 6},
            )
        )
    figure.update_layout(showlegend=groups.ngroups > 1 or labels is not None)  # labels: an overlay, say whose
    return figure


def experiment_color(experiment_id: int) -> str:
    """One colour per experiment id, the same in every chart and whatever else is shown beside it."""
    return PALETTE[(experiment_id - 1) % len(PALETTE)]


def client_name(client_id: int, names: Sequence[str] | None = None) -> str:
    """`School B` where the clients are named (NGSS natural partition: client k is school k), else `client 1`."""
    return names[client_id] if names and 0 <= client_id < len(names) else f"client {client_id}"


def _style(
    figure: go.Figure, *, title: str, x_title: str, y_title: str, empty: bool, x_is_round: bool = True
) -> None:
    figure.update_layout(
        # No template colours: a transparent background and the page's own text colour (Streamlit's chart
        # theme), so a chart reads the same on the light and the dark theme.
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        title={"text": title, "x": 0.0, "xanchor": "left", "font": {"size": 15}},
        height=FIGURE_HEIGHT,
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
        # Below the plot: above it, a legend that wraps to a second row runs into the title.
        legend={"orientation": "h", "yanchor": "top", "y": LEGEND_Y, "xanchor": "left", "x": 0.0},
        hovermode="x unified" if x_is_round else "closest",
    )
    figure.update_xaxes(title_text=x_title, showgrid=False)
    figure.update_yaxes(title_text=y_title, gridcolor=GRID_COLOR, zerolinecolor=GRID_COLOR)
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


def fairness_figure(
    rounds: pd.DataFrame, labels: Mapping[int, str] | None = None, *, title: str = "Accuracy across clients"
) -> go.Figure:
    """The global model's accuracy on the clients' own held-out splits per round (runs with a client
    holdout; columns client_accuracy_mean, client_accuracy_worst10): per `experiment_id` a solid line for
    the mean over clients and a dashed one, same colour, for the worst 10% of clients, so runs compare."""
    columns = ("client_accuracy_mean", "client_accuracy_worst10")
    measured = rounds.dropna(subset=list(columns)) if set(columns) <= set(rounds.columns) else rounds.iloc[0:0]
    figure = go.Figure()
    for experiment_id, rows in measured.sort_values("round").groupby("experiment_id", sort=True):
        name, color = (labels or {}).get(int(experiment_id), f"#{experiment_id}"), experiment_color(int(experiment_id))
        for column, kind, dash in ((columns[0], "mean", "solid"), (columns[1], "worst 10%", "dash")):
            figure.add_trace(
                go.Scatter(
                    x=rows["round"].to_numpy(), y=rows[column].to_numpy(dtype=float), mode="lines+markers",
                    name=f"{name} {kind}", line={"color": color, "width": 2, "dash": dash}, marker={"size": 6},
                    hovertemplate=f"round %{{x}}: %{{y:.1%}}<extra>{name} {kind}</extra>",
                )
            )  # fmt: skip
    _style(figure, title=title, x_title="round", y_title="client accuracy", empty=measured.empty)
    figure.update_yaxes(tickformat=".0%", rangemode="tozero")
    return figure


def staleness_figure(
    rounds: pd.DataFrame, clients: pd.DataFrame, *, title: str = "Asynchronous updates over simulated time"
) -> go.Figure:
    """An async run (federation.mode = "async", FedBuff): each applied update's staleness (server steps the
    model moved on while it trained) as a dot at the simulated second it was applied, and the global model's
    version (the server steps taken) as a step line on the right axis. `rounds`: round, simulated_seconds;
    `clients`: round, client_id, staleness (NULL for synchronous rows, which are left out)."""
    steps = rounds.sort_values("round")[["round", "simulated_seconds"]]
    clock = pd.Series(steps["simulated_seconds"].cumsum().to_numpy(), index=steps["round"].to_numpy())
    stale = clients.dropna(subset=["staleness"]) if "staleness" in clients else clients.iloc[0:0]
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=clock.reindex(stale["round"]).to_numpy(), y=stale["staleness"].to_numpy(dtype=float), mode="markers",
            name="update staleness", marker={"size": 7, "color": "#2563eb", "opacity": 0.6},
            customdata=np.stack([stale["client_id"].to_numpy(), stale["round"].to_numpy()], axis=-1),
            hovertemplate="client %{customdata[0]}, step %{customdata[1]}: %{y:d} stale<extra></extra>",
        )
    )  # fmt: skip
    figure.add_trace(
        go.Scatter(
            x=[0.0, *clock.to_numpy()], y=[0, *clock.index], mode="lines", line={"shape": "hv", "color": "#f97316"},
            name="model version", yaxis="y2", hovertemplate="%{x:.1f} s: version %{y}<extra></extra>",
        )
    )  # fmt: skip
    _style(figure, title=title, x_title="simulated seconds", y_title="staleness (server steps)", empty=stale.empty,
           x_is_round=False)  # fmt: skip
    figure.update_layout(yaxis2={"title": {"text": "model version"}, "overlaying": "y", "side": "right",
                                 "showgrid": False, "rangemode": "tozero"})  # fmt: skip
    figure.update_layout(yaxis={"rangemode": "tozero"})
    return figure
