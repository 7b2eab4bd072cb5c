"""ScatterNet features, computed once per client dataset instead of at every training step.

    data = with_scattering(config, data)   # images → (N, 81·C, S/4, S/4) features for the scatter models
    data = with_scattering(config, data, cache_dir=Path("cache"))  # kept on disk, keyed by the images
    feats = scatter(images)                # the same transform on any (N, C, S, S) batch of images

The scatter models (`model.SCATTER_MODELS`) start with a fixed wavelet scattering transform (kymatio's
Scattering2D, J = 2: 81 × 7 × 7 per MNIST digit; Tramèr & Boneh 2021). It has no parameters and looks at
one image at a time, so a client may apply it to its own examples before training at no privacy cost, and
DP-SGD then clips and noises the gradients of the small head alone. Computing it per step would repeat
the same ~1 ms per image for every batch of every round; here each split is transformed once when a run
loads its data (in a Flower deployment each site transforms its own examples), and the model's
`ScatterNet.forward` takes those features directly. The per-example transform makes transforming all
clients' rows at once the same as each client transforming its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch

from data_handler import FederatedData
from experiment_config import ExperimentConfig
from model import SCATTER_MODELS, Scattering

FEATURE_BATCH = 1000  # images per call of the transform: bounds its working memory (~100 MB at 28 × 28)
FEATURES = "scattering J=2 L=8"  # data.info["features"] of transformed data


def scatter(images: torch.Tensor, *, batch_size: int = FEATURE_BATCH) -> torch.Tensor:
    """(N, C, S, S) float images → (N, 81·C, S/4, S/4) float32 scattering features, in batches."""
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"scattering expects (N, C, S, S) images, got shape {tuple(images.shape)}")
    layer = Scattering(channels=images.shape[1], image_size=images.shape[-1])
    parts = [layer(images[start : start + batch_size].float()) for start in range(0, len(images), batch_size)]
    if not parts:
        return images.new_zeros((0, layer.out_channels, layer.out_size, layer.out_size))
    return torch.cat(parts)


def cached_scatter(images: torch.Tensor, cache_dir: Path) -> torch.Tensor:
    """`scatter(images)`, kept in `cache_dir` under the SHA-256 of the images' shape and bytes (and the
    transform's settings), so the same images are transformed once across runs (benchmarks)."""
    digest = hashlib.sha256(f"{FEATURES} {tuple(images.shape)} {images.dtype}".encode())
    digest.update(images.contiguous().numpy().tobytes())
    path = Path(cache_dir) / f"scattering-{digest.hexdigest()[:32]}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    features = scatter(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(features, path)
    return features


def with_scattering(config: ExperimentConfig, data: FederatedData, *, cache_dir: Path | None = None) -> FederatedData:
    """`data` with both splits' images replaced by their scattering features when `config` names a
    scatter model (labels, groups and everything else unchanged); `data` itself otherwise, or when it
    already holds features. `cache_dir`: keep the features there, keyed by the images (`cached_scatter`)."""
    if config.model.name not in SCATTER_MODELS or data.info.get("features") == FEATURES:
        return data
    transform = scatter if cache_dir is None else lambda images: cached_scatter(images, cache_dir)
    return dataclasses.replace(
        data, train_x=transform(data.train_x), test_x=transform(data.test_x), info={**data.info, "features": FEATURES}
    )
