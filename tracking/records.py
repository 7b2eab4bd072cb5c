"""What a stored run is exported as, whatever the tracker: the one home of the names.

- `config_params`: the config flattened to `section.key` → text (MLflow params).
- `round_metrics`: one round's row (`engine.results.RoundResult.to_dict()`, or `store.round_rows`)
  → {name: value}, logged at step = round: the round's own numbers (`ROUND_METRICS`), the number
  of clients whose update arrived, the workload's metrics under `rubric/` (NGSS rubric scoring:
  `rubric/exact_match`, `rubric/per_label/0/f1`, ...) and each client's under `client/<id>/`.
- `run_tags`: status, runtime, dataset, privacy mode, code version and where the run is stored.
- `run_key`: which stored run an MLflow run mirrors (the database's masked URL and the id), so a
  second export finds and updates the same MLflow run.
- `config_toml`, `rounds_csv`: the config and the round table as files.

No mlflow, no torch: the tests and both exporters read the names from here.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from database import ARRIVED, ExperimentSummary
from runs.workers import shown_url

# A round's own numbers, logged under these names (the round table's columns).
ROUND_METRICS = (
    "accuracy", "loss", "epsilon", "delta", "bytes_up", "bytes_down", "seconds", "eval_seconds",
    "simulated_seconds", "noise_multiplier", "max_grad_norm", "sample_rate", "privacy_steps",
    # Fairness across clients (`engine.fairness`, every round with a client holdout): the global model's
    # accuracy on each client's held-out split, its unweighted mean, worst-10% mean, variance and Gini.
    "client_accuracy_mean", "client_accuracy_worst10", "client_accuracy_variance", "client_accuracy_gini",
)  # fmt: skip
# A client's numbers in a round it trained in, under `client/<id>/<name>`.
CLIENT_METRICS = ("loss", "epsilon", "num_examples", "steps", "bytes_up", "bytes_down", "validation_accuracy")
TRAINED = (*ARRIVED, "lost", "failed")  # client statuses that started training (dropped and late never did)
RUBRIC_PREFIX, CLIENT_PREFIX = "rubric", "client"
TAG_PREFIX = "fpl."  # our tags, apart from MLflow's own `mlflow.*`
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. :/]")  # MLflow's allowed key characters, the rest become "_"


def config_params(config: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The stored config flattened: {"federation.rounds": "2", "privacy.mode": "none", ...}
    (booleans as TOML writes them, so a param reads like the config file)."""
    return {
        f"{section}.{key}": _text(value)
        for section, values in config.items() if isinstance(values, dict)
        for key, value in values.items()
    }  # fmt: skip


def round_metrics(row: dict[str, Any]) -> dict[str, float]:
    """One round's metrics by name (finite numbers only: NaN loss of a diverged round is left out)."""
    metrics = {name: row.get(name) for name in ROUND_METRICS}
    clients = row.get("clients") or []
    metrics["clients_arrived"] = sum(client.get("status", "ok") in ARRIVED for client in clients)
    if isinstance(row.get("metrics"), dict):
        metrics.update(_flatten(RUBRIC_PREFIX, row["metrics"]))
    for client in clients:
        if client.get("status", "ok") in TRAINED:
            metrics.update({f"{CLIENT_PREFIX}/{client['id']}/{name}": client.get(name) for name in CLIENT_METRICS})
    return {_key(name): float(value) for name, value in metrics.items() if _finite(value)}


def run_tags(experiment: ExperimentSummary, database_url: str) -> dict[str, str]:
    """The tags of a stored run: ours under `fpl.` (status, runtime, dataset, privacy mode, code
    version, the run's identity) and MLflow's run name."""
    config = experiment.config
    duration = experiment.duration_seconds
    tags = {
        "status": experiment.status, "runtime": experiment.runtime,
        "dataset": str(config.get("data", {}).get("dataset", "")),
        "model": str(config.get("model", {}).get("name", "")),
        "privacy_mode": str(config.get("privacy", {}).get("mode", "")), "code_version": experiment.code_version,
        "experiment_id": str(experiment.id), "database": shown_url(database_url),
        "run_key": run_key(database_url, experiment.id), "rounds_done": str(experiment.rounds_done),
        "duration_seconds": f"{duration:.1f}" if duration is not None else "",
        "error": (experiment.error or "")[:4000], "stop_reason": (experiment.stop_reason or "")[:4000],
    }  # fmt: skip
    shown = {TAG_PREFIX + key: value for key, value in tags.items() if value}
    shown["mlflow.runName"] = experiment.name or f"experiment {experiment.id}"
    return shown


def run_key(database_url: str, experiment_id: int) -> str:
    """A stable key for (this database, this experiment id): a digest of the database's masked URL
    (a SQLite path made absolute) and the id. The password never enters it."""
    digest = hashlib.sha256(f"{database_identity(database_url)}\n{experiment_id}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:32]


def database_identity(url: str) -> str:
    """The database's URL as it names one database: masked, a relative SQLite path made absolute."""
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
            url = parsed.set(database=str(Path(parsed.database).resolve())).render_as_string(hide_password=False)
    except (ArgumentError, ValueError, TypeError, AttributeError):
        pass
    return shown_url(url)


def config_toml(config: dict[str, dict[str, Any]]) -> str:
    """The config as a TOML file that `cli.py run --config` reads back (`ExperimentConfig.from_toml`)."""
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def rounds_csv(rounds: pd.DataFrame) -> str:
    """The round table as CSV, nested columns (rubric metrics, secure aggregation) as JSON text."""
    table = rounds.drop(columns=[c for c in ("experiment_id",) if c in rounds.columns]).copy()
    for column in table.columns:
        if table[column].map(lambda v: isinstance(v, dict | list)).any():
            table[column] = table[column].map(lambda v: json.dumps(v) if v is not None else "")
    return table.to_csv(index=False)


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Numeric leaves of nested dicts/lists as {"prefix/a/0/b": value}."""
    if isinstance(value, dict):
        return {k: v for key, inner in value.items() for k, v in _flatten(f"{prefix}/{key}", inner).items()}
    if isinstance(value, list | tuple):
        return {k: v for index, inner in enumerate(value) for k, v in _flatten(f"{prefix}/{index}", inner).items()}
    return {prefix: value}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _key(name: str) -> str:
    return _KEY_UNSAFE.sub("_", name)[:250]


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + "".join(_toml_char(char) for char in str(value)) + '"'


def _toml_char(char: str) -> str:
    """One character of a TOML basic string: quotes and backslashes escaped, control characters as \\uXXXX."""
    if char in '"\\':
        return "\\" + char
    code = ord(char)
    return f"\\u{code:04x}" if code < 0x20 or code == 0x7F else char
