"""NGSS rubric scoring on MLX against the torch model it stands in for: TinyLLama-v0's shape
(random frozen backbone, pretrained=False) with LoRA on q_proj/v_proj and a multi-label
head. Same exchange vector, same logits on padded batches, same local SGD/AdamW steps
(masked BCE, batch order, FedProx/SCAFFOLD terms, FedPer head, holdout accuracy), and the
same per-label accuracy from the engine. Skipped where mlx or mlx-lm is not installed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

import mlx.core as mx  # noqa: E402

from mlx_runtime import text as mlx_text  # noqa: E402
from engine.client_trainers import InProcessTrainer, TrainSettings, TrainTask  # noqa: E402
from data_handler import FederatedData  # noqa: E402
from mlx_runtime.trainer import MlxTrainer, flatten_mlx, load_flat  # noqa: E402
from model import create_model, get_parameters, set_parameters, unflatten  # noqa: E402

LABELS, LENGTH = 4, 24
OPTIONS = {"pretrained": False, "lora_dropout": 0.0}  # dropout 0: both backends compute the same steps
SEED = 5  # the run's seed: the random frozen backbone both backends build
EXCHANGED = 16_384 + 64 * LABELS  # LoRA r=8 on q_proj and v_proj of 8 layers + the 64×K head


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def torch_scorer():
    return create_model("tinyllama-lora", num_classes=LABELS, seed=SEED, **OPTIONS)


def random_exchange(seed: int) -> torch.Tensor:
    """LoRA A, B and head all non-zero, so every one of them shows in the logits."""
    return torch.randn(EXCHANGED, generator=torch.Generator().manual_seed(seed)) * 0.2


def token_rows(count: int, seed: int) -> torch.Tensor:
    """(count, LENGTH) right-padded ids: bos, random tokens, then pad 0; lengths 1..LENGTH."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 32_000, (count, LENGTH), generator=generator)
    ids[:, 0] = 1
    lengths = torch.randint(1, LENGTH + 1, (count,), generator=generator)
    lengths[0] = LENGTH  # one full row
    for row, length in enumerate(lengths):
        ids[row, length:] = 0
    return ids


@pytest.fixture(scope="module")
def text_data() -> FederatedData:
    generator = torch.Generator().manual_seed(1)
    labels = (torch.rand(120, LABELS, generator=generator) < 0.4).float()
    labels[torch.rand(120, LABELS, generator=generator) < 0.15] = -1.0  # unscored: masked out
    ids = token_rows(120, seed=2)
    return FederatedData(ids, labels, ids[:20], labels[:20], LABELS)


def settings(**changes) -> TrainSettings:
    base = TrainSettings(
        "tinyllama-lora", LABELS, local_epochs=2, batch_size=16, learning_rate=0.5, model_options=OPTIONS,
        model_seed=SEED,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def test_exchange_vector_converts_exactly_with_peft_transposed(torch_scorer):
    scorer, layout = mlx_text.scorer_from_torch(torch_scorer)
    flat = random_exchange(0)

    load_flat(scorer, layout, flat)
    back = flatten_mlx(scorer, layout)

    assert layout.size == EXCHANGED
    assert torch.equal(back, flat)
    torch_params = unflatten(flat, get_parameters(torch_scorer))
    prefix = "backbone.base_model.model.model.layers.3.self_attn.v_proj."
    attention = scorer.model.layers[3].self_attn
    np.testing.assert_array_equal(attention.v_proj.lora_a, torch_params[prefix + "lora_A.default.weight"].T)
    np.testing.assert_array_equal(attention.v_proj.lora_b, torch_params[prefix + "lora_B.default.weight"].T)
    assert attention.v_proj.scale == 32.0 / 8  # peft's α / r
    hf = torch_scorer.backbone.base_model.model
    np.testing.assert_array_equal(attention.v_proj.linear.weight, hf.model.layers[3].self_attn.v_proj.base_layer.weight)
    np.testing.assert_array_equal(scorer.model.embed_tokens.weight, hf.model.embed_tokens.weight.detach())


def test_logits_match_torch_on_a_padded_batch(torch_scorer):
    scorer, layout = mlx_text.scorer_from_torch(torch_scorer)
    flat = random_exchange(1)
    load_flat(scorer, layout, flat)
    set_parameters(torch_scorer, unflatten(flat, get_parameters(torch_scorer)))
    ids = token_rows(12, seed=3)
    longer = torch.cat([ids, torch.zeros(12, 9, dtype=ids.dtype)], dim=1)  # more padding changes nothing

    torch_scorer.eval()
    with torch.no_grad():
        expected = torch_scorer(ids).numpy()
    logits = np.asarray(scorer(mx.array(ids.numpy().astype(np.int32))))
    padded = np.asarray(scorer(mx.array(longer.numpy().astype(np.int32))))

    assert np.abs(expected).max() > 0.1  # not trivially small
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(padded, logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("optimizer", "learning_rate", "max_steps", "atol"), [
    ("sgd", 0.5, 0, 1e-5),  # two reshuffled epochs of 120 rows, B=16: a short last batch each
    ("adamw", 0.01, 4, 1e-4),  # Adam divides by √v: rounding in tiny gradients moves weights more
])  # fmt: skip
def test_local_steps_match_torch(text_data, optimizer, learning_rate, max_steps, atol):
    train_settings = settings(optimizer=optimizer, learning_rate=learning_rate)
    start = random_exchange(2) * 0.5
    torch_trainer = InProcessTrainer(text_data, train_settings, EXCHANGED, 1)
    mlx_trainer = MlxTrainer(text_data, train_settings, EXCHANGED, 1)
    task = TrainTask(0, 0, np.arange(120), seed=9, max_steps=max_steps)

    expected = torch_trainer.train(start, [task])[0]
    outcome = mlx_trainer.train(start, [task])[0]

    assert outcome.steps == expected.steps == (max_steps or 2 * 8)
    assert outcome.loss == pytest.approx(expected.loss, abs=1e-5)
    assert (mlx_trainer.results[0] - start).abs().max() > 1e-2  # it trained
    torch.testing.assert_close(mlx_trainer.results[0], torch_trainer.results[0], atol=atol, rtol=0)


def test_strategy_terms_flipped_labels_head_and_holdout_match_torch(text_data):
    train_settings = settings(local_epochs=1, proximal_mu=0.5, corrections=True)
    torch_trainer = InProcessTrainer(text_data, train_settings, EXCHANGED, 2)
    mlx_trainer = MlxTrainer(text_data, train_settings, EXCHANGED, 2)
    start = random_exchange(3) * 0.5
    correction = torch.randn(EXCHANGED, generator=torch.Generator().manual_seed(4)) * 0.05
    for trainer in (torch_trainer, mlx_trainer):
        trainer.corrections[:] = correction
    head = torch.randn(64 * LABELS, generator=torch.Generator().manual_seed(5))  # FedPer: score.weight
    tasks = [
        TrainTask(1, 0, np.arange(50), seed=1, flip_labels=True, holdout=np.arange(50, 90)),
        TrainTask(0, 1, np.arange(60, 120), seed=2, head=head, holdout=np.arange(0, 60), max_steps=3),
    ]

    expected = torch_trainer.train(start, tasks)
    outcomes = mlx_trainer.train(start, tasks)

    assert [o.steps for o in outcomes] == [o.steps for o in expected] == [4, 3]
    for ours, theirs in zip(outcomes, expected, strict=True):
        assert ours.loss == pytest.approx(theirs.loss, rel=1e-5)  # ~3: the random head is far off
        assert ours.validation_accuracy == pytest.approx(theirs.validation_accuracy, abs=1e-6)
    torch.testing.assert_close(mlx_trainer.results, torch_trainer.results, atol=1e-4, rtol=0)


def test_lora_dropout_is_seeded_by_the_task(text_data):
    with_dropout = settings(model_options={"pretrained": False, "lora_dropout": 0.3}, local_epochs=1)
    trainer = MlxTrainer(text_data, with_dropout, EXCHANGED, 1)
    plain = MlxTrainer(text_data, settings(local_epochs=1), EXCHANGED, 1)
    start = random_exchange(6) * 0.5

    runs = []
    for seed in (3, 3, 4):
        trainer.train(start, [TrainTask(0, 0, np.arange(40), seed=seed, max_steps=2)])
        runs.append(trainer.results[0].clone())
    plain.train(start, [TrainTask(0, 0, np.arange(40), seed=3, max_steps=2)])

    assert torch.equal(runs[0], runs[1])  # the same task draws the same masks
    assert not torch.equal(runs[0], runs[2])
    assert (runs[0] - plain.results[0]).abs().max() > 1e-4  # dropout acted


def test_refuses_minilm_and_rows_padded_before_the_text(text_data):
    with pytest.raises(ValueError, match="model.name = 'minilm-lora' needs system.backend = 'torch'"):
        MlxTrainer(text_data, settings(model_name="minilm-lora"), EXCHANGED, 1)
    ids = text_data.train_x.clone()
    ids[5, 1] = 0  # a pad between bos and text
    with pytest.raises(ValueError, match="right-padded token rows.*row 5"):
        MlxTrainer(dataclasses.replace(text_data, train_x=ids), settings(), EXCHANGED, 1)


def test_missing_mlx_lm_says_how_to_install_it(text_data, monkeypatch):
    monkeypatch.setattr(mlx_text, "_IMPORT_ERROR", ImportError("No module named 'mlx_lm'"))

    with pytest.raises(ImportError, match="pip install mlx-lm"):
        MlxTrainer(text_data, settings(), EXCHANGED, 1)


def test_the_engine_scores_ngss_on_mlx_like_torch():
    # Two schools of the natural partition train one round on each backend; the engine
    # (sampling, FedAvg, per-label evaluation in torch) is common.
    from experiment_config import ExperimentConfig
    from federated_learning import FederatedRun
    from engine.workloads import load_data

    def config(backend: str) -> ExperimentConfig:
        return ExperimentConfig.from_dict({
            "data": {"dataset": "ngss", "partition": "natural", "ngss_task": "gas_filled_balloons",
                     "max_train_examples": 270, "max_test_examples": 90},
            "model": {"name": "tinyllama-lora", "pretrained": False, "max_length": 64},
            "federation": {"num_clients": 9, "clients_per_round": 2, "rounds": 1, "batch_size": 16,
                           "learning_rate": 0.05},
            "privacy": {"audit_examples": 0},
            "system": {"num_workers": 1, "seed": 4, "backend": backend},
        })  # fmt: skip

    data = load_data(config("torch"))
    (on_torch,) = list(FederatedRun(config("torch"), data=data).rounds())
    (on_mlx,) = list(FederatedRun(config("mlx"), data=data).rounds())

    print(f"per-label accuracy: torch {on_torch.accuracy:.4f}, mlx {on_mlx.accuracy:.4f}")
    assert [c.id for c in on_mlx.clients] == [c.id for c in on_torch.clients]
    assert [c.steps for c in on_mlx.clients] == [c.steps for c in on_torch.clients]
    assert on_mlx.metrics["per_label_accuracy"] == pytest.approx(on_torch.metrics["per_label_accuracy"], abs=0.01)
    assert on_mlx.loss == pytest.approx(on_torch.loss, abs=1e-3)
