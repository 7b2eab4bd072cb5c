"""The Score tab: apply a finished NGSS run's final model to new responses.

Pick a run whose final weights are stored (text models store their LoRA + head when they end), paste responses
one per line or upload a CSV with a text column, press Score: per response each rubric element's probability,
0/1 (≥ 0.5) and the total score, downloadable as CSV. Torch loads only when Score is pressed
(`runs.scoring.score_experiment`), so the page stays light.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from app_pages.common import data_text, describe, render_data_badge
from database import ExperimentStore, ExperimentSummary
from experiment_config import ExperimentConfig
from ngss.csv_format import count_blank, count_truncated
from runs.scoring import rubric_elements, score_experiment

SCORABLE_STATUSES = ("completed", "stopped")  # ended with a final model
MAX_RESPONSES = 2_000  # per press: scoring runs inside the page's script run
MAX_CSV_MB = 20
TEXT_COLUMNS = ("text", "response")


def responses_from_text(text: str) -> tuple[list[str], int]:
    """One response per non-blank line, stripped, and how many lines were blank: in a text area a blank line
    separates responses, it is no answer, so it is skipped (and counted, to say so)."""
    lines = text.splitlines()
    responses = [line.strip() for line in lines if line.strip()]
    return responses, len(lines) - len(responses)


def responses_from_csv(data: bytes) -> list[str]:
    """Every cell of a CSV's text column, stripped: the column named text or response (any case), else the
    first. The first row is the header. A blank cell is a student's answer and is scored as written (an empty
    line of the file is no row). Raises ValueError for a file that is not UTF-8 CSV or has no rows."""
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"not a UTF-8 CSV file ({error})") from None
    rows = [row for row in rows if row]
    if len(rows) < 2:
        raise ValueError("the CSV needs a header row and at least one response")
    header = [cell.strip().lower() for cell in rows[0]]
    column = next((header.index(name) for name in TEXT_COLUMNS if name in header), 0)
    return [row[column].strip() if len(row) > column else "" for row in rows[1:]]


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
        show_scores(experiment, result[1], elements, result[2])


def score(store: ExperimentStore, experiment: ExperimentSummary, text: str, upload: object | None) -> None:
    """Score the pasted and uploaded responses; the result is kept in the session for redraws."""
    st.session_state.pop("score_result", None)
    pasted, blank_lines = responses_from_text(text)
    try:
        texts = pasted + (responses_from_csv(upload.getvalue()) if upload is not None else [])
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
    notes = input_notes(experiment, texts, blank_lines)
    st.session_state["score_result"] = (experiment.id, scores_frame(texts, probabilities, labels), notes)


def input_notes(experiment: ExperimentSummary, texts: list[str], blank_lines: int) -> list[str]:
    """What the scores rest on beyond the responses themselves: blank lines skipped, blank answers scored, and
    responses longer than the model reads (cut to its max_length tokens)."""
    notes = []
    if blank_lines:
        notes.append(f"{blank_lines} blank line(s) in the text area skipped (a blank line separates responses)")
    if blank := count_blank(texts):
        notes.append(f"{blank} blank answer(s) from the CSV scored as written")
    max_length = int(experiment.config.get("model", {}).get("max_length", 128))
    try:
        truncated = count_truncated(run_tokenizer(json.dumps(experiment.config)), texts, max_length=max_length)
    except (LookupError, ValueError, RuntimeError, OSError) as error:  # as scoring: the data or a model is gone
        notes.append(f"responses longer than {max_length} tokens not counted ({type(error).__name__})")
    else:
        if truncated:
            notes.append(f"{truncated} response(s) longer than the model reads: cut to their first {max_length} tokens")
    return notes


@st.cache_resource(max_entries=4)
def run_tokenizer(config_json: str) -> Any:
    """The tokenizer a run's model reads with, rebuilt as scoring rebuilds it (`engine.workloads.score_responses`:
    the same corpus gives the same tokenizer). Loaded only when Score is pressed; never mutated."""
    from engine.workloads import load_ngss, load_tokenizer  # torch and transformers: only for scoring

    config = ExperimentConfig.from_dict(json.loads(config_json))
    return load_tokenizer(config, load_ngss(config).train.texts)


def show_scores(
    experiment: ExperimentSummary, frame: pd.DataFrame, elements: list[tuple[str, str]], notes: list[str]
) -> None:
    labels = [label for label, _ in elements]
    st.caption(f"{len(frame)} response(s) · an element counts as earned at probability ≥ 0.5 · "
               f"total score out of {len(labels)}")  # fmt: skip
    for note in notes:
        st.caption(f":material/info: {note[0].upper()}{note[1:]}.")
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
