"""The Live tab: the run this session started, else the newest active run, polled while it is in progress."""

from __future__ import annotations

import streamlit as st

from app_pages.common import ACTIVE_STATUSES, IDLE_REFRESH_SECONDS, LIVE_REFRESH_SECONDS, list_experiments
from app_pages.run_view import experiment_panel
from database import ExperimentStore, ExperimentSummary


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
