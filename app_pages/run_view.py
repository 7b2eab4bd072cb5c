"""One experiment: status and progress (inside a round too, `round_progress.py`), its name and tags (`labels.py`),
metrics, the privacy audit and report download, charts, the Federation
panel (`federation.py`), and the actions (re-run, run without privacy, CSV export, delete).

NGSS rubric-scoring runs also get: a badge saying where the responses come from (synthetic or an imported file),
the rubric metrics (per-label accuracy, exact match, micro-F1, score MAE) in the metrics row and per round, the
final round per school and per rubric element, bytes labelled as LoRA + head against the full model, and the
action "Run centralized baseline" (the same config on pooled data, one client) to compare with."""

from __future__ import annotations

import math
import os
from typing import Any

import pandas as pd
import streamlit as st

import visualization as viz
from app_pages.common import (
    ACTIVE_STATUSES,
    STATUS_ICONS,
    TABS,
    client_names,
    delta_population,
    describe,
    format_bytes,
    format_seconds,
    is_rubric,
    launch,
    network_configured,
    privacy_on,
    render_data_badge,
    resume,
    rounds_csv,
    rubric_labels,
    total_rounds,
)
from app_pages.config_fields import labelled, widget_values
from app_pages.csv_upload import remove_upload
from app_pages.federation import render_federation
from app_pages.import_summary import render_import_summary
from app_pages.labels import render_labels
from app_pages.round_progress import current_progress, round_progress_text, run_fraction
from database import RESUMABLE_STATUSES, ExperimentStore, ExperimentSummary
from experiment_config import ExperimentConfig
from privacy import report as privacy_report
from privacy.audit import advantage_bound, advantage_chance_level
from runs.comparisons import centralized_config, suggested_centralized_lr, without_privacy

# What Stop does (`FederatedRun.abandon_round`): the round in progress is not recorded, and Resume runs it again.
STOP_HELP = ("Stop now: the running round is given up at each client's next step, not recorded, and run again by "
             "Resume. Under local DP it finishes first: each client's accountant must see every step it took.")
METRIC_WIDTH = 170  # px: "Per-label accuracy" and "91.67%" fit; five cards fill a 1000 px wide main area
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
    if (progress := current_progress(experiment)) is not None:  # the worker reports inside the round
        return round_progress_text(progress, total_rounds(experiment))
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
    render_labels(store, experiment, where)
    if is_rubric(experiment):
        render_data_badge(experiment)
        render_import_summary(experiment, where)
    active = experiment.status in ACTIVE_STATUSES
    if active and not experiment.stop_requested:
        stop.button(
            "Stop", icon=":material/stop:", key=f"{where}-stop", help=STOP_HELP,
            width="stretch", on_click=store.request_stop, args=(experiment.id,),
        )  # fmt: skip
    st.progress(run_fraction(experiment, total_rounds(experiment)), progress_text(experiment, rounds))
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
        st.info("Stop requested: the running round is given up at each client's next step (under local DP it "
                "finishes first).", icon=":material/stop_circle:")  # fmt: skip
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
    cards = metric_row()
    rubric = viz.rubric_rows(rounds) if is_rubric(experiment) else pd.DataFrame()
    if rubric.empty:
        cards.metric("Accuracy", f"{last.accuracy:.2%}", accuracy_change, border=True, width=METRIC_WIDTH)
    else:  # per-label accuracy is the accuracy of a rubric-scoring run
        render_rubric_metrics(rubric, cards)
    cards.metric("Loss", f"{last.loss:.4f}", loss_change, delta_color="inverse", border=True, width=METRIC_WIDTH)
    if privacy_on(experiment):
        render_epsilon_card(cards.container(width=METRIC_WIDTH, gap=None), experiment, last)
    else:
        cards.metric("Privacy", "off", border=True, width=METRIC_WIDTH)
    cards.metric("Time / round", format_seconds(seconds_per_round), border=True, width=METRIC_WIDTH,
                 help="Wall-clock seconds per round, training and evaluation, averaged over the rounds so far.")
    cards.metric("Data exchanged", format_bytes(bytes_total), border=True, width=METRIC_WIDTH,
                 help=exchange_help(experiment, clients))  # fmt: skip


def metric_row() -> Any:
    """A row of fixed-width metric cards that wraps onto more rows where the page is narrow (~800 px), instead of
    squeezing five columns until their labels read "Accur… 1…"."""
    return st.container(horizontal=True, gap="small")


def format_epsilon(epsilon: float) -> str:
    """ε with three decimals (2.995, not 3: a value just under a target must not read as the target itself);
    below 0.001 in scientific notation."""
    return f"{epsilon:.3f}" if epsilon >= 1e-3 or epsilon == 0 else f"{epsilon:.2e}"


def render_epsilon_card(container: Any, experiment: ExperimentSummary, last: pd.Series) -> None:
    """The ε card with the mechanism's parameters in plain sight under it: σ, C and the accountant."""
    mode = experiment.config["privacy"]["mode"]
    container.metric(
        f"ε (δ = {last.delta:.0e})", format_epsilon(float(last.epsilon)), border=True,
        help=f"{mode} DP: ε spent so far, from the {last.accountant} accountant, at noise multiplier σ and clip "
        "norm C.",
    )  # fmt: skip
    container.caption(f"{mode} DP · σ {last.noise_multiplier:.3g} · C {last.max_grad_norm:.3g} · {last.accountant}")


def render_rubric_metrics(rows: pd.DataFrame, cards: Any) -> None:
    """Per-label accuracy, exact match, micro-F1 and score MAE of the last round (`viz.rubric_rows`), each with
    its change since the round before, as four cards of the row `cards`."""
    last, previous = rows.iloc[-1], rows.iloc[-2] if len(rows) > 1 else None
    for name, percent in [
        ("per_label_accuracy", True), ("exact_match", True), ("micro_f1", False), ("score_mae", False),
    ]:  # fmt: skip
        value = last[name]
        change = None if previous is None or math.isnan(previous[name]) else value - previous[name]
        if math.isnan(value):
            shown, delta = "—", None
        elif percent:
            shown, delta = f"{value:.2%}", None if change is None else f"{change * 100:+.2f} pp"
        else:
            shown, delta = f"{value:.3f}", None if change is None else f"{change:+.3f}"
        label = viz.RUBRIC_NAMES[name]
        cards.metric(label[0].upper() + label[1:], shown, delta, border=True, help=RUBRIC_HELP[name],
                     delta_color="inverse" if name == "score_mae" else "normal", width=METRIC_WIDTH)  # fmt: skip


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


def chance_level(audit: dict[str, Any]) -> float | None:
    """The advantage that chance alone stays below 95% of the time at the audit's sample sizes (as the privacy
    report states it); None for an audit stored without them."""
    try:
        return advantage_chance_level(int(audit["members"]), int(audit["non_members"]))
    except (KeyError, TypeError, ValueError):
        return None


def delta_warning(experiment: ExperimentSummary, clients: pd.DataFrame) -> str | None:
    """Why this private run's δ makes its guarantee hollow (δ ≥ 0.5, or δ ≥ 1/N), or None."""
    if not privacy_on(experiment):
        return None
    delta = float(experiment.config.get("privacy", {}).get("delta", 0.0))
    count, unit = delta_population(experiment, clients) or (0, "")
    return privacy_report.delta_concern(delta, count, unit)


def render_privacy(experiment: ExperimentSummary, rounds: pd.DataFrame, clients: pd.DataFrame, where: str) -> None:
    """A warning where δ is too large to mean anything, the membership-inference audit of the final model as
    metrics, and the privacy report to download."""
    audit = experiment.audit or {}
    if not privacy_on(experiment) and not audit:
        return
    if warning := delta_warning(experiment, clients):
        st.warning(warning, icon=":material/warning:")
    row = metric_row()
    if "auc" in audit:
        sample = f"{audit.get('members', '?')} trained-on and {audit.get('non_members', '?')} held-out examples"
        row.metric(
            "Attack AUC", f"{audit['auc']:.3f}", border=True, width=METRIC_WIDTH,
            help=f"Membership inference (loss threshold) on {sample}: 0.5 = the attacker cannot tell them apart, "
            "1 = it always can. One simple attack gives a lower bound on leakage, never a proof of privacy.",
        )  # fmt: skip
        bound = ""
        if privacy_on(experiment) and experiment.final_epsilon is not None and not rounds.empty:
            epsilon, delta = experiment.final_epsilon, float(rounds.iloc[-1].delta)
            limit = advantage_bound(epsilon, delta)
            bound = f" (ε, δ) = ({epsilon:.3g}, {delta:.0e}) allows any attack at most {limit:.3f}."
        chance = chance_level(audit)
        row.metric(
            "Attack advantage", f"{audit['advantage']:.3f}", None if chance is None else f"chance < {chance:.3f}",
            delta_color="off", delta_arrow="off", border=True, width=METRIC_WIDTH,
            help="Best TPR − FPR over loss thresholds (Yeom et al. 2018): 0 = no better than guessing. "
            + ("" if chance is None else f"With these sample sizes chance alone stays below {chance:.3f} 95% of "
               "the time: only an advantage above that is evidence of leakage.") + bound,
        )  # fmt: skip
    elif "epsilon_lower_bound" in audit:  # the one-run audit (privacy/one_run_audit.py)
        accountant = experiment.final_epsilon if privacy_on(experiment) else None
        row.metric(
            "Empirical ε (95%)", format_epsilon(float(audit["epsilon_lower_bound"])),
            "no formal ε" if accountant is None else f"accountant ε {format_epsilon(float(accountant))}",
            delta_color="off", delta_arrow="off", border=True, width=METRIC_WIDTH,
            help=f"A lower bound on ε from one training run (Steinke, Nasr & Jagielski 2023): {audit['correct']} "
            f"of {audit['guesses']} guesses of which of {audit['canaries']} random-label canaries were trained on "
            "were right. It must stay below the accountant's ε (the upper bound); one attack proves leakage, "
            "never privacy.",
        )  # fmt: skip
    elif "error" in audit:
        row.caption(f"Privacy audit failed: {audit['error']}")
    elif privacy_on(experiment) and experiment.status not in ACTIVE_STATUSES:
        row.caption("No privacy audit stored for this run.")
    try:
        report = privacy_report.render_markdown(experiment, rounds)
    except Exception as error:  # a report bug must not take the run's page down
        row.caption(f"Privacy report unavailable: {type(error).__name__}: {error}")
        return
    row.download_button(
        "Privacy report (.md)", report, file_name=privacy_report.report_filename(experiment),
        mime="text/markdown", icon=":material/download:", key=f"{where}-privacy-report", on_click="ignore",
        help="The guarantee in words, the ε ledger and the audit, for a paper or a review.",
    )  # fmt: skip


def render_charts(experiment: ExperimentSummary, rounds: pd.DataFrame, clients: pd.DataFrame, where: str) -> None:
    """Two charts per row: accuracy (beside ε for a private run), loss, per-client loss, per-client local accuracy
    (only where clients hold out examples: federation.client_holdout > 0), labels per client, bytes, seconds."""
    rubric, names = is_rubric(experiment), client_names(experiment)
    figures = {"accuracy": viz.rubric_figure(viz.rubric_rows(rounds)) if rubric else viz.accuracy_figure(rounds)}
    if privacy_on(experiment):
        privacy = experiment.config["privacy"]
        figures["epsilon"] = viz.epsilon_figure(
            rounds, budget=privacy.get("max_epsilon"), target=privacy.get("target_epsilon"),
            last_round=total_rounds(experiment),
        )  # fmt: skip
    figures |= {
        "loss": viz.loss_figure(rounds),
        "client-loss": viz.client_loss_figure(clients, client_names=names),
    }
    if "validation_accuracy" in clients and clients["validation_accuracy"].notna().any():  # client_holdout > 0
        figures["client-accuracy"] = viz.client_accuracy_figure(clients, client_names=names)
    if "client_accuracy_worst10" in rounds and rounds["client_accuracy_worst10"].notna().any():  # fairness
        figures["fairness"] = viz.fairness_figure(rounds)
    if "staleness" in clients and clients["staleness"].notna().any():  # async (FedBuff)
        figures["staleness"] = viz.staleness_figure(rounds, clients)
    figures |= {
        "labels": viz.label_heatmap(experiment.label_counts, label_names=rubric_labels(experiment), client_names=names),
        "bytes": viz.bytes_figure(rounds, title="Bytes per round (LoRA + head only)") if rubric
        else viz.bytes_figure(rounds),
        "time": viz.time_figure(rounds, show_simulated=network_configured(experiment)),
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
    if experiment.status == "failed" and rounds.empty:
        return  # its error, above, is all there is: no empty charts
    render_metrics(experiment, rounds, clients)
    render_privacy(experiment, rounds, clients, where)
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


def load_into_sidebar(experiment: ExperimentSummary) -> None:
    """Set the sidebar's widgets to this run's config (a button's callback: before the widgets are drawn)."""
    try:
        config = ExperimentConfig.from_stored(experiment.config)
    except ValueError as error:
        st.session_state["flash"] = ("error", f"Cannot load #{experiment.id} into the sidebar: {labelled(str(error))}")
        return
    for key, value in widget_values(config).items():
        st.session_state[key] = value
    st.session_state["experiment_name"] = experiment.name
    note = " Upload its CSV files again under NGSS rubric scoring." if config.data.dataset == "csv" else ""
    st.session_state["flash"] = ("success", f"Loaded the settings of #{experiment.id} into the sidebar.{note}")


def rerun_experiment(store: ExperimentStore, experiment: ExperimentSummary) -> None:
    try:
        config = ExperimentConfig.from_dict(experiment.config)
        new_id = launch(store, config, experiment.name or f"re-run of #{experiment.id}")
    except (ValueError, OSError) as error:
        st.session_state["flash"] = ("error", f"Cannot re-run #{experiment.id}: {labelled(str(error))}")
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
        st.session_state["flash"] = ("error", f"Cannot start {what} for #{experiment.id}: {labelled(str(error))}")
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


def export_mlflow(store: ExperimentStore, experiment_id: int) -> None:
    """Log a run to the MLflow tracking server typed in its popover (`tracking.mlflow_export`):
    a second export updates the same MLflow run; a failure is one line, the run is untouched."""
    from tracking.mlflow_export import TrackingError, export_to_mlflow  # mlflow loads only when asked

    uri = str(st.session_state.get(f"mlflow_uri_{experiment_id}", "")).strip()
    try:
        run_id = export_to_mlflow(store, experiment_id, uri)
    except (TrackingError, ValueError) as error:
        st.session_state["flash"] = ("error", f"Export of #{experiment_id} to MLflow failed: {error}")
        return
    st.session_state["flash"] = ("success", f"Exported #{experiment_id} to MLflow (run {run_id}).")


def delete_experiment(store: ExperimentStore, experiment_id: int) -> None:
    """Delete a finished run, and its uploaded CSV files when no other run uses them; one that a worker
    has started since the page was drawn is refused by the store (its worker would crash), and the
    refusal is shown instead."""
    try:
        remove_upload(store.delete_experiment(experiment_id))
    except ValueError as error:
        st.session_state["flash"] = ("error", f"Cannot delete #{experiment_id}: {error}")
        return
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
    actions.button(
        "Load into sidebar", icon=":material/input:", key="load_config", on_click=load_into_sidebar,
        args=(experiment,), help="Set the sidebar's fields to this run's settings, to change some and start it anew.",
    )  # fmt: skip
    actions.download_button(
        "Rounds CSV", rounds_csv(store.rounds_frame([experiment.id]), [experiment]), icon=":material/download:",
        file_name=f"experiment-{experiment.id}-rounds.csv", mime="text/csv", key="download_csv", on_click="ignore",
    )  # fmt: skip
    with actions.popover("MLflow", icon=":material/upload:", help="Export this run to an MLflow tracking server."):
        st.text_input(
            "Tracking URI", value=os.environ.get("MLFLOW_TRACKING_URI", "") or experiment.config.get("system", {}).get(
                "mlflow_uri", ""), key=f"mlflow_uri_{experiment.id}", placeholder="http://127.0.0.1:5000",
            help="Its config, every round's metrics, per-client metrics, the privacy report and the final weights; "
            "exporting again updates the same MLflow run.",
        )  # fmt: skip
        st.button("Export to MLflow", key="mlflow_export", on_click=export_mlflow, args=(store, experiment.id))
    active = experiment.status in ACTIVE_STATUSES
    with actions.popover("Delete", icon=":material/delete:", disabled=active, help="Stop a running experiment first."):
        st.warning(f"Delete experiment #{experiment.id} and all its rounds? This cannot be undone.")
        st.button(
            "Delete permanently", key="delete_confirm", type="primary", on_click=delete_experiment,
            args=(store, experiment.id),
        )  # fmt: skip
