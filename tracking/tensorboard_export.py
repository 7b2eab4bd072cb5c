"""A stored run written as TensorBoard event files: every round's scalars, step = round.

    folder = export_to_tensorboard(store, 7, "tb-logs")   # tb-logs/experiment-7/events.out.tfevents.*
    python cli.py export 7 --tensorboard tb-logs
    tensorboard --logdir tb-logs

The scalars carry the names MLflow gets (`tracking.records.round_metrics`: accuracy, loss,
epsilon, ..., `rubric/...`, `client/<id>/...`), so both trackers chart the same thing; the config
is stored as text (`config`). Each run has its own folder, so TensorBoard lists runs side by side.
Exporting again replaces that folder's event files (this exporter's own, nothing else), so a
round never shows twice.
"""

from __future__ import annotations

from pathlib import Path

from database import ExperimentStore
from runs.workers import printable, shown_url
from tracking.mlflow_export import TrackingError
from tracking.records import config_toml, round_metrics

EVENT_FILES = "events.out.tfevents.*"


def run_folder(logdir: str | Path, experiment_id: int) -> Path:
    """Where run `experiment_id`'s event files go under `logdir`."""
    return Path(logdir) / f"experiment-{experiment_id}"


def export_to_tensorboard(store: ExperimentStore, experiment_id: int, logdir: str | Path) -> Path:
    """Write stored experiment `experiment_id`'s rounds as TensorBoard scalars under `logdir`;
    returns the run's folder. Raises TrackingError (one line) for no such experiment or a folder
    that cannot be written."""
    experiment = store.get_experiment(experiment_id)
    if experiment is None:
        raise TrackingError(f"no experiment {experiment_id} in {shown_url(store.url)}")
    folder = run_folder(logdir, experiment_id)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob(EVENT_FILES):
            old.unlink()
        _write(folder, store.round_rows(experiment_id), config_toml(experiment.config))
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise TrackingError(f"cannot write TensorBoard logs to {printable(str(folder))}: {reason}") from None
    return folder


def _write(folder: Path, rows: list[dict], config_text: str) -> None:
    """One event file: each round's metrics at step = round, and the config as text at step 0."""
    from torch.utils.tensorboard import SummaryWriter  # torch's writer of TensorBoard's event format

    writer = SummaryWriter(log_dir=str(folder))
    try:
        writer.add_text("config", "```toml\n" + config_text + "```", global_step=0)
        for row in rows:
            for name, value in round_metrics(row).items():
                writer.add_scalar(name, value, global_step=int(row["round"]))
    finally:
        writer.close()
