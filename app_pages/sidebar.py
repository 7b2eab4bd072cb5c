"""The sidebar: the form whose widgets build an `ExperimentConfig`, and Start / Sweep, which launch workers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import streamlit as st

from app_pages.common import REPO_ROOT, launch, launch_many
from app_pages.config_fields import (
    ADVANCED_FIELDS,
    DATA_FIELDS,
    FEDERATION_FIELDS,
    NGSS_FIELDS,
    NGSS_NOTE,
    NGSS_RECIPE,
    PRIVACY_FIELDS,
    PRIVACY_GUIDE,
    SCENARIO_GROUPS,
    Field,
)
from app_pages.csv_upload import MAX_UPLOAD_MB, CsvUpload, check_upload
from database import ExperimentStore
from experiment_config import SECTIONS, ExperimentConfig
from ngss.data import CsvImportError

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


def config_widgets(defaults: ExperimentConfig) -> tuple[str, dict[str, dict[str, Any]], list[Any]]:
    """The form's widgets, paired in two columns; returns the run name, the raw config and the uploaded CSV files."""
    raw: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    name = st.text_input(
        "Name (optional)", key="experiment_name", placeholder="e.g. non-IID baseline",
        help="A label for the history table and the comparison legend.",
    )  # fmt: skip
    sections = (("DATA & MODEL", DATA_FIELDS), ("FEDERATION", FEDERATION_FIELDS), ("PRIVACY", PRIVACY_FIELDS))
    uploads: list[Any] = []
    for caption, fields in sections:
        st.caption(caption)
        if fields is PRIVACY_FIELDS:
            with st.popover("About ε and the modes", icon=":material/help:", width="stretch"):
                st.markdown(PRIVACY_GUIDE)
        columns = st.columns(2)
        for index, field in enumerate(fields):
            raw[field.section][field.name] = field.widget(columns[index % 2], defaults)
        if fields is DATA_FIELDS:
            uploads = ngss_widgets(raw, defaults)
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
            help="Where the datasets live (and uploaded CSV files, under uploads/); the default comes from "
            "FPL_DATA_DIR, else ./data.",
        )  # fmt: skip
    return name.strip(), raw, uploads


def ngss_widgets(raw: dict[str, dict[str, Any]], defaults: ExperimentConfig) -> list[Any]:
    """The folded "NGSS rubric scoring" group: task, text model options, and the CSV upload (returned)."""
    with st.expander("NGSS rubric scoring", icon=":material/school:"):
        st.caption(NGSS_NOTE)
        st.form_submit_button(  # in the form: keeps what was typed, then the callback sets the recipe
            "Use the scoring recipe", icon=":material/auto_fix_high:", key="ngss_recipe", on_click=use_ngss_recipe,
            help="Synthetic NGSS, pretrained MiniLM + LoRA, one client per school (9), AdamW lr 0.003, batch 4, "
            "3 local epochs, 10 rounds: the settings that bring the schools within 2 points of a centralized run "
            "(README). Sets those widgets; the task and everything else stay as they are.",
        )  # fmt: skip
        task, *options = NGSS_FIELDS  # the task's title needs the full width
        raw[task.section][task.name] = task.widget(st, defaults)
        paired_rows(tuple(options), raw, defaults)
        files = st.file_uploader(
            "Lab CSV files (Dataset csv)", type="csv", accept_multiple_files=True, key="csv_upload",
            max_upload_size=MAX_UPLOAD_MB,
            help="One {task}_train.csv and, optionally, its {task}_test.csv (else 20% of each school is held out): "
            "the response text first (or a column text/response), one 0/1 column per rubric element E1, E2, … "
            "(-1 = unscored), optionally a Group/school column (natural partition: one client per school). "
            f"At most {MAX_UPLOAD_MB} MB each; checked when you press Start.",
        )  # fmt: skip
    return list(files or [])


def use_ngss_recipe() -> None:
    """Set the widgets of `NGSS_RECIPE` (a button's callback: it runs before the widgets are drawn)."""
    for key, value in NGSS_RECIPE:
        st.session_state[key] = value


def checked_config(
    raw: dict[str, dict[str, Any]], files: list[Any]
) -> tuple[ExperimentConfig, CsvUpload | None] | None:
    """The form's config and, for Dataset csv, the checked upload that `data.csv_path` points at (saved only by
    `save_upload`). None, with the error shown, when the files are missing or invalid or the config is."""
    upload = None
    if raw["data"].get("dataset") == "csv":
        if not files:
            st.error("Dataset csv needs the lab's files: upload {task}_train.csv (and optionally its _test.csv) "
                     "under NGSS rubric scoring.", icon=":material/block:")  # fmt: skip
            return None
        try:
            upload = check_upload([(file.name, file.getvalue()) for file in files])
        except CsvImportError as error:
            st.error(f"Invalid CSV: {error}", icon=":material/block:")
            return None
        raw["data"]["csv_path"] = str(upload.train_path(upload_root(raw)))
    try:
        return ExperimentConfig.from_dict(raw), upload
    except ValueError as error:
        st.error(f"Invalid configuration: {error}", icon=":material/block:")
        return None


def upload_root(raw: dict[str, dict[str, Any]]) -> Path:
    """The data directory as the worker sees it: a relative one is relative to the repository (its cwd)."""
    data_dir = Path(raw["data"].get("data_dir") or "data").expanduser()
    return data_dir if data_dir.is_absolute() else REPO_ROOT / data_dir


def save_upload(upload: CsvUpload | None, raw: dict[str, dict[str, Any]]) -> bool:
    """Write the checked upload (if any) where `data.csv_path` points; False, with the error shown, if it fails."""
    if upload is None:
        return True
    try:
        upload.save(upload_root(raw))
    except OSError as error:
        st.error(f"Could not save the uploaded files: {error}", icon=":material/error:")
        return False
    return True


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


def start_one(store: ExperimentStore, raw: dict[str, dict[str, Any]], name: str, files: list[Any]) -> None:
    checked = checked_config(raw, files)
    if checked is None or not save_upload(checked[1], raw):
        return
    config = checked[0]
    try:
        experiment_id = launch(store, config, name)
    except OSError as error:
        st.error(f"Could not start the worker: {error}", icon=":material/error:")
        return
    st.toast(f"Experiment #{experiment_id} started")


def start_sweep(
    store: ExperimentStore, raw: dict[str, dict[str, Any]], name: str, text: str, files: list[Any]
) -> None:
    """One experiment per target ε in `text`, run one after the other by a single worker."""
    checked = checked_config(raw, files)
    if checked is None:
        return
    base, upload = checked
    try:
        configs = sweep_configs(base, parse_epsilons(text))
    except ValueError as error:
        st.error(f"Invalid sweep: {error}", icon=":material/block:")
        return
    if not save_upload(upload, raw):
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
            name, raw, files = config_widgets(ExperimentConfig())
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
            start_one(store, raw, name, files)
        elif swept:
            start_sweep(store, raw, name, sweep_text, files)
