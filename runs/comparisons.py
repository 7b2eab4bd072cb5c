"""Comparison runs a researcher starts from a finished one: the same experiment without privacy
(the cost of privacy) and on pooled data (the cost of federation). Config transforms only: the
page and the CLI launch them.

    baseline = without_privacy(config)
    pooled = centralized_config(config, suggested_centralized_lr(config.to_dict()))
"""

from __future__ import annotations

from typing import Any

from experiment_config import ExperimentConfig


def without_privacy(config: ExperimentConfig) -> ExperimentConfig:
    """The same experiment with `privacy.mode = "none"` (and no DP-FedAvg-only options)."""
    changes: dict[str, Any] = {"mode": "none"}
    if getattr(config.privacy, "adaptive_clipping", False):
        changes["adaptive_clipping"] = False  # a DP-FedAvg option, invalid without privacy
    return config.replace("privacy", **changes)


def centralized_config(config: ExperimentConfig, learning_rate: float | None = None) -> ExperimentConfig:
    """The same experiment on pooled data: one client holding every response, trained every round (same model,
    seed, rounds, privacy; `learning_rate` if given). Settings that mean nothing with a single client are reset so
    the config validates."""
    rate = config.federation.learning_rate if learning_rate is None else learning_rate
    return config.replace("data", partition="iid").replace(
        "federation", num_clients=1, clients_per_round=1, strategy="fedavg", min_clients=1, selection="uniform",
        selection_candidates=0, secure_aggregation=False, learning_rate=rate,
    )  # fmt: skip


# AdamW on pooled data: one client takes every step of a round in sequence, and at the schools' 0.003 the
# centralized NGSS runs collapsed to the majority labels (README, "NGSS rubric scoring"); 0.001 trained well.
CENTRALIZED_ADAMW_MAX_LR = 1e-3


def suggested_centralized_lr(config: dict[str, Any]) -> float:
    """The learning rate the baseline's input starts at: the run's, capped for AdamW at `CENTRALIZED_ADAMW_MAX_LR`."""
    federation = config.get("federation", {})
    rate = float(federation.get("learning_rate", ExperimentConfig().federation.learning_rate))
    return min(rate, CENTRALIZED_ADAMW_MAX_LR) if federation.get("client_optimizer") == "adamw" else rate
