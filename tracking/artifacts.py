"""The files a stored run is exported with, written into a folder for a tracker to upload.

    written = write_artifacts(store, experiment, folder)   # {"privacy_report.md": Path, ...}

- `privacy_report.md`: the one-page privacy statement (`privacy.report.render_markdown`);
- `config.toml`: the config, which `cli.py run --config config.toml` runs again;
- `rounds.csv`, `clients.csv`: the round table and every client's row in every round;
- `final_weights.npy`: the final global weights as the clients exchanged them, a (P,) float32
  vector in `model.flatten` order (a text model: its LoRA + head only). A text model's stored
  final weights when the run has them, else the global weights of the run's last checkpoint.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from database import ExperimentStore, ExperimentSummary
from privacy.report import render_markdown
from tracking.records import config_toml, rounds_csv

WEIGHTS_FILE = "final_weights.npy"


def write_artifacts(store: ExperimentStore, experiment: ExperimentSummary, folder: Path) -> dict[str, Path]:
    """Write the run's files into `folder` (which exists); returns {file name: path}."""
    rounds = store.rounds_frame([experiment.id])
    texts = {
        "privacy_report.md": render_markdown(experiment, rounds.drop(columns=["experiment_id", "created_at"])),
        "config.toml": config_toml(experiment.config),
        "rounds.csv": rounds_csv(rounds),
        "clients.csv": store.client_rounds_frame(experiment.id).to_csv(index=False),
    }
    written = {}
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")
        written[name] = folder / name
    if (weights := final_weights(store, experiment.id)) is not None:
        np.save(folder / WEIGHTS_FILE, weights)
        written[WEIGHTS_FILE] = folder / WEIGHTS_FILE
    return written


def final_weights(store: ExperimentStore, experiment_id: int) -> np.ndarray | None:
    """The run's final exchanged weights as a (P,) float32 vector, or None if none were stored: the
    stored final weights (text models), else those of the checkpoint after the last round."""
    if (stored := store.load_weights(experiment_id)) is not None:
        return stored.values().astype(np.float32)
    if (checkpoint := store.load_checkpoint(experiment_id)) is None:
        return None
    import torch  # only to read a checkpoint (federated_learning.RunState.to_bytes): tensors, never code

    state = torch.load(io.BytesIO(checkpoint[1]), weights_only=True)
    weights = state.get("weights") if isinstance(state, dict) else None
    return weights.detach().to(torch.float32).numpy() if isinstance(weights, torch.Tensor) else None
