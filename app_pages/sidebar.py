"""The sidebar: the form whose widgets build an `ExperimentConfig`, and Start / Sweep, which launch workers."""

from __future__ import annotations

import math
from typing import Any

import streamlit as st

from app_pages.common import launch, launch_many
from app_pages.config_fields import (
    ADVANCED_FIELDS,
    DATA_FIELDS,
    FEDERATION_FIELDS,
    PRIVACY_FIELDS,
    PRIVACY_GUIDE,
    SCENARIO_GROUPS,
    Field,
)
from database import ExperimentStore
from experiment_config import SECTIONS, ExperimentConfig

MAX_SWEEP_RUNS = 20


def paired_rows(fields: tuple[Field, ...], raw: dict[str, dict[str, Any]], defaults: ExperimentConfig) -> None:
    """Inputs two to a row, bottom-aligned (a label may wrap); a checkbox takes a row of its own, where its label
    fits the narrow sidebar."""
    rows: list[list[Field]] = []
    for field in fields:
        if field.is_checkbox(defaults) or not rows or len(rows[-1]) == 2 or rows[-1][0].is_checkbox(defaults):
            rows.append([field])
        else:
            rows[-1].append(field)
    for row in rows:
        if row[0].is_checkbox(defaults):
            raw[row[0].section][row[0].name] = row[0].widget(st, defaults)
            continue
        for column, field in zip(st.columns(2, vertical_alignment="bottom"), row):
            raw[field.section][field.name] = field.widget(column, defaults)


def config_widgets(defaults: ExperimentConfig) -> tuple[str, dict[str, dict[str, Any]]]:
    """The form's widgets, paired in two columns; returns the run name and the raw config."""
    raw: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
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
    for title, icon, note, fields in SCENARIO_GROUPS:
        with st.expander(title, icon=icon):
            if note:
                st.caption(note)
            paired_rows(fields, raw, defaults)
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
