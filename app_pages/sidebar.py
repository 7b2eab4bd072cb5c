"""The sidebar: the form whose widgets build an `ExperimentConfig`, and Start / Sweep, which launch workers.

Above the form, outside it, two presets set the form's widgets through their callbacks (a submit button inside the
form would be what Enter in a field presses). Every widget is bound to the URL's query parameter of its key, so the
last-used settings stay with the browser tab across reloads (and a link reproduces them); "Load into sidebar" in a
run's view sets them from a stored run. At Start, out-of-range fields and config errors are listed by their sidebar
labels right above the Start button, and a δ too large for the data asks for a second press.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import streamlit as st

from app_pages.common import REPO_ROOT, launch, launch_many
from app_pages.config_fields import (
    ADVANCED_FIELDS,
    ALL_FIELDS,
    DATA_FIELDS,
    FEDERATION_FIELDS,
    FOLDER_FIELDS,
    FIELD_LABELS,
    NGSS_FIELDS,
    NGSS_NOTE,
    NGSS_RECIPE,
    PRIVACY_FIELDS,
    PRIVACY_GUIDE,
    SCENARIO_GROUPS,
    Field,
    labelled,
    widget_values,
)
from app_pages.csv_upload import MAX_UPLOAD_MB, CsvUpload, check_upload
from app_pages.folder_upload import MAX_ZIP_MB, FolderUpload, check_zip
from app_pages.import_summary import summary_for
from app_pages.sweep import grid_fields, start_grid_sweep
from database import ExperimentStore
from experiment_config import SECTIONS, ExperimentConfig
from ngss.data import TASKS, CsvImportError
from privacy.report import delta_concern as hollow_delta
from runs.preflight import check_data

MAX_SWEEP_RUNS = 20
MNIST_TRAIN_EXAMPLES = 60_000  # the LeCun training split


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


def folder_widgets(raw: dict[str, dict[str, Any]], defaults: ExperimentConfig) -> Any:
    """The folded "Your own images" group: size, channels and the zip upload (returned)."""
    with st.expander("Your own images", icon=":material/photo_library:"):
        paired_rows(FOLDER_FIELDS, raw, defaults)
        return st.file_uploader(
            "Image folder as a zip (Dataset folder)", type="zip", key="folder_upload", max_upload_size=MAX_ZIP_MB,
            help="<client>/<label>/*.png|jpg (natural partition: one client per top folder, Clients = their number) "
            "or <label>/*.png|jpg; a test/<label>/ folder is the test split, else 20% of each label folder is held "
            f"out. At most {MAX_ZIP_MB} MB; checked when you press Start.",
        )  # fmt: skip


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
            if (zip_file := folder_widgets(raw, defaults)) is not None:
                uploads.append(zip_file)
    for title, icon, note, fields in SCENARIO_GROUPS:
        with st.expander(title, icon=icon):
            if note:
                st.caption(note)
            paired_rows(fields, raw, defaults)
    with st.expander("Advanced", icon=":material/tune:"):
        for field in ADVANCED_FIELDS:
            raw[field.section][field.name] = field.widget(st, defaults)
        raw["data"]["data_dir"] = st.text_input(
            "Data directory", defaults.data.data_dir, key="data_dir", bind="query-params",
            help="Where the datasets live (and uploaded CSV files, under uploads/); the default comes from "
            "FPL_DATA_DIR, else ./data.",
        )  # fmt: skip
    return name.strip(), raw, uploads


def ngss_widgets(raw: dict[str, dict[str, Any]], defaults: ExperimentConfig) -> list[Any]:
    """The folded "NGSS rubric scoring" group: task, text model options, and the CSV upload (returned)."""
    with st.expander("NGSS rubric scoring", icon=":material/school:"):
        st.caption(NGSS_NOTE)
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


def use_defaults() -> None:
    """Set every widget of the form to the default config (the settings otherwise persist across reloads)."""
    for key, value in widget_values(ExperimentConfig()).items():
        st.session_state[key] = value
    st.session_state["experiment_name"] = ""


def render_presets() -> None:
    """The presets, outside the form: a button in the form would be the one that Enter in a field presses."""
    presets = st.container(horizontal=True, gap="small")
    presets.button(
        "NGSS recipe", icon=":material/auto_fix_high:", key="ngss_recipe", on_click=use_ngss_recipe,
        help="Synthetic NGSS, pretrained MiniLM + LoRA, one client per school (9), AdamW lr 0.003, batch 4, "
        "3 local epochs, 10 rounds: the settings that bring the schools within 2 points of a centralized run "
        "(README). Sets those fields below; the task and everything else stay as they are.",
    )  # fmt: skip
    presets.button(
        "Defaults", icon=":material/restart_alt:", key="use_defaults", on_click=use_defaults,
        help="Set every field below back to its default (the last-used settings are otherwise kept in the URL).",
    )  # fmt: skip


def range_problems(raw: dict[str, dict[str, Any]]) -> list[str]:
    """`**Label** must be between …, got …` for every field of the form outside its allowed range."""
    problems = []
    for field in ALL_FIELDS:
        problem = field.range_problem(raw.get(field.section, {}).get(field.name))
        if problem is not None:
            problems.append(f"**{FIELD_LABELS[f'{field.section}.{field.name}']}** {problem}")
    return problems


def delta_concern(config: ExperimentConfig) -> str | None:
    """Why this run's δ would make its (ε, δ) guarantee hollow, or None: δ ≥ 0.5, or δ ≥ 1/N with N the
    examples per client (local DP; the mean, when the training set's size is known before loading) or the
    clients (central DP). Such a δ allows the mechanism to reveal a whole unit outright with probability δ."""
    privacy, federation = config.privacy, config.federation
    if privacy.mode == "none":
        return None
    if privacy.mode == "central":
        population, unit = federation.num_clients, "clients"
    else:
        sizes = {"mnist": MNIST_TRAIN_EXAMPLES}
        if config.data.ngss_task in TASKS:
            sizes["ngss"] = TASKS[config.data.ngss_task].train_size
        total = config.data.max_train_examples or sizes.get(config.data.dataset, 0)
        population, unit = total // max(federation.num_clients, 1), "examples per client"
    return hollow_delta(privacy.delta, population, unit)


def checked_config(
    raw: dict[str, dict[str, Any]], files: list[Any], slot: Any
) -> tuple[ExperimentConfig, CsvUpload | FolderUpload | None] | None:
    """The form's config and, for Dataset csv, the checked upload that `data.csv_path` points at (saved only by
    `save_upload`). None, with the problems shown in `slot` (above Start), when a field is out of range, the files
    are missing or invalid or the config is."""
    upload = None
    if problems := range_problems(raw):
        slot.error("Cannot start: " + ("" if len(problems) == 1 else "fix these fields:\n- ")
                   + "\n- ".join(problems), icon=":material/block:")  # fmt: skip
        return None
    csvs = [file for file in files if not file.name.lower().endswith(".zip")]
    if raw["data"].get("dataset") == "csv":
        if not csvs:
            slot.error("Dataset csv needs the lab's files: upload {task}_train.csv (and optionally its _test.csv) "
                     "under NGSS rubric scoring.", icon=":material/block:")  # fmt: skip
            return None
        try:
            upload = check_upload([(file.name, file.getvalue()) for file in csvs])
        except CsvImportError as error:
            slot.error(f"Invalid CSV: {error}", icon=":material/block:")
            return None
        raw["data"]["csv_path"] = str(upload.train_path(upload_root(raw)))
    if raw["data"].get("dataset") == "folder" and (upload := checked_zip(raw, files, slot)) is None:
        return None
    try:
        return ExperimentConfig.from_dict(raw), upload
    except ValueError as error:
        slot.error(f"Invalid configuration: {labelled(str(error))}", icon=":material/block:")
        return None


def checked_zip(raw: dict[str, dict[str, Any]], files: list[Any], slot: Any) -> FolderUpload | None:
    """Dataset folder: the uploaded zip, checked (`folder_upload.check_zip`), with `data.folder_path` set to where
    `save_upload` will put it; None, with the problem shown in `slot`."""
    from engine.image_folder import FolderError  # PIL and torch load only for folder data

    zips = [file for file in files if file.name.lower().endswith(".zip")]
    if not zips:
        slot.error("Dataset folder needs your images: upload a zip of the folder under Your own images.",
                   icon=":material/block:")  # fmt: skip
        return None
    try:
        upload = check_zip(zips[0].getvalue(), image_size=raw["data"].get("image_size", 32),
                           channels=raw["data"].get("image_channels", 3))  # fmt: skip
    except FolderError as error:
        slot.error(f"Invalid image zip: {error}", icon=":material/block:")
        return None
    raw["data"]["folder_path"] = str(upload.folder_path(upload_root(raw)))
    return upload


def upload_root(raw: dict[str, dict[str, Any]]) -> Path:
    """The data directory as the worker sees it: a relative one is relative to the repository (its cwd)."""
    data_dir = Path(raw["data"].get("data_dir") or "data").expanduser()
    return data_dir if data_dir.is_absolute() else REPO_ROOT / data_dir


def save_upload(upload: CsvUpload | FolderUpload | None, raw: dict[str, dict[str, Any]], slot: Any) -> bool:
    """Write the checked upload (if any) where `data.csv_path` points; False, with the error shown, if it fails."""
    if upload is None:
        return True
    try:
        upload.save(upload_root(raw))
    except OSError as error:
        slot.error(f"Could not save the uploaded files: {error}", icon=":material/error:")
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


def confirmed_delta(config: ExperimentConfig, slot: Any) -> bool:
    """False, with the warning shown, the first time Start meets a hollow δ (`delta_concern`); a second press with
    the same settings goes ahead."""
    concern = delta_concern(config)
    if concern is None or st.session_state.get("delta_confirmed") == config.to_json():
        return True
    st.session_state["delta_confirmed"] = config.to_json()
    slot.warning(f"{concern} Press **Start** again to run with this δ anyway.", icon=":material/warning:")
    return False


def data_refused(config: ExperimentConfig, slot: Any) -> bool:
    """The data checks `cli.py run` makes before it stores anything (`runs.preflight.check_data`: more
    clients than examples, schools against clients, the CSV in full): True, with the problem shown in
    `slot` above Start, when the data cannot serve this config."""
    try:
        check_data(config)
    except ValueError as error:
        slot.error(f"Cannot start: {labelled(str(error))}", icon=":material/block:")
        return True
    return False


def start_one(store: ExperimentStore, raw: dict[str, dict[str, Any]], name: str, files: list[Any], slot: Any) -> None:
    checked = checked_config(raw, files, slot)
    if checked is None or not confirmed_delta(checked[0], slot) or not save_upload(checked[1], raw, slot):
        return
    config = checked[0]
    if data_refused(config, slot):
        return
    try:
        experiment_id = launch(store, config, name)
    except OSError as error:
        slot.error(f"Could not start the worker: {error}", icon=":material/error:")
        return
    st.toast(f"Experiment #{experiment_id} started")
    if isinstance(checked[1], CsvUpload):  # an upload: say what it brought in (the run view counts the responses cut)
        summary, _ = summary_for(config, with_tokenizer=False)
        message = f"#{experiment_id} · {Path(config.data.csv_path).name}: {summary.text()}."
        st.session_state["flash"] = ("info", message)


def start_sweep(
    store: ExperimentStore, raw: dict[str, dict[str, Any]], name: str, text: str, files: list[Any], slot: Any
) -> None:
    """One experiment per target ε in `text`, run one after the other by a single worker."""
    checked = checked_config(raw, files, slot)
    if checked is None:
        return
    base, upload = checked
    try:
        configs = sweep_configs(base, parse_epsilons(text))
    except ValueError as error:
        slot.error(f"Invalid sweep: {labelled(str(error))}", icon=":material/block:")
        return
    if not confirmed_delta(base, slot) or not save_upload(upload, raw, slot) or data_refused(base, slot):
        return
    runs = [(config, f"{name or 'sweep'} · target ε {config.privacy.target_epsilon:g}") for config in configs]
    try:
        experiment_ids = launch_many(store, runs)
    except OSError as error:
        slot.error(f"Could not start the worker: {error}", icon=":material/error:")
        return
    st.toast(f"Sweep started: {len(experiment_ids)} runs (#{experiment_ids[0]}–#{experiment_ids[-1]}), in sequence")


def start_grid(
    store: ExperimentStore, raw: dict[str, dict[str, Any]], name: str, grid: tuple[str, str, int], files: list[Any],
    slot: Any,
) -> None:  # fmt: skip
    """One experiment per point of the grid on the settings above (`runs.sweeps`), `parallel` workers at once."""
    checked = checked_config(raw, files, slot)
    if checked is None:
        return
    base, upload = checked
    if not confirmed_delta(base, slot) or not save_upload(upload, raw, slot) or data_refused(base, slot):
        return
    grid_text, objective, parallel = grid
    start_grid_sweep(store, base, name=name, grid_text=grid_text, objective=objective, parallel=parallel, slot=slot)


def render_sidebar(store: ExperimentStore) -> None:
    with st.sidebar:
        st.header("New experiment")
        render_presets()
        # Enter in a field commits its value and nothing else: Start is pressed, never implied.
        with st.form("experiment_form", border=False, enter_to_submit=False):
            name, raw, files = config_widgets(ExperimentConfig())
            sweep_text = st.text_input(
                "Target ε values, comma separated", key="sweep_epsilons", placeholder="e.g. 0.5, 1, 2, 4, 8",
                bind="query-params",
                help="For a privacy–utility curve: **Sweep** starts one run per value (the settings above with that "
                "target ε), one after the other. History then plots accuracy against ε.",
            )  # fmt: skip
            with st.expander("Sweep a grid of settings", icon=":material/grid_view:"):
                grid = grid_fields()  # filled: Sweep runs the grid instead of the target ε values
            slot = st.container()  # what Start found wrong, right above it
            start_column, sweep_column = st.columns(2)
            submitted = start_column.form_submit_button(
                "Start", icon=":material/play_arrow:", type="primary", key="start", width="stretch"
            )
            swept = sweep_column.form_submit_button(
                "Sweep", icon=":material/stacked_line_chart:", key="sweep", width="stretch",
                help="One run per target ε listed above, in sequence (privacy mode local or central).",
            )  # fmt: skip
        if submitted:
            start_one(store, raw, name, files, slot)
        elif swept and grid[0].strip():
            start_grid(store, raw, name, grid, files, slot)
        elif swept:
            start_sweep(store, raw, name, sweep_text, files, slot)
