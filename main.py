"""Federated Privacy Lab — the Streamlit page.

    streamlit run main.py        # DATABASE_URL picks the database, FPL_DATA_DIR the data

UI only. The sidebar form builds an `ExperimentConfig`; Start stores the experiment
and launches a worker process (`cli.launch_worker`) that runs it and writes every
round to the database. The page never trains: fragments poll the database, so a
reload or a second tab shows the same run. Tabs: Live (the run in progress or just
started), History (every experiment: charts, config, re-run, a baseline without
privacy, export, delete; the privacy–utility trade-off across runs) and Compare
(overlaid curves of several experiments). A target-ε sweep stores one experiment per
value and runs them in sequence in one worker.

Imports stay light (no torch) so the page is interactive within seconds.
"""

from __future__ import annotations

import functools
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy.engine import make_url

import privacy_report
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
MAX_SWEEP_RUNS = 20
PRIVACY_GUIDE = """
**ε** bounds how much one protected unit can change what training reveals: every outcome
becomes at most e^ε times more (or less) likely with or without it. **Smaller ε = more private.**

- **ε ≤ 1**: strong protection.
- **1 – 10**: moderate; where most published DP deep learning lands.
- **ε > 10**: weak; a formal bound that promises little in practice.

**δ** is the small chance that the bound fails: keep it well below 1/N, N = examples per
client (local) or clients (central).

**What each mode protects**
- **none**: nothing formal; model updates can leak training examples.
- **local**: DP-SGD on every client protects **one training example**; the server only sees
  noised updates, so it need not be trusted.
- **central**: protects **a client's whole data** (user-level), but the server sees the clipped
  updates before it adds the noise: clients must trust it.
"""


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
    return launch_many(store, [(config, name)])[0]


def launch_many(store: ExperimentStore, runs: list[tuple[ExperimentConfig, str]]) -> list[int]:
    """Store the experiments, start one worker that runs them in order, and show the first in the Live tab."""
    experiment_ids = [store.create_experiment(config.to_dict(), name=name) for config, name in runs]
    try:
        handle = launch_worker(store, *experiment_ids)
    except OSError as error:
        for experiment_id in experiment_ids:
            store.finish(experiment_id, "failed", error=f"could not start the worker: {error}")
        raise
    workers = st.session_state.setdefault("workers", {})
    for experiment_id in experiment_ids:
        workers[experiment_id] = handle  # one process: its exit settles every run still queued
    st.session_state["live_id"] = experiment_ids[0]
    st.session_state["view"] = TABS[0]
    return experiment_ids


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


def advantage_bound(epsilon: float, delta: float) -> float:
    """The largest membership advantage (TPR − FPR) any attack can have against an (ε, δ)-DP training run.

    Both error rates of a test are bounded (TPR ≤ e^ε FPR + δ and the same for 1 − FPR), which caps TPR − FPR at
    (e^ε − 1 + 2δ) / (e^ε + 1) (Kairouz et al. 2015).
    """
    if epsilon > 700:  # e^ε overflows; the bound is 1 long before
        return 1.0
    return min((math.exp(epsilon) - 1 + 2 * delta) / (math.exp(epsilon) + 1), 1.0)


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
        if isinstance(default, bool):
            return container.checkbox(self.label, default, key=key, help=self.help)
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
    Field("privacy", "audit_examples", "Audit examples", "After the run, a membership-inference attack on this many "
          "trained-on and as many held-out examples measures leakage empirically (0 = no audit).", low=0,
          high=100_000),
    Field("privacy", "adaptive_clipping", "Adaptive clipping (central DP)", "Move the clip norm C each round towards "
          "the target quantile of client update norms (Andrew et al. 2021). The count it uses is noised too, and "
          "the reported ε covers both; needs enough clients per round."),
    Field("privacy", "target_quantile", "Target quantile", "Adaptive clipping: the share of client updates that "
          "should fit under C unclipped.", low=0.01, high=0.99, step=0.05, format="%.2f"),
    Field("privacy", "clip_learning_rate", "Clip learning rate", "Adaptive clipping: how fast C moves, "
          "C ← C·exp(−rate·(unclipped share − target quantile)).", low=1e-4, high=10.0, step=0.05, format="%.2f"),
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
        if fields is PRIVACY_FIELDS:
            with st.popover("About ε and the modes", icon=":material/help:", width="stretch"):
                st.markdown(PRIVACY_GUIDE)
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


def parse_epsilons(text: str) -> list[float]:
    """`"0.5, 1, 2"` → `[0.5, 1.0, 2.0]`; a `ValueError` names the first entry that is not a number > 0."""
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    if not entries:
        raise ValueError("enter target ε values separated by commas, e.g. 0.5, 1, 2, 4")
    if len(entries) > MAX_SWEEP_RUNS:
        raise ValueError(f"at most {MAX_SWEEP_RUNS} target ε values per sweep, got {len(entries)}")
    values = []
    for entry in entries:
        try:
            value = float(entry)
        except ValueError:
            raise ValueError(f"{entry!r} is not a number; every target ε must be a number > 0") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"every target ε must be a number > 0, got {entry}")
        values.append(value)
    return values


def sweep_configs(base: ExperimentConfig, target_epsilons: list[float]) -> list[ExperimentConfig]:
    """One config per target ε, otherwise `base`; each is validated (e.g. against the ε budget)."""
    if base.privacy.mode == "none":
        raise ValueError("a target-ε sweep needs privacy mode local or central (set Privacy above)")
    return [base.replace("privacy", target_epsilon=value) for value in target_epsilons]


def start_one(store: ExperimentStore, raw: dict[str, dict[str, Any]], name: str) -> None:
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


def start_sweep(store: ExperimentStore, raw: dict[str, dict[str, Any]], name: str, text: str) -> None:
    """One experiment per target ε in `text`, run one after the other by a single worker."""
    try:
        base = ExperimentConfig.from_dict(raw)
    except ValueError as error:
        st.error(f"Invalid configuration: {error}", icon=":material/block:")
        return
    try:
        configs = sweep_configs(base, parse_epsilons(text))
    except ValueError as error:
        st.error(f"Invalid sweep: {error}", icon=":material/block:")
        return
    runs = [(config, f"{name or 'sweep'} · target ε {config.privacy.target_epsilon:g}") for config in configs]
    try:
        experiment_ids = launch_many(store, runs)
    except OSError as error:
        st.error(f"Could not start the worker: {error}", icon=":material/error:")
        return
    st.toast(f"Sweep started: {len(experiment_ids)} runs (#{experiment_ids[0]}–#{experiment_ids[-1]}), in sequence")


def render_sidebar(store: ExperimentStore) -> None:
    with st.sidebar:
        st.header("New experiment")
        with st.form("experiment_form", border=False):
            name, raw = config_widgets(ExperimentConfig())
            sweep_text = st.text_input(
                "Target ε values, comma separated", key="sweep_epsilons", placeholder="e.g. 0.5, 1, 2, 4, 8",
                help="For a privacy–utility curve: **Sweep** starts one run per value (the settings above with that "
                "target ε), one after the other. History then plots accuracy against ε.",
            )  # fmt: skip
            start_column, sweep_column = st.columns(2)
            submitted = start_column.form_submit_button(
                "Start", icon=":material/play_arrow:", type="primary", key="start", width="stretch"
            )
            swept = sweep_column.form_submit_button(
                "Sweep", icon=":material/stacked_line_chart:", key="sweep", width="stretch",
                help="One run per target ε listed above, in sequence (privacy mode local or central).",
            )  # fmt: skip
        if submitted:
            start_one(store, raw, name)
        elif swept:
            start_sweep(store, raw, name, sweep_text)


# -- one experiment ------------------------------------------------------------------


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


def render_charts(store: ExperimentStore, experiment: ExperimentSummary, rounds: pd.DataFrame, where: str) -> None:
    """Two charts per row: accuracy (beside ε for a private run), loss, per-client loss, labels per client, bytes,
    seconds."""
    figures = {"accuracy": viz.accuracy_figure(rounds)}
    if privacy_on(experiment):
        privacy = experiment.config["privacy"]
        figures["epsilon"] = viz.epsilon_figure(
            rounds, budget=privacy.get("max_epsilon"), target=privacy.get("target_epsilon"),
            last_round=total_rounds(experiment),
        )  # fmt: skip
    figures |= {
        "loss": viz.loss_figure(rounds),
        "client-loss": viz.client_loss_figure(store.client_rounds_frame(experiment.id)),
        "labels": viz.label_heatmap(experiment.label_counts),
        "bytes": viz.bytes_figure(rounds),
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
    rounds = store.rounds_frame([experiment.id])
    render_status(store, experiment, rounds, where)
    render_metrics(experiment, rounds)
    render_privacy(experiment, rounds, where)
    render_charts(store, experiment, rounds, where)


# -- tabs -------------------------------------------------------------------------------


def pick_live(experiments: list[ExperimentSummary], live_id: int | None) -> ExperimentSummary | None:
    """The run this session started while it is active, else the newest running (then queued) run, else the latest."""
    by_id = {experiment.id: experiment for experiment in experiments}
    active = [e for status in ("running", "queued") for e in experiments if e.status == status]
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
            "Privacy": experiment.config.get("privacy", {}).get("mode", "none"),
            "Final ε": experiment.final_epsilon if privacy_on(experiment) else None,
            "Duration": format_seconds(experiment.duration_seconds),
            "Created (UTC)": experiment.created_at,
        })  # fmt: skip
    return pd.DataFrame(rows)


def privacy_points(experiments: list[ExperimentSummary]) -> pd.DataFrame:
    """Final ε, accuracy and audit of every private run that ended with results (completed, or stopped by its
    budget or on request), one row each, for `viz.privacy_utility_figure` and `viz.audit_figure`."""
    columns = ["experiment_id", "label", "name", "mode", "epsilon", "accuracy", "auc", "advantage"]
    rows = []
    for experiment in experiments:
        ended = experiment.status in ("completed", "stopped")
        if not (privacy_on(experiment) and ended and experiment.final_epsilon is not None):
            continue
        audit = experiment.audit or {}
        rows.append([
            experiment.id, f"#{experiment.id}", describe(experiment), experiment.config["privacy"]["mode"],
            experiment.final_epsilon, experiment.final_accuracy, audit.get("auc"), audit.get("advantage"),
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
        st.caption("ε is per training example for local DP and per client for central DP: compare runs of one mode. "
                   "A target-ε sweep (sidebar) traces the curve for one configuration.")  # fmt: skip


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


def run_baseline(store: ExperimentStore, experiment: ExperimentSummary) -> None:
    """Start this private experiment's config with `privacy.mode = "none"` (same seed) and compare the two."""
    try:
        config = ExperimentConfig.from_dict(experiment.config)
        changes: dict[str, Any] = {"mode": "none"}
        if getattr(config.privacy, "adaptive_clipping", False):
            changes["adaptive_clipping"] = False  # a DP-FedAvg option, invalid without privacy
        config = config.replace("privacy", **changes)
        new_id = launch(store, config, f"{experiment.name or f'#{experiment.id}'} without privacy")
    except (ValueError, OSError) as error:
        st.session_state["flash"] = ("error", f"Cannot start a baseline for #{experiment.id}: {error}")
        return
    st.session_state["compare_ids"] = [experiment.id, new_id]
    st.session_state["view"] = TABS[2]
    st.session_state["flash"] = (
        "success", f"Started #{new_id}: #{experiment.id} without privacy, same seed. The gap is the cost of privacy.",
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
    labels = {e.id: describe(e) for e in chosen}
    left, right = st.columns(2)
    left.plotly_chart(viz.accuracy_figure(rounds, labels), key="compare-accuracy", config={"displaylogo": False})
    right.plotly_chart(viz.loss_figure(rounds, labels), key="compare-loss", config={"displaylogo": False})
    private = [e.id for e in chosen if privacy_on(e)]
    if private:
        epsilon = viz.epsilon_figure(rounds[rounds["experiment_id"].isin(private)], labels)
        st.columns(2)[0].plotly_chart(epsilon, key="compare-epsilon", config={"displaylogo": False})
    st.markdown("**What differs**")
    st.dataframe(config_differences(chosen), width="stretch")
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
