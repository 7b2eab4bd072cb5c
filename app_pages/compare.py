"""The Compare tab: overlaid accuracy, loss and ε curves of chosen experiments and the settings that differ; for
NGSS rubric scoring also exact match and micro-F1 (e.g. federated against its centralized baseline)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import visualization as viz
from app_pages.common import (
    ACTIVE_STATUSES,
    LIVE_REFRESH_SECONDS,
    attack_text,
    compression_text,
    describe,
    format_share,
    partition_text,
    privacy_on,
    rounds_csv,
    strategy_text,
)
from app_pages.config_fields import FIELD_LABELS
from app_pages.sweep import render_sweep_group
from database import ExperimentStore, ExperimentSummary


def config_differences(experiments: list[ExperimentSummary]) -> pd.DataFrame:
    """The settings whose values differ between the experiments, named as the sidebar names them (a key it does
    not show keeps its config name), then their status and final accuracy: a "Setting" column, one per run."""
    flat = pd.DataFrame({
        f"#{e.id}": {f"{section}.{key}": value for section, table in e.config.items() for key, value in table.items()}
        for e in experiments
    })  # fmt: skip
    differing = flat[flat.astype(str).nunique(axis=1) > 1].astype(str)
    differing.index = [FIELD_LABELS.get(key, key) for key in differing.index]
    outcome = pd.DataFrame({
        f"#{e.id}": {"Status": e.status, "Final accuracy": format_share(e.final_accuracy)}
        for e in experiments
    })  # fmt: skip
    return pd.concat([differing, outcome]).rename_axis("Setting").reset_index()


def setting_texts(experiment: ExperimentSummary) -> dict[str, str]:
    """The settings a legend may need to tell runs apart, each as the legend would say it."""
    config = experiment.config
    attack, compression = attack_text(config), compression_text(config)
    mode = config.get("privacy", {}).get("mode", "none")
    return {
        "model": config.get("model", {}).get("name", "?"),
        "partition": partition_text(config),
        "clients": f"{config.get('federation', {}).get('num_clients', '?')} clients",
        "strategy": strategy_text(config),
        "attack": "no attack" if attack == "none" else f"attack {attack}",
        "compression": "uncompressed" if compression == "none" else compression,
        # δ too: ε of runs with different δ do not compare (a legend tells them apart only where they differ)
        "privacy": "no DP" if mode == "none" else f"{mode} DP, δ = {config['privacy'].get('delta', 0):.0e}",
    }


def legend_labels(experiments: list[ExperimentSummary]) -> dict[int, str]:
    """`#id · name` plus those of model, partition, clients, strategy, attack, compression and privacy that differ
    between the runs: `#3 · fedavg · no attack` beside `#4 · krum (f=2) · attack 30% sign_flip`."""
    texts = {e.id: setting_texts(e) for e in experiments}
    differing = [key for key in next(iter(texts.values()), {}) if len({t[key] for t in texts.values()}) > 1]
    return {
        e.id: " · ".join([f"#{e.id}", *([e.name] if e.name else []), *(texts[e.id][key] for key in differing)])
        for e in experiments
    }


def render_compare(store: ExperimentStore, experiments: list[ExperimentSummary]) -> None:
    if st.toggle("Sweeps", key="compare_sweeps", help="A sweep's trials as one group, best objective first."):
        render_sweep_group(experiments)
        return
    by_id = {e.id: e for e in experiments if e.rounds_done > 0 or e.status in ACTIVE_STATUSES}
    if "compare_ids" in st.session_state:  # drop deleted runs (a baseline may have been chosen before it began)
        st.session_state["compare_ids"] = [eid for eid in st.session_state["compare_ids"] if eid in by_id]
    chosen = st.multiselect(
        "Experiments to compare", list(by_id), key="compare_ids", max_selections=10,
        format_func=lambda eid: describe(by_id[eid]), placeholder="Choose two or more experiments",
    )  # fmt: skip
    if not chosen:
        st.info("Pick experiments above to overlay their accuracy and loss curves.", icon=":material/north:")
        return
    shown = {eid: by_id[eid].status for eid in chosen}
    active = any(status in ACTIVE_STATUSES for status in shown.values())
    st.fragment(run_every=LIVE_REFRESH_SECONDS if active else None)(compare_view)(store, shown)


def compare_view(store: ExperimentStore, shown: dict[int, str]) -> None:
    """Overlaid curves, read fresh while one of the runs is still going (e.g. a baseline without privacy)."""
    chosen = [store.get_experiment(eid) for eid in shown]
    if any(e is None or e.status != shown[e.id] for e in chosen):
        st.rerun()  # one started, ended or was deleted: redraw the page
    rounds = store.rounds_frame(list(shown))
    labels = legend_labels(chosen)
    left, right = st.columns(2)
    left.plotly_chart(viz.accuracy_figure(rounds, labels), key="compare-accuracy", config={"displaylogo": False})
    right.plotly_chart(viz.loss_figure(rounds, labels), key="compare-loss", config={"displaylogo": False})
    rubric = viz.rubric_rows(rounds)
    if not rubric.empty:  # rubric scoring: accuracy above is per-label accuracy; the stricter measures here
        left, right = st.columns(2)
        for column, name in ((left, "exact_match"), (right, "micro_f1")):
            figure = viz.rubric_overlay_figure(rubric, name, labels)
            column.plotly_chart(figure, key=f"compare-{name}", config={"displaylogo": False})
    private = [e.id for e in chosen if privacy_on(e)]
    if private:
        epsilon = viz.epsilon_figure(rounds[rounds["experiment_id"].isin(private)], labels)
        st.columns(2)[0].plotly_chart(epsilon, key="compare-epsilon", config={"displaylogo": False})
    if "client_accuracy_worst10" in rounds and rounds["client_accuracy_worst10"].notna().any():  # fairness
        fairness = viz.fairness_figure(rounds, labels)
        st.columns(2)[0].plotly_chart(fairness, key="compare-fairness", config={"displaylogo": False})
    st.markdown("**What differs**")
    differences = config_differences(chosen)
    st.dataframe(
        differences, width="stretch", hide_index=True, key="compare-differences",
        column_config={"Setting": st.column_config.TextColumn(width="medium", pinned=True)},
    )  # fmt: skip
    st.download_button(
        "Rounds CSV", rounds_csv(rounds, chosen), icon=":material/download:", file_name="compared-rounds.csv",
        mime="text/csv", key="download_compare_csv", on_click="ignore",
    )  # fmt: skip
