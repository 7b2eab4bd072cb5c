"""One experiment: status and progress, metrics, the privacy audit and report download, charts, the Federation
panel (`federation.py`), and the actions (re-run, run without privacy, CSV export, delete).

NGSS rubric-scoring runs also get: a badge saying where the responses come from (synthetic or an imported file),
the rubric metrics (per-label accuracy, exact match, micro-F1, score MAE) in the metrics row and per round, the
final round per school and per rubric element, bytes labelled as LoRA + head against the full model, and the
action "Run centralized baseline" (the same config on pooled data, one client) to compare with."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import streamlit as st

from privacy import report as privacy_report
import visualization as viz
from app_pages.common import (
    ACTIVE_STATUSES,
    STATUS_ICONS,
    TABS,
    describe,
    format_bytes,
    format_seconds,
    is_rubric,
    launch,
    privacy_on,
    render_data_badge,
    resume,
    total_rounds,
)
from app_pages.federation import render_federation
from database import RESUMABLE_STATUSES, ExperimentStore, ExperimentSummary
from experiment_config import ExperimentConfig
from privacy.audit import advantage_bound
from runs.comparisons import centralized_config, suggested_centralized_lr, without_privacy

# The backbones of the text models: (name, parameters). Only LoRA + head travel; this is what a full copy would be.
FULL_MODELS = {"tinyllama-lora": ("TinyLLama-v0", 4_621_376), "minilm-lora": ("all-MiniLM-L6-v2", 22_713_216)}
RUBRIC_HELP = {
    "per_label_accuracy": "Mean over rubric elements of the share of responses scored right (the paper's accuracy); "
    "an element counts as earned when its probability is at least 0.5.",
    "exact_match": "Share of responses whose every rubric element is right (rubric match).",
    "micro_f1": "F1 of all (response, element) entries pooled.",
    "score_mae": "Mean absolute error of the total score (the number of elements earned), in points.",
}  # fmt: skip


def progress_text(experiment: ExperimentSummary, rounds: pd.DataFrame) -> str:
    """`Round k/N · status · ETA` while active (mean train + eval seconds per round so far), else the duration."""
    text = f"Round {experiment.rounds_done}/{total_rounds(experiment)} · {experiment.status}"
    if experiment.status == "queued":
        return f"{text} · waiting for its worker…"  # starting, or busy with the runs before it (a sweep)
    if experiment.status == "running" and rounds.empty:
        return f"{text} · loading data and partitioning…"
    if experiment.status == "running":
        per_round = float((rounds["seconds"] + rounds["eval_seconds"]).mean())
        return f"{text} · ETA {format_seconds(per_round * max(total_rounds(experiment) - len(rounds), 0))}"
    return f"{text} · {format_seconds(experiment.duration_seconds)}"


def render_status(store: ExperimentStore, experiment: ExperimentSummary, rounds: pd.DataFrame, where: str) -> None:
    """Title, stop button, progress bar with ETA, and the outcome of a finished run."""
    title, stop = st.columns([5, 1], vertical_alignment="center")
    title.subheader(f"{STATUS_ICONS.get(experiment.status, '')} {describe(experiment)}")
    if is_rubric(experiment):
        render_data_badge(experiment)
    active = experiment.status in ACTIVE_STATUSES
    if active and not experiment.stop_requested:
        stop.button(
            "Stop", icon=":material/stop:", key=f"{where}-stop", help="Stop after the current round.",
            width="stretch", on_click=store.request_stop, args=(experiment.id,),
        )  # fmt: skip
    st.progress(min(experiment.rounds_done / max(total_rounds(experiment), 1), 1.0), progress_text(experiment, rounds))
    resumable = (
        experiment.status in RESUMABLE_STATUSES and experiment.rounds_done < total_rounds(experiment)
        and store.checkpoint_round(experiment.id) is not None
    )  # fmt: skip
    if resumable:
        stop.button(
            "Resume", icon=":material/play_arrow:", key=f"{where}-resume", width="stretch", on_click=resume,
            args=(store, experiment.id), help=f"Continue from round {experiment.rounds_done + 1} of the checkpoint "
            "saved with each round: the result is the same as if it had never stopped.",
        )  # fmt: skip
    if (refused := st.session_state.get("resume_error")) and refused[0] == experiment.id:
        st.error(f"Could not resume: {refused[1]}", icon=":material/error:")
    if experiment.stop_requested and active:
        st.info("Stop requested: the run ends after the current round.", icon=":material/stop_circle:")
    if experiment.status == "failed":
        st.error(f"The run failed: {experiment.error or 'no error was recorded'}", icon=":material/error:")
    elif experiment.status == "interrupted":
        st.warning(f"Interrupted: {experiment.error or 'the worker ended early'}", icon=":material/warning:")
    elif experiment.status == "stopped":
        reason = experiment.stop_reason or "stopped on request"
        st.info(f"Stopped after round {experiment.rounds_done}: {reason}.", icon=":material/stop_circle:")


def render_metrics(experiment: ExperimentSummary, rounds: pd.DataFrame, clients: pd.DataFrame) -> None:
    """Accuracy, loss, privacy, time and bytes; a rubric-scoring run shows its rubric metrics first, then the rest
    on a second row."""
    if rounds.empty:
        return
    last = rounds.iloc[-1]
    previous = rounds.iloc[-2] if len(rounds) > 1 else None
    accuracy_change = None if previous is None else f"{(last.accuracy - previous.accuracy) * 100:+.2f} pp"
    loss_change = None if previous is None else f"{last.loss - previous.loss:+.4f}"
    seconds_per_round = float((rounds.seconds + rounds.eval_seconds).mean())
    bytes_total = float(rounds.bytes_up.sum() + rounds.bytes_down.sum())
    columns = st.columns(5)
    rubric = viz.rubric_rows(rounds) if is_rubric(experiment) else pd.DataFrame()
    if rubric.empty:
        columns[0].metric("Accuracy", f"{last.accuracy:.2%}", accuracy_change, border=True)
        loss_column, columns = columns[1], columns[2:]
    else:  # per-label accuracy is the accuracy of a rubric-scoring run
        render_rubric_metrics(rubric, columns[:4])
        loss_column, columns = columns[4], st.columns(5)
    loss_column.metric("Loss", f"{last.loss:.4f}", loss_change, delta_color="inverse", border=True)
    if privacy_on(experiment):
        columns[0].metric(
            f"ε (δ = {last.delta:.0e})", f"{last.epsilon:.3g}", border=True,
            help=f"{experiment.config['privacy']['mode']} DP, σ = {last.noise_multiplier:.3g}, "
            f"C = {last.max_grad_norm:.3g}, {last.accountant} accountant",
        )  # fmt: skip
    else:
        columns[0].metric("Privacy", "off", border=True)
    columns[1].metric("Time per round", format_seconds(seconds_per_round), border=True)
    columns[2].metric("Data exchanged", format_bytes(bytes_total), border=True, help=exchange_help(experiment, clients))


def render_rubric_metrics(rows: pd.DataFrame, columns: list[Any]) -> None:
    """Per-label accuracy, exact match, micro-F1 and score MAE of the last round (`viz.rubric_rows`), each with
    its change since the round before, into four columns."""
    last, previous = rows.iloc[-1], rows.iloc[-2] if len(rows) > 1 else None
    for column, (name, percent) in zip(columns, [
        ("per_label_accuracy", True), ("exact_match", True), ("micro_f1", False), ("score_mae", False),
    ]):  # fmt: skip
        value = last[name]
        change = None if previous is None or math.isnan(previous[name]) else value - previous[name]
        if math.isnan(value):
            shown, delta = "—", None
        elif percent:
            shown, delta = f"{value:.2%}", None if change is None else f"{change * 100:+.2f} pp"
        else:
            shown, delta = f"{value:.3f}", None if change is None else f"{change:+.3f}"
        label = viz.RUBRIC_NAMES[name]
        column.metric(label[0].upper() + label[1:], shown, delta, border=True, help=RUBRIC_HELP[name],
                      delta_color="inverse" if name == "score_mae" else "normal")  # fmt: skip


def exchange_help(experiment: ExperimentSummary, clients: pd.DataFrame) -> str | None:
    """For a text model: one update's size (LoRA + head) against what the full model would cost."""
    model = experiment.config.get("model", {}).get("name")
    if model not in FULL_MODELS or clients.empty or not (clients["bytes_down"] > 0).any():
        return None
    backbone, parameters = FULL_MODELS[model]
    update = float(clients.loc[clients["bytes_down"] > 0, "bytes_down"].median())  # one client's download
    full = 4.0 * parameters  # float32
    return (
        f"Only LoRA adapters + the scoring head travel: {format_bytes(update)} ({update / 4:,.0f} values) per "
        f"client and direction, against {format_bytes(full)} for the full {backbone} ({full / update:,.0f}× more)."
    )


def render_privacy(experiment: ExperimentSummary, rounds: pd.DataFrame, where: str) -> None:
    """The membership-inference audit of the final model as metrics, and the privacy report to download."""
    audit = experiment.audit or {}
    if not privacy_on(experiment) and not audit:
        return
    columns = st.columns(5, vertical_alignment="center")
    if "auc" in audit:
        sample = f"{audit.get('members', '?')} trained-on and {audit.get('non_members', '?')} held-out examples"
        columns[0].metric(
            "Attack AUC", f"{audit['auc']:.3f}", border=True,
            help=f"Membership inference (loss threshold) on {sample}: 0.5 = the attacker cannot tell them apart, "
            "1 = it always can. One simple attack gives a lower bound on leakage, never a proof of privacy.",
        )  # fmt: skip
        bound = ""
        if privacy_on(experiment) and experiment.final_epsilon is not None and not rounds.empty:
            epsilon, delta = experiment.final_epsilon, float(rounds.iloc[-1].delta)
            limit = advantage_bound(epsilon, delta)
            bound = f" (ε, δ) = ({epsilon:.3g}, {delta:.0e}) allows any attack at most {limit:.3f}."
        columns[1].metric(
            "Attack advantage", f"{audit['advantage']:.3f}", border=True,
            help=f"Best TPR − FPR over loss thresholds (Yeom et al. 2018): 0 = no better than guessing.{bound}",
        )  # fmt: skip
    elif "error" in audit:
        columns[0].caption(f"Privacy audit failed: {audit['error']}")
    elif privacy_on(experiment) and experiment.status not in ACTIVE_STATUSES:
        columns[0].caption("No privacy audit stored for this run.")
    try:
        report = privacy_report.render_markdown(experiment, rounds)
    except Exception as error:  # a report bug must not take the run's page down
        columns[4].caption(f"Privacy report unavailable: {type(error).__name__}: {error}")
        return
    columns[4].download_button(
        "Privacy report (.md)", report, file_name=privacy_report.report_filename(experiment),
        mime="text/markdown", icon=":material/download:", key=f"{where}-privacy-report", on_click="ignore",
        width="stretch", help="The guarantee in words, the ε ledger and the audit, for a paper or a review.",
    )  # fmt: skip


def render_charts(experiment: ExperimentSummary, rounds: pd.DataFrame, clients: pd.DataFrame, where: str) -> None:
    """Two charts per row: accuracy (beside ε for a private run), loss, per-client loss, labels per client, bytes,
    seconds (real and simulated)."""
    rubric = is_rubric(experiment)
    figures = {"accuracy": viz.rubric_figure(viz.rubric_rows(rounds)) if rubric else viz.accuracy_figure(rounds)}
    if privacy_on(experiment):
        privacy = experiment.config["privacy"]
        figures["epsilon"] = viz.epsilon_figure(
            rounds, budget=privacy.get("max_epsilon"), target=privacy.get("target_epsilon"),
            last_round=total_rounds(experiment),
        )  # fmt: skip
    figures |= {
        "loss": viz.loss_figure(rounds),
        "client-loss": viz.client_loss_figure(clients),
        "labels": viz.label_heatmap(experiment.label_counts),
        "bytes": viz.bytes_figure(rounds, title="Bytes per round (LoRA + head only)") if rubric
        else viz.bytes_figure(rounds),
        "time": viz.time_figure(rounds),
    }
    names = list(figures)
    for start in range(0, len(names), 2):
        for column, name in zip(st.columns(2), names[start : start + 2]):
            column.plotly_chart(figures[name], key=f"{where}-{name}", config={"displaylogo": False})


def experiment_panel(store: ExperimentStore, experiment_id: int, shown_status: str, where: str) -> None:
    """Status, metrics and charts of one experiment, read fresh from the database."""
    experiment = store.get_experiment(experiment_id)
    if experiment is None:
        st.info(f"Experiment #{experiment_id} no longer exists.")
        return
    if experiment.status != shown_status:
        st.rerun()  # it started or ended since the page was drawn: redraw all (history, refresh rate)
    rounds, clients = store.rounds_frame([experiment.id]), store.client_rounds_frame(experiment.id)
    render_status(store, experiment, rounds, where)
    render_metrics(experiment, rounds, clients)
    render_privacy(experiment, rounds, where)
    render_charts(experiment, rounds, clients, where)
    if is_rubric(experiment):
        render_rubric(experiment, rounds, where)
    render_federation(experiment, rounds, clients, where)


def school_table(schools: pd.DataFrame) -> pd.DataFrame:
    """`viz.school_frame` as the page shows it: capitalised headers."""
    return schools.rename(columns={"school": "School", "examples": "Responses"} | {
        column: name[0].upper() + name[1:] for column, name in viz.RUBRIC_NAMES.items()
    })  # fmt: skip


def render_rubric(experiment: ExperimentSummary, rounds: pd.DataFrame, where: str) -> None:
    """The last round's rubric metrics per school (table and heatmap) and per rubric element."""
    recorded = [m for m in rounds.get("metrics", []) if isinstance(m, dict) and "exact_match" in m]
    if not recorded:
        return
    metrics, labels = recorded[-1], (experiment.dataset_info or {}).get("labels") or []
    st.markdown("##### :material/school: Last round by school and rubric element")
    schools = viz.school_frame(metrics)
    if not schools.empty:
        percent = st.column_config.NumberColumn(format="percent")
        st.dataframe(
            school_table(schools), hide_index=True, key=f"{where}-schools", height=min(38 + 35 * len(schools), 400),
            column_config={"Per-label accuracy": percent, "Exact match": percent,
                           "Micro-F1": st.column_config.NumberColumn(format="%.3f"),
                           "Macro-F1": st.column_config.NumberColumn(format="%.3f"),
                           "Score MAE": st.column_config.NumberColumn(format="%.3f")},
        )  # fmt: skip
    left, right = st.columns(2)
    if not schools.empty:
        left.plotly_chart(viz.school_heatmap(schools), key=f"{where}-school-heatmap", config={"displaylogo": False})
    right.plotly_chart(viz.label_figure(metrics, labels), key=f"{where}-label-metrics", config={"displaylogo": False})


def rerun_experiment(store: ExperimentStore, experiment: ExperimentSummary) -> None:
    try:
        config = ExperimentConfig.from_dict(experiment.config)
        new_id = launch(store, config, experiment.name or f"re-run of #{experiment.id}")
    except (ValueError, OSError) as error:
        st.session_state["flash"] = ("error", f"Cannot re-run #{experiment.id}: {error}")
        return
    st.session_state["flash"] = ("success", f"Started #{new_id}, a re-run of #{experiment.id}.")


def launch_comparison(
    store: ExperimentStore, experiment: ExperimentSummary, change: Any, *, what: str, suffix: str, gap: str
) -> None:
    """Start `change(config)` of this experiment and open Compare on the pair; errors go to the flash message."""
    try:
        config = change(ExperimentConfig.from_dict(experiment.config))
        new_id = launch(store, config, f"{experiment.name or f'#{experiment.id}'} {suffix}")
    except (ValueError, OSError) as error:
        st.session_state["flash"] = ("error", f"Cannot start {what} for #{experiment.id}: {error}")
        return
    st.session_state["compare_ids"] = [experiment.id, new_id]
    st.session_state["view"] = TABS[2]
    st.session_state["flash"] = ("success", f"Started #{new_id}: #{experiment.id} {gap}")


def run_baseline(store: ExperimentStore, experiment: ExperimentSummary) -> None:
    """Start this private experiment's config without privacy (same seed) and compare the two."""
    launch_comparison(
        store, experiment, without_privacy, what="a baseline", suffix="without privacy",
        gap="without privacy, same seed. The gap is the cost of privacy.",
    )  # fmt: skip


def run_centralized(store: ExperimentStore, experiment: ExperimentSummary) -> None:
    """Start this NGSS experiment centralized (`centralized_config`, at the rate in the popover) and compare."""
    rate = float(st.session_state[f"centralized_lr_{experiment.id}"])  # the popover's input, beside the button
    launch_comparison(
        store, experiment, lambda config: centralized_config(config, rate), what="a centralized baseline",
        suffix="· centralized",
        gap=f"on pooled data (one client, same model and seed, learning rate {rate:g}). The gap is the cost of "
        "federation.",
    )  # fmt: skip


def delete_experiment(store: ExperimentStore, experiment_id: int) -> None:
    store.delete_experiment(experiment_id)
    st.session_state.pop("history_selected", None)
    st.session_state["flash"] = ("success", f"Deleted experiment #{experiment_id}.")


def render_actions(store: ExperimentStore, experiment: ExperimentSummary) -> None:
    """Re-run, CSV export and delete (behind a confirmation) for one experiment."""
    actions = st.container(horizontal=True)
    actions.button(
        "Re-run", icon=":material/replay:", key="rerun", on_click=rerun_experiment, args=(store, experiment),
        help="Start a new experiment with this one's stored configuration.",
    )  # fmt: skip
    if privacy_on(experiment):
        actions.button(
            "Run without privacy", icon=":material/lock_open:", key="baseline", on_click=run_baseline,
            args=(store, experiment), help="Start this configuration with privacy off (same seed) and overlay both "
            "in Compare: the gap is what privacy costs in accuracy.",
        )  # fmt: skip
    if is_rubric(experiment) and experiment.config.get("federation", {}).get("num_clients", 1) > 1:
        with actions.popover("Run centralized baseline", icon=":material/hub:"):
            st.caption("This configuration on pooled data (one client holding every response, IID, fedavg, same "
                       "model and seed), overlaid in Compare. The one client takes every step of a round in "
                       "sequence, so it can need a smaller learning rate than the schools: with AdamW, 0.003 "
                       "diverged on pooled NGSS data and 0.001 did not.")  # fmt: skip
            st.number_input(
                "Learning rate", 1e-8, 100.0, suggested_centralized_lr(experiment.config), step=0.0005,
                format="%.4f", key=f"centralized_lr_{experiment.id}", help="The run's own, capped at 0.001 for AdamW.",
            )  # fmt: skip
            st.button(
                "Start baseline", icon=":material/play_arrow:", key="centralized", on_click=run_centralized,
                args=(store, experiment), type="primary",
            )  # fmt: skip
    actions.download_button(
        "Rounds CSV", store.rounds_frame([experiment.id]).to_csv(index=False), icon=":material/download:",
        file_name=f"experiment-{experiment.id}-rounds.csv", mime="text/csv", key="download_csv", on_click="ignore",
    )  # fmt: skip
    active = experiment.status in ACTIVE_STATUSES
    with actions.popover("Delete", icon=":material/delete:", disabled=active, help="Stop a running experiment first."):
        st.warning(f"Delete experiment #{experiment.id} and all its rounds? This cannot be undone.")
        st.button(
            "Delete permanently", key="delete_confirm", type="primary", on_click=delete_experiment,
            args=(store, experiment.id),
        )  # fmt: skip
