"""What the page's parts share: the store, the worker launch, the run list and formatting.

Workers are started through `runs.workers.launch_worker`, looked up at call time, so replacing it (as the page tests do)
takes effect even though this module is imported once per process.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st
from sqlalchemy.engine import make_url

from database import ExperimentStore, ExperimentSummary
from experiment_config import ExperimentConfig
from ngss.data import TASKS
from runs import service
from runs import workers as processes
from runs.intake import settle_workers

if TYPE_CHECKING:
    import pandas as pd

ACTIVE_STATUSES = ("queued", "running")
STATUS_ICONS = {
    "queued": ":gray[:material/schedule:]", "running": ":blue[:material/autorenew:]",
    "completed": ":green[:material/check_circle:]", "failed": ":red[:material/error:]",
    "stopped": ":orange[:material/stop_circle:]", "interrupted": ":orange[:material/warning:]",
}  # fmt: skip
LIVE_REFRESH_SECONDS = 1.5  # while a run is in progress
IDLE_REFRESH_SECONDS = 5.0  # the Live tab notices runs started from another tab or the CLI
TABS = (
    ":material/monitoring: Live", ":material/history: History", ":material/compare_arrows: Compare",
    ":material/grading: Score",
)  # fmt: skip
REPO_ROOT = processes.REPO_ROOT  # the worker's working directory


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
    settle_workers(store, workers)
    return store.list_experiments()


def launch(store: ExperimentStore, config: ExperimentConfig, name: str) -> int:
    """Store the experiment, start its worker, and make it the one the Live tab shows."""
    return launch_many(store, [(config, name)])[0]


def launch_many(store: ExperimentStore, runs: list[tuple[ExperimentConfig, str]]) -> list[int]:
    """Store the experiments, start one worker that runs them in order, and show the first in the Live tab."""
    experiment_ids = [service.create(store, config, name=name) for config, name in runs]
    try:
        handle = processes.launch_worker(store, *experiment_ids)  # looked up per call: tests replace it
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


def resume(store: ExperimentStore, experiment_id: int) -> None:
    """Reopen an interrupted, stopped or failed run from its checkpoint and start a worker on it;
    a refusal (no checkpoint, no rounds left) lands in `session_state["resume_error"]`."""
    try:
        store.reopen(experiment_id)
    except (KeyError, ValueError) as error:
        st.session_state["resume_error"] = (experiment_id, str(error))
        return
    try:
        handle = processes.launch_worker(store, experiment_id)
    except OSError as error:
        store.finish(experiment_id, "failed", error=f"could not start the worker to resume: {error}")
        st.session_state["resume_error"] = (experiment_id, f"could not start the worker: {error}")
        return
    st.session_state.setdefault("workers", {})[experiment_id] = handle
    st.session_state["live_id"] = experiment_id
    st.session_state["view"] = TABS[0]


# -- formatting ---------------------------------------------------------------------


def describe(experiment: ExperimentSummary) -> str:
    """`#12 · my run · cnn · dirichlet(α=0.5) · 10 clients`."""
    federation = experiment.config.get("federation", {})
    model, partition = experiment.config.get("model", {}).get("name", "?"), partition_text(experiment.config)
    parts = [f"#{experiment.id}", experiment.name, model, partition, f"{federation.get('num_clients', '?')} clients"]
    return " · ".join(part for part in parts if part)


def partition_text(config: dict) -> str:
    """`iid`, `shards` or `dirichlet(α=0.5)`."""
    data = config.get("data", {})
    partition = data.get("partition", "?")
    return f"dirichlet(α={data.get('dirichlet_alpha')})" if partition == "dirichlet" else partition


def strategy_text(config: dict) -> str:
    """`fedavg`, or with the setting that defines a robust rule: `krum (f=2)`, `trimmed_mean (β=0.2)`."""
    federation = config.get("federation", {})
    strategy = federation.get("strategy", "fedavg")
    if strategy in ("krum", "multi_krum", "bulyan"):
        strategy = f"{strategy} (f={federation.get('byzantine_clients', 0)})"
    elif strategy == "trimmed_mean":
        strategy = f"{strategy} (β={federation.get('trim_fraction')})"
    if federation.get("secure_aggregation"):
        strategy += " + secure aggregation"
    return strategy


def attack_text(config: dict) -> str:
    """`30% sign_flip`, or `none` when nobody is malicious."""
    attack = config.get("attack", {})
    fraction = attack.get("fraction", 0.0)
    return f"{100 * fraction:.3g}% {attack.get('behaviour', '?')}" if fraction > 0 else "none"


def compression_text(config: dict) -> str:
    """`none`, `topk 1%` (`, no error feedback`) or `qsgd 8-bit`."""
    communication = config.get("communication", {})
    method = communication.get("compression", "none")
    if method == "topk":
        feedback = "" if communication.get("error_feedback", True) else ", no error feedback"
        return f"topk {100 * communication.get('topk_fraction', 0):.3g}%{feedback}"
    if method == "qsgd":
        return f"qsgd {communication.get('quantization_bits', '?')}-bit"
    return method


def data_source(experiment: ExperimentSummary) -> tuple[str, str]:
    """(source, task) of the run's data: source "mnist", "synthetic" or "imported" (from its dataset_info once the
    data is loaded, else from its config), task the NGSS task slug ("" for MNIST)."""
    info, data = experiment.dataset_info or {}, experiment.config.get("data", {})
    dataset = data.get("dataset", "mnist")
    if dataset == "mnist":
        return "mnist", ""
    if dataset == "folder":
        return "folder", Path(data.get("folder_path") or "").name
    if dataset == "ngss":
        return info.get("source", "synthetic"), info.get("task") or data.get("ngss_task", "")
    from_file = Path(data.get("csv_path") or "").name.removesuffix(".csv").removesuffix("_train")
    return info.get("source", "imported"), info.get("task") or from_file


def data_text(experiment: ExperimentSummary) -> str:
    """`MNIST`, `NGSS Gas Filled Balloons (synthetic)` or `NGSS my_task (imported)`."""
    source, task = data_source(experiment)
    if source == "mnist":
        return "MNIST"
    if source == "folder":
        return "Your images"
    return f"NGSS {TASKS[task].title if task in TASKS else task} ({source})"


def is_rubric(experiment: ExperimentSummary) -> bool:
    """Whether the run scores NGSS rubrics (text data, multi-label metrics)."""
    return experiment.config.get("data", {}).get("dataset", "mnist") in ("ngss", "csv")


def render_data_badge(experiment: ExperimentSummary) -> None:
    """A badge that says where an NGSS run's responses come from: synthetic, or the imported file."""
    source, _ = data_source(experiment)
    if source == "synthetic":
        st.badge("Synthetic data", icon=":material/science:", color="orange",
                 help="Generated responses (seeded), not real student data: see NGSS.md.")  # fmt: skip
    elif source == "imported":
        path = (experiment.dataset_info or {}).get("csv_path") or experiment.config["data"].get("csv_path", "")
        st.badge(f"Imported: {Path(path).name}", icon=":material/upload_file:", color="blue", help=path)


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


# -- what the run views and exports need to say -----------------------------------------

PRIVACY_COLUMNS = ("epsilon", "delta", "noise_multiplier", "max_grad_norm", "sample_rate", "accountant")
# Settings that make the simulated round time mean something: a network or client speeds someone set up.
NETWORK_KEYS = (
    ("communication", "bandwidth_mbps"), ("communication", "bandwidth_spread"), ("communication", "latency_ms"),
    ("communication", "latency_spread"), ("communication", "compression"), ("federation", "speed_spread"),
    ("federation", "round_deadline"),
)  # fmt: skip


def rounds_csv(rounds: pd.DataFrame, experiments: list[ExperimentSummary]) -> str:
    """The rounds as CSV, with the privacy columns left empty for runs without privacy: ε = 0, δ = 0 there would
    read as "perfectly private" when no guarantee was made at all."""
    public = [e.id for e in experiments if not privacy_on(e)]
    frame = rounds.astype({c: object for c in PRIVACY_COLUMNS if c in rounds})
    frame.loc[frame["experiment_id"].isin(public), [c for c in PRIVACY_COLUMNS if c in frame]] = None
    return frame.to_csv(index=False)


def network_configured(experiment: ExperimentSummary) -> bool:
    """Whether the run set up a network or client speeds (any of `NETWORK_KEYS` off its default): only then is
    the simulated round time worth a line of its own."""
    defaults = ExperimentConfig().to_dict()
    return any(
        experiment.config.get(section, {}).get(key, defaults[section][key]) != defaults[section][key]
        for section, key in NETWORK_KEYS
    )


def client_names(experiment: ExperimentSummary) -> list[str] | None:
    """The clients' names where they are schools (NGSS, natural partition: client k holds school k), else None
    (the charts then say "client k")."""
    schools = (experiment.dataset_info or {}).get("schools")
    natural = experiment.config.get("data", {}).get("partition") == "natural"
    return list(schools) if natural and schools else None


def rubric_labels(experiment: ExperimentSummary) -> list[str] | None:
    """The rubric elements (E1, E2, …) of an NGSS run, from its stored dataset_info; None for MNIST."""
    return list((experiment.dataset_info or {}).get("labels") or []) or None if is_rubric(experiment) else None


def delta_population(experiment: ExperimentSummary, clients: pd.DataFrame) -> tuple[int, str] | None:
    """(N, what N counts) that δ must stay well below 1/N of: the examples on the largest client (local DP) or
    the clients (central DP), as the privacy report states it; None when not known (yet)."""
    mode = experiment.config.get("privacy", {}).get("mode", "none")
    if mode == "central":
        return int(experiment.config.get("federation", {}).get("num_clients", 0)), "clients"
    sizes = [int(p.get("num_examples", 0)) for p in experiment.client_profiles or []]
    if not sizes and not clients.empty and "num_examples" in clients:
        sizes = [int(n) for n in clients.groupby("client_id")["num_examples"].max()]
    return (max(sizes), "examples on the largest client") if mode == "local" and sizes and max(sizes) > 0 else None
