"""What data and model an `ExperimentConfig` means, for both workloads.

    data = load_data(config)            # FederatedData: MNIST images, or NGSS responses as token ids
    model = build_model(config, data.num_classes, seed=config.system.seed)

MNIST: the digits from `data.data_dir` (downloaded on first use). Your own images
(`data.dataset = "folder"`): `engine/image_folder.py`, at `data.image_size` and
`data.image_channels`, which the image models are built for. NGSS rubric scoring: the
responses of one task, from the synthetic generator (`data.dataset = "ngss"`, seeded by
`system.seed`) or the lab's CSV files (`"csv"`), tokenized for the text model and padded
to the longest response (the model trims each batch to its own longest). The tokenizer is
the backbone's (TinyLLama-v0's from the Hub, MiniLM's from its package), or, for a
TinyLLama built from its config (`model.pretrained = false`), one trained on the training
responses, so the same config always gives the same ids.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from data_handler import FederatedData, load_mnist
from engine.image_folder import load_folder
from experiment_config import TEXT_MODELS, ExperimentConfig
from model import create_model


def is_text(config: ExperimentConfig) -> bool:
    return config.model.name in TEXT_MODELS


def model_options(config: ExperimentConfig) -> dict[str, Any]:
    """Keyword arguments for `model.create_model` beyond name, classes and seed: a text model's
    options, or an image model's input shape (a folder's; MNIST's is the models' default)."""
    return config.model.text_options() if is_text(config) else config.data.image_options()


def build_model(config: ExperimentConfig, num_classes: int, *, seed: int | None = None) -> nn.Module:
    return create_model(config.model.name, num_classes=num_classes, seed=seed, **model_options(config))


def load_ngss(config: ExperimentConfig) -> Any:
    """The NGSS dataset (`ngss_data.NgssDataset`) the config names: generated or imported."""
    from ngss import data as ngss_data

    data = config.data
    if data.dataset == "ngss":
        return ngss_data.generate(data.ngss_task, seed=config.system.seed)
    return ngss_data.load_csv(data.csv_path, seed=config.system.seed)


def load_tokenizer(config: ExperimentConfig, corpus: list[str]) -> Any:
    from ngss import text_models

    return text_models.load_tokenizer(config.model.name, pretrained=config.model.pretrained, corpus=corpus)


def encode(config: ExperimentConfig, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """(N, L) token ids of `texts`, L ≤ model.max_length."""
    from ngss import text_models

    return text_models.encode(tokenizer, texts, max_length=config.model.max_length)


def load_data(config: ExperimentConfig) -> FederatedData:
    """The run's data: MNIST or a folder's images as tensors, or one NGSS task tokenized for the
    configured text model."""
    if config.data.dataset == "mnist":
        return dataclasses.replace(load_mnist(config.data.data_dir), info={"source": "mnist"})
    if config.data.dataset == "folder":
        return load_folder(config.data.folder_path, image_size=config.data.image_size,
                           channels=config.data.image_channels)  # fmt: skip
    ngss = load_ngss(config)
    tokenizer = load_tokenizer(config, ngss.train.texts)
    train_x = encode(config, tokenizer, ngss.train.texts)
    test_x = encode(config, tokenizer, ngss.test.texts)
    info = {
        "source": ngss.source,  # "synthetic" or "imported"
        "task": ngss.task,
        "labels": list(ngss.label_names),
        "schools": list(ngss.school_names) if ngss.has_groups else [],
        "train_responses": len(ngss.train),
        "test_responses": len(ngss.test),
        "max_tokens": int(train_x.shape[1]),
    }  # fmt: skip
    if config.data.dataset == "csv":
        info["csv_path"] = config.data.csv_path
    return FederatedData(
        train_x=train_x,
        train_y=torch.from_numpy(ngss.train.labels.astype(np.float32)),
        test_x=test_x,
        test_y=torch.from_numpy(ngss.test.labels.astype(np.float32)),
        num_classes=len(ngss.label_names),
        train_groups=ngss.train.schools if ngss.has_groups else None,
        test_groups=ngss.test.schools if ngss.has_groups else None,
        group_names=tuple(ngss.school_names) if ngss.has_groups else (),
        label_names=tuple(ngss.label_names),
        info=info,
    )


SCORING_BATCH = 256  # responses per forward pass when scoring


def score_responses(config: ExperimentConfig, weights: torch.Tensor, texts: list[str]) -> np.ndarray:
    """(N, K) probabilities that each of `texts` earns each of the run's K rubric elements.

    Rebuilds what the run trained: the data's tokenizer exactly as `load_data` made it (the
    same corpus gives the same local tokenizer; an imported CSV is read again), the model
    with the run's seed (a random frozen backbone is the same one), then loads `weights`,
    the run's final exchanged vector (`model.flatten(model.get_parameters(model))`, LoRA +
    head), and returns the sigmoid of the logits. Raises ValueError for a model that is not
    a text model, weights of the wrong size or no texts, and `ngss_data.CsvImportError`
    naming the file when an imported run's CSV is gone.
    """
    from ngss import data as ngss_data
    from model import get_parameters, set_parameters, unflatten

    if not is_text(config):
        raise ValueError(f"scoring needs a text model ({', '.join(TEXT_MODELS)}); the run used {config.model.name!r}")
    if isinstance(texts, str) or not texts or not all(isinstance(text, str) for text in texts):
        raise ValueError("texts must be a non-empty list of strings (the responses to score)")
    try:
        ngss = load_ngss(config)
    except ngss_data.CsvImportError as error:
        raise ngss_data.CsvImportError(
            f"cannot rebuild the run's tokenizer from its imported data: {error}. Scoring needs the training "
            "file the run imported, at the same path"
        ) from error
    tokenizer = load_tokenizer(config, ngss.train.texts)
    model = build_model(config, len(ngss.label_names), seed=config.system.seed)
    params = get_parameters(model)
    flat = weights.detach().reshape(-1).to(torch.float32)
    needed = sum(tensor.numel() for tensor in params.values())
    if flat.numel() != needed:
        raise ValueError(
            f"the stored weights have {flat.numel()} values, but this run's model exchanges {needed}: "
            "they belong to another model or labels"
        )
    set_parameters(model, unflatten(flat, params))
    input_ids = encode(config, tokenizer, list(texts))  # (N, L)
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(input_ids[start : start + SCORING_BATCH])
                            for start in range(0, len(input_ids), SCORING_BATCH)])  # fmt: skip
    return torch.sigmoid(logits).numpy().astype(np.float64)  # (N, K)
