"""Federated Privacy Lab — the Streamlit page.

    streamlit run main.py        # DATABASE_URL picks the database, FPL_DATA_DIR the data

UI only. The sidebar form builds an `ExperimentConfig`; Start stores the experiment
and launches a worker process (`cli.launch_worker`) that runs it and writes every
round to the database. The page never trains: fragments poll the database, so a
reload or a second tab shows the same run. Tabs: Live (the run in progress or just
started), History (every experiment: charts, config, re-run, export, delete) and
Compare (overlaid curves of several experiments).

Imports stay light (no torch) so the page is interactive within seconds.
"""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy.engine import make_url

import visualization as viz
from cli import launch_worker, pid_alive
from database import ExperimentStore, ExperimentSummary, resolve_url
from experiment_config import ACCOUNTANTS, DATASETS, MODELS, PARTITIONS, PRIVACY_MODES, STRATEGIES, ExperimentConfig

ACTIVE_STATUSES = ("queued", "running")
STATUS_ICONS = {
    "queued": ":gray[:material/schedule:]", "running": ":blue[:material/autorenew:]",
    "completed": ":green[:material/check_circle:]", "failed": ":red[:material/error:]",
    "stopped": ":orange[:material/stop_circle:]", "interrupted": ":orange[:material/warning:]",
}  # fmt: skip
LIVE_REFRESH_SECONDS = 1.5  # while a run is in progress
IDLE_REFRESH_SECONDS = 5.0  # the Live tab notices runs started from another tab or the CLI
# Streamlit's default top padding (6rem) pushes the charts below the fold of a laptop screen.
COMPACT_TOP = "<style>[data-testid='stMainBlockContainer'] { padding-top: 2.5rem; }</style>"
TABS = (":material/monitoring: Live", ":material/history: History", ":material/compare_arrows: Compare")


@st.cache_resource
def get_store(url: str) -> ExperimentStore:
    return ExperimentStore(url)


def absolute_db_url(url: str) -> str:
    """The URL with a relative SQLite path made absolute, so the worker opens the same file."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return url
    return parsed.set(database=str(Path(database).resolve())).render_as_string(hide_password=False)


def list_experiments(store: ExperimentStore) -> list[ExperimentSummary]:
    """All experiments, newest first, after settling the fate of ended workers."""
    workers: dict[int, subprocess.Popen] = st.session_state.setdefault("workers", {})
    for experiment_id, worker in list(workers.items()):
        if worker.poll() is None:
            continue
        del workers[experiment_id]  # reaped: polling collected its exit status
        experiment = store.get_experiment(experiment_id)
        if experiment is not None and experiment.status == "queued":
            message = f"the worker exited with code {worker.returncode} before it started the run"
            store.finish(experiment_id, "failed", error=message)
    store.mark_interrupted_if_dead(pid_alive)
    return store.list_experiments()


def launch(store: ExperimentStore, config: ExperimentConfig, name: str) -> int:
    """Store the experiment, start its worker, and make it the one the Live tab shows."""
    experiment_id = store.create_experiment(config.to_dict(), name=name)
    try:
        handle = launch_worker(store, experiment_id)
    except OSError as error:
        store.finish(experiment_id, "failed", error=f"could not start the worker: {error}")
        raise
    st.session_state.setdefault("workers", {})[experiment_id] = handle
    st.session_state["live_id"] = experiment_id
    st.session_state["view"] = TABS[0]
    return experiment_id


# -- formatting ---------------------------------------------------------------------


def describe(experiment: ExperimentSummary) -> str:
    """`#12 · my run · cnn · dirichlet(α=0.5) · 10 clients`."""
    data, federation = experiment.config.get("data", {}), experiment.config.get("federation", {})
    partition = data.get("partition", "?")
    if partition == "dirichlet":
        partition = f"dirichlet(α={data.get('dirichlet_alpha')})"
    model = experiment.config.get("model", {}).get("name", "?")
    parts = [f"#{experiment.id}", experiment.name, model, partition, f"{federation.get('num_clients', '?')} clients"]
    return " · ".join(part for part in parts if part)


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def format_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.3g} {unit}"
        count /= 1000
    return f"{count:.3g} TB"


def format_share(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"


def total_rounds(experiment: ExperimentSummary) -> int:
    return int(experiment.config.get("federation", {}).get("rounds", 0))


def privacy_on(experiment: ExperimentSummary) -> bool:
    return experiment.config.get("privacy", {}).get("mode", "none") != "none"


# -- sidebar ------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """A sidebar widget bound to `section.name` of the config; its default comes from `ExperimentConfig()`."""

    section: str
    name: str
    label: str
    help: str
    options: tuple[str, ...] = ()  # a selectbox when given, else a number input
    low: float | None = None
    high: float | None = None
    step: float | None = None
    format: str | None = None
    key: str | None = None  # the widget key; default: `name`

    def widget(self, container: Any, defaults: ExperimentConfig) -> Any:
        default = getattr(getattr(defaults, self.section), self.name)
        key = self.key or self.name
        if self.options:
            index = self.options.index(default)
            return container.selectbox(self.label, self.options, index=index, key=key, help=self.help)
        return container.number_input(
            self.label, self.low, self.high, default, step=self.step, format=self.format, key=key, help=self.help
        )


DATA_FIELDS = (
    Field("data", "dataset", "Dataset", "The data set the clients share out.", options=DATASETS),
    Field("model", "name", "Model", "cnn: the CNN of McMahan et al. 2017 (1.66M parameters); mlp: their 2NN "
          "(two hidden layers of 200).", options=MODELS, key="model"),
    Field("data", "partition", "Partition", "How the training data is split over clients: iid (uniform at random), "
          "dirichlet (label skew set by α) or shards (two shards of label-sorted data each).", options=PARTITIONS),
    Field("data", "dirichlet_alpha", "Dirichlet α", "Only for the dirichlet partition: 0.1 gives each client a few "
          "labels, 100 is close to IID.", low=0.001, high=10_000.0, step=0.1, format="%.2f"),
)  # fmt: skip
FEDERATION_FIELDS = (
    Field("federation", "num_clients", "Clients", "How many clients the training data is split across.", low=1,
          high=100_000),
    Field("federation", "clients_per_round", "Per round", "Clients sampled to train in each round; at most the "
          "number of clients.", low=1, high=100_000),
    Field("federation", "rounds", "Rounds", "Communication rounds: broadcast the model, train locally, aggregate.",
          low=1, high=100_000),
    Field("federation", "local_epochs", "Local epochs", "Passes each sampled client makes over its own data per "
          "round.", low=1, high=1_000),
    Field("federation", "batch_size", "Batch size", "Examples per local SGD step.", low=1, high=100_000),
    Field("federation", "learning_rate", "Learning rate", "Step size of the clients' SGD.", low=1e-8, high=100.0,
          step=0.01, format="%.4f"),
    Field("federation", "strategy", "Strategy", "How the server aggregates client updates (fedavg: average "
          "weighted by examples).", options=STRATEGIES),
    Field("system", "seed", "Seed", "Seeds partitioning, client sampling, initialisation and noise: same seed, same "
          "run.", low=0, high=2**32 - 1),
)  # fmt: skip
PRIVACY_FIELDS = (
    Field("privacy", "mode", "Privacy", "none: no formal guarantee. local: DP-SGD on every client (sample-level ε "
          "per client, the run reports the largest). central: DP-FedAvg, clipped client updates plus server noise "
          "(user-level ε; clients are then sampled by Poisson).", options=PRIVACY_MODES, key="privacy_mode"),
    Field("privacy", "accountant", "Accountant", "Opacus accountant that turns the noise into ε: rdp (Rényi DP) "
          "or prv (tighter numerical bound).", options=ACCOUNTANTS),
    Field("privacy", "noise_multiplier", "Noise σ", "Noise standard deviation as a multiple of the clip norm C. "
          "Ignored when a target ε is set.", low=0.0, high=10_000.0, step=0.1, format="%.3f"),
    Field("privacy", "max_grad_norm", "Clip norm C", "Local: bound on each example's gradient. Central: bound on "
          "each client's update.", low=1e-8, high=1e6, step=0.1, format="%.3f"),
    Field("privacy", "target_epsilon", "Target ε", "> 0: choose σ before the run so the whole run ends at or "
          "below this ε (0 = use σ as given).", low=0.0, high=10_000.0, step=0.5, format="%.2f"),
    Field("privacy", "max_epsilon", "Budget ε", "> 0: stop before a round that would exceed this ε (0 = no "
          "budget).", low=0.0, high=10_000.0, step=0.5, format="%.2f"),
    Field("privacy", "delta", "δ", "The δ of (ε, δ)-DP; keep it well below 1 / (examples per client).",
          low=1e-12, high=0.5, step=1e-6, format="%.1e"),
)  # fmt: skip
ADVANCED_FIELDS = (
    Field("data", "max_train_examples", "Max train examples", "Train on a seeded random subset of the training "
          "set; 0 = all of it.", low=0, high=10_000_000),
    Field("data", "max_test_examples", "Max test examples", "Evaluate on a seeded random subset of the test set; "
          "0 = all of it.", low=0, high=10_000_000),
    Field("system", "num_workers", "Trainer processes", "Clients trained in parallel processes; 0 = one per core, "
          "1 = inside the worker itself.", low=0, high=256),
)  # fmt: skip


def config_widgets(defaults: ExperimentConfig) -> tuple[str, dict[str, dict[str, Any]]]:
    """The form's widgets, paired in two columns; returns the run name and the raw config."""
    raw: dict[str, dict[str, Any]] = {"data": {}, "model": {}, "federation": {}, "privacy": {}, "system": {}}
    name = st.text_input(
        "Name (optional)", key="experiment_name", placeholder="e.g. non-IID baseline",
        help="A label for the history table and the comparison legend.",
    )  # fmt: skip
    sections = (("DATA & MODEL", DATA_FIELDS), ("FEDERATION", FEDERATION_FIELDS), ("PRIVACY", PRIVACY_FIELDS))
    for caption, fields in sections:
        st.caption(caption)
        columns = st.columns(2)
        for index, field in enumerate(fields):
            raw[field.section][field.name] = field.widget(columns[index % 2], defaults)
    with st.expander("Advanced", icon=":material/tune:"):
        for field in ADVANCED_FIELDS:
            raw[field.section][field.name] = field.widget(st, defaults)
        raw["data"]["data_dir"] = st.text_input(
            "Data directory", defaults.data.data_dir, key="data_dir",
            help="Where the datasets live; the default comes from FPL_DATA_DIR, else ./data.",
        )  # fmt: skip
    return name.strip(), raw


def render_sidebar(store: ExperimentStore) -> None:
    with st.sidebar:
        st.header("New experiment")
        with st.form("experiment_form", border=False):
            name, raw = config_widgets(ExperimentConfig())
            submitted = st.form_submit_button(
                "Start", icon=":material/play_arrow:", type="primary", key="start", width="stretch"
            )
        if not submitted:
            return
        try:
            config = ExperimentConfig.from_dict(raw)
        except ValueError as error:
            st.error(f"Invalid configuration: {error}", icon=":material/block:")
            return
        try:
            experiment_id = launch(store, config, name)
        except OSError as error:
            st.error(f"Could not start the worker: {error}", icon=":material/error:")
            return
        st.toast(f"Experiment #{experiment_id} started")


# -- one experiment ------------------------------------------------------------------


def progress_text(experiment: ExperimentSummary, rounds: pd.DataFrame) -> str:
    """`Round k/N · status · ETA` while active (mean train + eval seconds per round so far), else the duration."""
    text = f"Round {experiment.rounds_done}/{total_rounds(experiment)} · {experiment.status}"
    if experiment.status == "queued":
        return f"{text} · starting the worker…"
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
    active = experiment.status in ACTIVE_STATUSES
    if active and not experiment.stop_requested:
        stop.button(
            "Stop", icon=":material/stop:", key=f"{where}-stop", help="Stop after the current round.",
            width="stretch", on_click=store.request_stop, args=(experiment.id,),
        )  # fmt: skip
    st.progress(min(experiment.rounds_done / max(total_rounds(experiment), 1), 1.0), progress_text(experiment, rounds))
    if experiment.stop_requested and active:
        st.info("Stop requested: the run ends after the current round.", icon=":material/stop_circle:")
    if experiment.status == "failed":
        st.error(f"The run failed: {experiment.error or 'no error was recorded'}", icon=":material/error:")
    elif experiment.status == "interrupted":
        st.warning(f"Interrupted: {experiment.error or 'the worker ended early'}", icon=":material/warning:")
    elif experiment.status == "stopped":
        reason = experiment.stop_reason or "stopped on request"
        st.info(f"Stopped after round {experiment.rounds_done}: {reason}.", icon=":material/stop_circle:")


def render_metrics(experiment: ExperimentSummary, rounds: pd.DataFrame) -> None:
    if rounds.empty:
        return
    last = rounds.iloc[-1]
    previous = rounds.iloc[-2] if len(rounds) > 1 else None
    accuracy_change = None if previous is None else f"{(last.accuracy - previous.accuracy) * 100:+.2f} pp"
    loss_change = None if previous is None else f"{last.loss - previous.loss:+.4f}"
    seconds_per_round = float((rounds.seconds + rounds.eval_seconds).mean())
    bytes_total = float(rounds.bytes_up.sum() + rounds.bytes_down.sum())
    columns = st.columns(5)
    columns[0].metric("Accuracy", f"{last.accuracy:.2%}", accuracy_change, border=True)
    columns[1].metric("Loss", f"{last.loss:.4f}", loss_change, delta_color="inverse", border=True)
    if privacy_on(experiment):
        columns[2].metric(
            f"ε (δ = {last.delta:.0e})", f"{last.epsilon:.3g}", border=True,
            help=f"{experiment.config['privacy']['mode']} DP, σ = {last.noise_multiplier:.3g}, "
            f"C = {last.max_grad_norm:.3g}, {last.accountant} accountant",
        )  # fmt: skip
    else:
        columns[2].metric("Privacy", "off", border=True)
    columns[3].metric("Time per round", format_seconds(seconds_per_round), border=True)
    columns[4].metric("Data exchanged", format_bytes(bytes_total), border=True)


def render_charts(store: ExperimentStore, experiment: ExperimentSummary, rounds: pd.DataFrame, where: str) -> None:
    """Two charts per row: accuracy, loss, per-client loss, labels per client, bytes, seconds (and ε)."""
    figures = {
        "accuracy": viz.accuracy_figure(rounds),
        "loss": viz.loss_figure(rounds),
        "client-loss": viz.client_loss_figure(store.client_rounds_frame(experiment.id)),
        "labels": viz.label_heatmap(experiment.label_counts),
        "bytes": viz.bytes_figure(rounds),
        "time": viz.time_figure(rounds),
    }
    if privacy_on(experiment):
        figures["epsilon"] = viz.epsilon_figure(rounds)
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
    rounds = store.rounds_frame([experiment.id])
    render_status(store, experiment, rounds, where)
    render_metrics(experiment, rounds)
    render_charts(store, experiment, rounds, where)


# -- tabs -------------------------------------------------------------------------------


def pick_live(experiments: list[ExperimentSummary], live_id: int | None) -> ExperimentSummary | None:
    """The run this session started while it is active, else the newest active run, else the latest run."""
    by_id = {experiment.id: experiment for experiment in experiments}
    active = [experiment for experiment in experiments if experiment.status in ACTIVE_STATUSES]
    if live_id in by_id and by_id[live_id].status in ACTIVE_STATUSES:
        return by_id[live_id]
    if active:
        return active[0]
    return by_id.get(live_id) or (experiments[0] if experiments else None)


def live_view(store: ExperimentStore, shown: tuple[int, str] | None, draw: bool) -> None:
    """The Live tab's fragment: redraws the page when the run to show changes, else (if `draw`) its panel."""
    experiments = list_experiments(store)
    picked = pick_live(experiments, st.session_state.get("live_id"))
    if ((picked.id, picked.status) if picked else None) != shown:
        st.rerun()  # a run started, ended or appeared (another tab, the CLI): redraw the whole page
    if draw and picked is not None:
        others = sum(experiment.status in ACTIVE_STATUSES for experiment in experiments if experiment.id != picked.id)
        if others:
            st.caption(f"{others} other run(s) in progress; open them from the History tab.")
        experiment_panel(store, picked.id, picked.status, "live")


def render_live(store: ExperimentStore, experiments: list[ExperimentSummary]) -> None:
    """An active run is redrawn on every poll; otherwise the page only watches, slowly, for new runs."""
    picked = pick_live(experiments, st.session_state.get("live_id"))
    active = picked is not None and picked.status in ACTIVE_STATUSES
    shown = (picked.id, picked.status) if picked else None
    st.fragment(run_every=LIVE_REFRESH_SECONDS if active else IDLE_REFRESH_SECONDS)(live_view)(store, shown, active)
    if picked is None:
        st.info("No experiments yet: set one up in the sidebar and press **Start**.", icon=":material/west:")
    elif not active:
        experiment_panel(store, picked.id, picked.status, "live")


def history_frame(experiments: list[ExperimentSummary]) -> pd.DataFrame:
    rows = []
    for experiment in experiments:
        data, federation = experiment.config.get("data", {}), experiment.config.get("federation", {})
        rows.append({
            "ID": experiment.id,
            "Name": experiment.name,
            "Status": experiment.status,
            "Dataset": data.get("dataset"),
            "Model": experiment.config.get("model", {}).get("name"),
            "Partition": data.get("partition"),
            "Clients": federation.get("num_clients"),
            "Rounds": f"{experiment.rounds_done}/{federation.get('rounds', '?')}",
            "Final accuracy": experiment.final_accuracy,
            "Duration": format_seconds(experiment.duration_seconds),
            "Created (UTC)": experiment.created_at,
        })  # fmt: skip
    return pd.DataFrame(rows)


def select_from_table(ids: list[int]) -> None:
    rows = st.session_state["history_table"].selection.rows
    if rows:
        st.session_state["history_selected"] = ids[rows[0]]


def rerun_experiment(store: ExperimentStore, experiment: ExperimentSummary) -> None:
    try:
        config = ExperimentConfig.from_dict(experiment.config)
        new_id = launch(store, config, experiment.name or f"re-run of #{experiment.id}")
    except (ValueError, OSError) as error:
        st.session_state["flash"] = ("error", f"Cannot re-run #{experiment.id}: {error}")
        return
    st.session_state["flash"] = ("success", f"Started #{new_id}, a re-run of #{experiment.id}.")


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


def render_history(store: ExperimentStore, experiments: list[ExperimentSummary]) -> None:
    if not experiments:
        st.info("No experiments yet.")
        return
    ids = [experiment.id for experiment in experiments]
    by_id = dict(zip(ids, experiments))
    st.dataframe(
        history_frame(experiments), hide_index=True, key="history_table", selection_mode="single-row",
        on_select=functools.partial(select_from_table, ids), height=min(38 + 35 * len(experiments), 300),
        column_config={
            "ID": st.column_config.NumberColumn(width="small", format="%d"),
            "Final accuracy": st.column_config.NumberColumn(format="percent"),
            "Created (UTC)": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
        },
    )  # fmt: skip
    if st.session_state.get("history_selected") not in by_id:
        st.session_state["history_selected"] = ids[0]
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


def config_differences(experiments: list[ExperimentSummary]) -> pd.DataFrame:
    """The config keys whose values differ between the experiments, then their status and final accuracy."""
    flat = pd.DataFrame({
        f"#{e.id}": {f"{section}.{key}": value for section, table in e.config.items() for key, value in table.items()}
        for e in experiments
    })  # fmt: skip
    differing = flat[flat.astype(str).nunique(axis=1) > 1].astype(str)
    outcome = pd.DataFrame({
        f"#{e.id}": {"status": e.status, "final accuracy": format_share(e.final_accuracy)}
        for e in experiments
    })  # fmt: skip
    return pd.concat([differing, outcome])


def render_compare(store: ExperimentStore, experiments: list[ExperimentSummary]) -> None:
    by_id = {experiment.id: experiment for experiment in experiments if experiment.rounds_done > 0}
    chosen = st.multiselect(
        "Experiments to compare", list(by_id), key="compare_ids", max_selections=10,
        format_func=lambda eid: describe(by_id[eid]), placeholder="Choose two or more experiments",
    )  # fmt: skip
    if not chosen:
        st.info("Pick experiments above to overlay their accuracy and loss curves.", icon=":material/north:")
        return
    rounds = store.rounds_frame(chosen)
    labels = {eid: describe(by_id[eid]) for eid in chosen}
    left, right = st.columns(2)
    left.plotly_chart(viz.accuracy_figure(rounds, labels), key="compare-accuracy", config={"displaylogo": False})
    right.plotly_chart(viz.loss_figure(rounds, labels), key="compare-loss", config={"displaylogo": False})
    st.markdown("**What differs**")
    st.dataframe(config_differences([by_id[eid] for eid in chosen]), width="stretch")
    st.download_button(
        "Rounds CSV", rounds.to_csv(index=False), icon=":material/download:", file_name="compared-rounds.csv",
        mime="text/csv", key="download_compare_csv", on_click="ignore",
    )  # fmt: skip


def main() -> None:
    st.set_page_config(page_title="Federated Privacy Lab", page_icon=":material/shield_lock:", layout="wide")
    url = absolute_db_url(resolve_url())  # the worker runs in the repository directory
    store = get_store(url)
    render_sidebar(store)  # before the tabs: Start switches to the Live tab
    experiments = list_experiments(store)
    st.html(COMPACT_TOP)
    st.title(":material/shield_lock: Federated Privacy Lab")
    parsed = make_url(url)
    database = Path(parsed.database).name if parsed.get_backend_name() == "sqlite" and parsed.database else parsed.host
    st.caption(
        f"Federated learning experiments with differential privacy · database `{database}`",
        help=f"`{parsed.render_as_string(hide_password=True)}` (set DATABASE_URL to change it)",
    )
    if flash := st.session_state.pop("flash", None):
        getattr(st, flash[0])(flash[1])
    live, history, compare = st.tabs(TABS, key="view", on_change="rerun")
    with live:
        if live.open:
            render_live(store, experiments)
    with history:
        if history.open:
            render_history(store, experiments)
    with compare:
        if compare.open:
            render_compare(store, experiments)


main()
