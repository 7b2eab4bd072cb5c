"""The sidebar: the form whose widgets build an `ExperimentConfig`, and Start / Sweep, which launch workers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import streamlit as st

from app_pages.common import launch, launch_many
from database import ExperimentStore
from experiment_config import ACCOUNTANTS, DATASETS, MODELS, PARTITIONS, PRIVACY_MODES, STRATEGIES, ExperimentConfig

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
