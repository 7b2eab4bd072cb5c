"""The Score tab: apply a finished NGSS run's final model to new responses.

Pick a run whose final weights are stored (text models store their LoRA + head when they end), paste responses
one per line or upload a CSV with a text column, press Score: per response each rubric element's probability,
0/1 (≥ 0.5) and the total score, downloadable as CSV. Torch loads only when Score is pressed
(`runs.scoring.score_experiment`), so the page stays light.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd
import streamlit as st

from runs.scoring import rubric_elements, score_experiment
from app_pages.common import data_text, describe, render_data_badge
from database import ExperimentStore, ExperimentSummary

SCORABLE_STATUSES = ("completed", "stopped")  # ended with a final model
MAX_RESPONSES = 2_000  # per press: scoring runs inside the page's script run
MAX_CSV_MB = 20
TEXT_COLUMNS = ("text", "response")


def responses_from_text(text: str) -> list[str]:
    """One response per non-blank line, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def responses_from_csv(data: bytes) -> list[str]:
    """The non-blank cells of a CSV's text column: the one named text or response (any case), else the first.
    The first row is the header. Raises ValueError for a file that is not UTF-8 CSV or has no rows."""
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"not a UTF-8 CSV file ({error})") from None
    rows = [row for row in rows if row]
    if len(rows) < 2:
        raise ValueError("the CSV needs a header row and at least one response")
    header = [cell.strip().lower() for cell in rows[0]]
    column = next((header.index(name) for name in TEXT_COLUMNS if name in header), 0)
    return [row[column].strip() for row in rows[1:] if len(row) > column and row[column].strip()]


def scores_frame(texts: list[str], probabilities: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """One row per response: the response, its total score (elements with probability ≥ 0.5), then per rubric
    element its 0/1 (`E1`) and its probability (`E1 probability`). `probabilities`: (N, K), K = len(labels)."""
    earned = (probabilities >= 0.5).astype(int)  # (N, K)
    frame = pd.DataFrame({"Response": texts, "Total score": earned.sum(axis=1)})
    for k, label in enumerate(labels):
        frame[label] = earned[:, k]
        frame[f"{label} probability"] = probabilities[:, k]
    return frame


def render_score(store: ExperimentStore, experiments: list[ExperimentSummary]) -> None:
    stored = store.experiments_with_weights()
    by_id = {e.id: e for e in experiments if e.id in stored and e.status in SCORABLE_STATUSES}
    if not by_id:
        st.info("No NGSS run with a stored model yet. Runs of the text models (Dataset ngss or csv, Model "
                "tinyllama-lora or minilm-lora) store their final LoRA + head when they end; score new responses "
                "with them here.", icon=":material/grading:")  # fmt: skip
        return
    if st.session_state.get("score_experiment") not in by_id:
        st.session_state["score_experiment"] = next(iter(by_id))
    chosen = st.selectbox(
        "Model: the final weights of", list(by_id), key="score_experiment",
        format_func=lambda eid: f"{describe(by_id[eid])} · {data_text(by_id[eid])}",
    )  # fmt: skip
    experiment = by_id[chosen]
    render_data_badge(experiment)
    elements = rubric_elements(experiment)
    with st.expander("Rubric elements", icon=":material/checklist:"):
        st.dataframe(pd.DataFrame(elements, columns=["Element", "Meaning"]), hide_index=True, key="score_elements")
    with st.form("score_form", border=False):
        text = st.text_area("Responses, one per line", key="score_text", height=150,
                            placeholder="Gases A and D could be the same substance because both are flammable…")
        upload = st.file_uploader(
            "…or a CSV of responses", type="csv", key="score_csv", max_upload_size=MAX_CSV_MB,
            help="The column named text or response (else the first column) is scored; the first row is the header.",
        )  # fmt: skip
        pressed = st.form_submit_button("Score", icon=":material/grading:", type="primary", key="score_submit")
    if pressed:
        score(store, experiment, text, upload)
    result = st.session_state.get("score_result")
    if result is not None and result[0] == chosen:
        show_scores(experiment, result[1], elements)


def score(store: ExperimentStore, experiment: ExperimentSummary, text: str, upload: object | None) -> None:
    """Score the pasted and uploaded responses; the result is kept in the session for redraws."""
    st.session_state.pop("score_result", None)
    try:
        texts = responses_from_text(text) + (responses_from_csv(upload.getvalue()) if upload is not None else [])
    except ValueError as error:
        st.error(f"Cannot read the CSV: {error}", icon=":material/block:")
        return
    if not texts:
        st.warning("Nothing to score: paste responses (one per line) or upload a CSV.", icon=":material/edit_note:")
        return
    if len(texts) > MAX_RESPONSES:
        st.error(f"{len(texts)} responses: at most {MAX_RESPONSES} per press; the CLI scores more "
                 f"(`cli.py score {experiment.id} --text ...`).", icon=":material/block:")  # fmt: skip
        return
    with st.spinner(f"Scoring {len(texts)} response(s) with #{experiment.id}'s final model…"):
        try:
            probabilities = score_experiment(store, experiment.id, texts)
        except (LookupError, ValueError, RuntimeError, OSError) as error:  # RuntimeError: a Hub model unavailable
            st.error(f"Cannot score with #{experiment.id}: {error}", icon=":material/error:")
            return
    labels = [label for label, _ in rubric_elements(experiment)]
    st.session_state["score_result"] = (experiment.id, scores_frame(texts, probabilities, labels))


def show_scores(experiment: ExperimentSummary, frame: pd.DataFrame, elements: list[tuple[str, str]]) -> None:
    labels = [label for label, _ in elements]
    st.caption(f"{len(frame)} response(s) · an element counts as earned at probability ≥ 0.5 · "
               f"total score out of {len(labels)}")  # fmt: skip
    columns = {"Response": st.column_config.TextColumn(width="large"),
               "Total score": st.column_config.NumberColumn(help=f"Elements earned, of {len(labels)}")}  # fmt: skip
    for label, meaning in elements:
        columns[label] = st.column_config.NumberColumn(help=f"{label} earned (1) or not (0): {meaning}")
        columns[f"{label} probability"] = st.column_config.ProgressColumn(
            f"{label} p", help=f"Probability of {label}: {meaning}", min_value=0.0, max_value=1.0, format="%.2f"
        )
    st.dataframe(frame, hide_index=True, key="score_table", column_config=columns)
    st.download_button(
        "Scores CSV", frame.to_csv(index=False), file_name=f"experiment-{experiment.id}-scores.csv", mime="text/csv",
        icon=":material/download:", key="download_scores", on_click="ignore",
    )  # fmt: skip
