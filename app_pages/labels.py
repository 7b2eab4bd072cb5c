"""A run's name and tags, shown under its title and edited in a popover (the run view, so Live and History).

The store checks both (`database.checked_name`, `database.checked_tags`: name ≤ 200 characters, ≤ 20 tags of
≤ 40 characters, no control characters); both are checked before either is written, so a refused edit stores
nothing and says why in one line beside the fields.
"""

from __future__ import annotations

import streamlit as st

from database import MAX_TAG_CHARS, MAX_TAGS, ExperimentStore, ExperimentSummary, checked_name, checked_tags


def parse_tags(text: str) -> list[str]:
    """Comma-separated tags as typed: `dp, mnist , baseline` → ["dp", "mnist", "baseline"] (the store strips,
    drops empty ones and repeats)."""
    return text.split(",")


def tags_text(tags: list[str]) -> str:
    return ", ".join(tags)


def save_labels(store: ExperimentStore, experiment_id: int, name: str, tags_typed: str) -> str | None:
    """Store the name and tags, or neither: the refusal's one line (None when stored)."""
    try:
        name, tags = checked_name(name), checked_tags(parse_tags(tags_typed))
        store.rename(experiment_id, name)
        store.set_tags(experiment_id, tags)
    except ValueError as error:
        return str(error)
    except KeyError:
        return f"experiment #{experiment_id} no longer exists"
    return None


def render_labels(store: ExperimentStore, experiment: ExperimentSummary, where: str) -> None:
    """The run's tags as badges and a "Rename / tags" popover; a saved edit redraws the whole page (the History
    table, the filters and the Live title show the name)."""
    row = st.container(horizontal=True, vertical_alignment="center", gap="small")
    for tag in experiment.tags:
        row.badge(tag, icon=":material/sell:", color="gray")
    refused = st.session_state.get("labels_error")
    editor = row.popover(
        "Rename / tags", icon=":material/edit:", type="tertiary", key=f"{where}-labels-{experiment.id}"
    )
    with editor:
        with st.form(f"{where}-labels-form-{experiment.id}", border=False):
            name = st.text_input("Name", experiment.name, key=f"{where}-name-{experiment.id}")
            typed = st.text_input(
                "Tags", tags_text(experiment.tags), key=f"{where}-tags-{experiment.id}",
                placeholder="baseline, dp, non-iid",
                help=f"Comma-separated, at most {MAX_TAGS} tags of {MAX_TAG_CHARS} characters. "
                "History filters by them.",
            )  # fmt: skip
            saved = st.form_submit_button("Save", icon=":material/save:", key=f"{where}-labels-save-{experiment.id}")
        if refused and refused[0] == experiment.id:
            st.error(f"Not saved: {refused[1]}", icon=":material/block:")
    if saved:
        problem = save_labels(store, experiment.id, name, typed)
        if problem is None:
            st.session_state.pop("labels_error", None)
            st.session_state["flash"] = ("success", f"Saved the name and tags of #{experiment.id}.")
        else:
            st.session_state["labels_error"] = (experiment.id, problem)
        st.rerun(scope="app")
