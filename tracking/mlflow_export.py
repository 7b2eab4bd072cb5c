"""A stored run exported to an MLflow tracking server, once or again, and logged to it round by round.

    run_id = export_to_mlflow(store, 7, "http://127.0.0.1:5000")   # MLflow's run id, or TrackingError
    python cli.py export 7 --mlflow http://127.0.0.1:5000

One stored run is one MLflow run, in the MLflow experiment `MLFLOW_EXPERIMENT` (created when
missing): the run carries the tag `fpl.run_key` (`tracking.records.run_key`: this database and
this id), and an export first looks for it, so exporting again, or after live logging
(`tracking.live`), updates that run and never adds another. `fpl.rounds_logged` says how many
rounds it already holds: only later rounds are logged, so no metric gets a second value at a
step. What is logged: the config as params, per round (step = round) the metrics of
`tracking.records.round_metrics`, the tags of `run_tags`, the files of `tracking.artifacts`, and
the run's status: completed → FINISHED, failed → FAILED, stopped or interrupted → KILLED.

`mlflow` loads only here, inside functions: the page and the CLI start without it. A tracking
server that cannot be reached or refuses is a `TrackingError` with one line; its retries are kept
short (`quick_failures`), since a run waits for each call.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from database import FINAL_STATUSES, ExperimentStore, ExperimentSummary
from runs.workers import printable, shown_url
from tracking.artifacts import write_artifacts
from tracking.records import TAG_PREFIX, config_params, round_metrics, run_key, run_tags

MLFLOW_EXPERIMENT = "Federated Privacy Lab"
MLFLOW_STATUSES = {
    "queued": "SCHEDULED", "running": "RUNNING", "completed": "FINISHED", "failed": "FAILED",
    "stopped": "KILLED", "interrupted": "KILLED",
}  # fmt: skip
ROUNDS_LOGGED_TAG = f"{TAG_PREFIX}rounds_logged"
# MLflow's limits per log_batch call (params, metrics + params + tags) and per param value.
MAX_PARAMS_PER_BATCH, MAX_ENTRIES_PER_BATCH, MAX_PARAM_CHARS = 100, 1000, 6000
# Unless the user set their own: a dead tracking server costs seconds, not MLflow's minutes of retries.
QUICK_FAILURE_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                          "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}  # fmt: skip


class TrackingError(Exception):
    """Exporting to a tracker failed; the message is one line, with no password in it."""


def export_to_mlflow(store: ExperimentStore, experiment_id: int, uri: str) -> str:
    """Export stored experiment `experiment_id` to the MLflow tracking server at `uri` (created, or
    updated if an earlier export or live logging made it); returns the MLflow run id. Raises
    TrackingError (one line) when there is no such experiment or MLflow fails."""
    experiment = store.get_experiment(experiment_id)
    if experiment is None:
        raise TrackingError(f"no experiment {experiment_id} in {shown_url(store.url)}")
    with mlflow_errors(uri):
        mirror = MlflowMirror.open(uri, store.url, experiment)
        mirror.log_rounds(store.round_rows(experiment_id), timestamps=_round_times(store, experiment_id))
        mirror.finish(store, store.get_experiment(experiment_id) or experiment)
    return mirror.run_id


class MlflowMirror:
    """The MLflow run that mirrors one stored run: found by its `fpl.run_key` tag, else created."""

    def __init__(self, client: Any, run_id: str, rounds_logged: int, params: set[str] | None = None) -> None:
        self.client, self.run_id, self.rounds_logged = client, run_id, rounds_logged
        self.params = set(params or ())  # the params the MLflow run holds already

    @classmethod
    def open(cls, uri: str, database_url: str, experiment: ExperimentSummary, *, live: bool = False) -> MlflowMirror:
        """The mirror of `experiment` at `uri`, its params and tags logged; its status as stored,
        or RUNNING when `live` (the run is about to go on in this process)."""
        from mlflow import MlflowClient

        quick_failures()
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        mlflow_experiment = found.experiment_id if found else client.create_experiment(MLFLOW_EXPERIMENT)
        key = run_key(database_url, experiment.id)
        runs = client.search_runs([mlflow_experiment], filter_string=f"tags.`{TAG_PREFIX}run_key` = '{key}'",
                                  order_by=["attributes.start_time ASC"], max_results=1)  # fmt: skip
        if runs:
            found_run = runs[0]
            logged = int(found_run.data.tags.get(ROUNDS_LOGGED_TAG, "0") or 0)
            mirror = cls(client, found_run.info.run_id, logged, set(found_run.data.params))
        else:
            started = experiment.started_at or experiment.created_at
            run = client.create_run(mlflow_experiment, start_time=_millis(started), run_name=_run_name(experiment))
            mirror = cls(client, run.info.run_id, 0)
        mirror.describe(database_url, experiment, running=live)
        return mirror

    def describe(self, database_url: str, experiment: ExperimentSummary, *, running: bool = False) -> None:
        """Log the params the MLflow run lacks (MLflow refuses to change one), the tags and, while the
        run is not final, its status (RUNNING when `running`)."""
        from mlflow.entities import Param, RunTag

        params = [
            Param(k, v[:MAX_PARAM_CHARS]) for k, v in config_params(experiment.config).items() if k not in self.params
        ]
        tags = [RunTag(k, v) for k, v in run_tags(experiment, database_url).items()]
        for start in range(0, max(len(params), 1), MAX_PARAMS_PER_BATCH):
            batch = params[start : start + MAX_PARAMS_PER_BATCH]
            self.client.log_batch(self.run_id, params=batch, tags=tags if start == 0 else [], synchronous=True)
            self.params.update(param.key for param in batch)
        if running or experiment.status not in FINAL_STATUSES:  # a final status comes with its end time (finish)
            status = "RUNNING" if running else MLFLOW_STATUSES.get(experiment.status, "RUNNING")
            self.client.update_run(self.run_id, status=status)

    def log_rounds(self, rows: list[dict[str, Any]], *, timestamps: dict[int, int] | None = None) -> None:
        """Log each round after those already logged (step = round), then the count in `fpl.rounds_logged`."""
        from mlflow.entities import Metric, RunTag

        for row in sorted(rows, key=lambda r: r["round"]):
            step = int(row["round"])
            if step <= self.rounds_logged:
                continue
            at = (timestamps or {}).get(step, int(time.time() * 1000))
            metrics = [Metric(name, value, at, step) for name, value in round_metrics(row).items()]
            starts = range(0, max(len(metrics), 1), MAX_ENTRIES_PER_BATCH - 1)  # room for the tag
            for start in starts:  # one call per round, unless its clients are many
                tags = [RunTag(ROUNDS_LOGGED_TAG, str(step))] if start == starts[-1] else []  # with the last batch
                batch = metrics[start : start + MAX_ENTRIES_PER_BATCH - 1]
                self.client.log_batch(self.run_id, metrics=batch, tags=tags, synchronous=True)
            self.rounds_logged = step

    def finish(self, store: ExperimentStore, experiment: ExperimentSummary) -> None:
        """Tags as the run now stands, its files, and its status (with the end time once it is final)."""
        self.describe(store.url, experiment)
        with tempfile.TemporaryDirectory(prefix="fpl-mlflow-") as folder:
            write_artifacts(store, experiment, Path(folder))
            self.client.log_artifacts(self.run_id, folder)
        if experiment.status in FINAL_STATUSES:
            end = experiment.finished_at or datetime.now(UTC).replace(tzinfo=None)
            with redirect_stdout(sys.stderr):  # MLflow prints the run's URL: stdout is `--json`'s, one object a line
                self.client.set_terminated(self.run_id, MLFLOW_STATUSES[experiment.status], end_time=_millis(end))


def quick_failures() -> None:
    """MLflow's HTTP retries and timeout made short, unless the user set them (environment)."""
    for name, value in QUICK_FAILURE_DEFAULTS.items():
        os.environ.setdefault(name, value)


@contextmanager
def mlflow_errors(uri: str) -> Iterator[None]:
    """Whatever MLflow or the network raises, as a TrackingError of one line naming the (masked) URI."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as error:  # MlflowException, requests' errors, OSError: all mean the same here
        raise TrackingError(f"MLflow at {shown_url(uri)} failed: {one_line(error, uri)}") from None


def one_line(error: BaseException, uri: str) -> str:
    """The error's message on one line, at most 300 characters, the URI in it masked.
    MLflow's message for a dead server ends in the reason (`Connection refused`), which is kept."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = printable(text.replace(uri, shown_url(uri)) if uri else text)
    if "Connection refused" in text:
        return "connection refused (is the tracking server running?)"
    if len(text) > 300:
        text = f"{text[:297]}..."
    return text


def _millis(moment: datetime) -> int:
    """A stored (naive UTC) time as MLflow's milliseconds since the epoch."""
    return int(moment.replace(tzinfo=UTC).timestamp() * 1000)


def _round_times(store: ExperimentStore, experiment_id: int) -> dict[int, int]:
    """{round: when it was stored, in MLflow's milliseconds}."""
    rounds = store.rounds_frame([experiment_id])
    return {int(r): _millis(t.to_pydatetime()) for r, t in zip(rounds["round"], rounds["created_at"])}


def _run_name(experiment: ExperimentSummary) -> str:
    return experiment.name or f"experiment {experiment.id}"
