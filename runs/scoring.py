"""Score student responses with a finished text-model run's stored final weights (LoRA + head).

    probabilities = score_experiment(store, experiment_id, ["The gas spreads out ..."])   # (N, K)
    elements = rubric_elements(store.get_experiment(experiment_id))  # [(label, meaning)] in column order
"""

from __future__ import annotations

from typing import Any

from database import ExperimentStore, ExperimentSummary
from experiment_config import TEXT_MODELS, ExperimentConfig
from runs.workers import shown_url


def rubric_elements(experiment: ExperimentSummary) -> list[tuple[str, str]]:
    """(label, meaning) of each rubric element a run's model scores, in its output order: the
    labels from its `dataset_info`, meanings from `ngss.data.TASKS` ("" where the task or label
    is not one of the nine tasks', e.g. an imported file of another task)."""
    from ngss.tasks import TASKS

    info = experiment.dataset_info or {}
    task = info.get("task") or experiment.config.get("data", {}).get("ngss_task", "")
    spec = TASKS.get(task)
    meanings = {element.label: element.meaning for element in spec.elements} if spec else {}
    labels = info.get("labels") or (list(spec.label_ids) if spec else [])
    return [(label, meanings.get(label, "")) for label in labels]


def score_experiment(store: ExperimentStore, experiment_id: int, texts: list[str]) -> Any:
    """(N, K) probabilities of `texts` under a stored run's final weights (`engine.workloads.score_responses`).

    Raises LookupError when the run or its weights are missing, ValueError when it cannot be scored.
    """
    experiment = store.get_experiment(experiment_id)
    if experiment is None:
        raise LookupError(f"no experiment {experiment_id} in {shown_url(store.url)}")
    stored = store.load_weights(experiment_id)
    if stored is None:
        raise LookupError(
            f"experiment {experiment_id} has no stored weights: only text-model runs "
            f"({', '.join(TEXT_MODELS)}) that finished a round store their final LoRA + head"
        )
    import torch  # only now: scoring is the only part that needs the model

    from engine.workloads import score_responses

    config = ExperimentConfig.from_dict(experiment.config)
    return score_responses(config, torch.from_numpy(stored.values().copy()), texts)
