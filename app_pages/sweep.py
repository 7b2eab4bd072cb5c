"""Sweeps on the page: a grid of settings started from the sidebar's config (one stored experiment per point,
run by workers), and Compare's view of one sweep as a group, its trials best first. The grid is the CLI's
(`cli.py sweep --grid`): one `section.key=value1,value2,...` per line; `runs.sweeps` parses, validates,
stores and launches it, so a point the config rejects stops the whole sweep before anything is stored.

    grid_text, objective, parallel = grid_fields()           # inside the sidebar's form
    start_grid_sweep(store, base, name=name, grid_text=grid_text, objective=objective, parallel=parallel, slot=slot)
    render_grid_form(store, base)                             # or a form of its own
    render_sweep_group(experiments)                           # the Compare tab
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from app_pages.common import TABS
from database import ExperimentStore, ExperimentSummary
from experiment_config import ExperimentConfig
from runs.sweeps import OBJECTIVES, checked_sweep, launch_grid, parse_grid, plan_grid, sweep_names, sweep_table

MAX_PARALLEL = 8  # workers at once from the page: each is a full training process
GRID_HELP = (
    "One setting per line, `section.key=value1,value2,...` (the keys of the TOML config, as in `cli.py sweep "
    "--grid`). Every combination runs as its own experiment, tagged with the sweep; Compare shows them as a group."
)
GRID_PLACEHOLDER = "federation.learning_rate=0.01,0.05,0.1\nfederation.local_epochs=1,2"


def grid_fields() -> tuple[str, str, int]:
    """The grid, the objective and how many workers at once (call inside a form)."""
    grid_text = st.text_area("Grid", key="sweep_grid", placeholder=GRID_PLACEHOLDER, help=GRID_HELP)
    left, right = st.columns(2)
    objective = left.selectbox("Objective", list(OBJECTIVES), key="sweep_objective",
                               help="accuracy is maximized; loss and ε of the final round are minimized")  # fmt: skip
    parallel = right.number_input("Workers at once", 1, MAX_PARALLEL, 1, key="sweep_parallel",
                                  help="Trials run in their own worker processes, this many at a time.")  # fmt: skip
    return grid_text, objective, int(parallel)


def start_grid_sweep(
    store: ExperimentStore, base: ExperimentConfig, *, name: str, grid_text: str, objective: str, parallel: int,
    slot: Any,
) -> list[int] | None:  # fmt: skip
    """Validate every point of the grid on `base`, store one experiment per point and start `parallel` workers;
    the run ids, or None with the problem shown in `slot` (nothing stored then)."""
    try:
        grid = parse_grid([line for line in grid_text.splitlines() if line.strip()])
        plans = plan_grid(base, grid)
        sweep = checked_sweep(name, objective, [base.to_dict(), grid, objective])
    except ValueError as error:
        slot.error(f"Invalid grid: {error}", icon=":material/block:")
        return None
    try:
        launched = launch_grid(store, sweep, plans, parallel=parallel)
    except OSError as error:
        slot.error(f"Could not start the workers: {error}", icon=":material/error:")
        return None
    workers = st.session_state.setdefault("workers", {})
    experiment_ids = []
    for handle, share in launched:
        for experiment_id in share:
            workers[experiment_id] = handle  # its exit settles the runs it left queued (common.list_experiments)
        experiment_ids += share
    st.session_state["live_id"] = min(experiment_ids)
    st.session_state["view"] = TABS[0]
    st.toast(f"Sweep {sweep.name}: {len(plans)} runs in {len(launched)} worker(s)")
    return sorted(experiment_ids)


def render_grid_form(store: ExperimentStore, base: ExperimentConfig) -> None:
    """A form of its own: name, grid, objective, workers, and Start sweep (the settings not in the grid: `base`)."""
    with st.form("grid_sweep_form", enter_to_submit=False):
        name = st.text_input("Sweep name", key="sweep_name", placeholder="from its settings when empty")
        grid_text, objective, parallel = grid_fields()
        slot = st.container()
        submitted = st.form_submit_button("Start sweep", icon=":material/grid_view:", key="start_grid_sweep")
    if submitted:
        start_grid_sweep(store, base, name=name, grid_text=grid_text, objective=objective, parallel=parallel,
                         slot=slot)  # fmt: skip


def render_sweep_group(experiments: list[ExperimentSummary]) -> None:
    """Compare's sweep view: pick a sweep; its trials as one table, best objective first, the settings that
    differ between them as columns."""
    names = sweep_names(experiments)
    if not names:
        st.info("No sweeps yet: start one with a grid (or `cli.py sweep`).", icon=":material/grid_view:")
        return
    name = st.selectbox("Sweep", names, key="compare_sweep")
    table = sweep_table(experiments, name)
    done = int((table["status"] == "completed").sum())
    st.caption(f"{done} of {len(table)} trials completed · best first")
    st.dataframe(
        table, hide_index=True, width="stretch", key="compare-sweep-table",
        column_config={
            "experiment": st.column_config.NumberColumn("Run", format="#%d", pinned=True),
            "accuracy": st.column_config.NumberColumn("Accuracy", format="percent"),
            "loss": st.column_config.NumberColumn("Loss", format="%.4f"),
            "epsilon": st.column_config.NumberColumn("ε", format="%.3f"),
        },
    )  # fmt: skip
