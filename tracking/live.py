"""MLflow logging while a run goes: a `runs.service.Reporter` that passes everything on and also
logs each round to MLflow, then the run's files and final status when it ends.

    live = live_mlflow(store, experiment_id, config, reporter)   # None: no tracking URI set
    ... live.round(row) for each round ...
    live.finish()

The tracking URI is `system.mlflow_uri`, else the environment's MLFLOW_TRACKING_URI. MLflow never
fails the run: the first MLflow error is one `reporter.error` line, and the run goes on without
further logging; `cli.py export ID --mlflow URI` catches up later (it logs only the rounds missing).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from database import ExperimentStore
from experiment_config import ExperimentConfig
from tracking.mlflow_export import MlflowMirror, TrackingError, mlflow_errors

T = TypeVar("T")


def tracking_uri(config: ExperimentConfig) -> str:
    """Where a run logs to as it goes: `system.mlflow_uri`, else MLFLOW_TRACKING_URI, else "" (nowhere)."""
    return config.system.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI", "").strip()


def live_mlflow(
    store: ExperimentStore, experiment_id: int, config: ExperimentConfig, reporter: Any
) -> LiveMlflow | None:
    """A reporter logging run `experiment_id` to MLflow around `reporter` (a `runs.service.Reporter`),
    or None when no tracking URI is set, or MLflow cannot be reached (said on `reporter.error`)."""
    if not (uri := tracking_uri(config)):
        return None
    if (experiment := store.get_experiment(experiment_id)) is None:
        return None
    live = LiveMlflow(reporter, store, experiment_id, uri)
    live.mirror = live.attempt(lambda: MlflowMirror.open(uri, store.url, experiment, live=True))
    return live if live.mirror is not None else None


class LiveMlflow:
    """Rounds, notes and errors go to `inner` first; rounds and the end to MLflow as well, until it fails once."""

    def __init__(self, inner: Any, store: ExperimentStore, experiment_id: int, uri: str) -> None:
        self.inner, self.store, self.experiment_id, self.uri = inner, store, experiment_id, uri
        self.mirror: MlflowMirror | None = None

    def round(self, row: dict[str, Any]) -> None:
        self.inner.round(row)
        if (mirror := self.mirror) is not None:
            self.attempt(lambda: mirror.log_rounds([row]))

    def note(self, text: str) -> None:
        self.inner.note(text)

    def error(self, text: str) -> None:
        self.inner.error(text)

    def finish(self) -> None:
        """After the run's status is stored: the rounds still missing, the files, the final status."""
        if self.mirror is None or (experiment := self.store.get_experiment(self.experiment_id)) is None:
            return
        mirror = self.mirror
        self.attempt(lambda: mirror.log_rounds(self.store.round_rows(self.experiment_id)))
        if self.mirror is not None:
            self.attempt(lambda: mirror.finish(self.store, experiment))

    def attempt(self, call: Callable[[], T]) -> T | None:
        """`call()`'s result; an MLflow failure instead is said once on the inner reporter, and ends
        the logging (None)."""
        try:
            with mlflow_errors(self.uri):
                return call()
        except TrackingError as error:
            self.mirror = None
            self.inner.error(
                f"{error}; experiment {self.experiment_id} goes on without MLflow logging "
                f"(later: python cli.py export {self.experiment_id} --mlflow URI)"
            )
            return None
