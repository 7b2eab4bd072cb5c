"""The History tab: filters (status, dataset, privacy, tags), the experiments that pass them in a table, the
privacy–utility charts across those private runs, and the selected experiment with its actions and configuration."""

from __future__ import annotations

import functools

import pandas as pd
import streamlit as st

import visualization as viz
from app_pages.common import (
    ACTIVE_STATUSES,
    LIVE_REFRESH_SECONDS,
    attack_text,
    compression_text,
    data_text,
    describe,
    format_seconds,
    privacy_on,
    strategy_text,
)
from app_pages.history_filters import filter_experiments, render_filters
from app_pages.run_view import experiment_panel, render_actions
from database import ExperimentStore, ExperimentSummary

HISTORY_ROWS = 12  # rows the table shows before it scrolls


def history_frame(experiments: list[ExperimentSummary]) -> pd.DataFrame:
    rows = []
    for experiment in experiments:
        data, federation = experiment.config.get("data", {}), experiment.config.get("federation", {})
        rows.append({
            "ID": experiment.id,
            "Name": experiment.name,
            "Status": experiment.status,
            # The outcome first: at 800 px the columns after the first few are scrolled off.
            "Final accuracy": experiment.final_accuracy,
            "Final ε": experiment.final_epsilon if privacy_on(experiment) else None,
            "Tags": ", ".join(experiment.tags),
            "Privacy": experiment.config.get("privacy", {}).get("mode", "none"),
            "Data": data_text(experiment),
            "Model": experiment.config.get("model", {}).get("name"),
            "Partition": data.get("partition"),
            "Clients": federation.get("num_clients"),
            "Strategy": strategy_text(experiment.config),
            "Attack": attack_text(experiment.config),
            "Compression": compression_text(experiment.config),
            "Rounds": f"{experiment.rounds_done}/{federation.get('rounds', '?')}",
            "Duration": format_seconds(experiment.duration_seconds),
            "Created (UTC)": experiment.created_at,
        })  # fmt: skip
    return pd.DataFrame(rows)


def privacy_points(experiments: list[ExperimentSummary]) -> pd.DataFrame:
    """Final ε, accuracy and audit of every private run that ended with results (completed, or stopped by its
    budget or on request), one row each, for `viz.privacy_utility_figure` and `viz.audit_figure`."""
    columns = ["experiment_id", "label", "name", "mode", "epsilon", "delta", "accuracy", "auc", "advantage"]
    rows = []
    for experiment in experiments:
        ended = experiment.status in ("completed", "stopped")
        if not (privacy_on(experiment) and ended and experiment.final_epsilon is not None):
            continue
        audit = experiment.audit or {}
        rows.append([
            experiment.id, f"#{experiment.id}", describe(experiment), experiment.config["privacy"]["mode"],
            experiment.final_epsilon, float(experiment.config["privacy"].get("delta", float("nan"))),
            experiment.final_accuracy, audit.get("auc"), audit.get("advantage"),
        ])  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def render_privacy_utility(experiments: list[ExperimentSummary]) -> None:
    """Accuracy and membership-inference AUC against ε across private runs (nothing without any)."""
    points = privacy_points(experiments)
    if points.empty:
        return
    with st.expander("Privacy vs utility across experiments", icon=":material/insights:", expanded=True):
        left, right = st.columns(2)
        left.plotly_chart(viz.privacy_utility_figure(points), key="privacy-utility", config={"displaylogo": False})
        if points["auc"].notna().any():
            right.plotly_chart(viz.audit_figure(points), key="privacy-audit", config={"displaylogo": False})
        else:
            right.info("No membership-inference audits yet: runs audit their final model when Advanced → Audit "
                       "examples is above 0.", icon=":material/policy:")  # fmt: skip
        st.caption("ε is per training example for local DP and per client for central DP: compare runs of one mode "
                   "and one δ (runs that differ in δ get their own marker). "
                   "A target-ε sweep (sidebar) traces the curve for one configuration.")  # fmt: skip


def select_from_table(ids: list[int]) -> None:
    rows = st.session_state["history_table"].selection.rows
    if rows:
        st.session_state["history_selected"] = ids[rows[0]]


def render_history(store: ExperimentStore, experiments: list[ExperimentSummary]) -> None:
    if not experiments:
        st.info("No experiments yet.")
        return
    chosen = render_filters(experiments)
    shown = filter_experiments(experiments, chosen)
    if not shown:
        st.info(f"No experiment matches these filters ({len(experiments)} stored): clear one to see more.",
                icon=":material/filter_alt_off:")  # fmt: skip
        return
    if chosen.active:
        st.caption(f"{len(shown)} of {len(experiments)} experiments match the filters.")
    render_table(store, shown)


def render_table(store: ExperimentStore, experiments: list[ExperimentSummary]) -> None:
    """The table of `experiments`, the privacy–utility charts across them, and the one selected."""
    ids = [experiment.id for experiment in experiments]
    by_id = dict(zip(ids, experiments))
    st.dataframe(
        history_frame(experiments), hide_index=True, key="history_table", selection_mode="single-row",
        on_select=functools.partial(select_from_table, ids), height=38 + 35 * min(len(experiments), HISTORY_ROWS),
        column_config={
            "ID": st.column_config.NumberColumn(width="small", format="%d"),
            "Final accuracy": st.column_config.NumberColumn(format="percent"),
            "Final ε": st.column_config.NumberColumn(format="%.3g"),
            "Created (UTC)": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
        },
    )  # fmt: skip
    if st.session_state.get("history_selected") not in by_id:
        st.session_state["history_selected"] = ids[0]
    render_privacy_utility(experiments)
    selected = st.selectbox(
        "Experiment", ids, key="history_selected",
        format_func=lambda eid: f"{describe(by_id[eid])} · {by_id[eid].status}",
    )  # fmt: skip
    experiment = by_id[selected]
    render_actions(store, experiment)
    refresh = LIVE_REFRESH_SECONDS if experiment.status in ACTIVE_STATUSES else None
    st.fragment(run_every=refresh)(experiment_panel)(store, experiment.id, experiment.status, "history")
    with st.expander("Configuration (JSON)", icon=":material/data_object:"):
        st.json(experiment.config)
