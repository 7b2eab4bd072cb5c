"""What an imported run's CSV brought in, said under its data badge: responses, blank answers (kept and scored
as written) and, on request, responses cut to the model's max_length tokens (`ngss.csv_format.summarize_import`).

Counting the cut responses needs the run's tokenizer (transformers and torch; the local TinyLLama tokenizer is
trained on the file's responses): seconds, so the view never does it unasked inside its refreshes. A button
counts them, once per file version and model setting (cached); the CLI prints the count with every CSV run and
the Score tab with every scoring. Where the tokenizer cannot be had (a Hub model offline) the line says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from database import ExperimentSummary
from experiment_config import ExperimentConfig
from ngss.csv_format import CsvImportError, ImportSummary, load_csv, summarize_import


def summary_for(config: ExperimentConfig, *, with_tokenizer: bool = True) -> tuple[ImportSummary, str | None]:
    """The run's import summary and, when the cut responses could not be counted, why (one line)."""
    dataset = load_csv(config.data.csv_path, seed=config.system.seed)
    if not with_tokenizer:
        return summarize_import(dataset), None
    try:
        from engine.workloads import load_tokenizer  # transformers: only for an imported run's view

        tokenizer = load_tokenizer(config, dataset.train.texts)
    except (OSError, RuntimeError, ValueError) as error:
        return summarize_import(dataset), f"responses cut to {config.model.max_length} tokens not counted: {error}"
    return summarize_import(dataset, tokenizer=tokenizer, max_length=config.model.max_length), None


@st.cache_data(max_entries=16, show_spinner="Counting the imported responses…")
def cached_summary(
    config_json: str, path: str, modified_ns: int, *, with_tokenizer: bool
) -> tuple[ImportSummary, str | None]:  # fmt: skip
    """`summary_for`, once per config and file version (`modified_ns`: a file replaced in place is read again)."""
    return summary_for(ExperimentConfig.from_dict(json.loads(config_json)), with_tokenizer=with_tokenizer)


def render_import_summary(experiment: ExperimentSummary, where: str) -> None:
    """One caption under an imported run's badge, and the button that counts the responses cut; nothing for other
    runs or a file no longer there."""
    data = experiment.config.get("data", {})
    path = Path(data.get("csv_path") or "")
    if data.get("dataset") != "csv" or not path.is_file():
        return
    counted = st.session_state.setdefault("import_cut_counted", set())
    row = st.container(horizontal=True, vertical_alignment="center", gap="small")
    try:
        config = ExperimentConfig.from_stored(experiment.config)
        if experiment.id not in counted and row.button(
            f"Count responses cut to {config.model.max_length} tokens", key=f"{where}-count-cut-{experiment.id}",
            icon=":material/content_cut:", type="tertiary", help="Tokenizes every imported response (seconds).",
        ):  # fmt: skip
            counted.add(experiment.id)
        summary, problem = cached_summary(
            json.dumps(config.to_dict()), str(path), path.stat().st_mtime_ns, with_tokenizer=experiment.id in counted
        )  # fmt: skip
    except (CsvImportError, ValueError, OSError) as error:
        row.caption(f":material/info: Import summary unavailable: {error}")
        return
    row.caption(f":material/upload_file: {summary.text()}" + (f" ({problem})" if problem else ""))
