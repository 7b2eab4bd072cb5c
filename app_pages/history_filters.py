"""The History tab's filters: status, dataset, privacy mode and tag. Each is a multiselect of the values the
stored runs have; an empty one lets every run through, and a run is shown when it passes all four (for tags:
when it has every tag chosen). `filter_experiments` is a pure function of the runs and the choices."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import streamlit as st

from app_pages.common import data_text
from database import STATUSES, ExperimentSummary


@dataclass(frozen=True)
class HistoryFilter:
    """What History shows: runs with one of `statuses`, `datasets` (as `data_text` names them) and privacy
    `modes`, and every one of `tags`; an empty tuple places no condition."""

    statuses: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    modes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.statuses or self.datasets or self.modes or self.tags)


def privacy_mode(experiment: ExperimentSummary) -> str:
    return str(experiment.config.get("privacy", {}).get("mode", "none"))


def passes(experiment: ExperimentSummary, chosen: HistoryFilter) -> bool:
    return (
        (not chosen.statuses or experiment.status in chosen.statuses)
        and (not chosen.datasets or data_text(experiment) in chosen.datasets)
        and (not chosen.modes or privacy_mode(experiment) in chosen.modes)
        and set(chosen.tags) <= set(experiment.tags)
    )


def filter_experiments(experiments: Sequence[ExperimentSummary], chosen: HistoryFilter) -> list[ExperimentSummary]:
    """The runs that pass every filter, in the order given."""
    return [experiment for experiment in experiments if passes(experiment, chosen)]


def options(experiments: Sequence[ExperimentSummary]) -> dict[str, list[str]]:
    """The values each filter offers: those the stored runs have (statuses in their lifecycle order)."""
    present = {experiment.status for experiment in experiments}
    return {
        "statuses": [status for status in STATUSES if status in present],
        "datasets": sorted({data_text(experiment) for experiment in experiments}),
        "modes": sorted({privacy_mode(experiment) for experiment in experiments}),
        "tags": sorted({tag for experiment in experiments for tag in experiment.tags}, key=str.casefold),
    }


def render_filters(experiments: Sequence[ExperimentSummary]) -> HistoryFilter:
    """Four multiselects in a row; returns the choice. A value no run has any more (a deleted run's tag) is
    dropped from the choice instead of hiding everything."""
    offered = options(experiments)
    labels = {"statuses": "Status", "datasets": "Dataset", "modes": "Privacy", "tags": "Tags (all of)"}
    chosen = {}
    for column, (field, label) in zip(st.columns(4), labels.items()):
        key = f"history_filter_{field}"
        if key in st.session_state:
            st.session_state[key] = [value for value in st.session_state[key] if value in offered[field]]
        chosen[field] = tuple(column.multiselect(label, offered[field], key=key, placeholder="any"))
    return HistoryFilter(**chosen)
