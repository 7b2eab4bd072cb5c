"""Augmentation multiplicity for DP-SGD (De et al. 2022, "Unlocking high-accuracy differentially
private image classification through scale"): each example of a batch is seen as K randomly
shifted copies, and the gradient clipped is its mean over them (`per_example_clipping`, multiplicity
K). The copies come from the one example, so its clipped contribution is still bounded by C and the
accountant is unchanged; what changes is how much signal survives the clipping and the noise.

    rows = random_shifts(images, copies=4, max_shift=2, generator=g)   # (4·B, C, H, W), example-major
"""

from __future__ import annotations

import torch
from torch.nn import functional

from experiment_config import BOUNDS

MAX_SHIFT = 2  # pixels each way: MNIST digits sit 4 pixels inside their 28 × 28 frame
MAX_COPIES = int(BOUNDS["privacy.augmentations"][1])


def random_shifts(images: torch.Tensor, *, copies: int, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """`copies` translations of each image (B, C, H, W), rows i·K … i·K + K − 1 for image i: each a shift
    by (dy, dx), drawn uniformly from [−max_shift, max_shift]², the uncovered border filled with the
    image's own edge pixels (MNIST's background). Row r's pixel (y, x) is its image's (y + dy, x + dx),
    clamped to the frame."""
    if images.dim() != 4:
        raise ValueError(f"random shifts need (B, C, H, W) images, got shape {tuple(images.shape)}")
    if not 1 <= copies <= MAX_COPIES or max_shift < 0:
        raise ValueError(f"copies must be 1 to {MAX_COPIES} and max_shift >= 0, got {copies} and {max_shift}")
    rows = images.repeat_interleave(copies, dim=0)
    if max_shift == 0 or len(rows) == 0:
        return rows
    height, width = images.shape[2:]
    shifts = torch.randint(-max_shift, max_shift + 1, (len(rows), 2), generator=generator)
    padded = functional.pad(rows, (max_shift,) * 4, mode="replicate")
    out = torch.empty_like(rows)
    for dy, dx in torch.unique(shifts, dim=0).tolist():  # at most (2s + 1)² slices, each a batch of rows
        chosen = ((shifts[:, 0] == dy) & (shifts[:, 1] == dx)).nonzero().squeeze(1)
        top, left = max_shift + dy, max_shift + dx
        out[chosen] = padded[chosen, :, top : top + height, left : left + width]
    return out
