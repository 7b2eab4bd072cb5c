"""workloads.score_responses: a run's stored final weights score responses exactly as the engine's final model.

One short real run (synthetic Gas Filled Balloons, nine schools, a TinyLLama-v0-shaped model with random weights
and a local tokenizer, one round) is trained once for the module; its weights go through the database as the CLI
stores them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ngss import data as ngss_data
from database import ExperimentStore
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun, predict_logits
from model import flatten, get_parameters
from engine.workloads import build_model, encode, load_tokenizer, score_responses

TASK, SEED = "gas_filled_balloons", 3
TEXTS = [
    "Gases A and D could be the same substance because both are flammable and have the same density.",
    "idk",
    "B and C are different, the volume is not a property that tells you what it is",
    "a and d same density 0.089",
]


def ngss_config() -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "data": {"dataset": "ngss", "partition": "natural", "ngss_task": TASK, "max_train_examples": 200},
        "model": {"name": "tinyllama-lora", "pretrained": False, "max_length": 64},
        "federation": {"num_clients": 9, "clients_per_round": 9, "rounds": 1, "batch_size": 16},
        "privacy": {"audit_examples": 0},
        "system": {"num_workers": 1, "seed": SEED},
    })  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """(config, the run after its round, its round's result, the stored weights as a tensor)."""
    config = ngss_config()
    run = FederatedRun(config)
    (result,) = list(run.rounds())
    store = ExperimentStore(f"sqlite:///{tmp_path_factory.mktemp('scoring') / 'experiments.db'}")
    experiment_id = store.create_experiment(config.to_dict())
    flat = flatten(get_parameters(run.model)).numpy().astype("<f4")  # as runs.service stores them
    store.save_weights(experiment_id, flat.tobytes(), flat.size)
    weights = torch.from_numpy(store.load_weights(experiment_id).values().copy())
    return config, run, result, weights


def test_stored_weights_score_as_the_engines_final_model(trained):
    config, run, _, weights = trained
    generated = ngss_data.generate(TASK, seed=SEED)
    tokenizer = load_tokenizer(config, generated.train.texts)  # the run's tokenizer, rebuilt independently
    expected = torch.sigmoid(predict_logits(run.model, encode(config, tokenizer, TEXTS))).numpy()

    probabilities = score_responses(config, weights, TEXTS)

    assert probabilities.shape == (len(TEXTS), 3) and ((0 < probabilities) & (probabilities < 1)).all()
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-6)
    untrained = flatten(get_parameters(build_model(config, 3, seed=SEED)))  # what the weights changed
    assert np.abs(score_responses(config, untrained, TEXTS) - expected).max() > 1e-3


def test_scoring_the_test_responses_reproduces_the_rounds_rubric_metrics(trained):
    config, _, result, weights = trained
    test = ngss_data.generate(TASK, seed=SEED).test

    probabilities = score_responses(config, weights, test.texts)

    predictions = ngss_data.predictions_from_probabilities(probabilities)
    school_names = ngss_data.generate(TASK, seed=SEED).school_names
    metrics = ngss_data.rubric_metrics(predictions, test.labels, test.schools, school_names)
    assert metrics == result.metrics  # per label, per school: the engine's evaluation of its final model


def test_an_imported_run_rereads_its_file_and_fails_clearly_once_it_is_gone(trained, tmp_path: Path):
    config, _, _, weights = trained
    train_path, test_path = ngss_data.write_csv(ngss_data.generate(TASK, seed=SEED), tmp_path)
    imported = config.replace("data", dataset="csv", csv_path=str(train_path))

    # the same responses from a file: the same tokenizer, model and so the same probabilities
    np.testing.assert_allclose(score_responses(imported, weights, TEXTS), score_responses(config, weights, TEXTS))
    train_path.unlink()
    with pytest.raises(ngss_data.CsvImportError, match=f"{train_path}: no such file.*same path"):
        score_responses(imported, weights, TEXTS)


def test_weights_of_another_model_texts_and_image_models_are_refused(trained):
    config, _, _, weights = trained
    with pytest.raises(ValueError, match="16575 values, but this run's model exchanges 16576"):
        score_responses(config, weights[:-1], TEXTS)
    with pytest.raises(ValueError, match="non-empty list of strings"):
        score_responses(config, weights, [])
    with pytest.raises(ValueError, match="needs a text model"):
        score_responses(ExperimentConfig(), weights, TEXTS)
