"""Where a running round stands, from the progress row the worker writes during the round
(`ExperimentStore.set_progress`): `Round 3/10 · 4 of 10 clients trained · 120/300 batches · about 1 min left`.

Pure functions of an `ExperimentSummary`, no Streamlit: the run view draws the bar and the text. A progress row
counts only while its round is the one in progress (`round == rounds_done + 1` of an active run): once the
round is recorded the row is stale and the bar goes back to whole rounds.
"""

from __future__ import annotations

from typing import Any

from database import ExperimentSummary


def current_progress(experiment: ExperimentSummary) -> dict[str, Any] | None:
    """The progress row of the round in progress, or None (no row, a stale one, or a run not running)."""
    progress = experiment.progress
    if experiment.status != "running" or not isinstance(progress, dict):
        return None
    try:
        return progress if int(progress.get("round", 0)) == experiment.rounds_done + 1 else None
    except (TypeError, ValueError):
        return None


def _count(progress: dict[str, Any], key: str) -> int | None:
    value = progress.get(key)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None


def round_fraction(progress: dict[str, Any]) -> float:
    """How much of the round is done (0-1): by batches when known, else by clients, else 0."""
    for done_key, total_key in (("batches_done", "batches_total"), ("clients_done", "clients_total")):
        done, total = _count(progress, done_key), _count(progress, total_key)
        if done is not None and total:
            return min(done / total, 1.0)
    return 0.0


def seconds_left(progress: dict[str, Any]) -> float | None:
    """The round's remaining seconds at its rate so far (seconds per batch, else per client), or None before the
    first batch (no rate yet) or without a time."""
    seconds = progress.get("seconds")
    if not isinstance(seconds, (int, float)) or seconds <= 0:
        return None
    for done_key, total_key in (("batches_done", "batches_total"), ("clients_done", "clients_total")):
        done, total = _count(progress, done_key), _count(progress, total_key)
        if done and total:
            return max(total - done, 0) * float(seconds) / done
    return None


def about(seconds: float) -> str:
    """`about 40 s`, `about 1 min`, `about 1 h 05 min`: an estimate, so whole units."""
    if seconds < 60:
        return f"about {max(round(seconds), 1)} s"
    minutes = round(seconds / 60)
    return f"about {minutes} min" if minutes < 60 else f"about {minutes // 60} h {minutes % 60:02d} min"


def round_progress_text(progress: dict[str, Any], total_rounds: int) -> str:
    """`Round 3/10 · 4 of 10 clients trained · 120/300 batches · about 1 min left` (the parts the row has)."""
    parts = [f"Round {progress.get('round', '?')}/{total_rounds}"]
    clients_done, clients_total = _count(progress, "clients_done"), _count(progress, "clients_total")
    if clients_done is not None and clients_total:
        parts.append(f"{clients_done} of {clients_total} clients trained")
    batches_done, batches_total = _count(progress, "batches_done"), _count(progress, "batches_total")
    if batches_done is not None and batches_total:
        parts.append(f"{batches_done}/{batches_total} batches")
    if (left := seconds_left(progress)) is not None:
        parts.append(f"{about(left)} left")
    return " · ".join(parts)


def run_fraction(experiment: ExperimentSummary, total_rounds: int) -> float:
    """The bar's fill: whole rounds recorded plus the part of the round in progress, over the planned rounds."""
    progress = current_progress(experiment)
    done = experiment.rounds_done + (round_fraction(progress) if progress is not None else 0.0)
    return min(done / max(total_rounds, 1), 1.0)
