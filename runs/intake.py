"""What every face asks of a run before anything is stored, and the settling of ended workers.

    config = build_config("base.toml", ["federation.rounds=5"])        # the CLI: a TOML file
    config = build_config({"model": {"name": "mlp"}}, [])               # the REST API: its JSON body
    name = checked_name(name)                                          # --name / the request's name
    settle_workers(store, handles)                                     # the page and the API, before listing

The CLI, the REST API and the page each used to keep their own copy of these; the messages are the
CLI's (`--name ...`), so a bad request reads the same wherever it was made.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from database import Experiment, ExperimentStore
from experiment_config import ExperimentConfig
from runs import workers as processes
from runs.workers import printable

MAX_NAME_CHARS = Experiment.__table__.c.name.type.length  # the column's own limit (200)


def checked_name(name: str) -> str:
    """`name` if the database can store it: at most MAX_NAME_CHARS characters, no control
    character or lone surrogate (PostgreSQL refuses a NUL; a terminal obeys an escape)."""
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"--name must be at most {MAX_NAME_CHARS} characters, got {len(name)}")
    if printable(name) != name:
        raise ValueError(f"--name must be printable text, got {printable(name)[:80]}")
    return name


def build_config(source: str | Path | Mapping[str, Any] | None, assignments: Sequence[str]) -> ExperimentConfig:
    """Defaults, then `source` (a TOML file's path, or `{section: {key: value}}` in the TOML layout;
    None or empty: the defaults), then `section.key=value` assignments, validated once (ValueError)."""
    if isinstance(source, Mapping):
        config = ExperimentConfig.from_dict(dict(source)) if source else ExperimentConfig()
    else:
        config = ExperimentConfig.from_toml(source) if source else ExperimentConfig()
    return config.with_overrides(list(assignments)) if assignments else config


def ended_workers(handles: MutableMapping[int, subprocess.Popen[bytes]]) -> dict[int, int]:
    """{experiment id: exit code} of the workers in `handles` that have exited, removed from it
    (polling reaps them: no zombies are left)."""
    ended = {experiment_id: handle.returncode for experiment_id, handle in handles.items()
             if handle.poll() is not None}  # fmt: skip
    for experiment_id in ended:
        del handles[experiment_id]
    return ended


def fail_unstarted(store: ExperimentStore, exit_codes: Mapping[int, int]) -> None:
    """Mark failed, with its exit code, each run whose worker exited while the run was still queued:
    nothing else will ever start it."""
    for experiment_id, code in exit_codes.items():
        experiment = store.get_experiment(experiment_id)
        if experiment is not None and experiment.status == "queued":
            store.finish(experiment_id, "failed", error=f"the worker exited with code {code} before it started the run")


def settle_workers(store: ExperimentStore, handles: MutableMapping[int, subprocess.Popen[bytes]]) -> None:
    """Settle the fate of ended workers: reap them, fail the runs they never started, and mark
    interrupted every running run whose worker process is gone (its heartbeat's pid is dead)."""
    fail_unstarted(store, ended_workers(handles))
    store.mark_interrupted_if_dead(processes.pid_alive)  # looked up per call, as `launch_worker` is
