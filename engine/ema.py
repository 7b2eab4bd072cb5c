"""The server-side exponential moving average of the global weights (`federation.server_ema`).

    ema = update_ema(ema, weights, decay)    # after each round; None while decay = 0 (off)
    model_weights = released(weights, ema)    # what is evaluated, stored and audited

The average is post-processing of the global models the rounds already release, so it costs no
privacy (De et al. 2022 average DP-SGD's iterates the same way); it damps the noise that DP adds
round after round. Clients always train from the current global weights, never from the average.
"""

from __future__ import annotations

import torch


def update_ema(ema: torch.Tensor | None, weights: torch.Tensor, decay: float) -> torch.Tensor | None:
    """ema_t = d·ema_(t−1) + (1 − d)·w_t in float64, starting from ema_1 = w_1 (no pull towards the random
    initial weights); None when `decay` is 0 (off). `weights`: (P,) the global model after round t."""
    if decay <= 0:
        return None
    current = weights.detach().to(torch.float64)
    if ema is None:
        return current.clone()
    return ema.mul(decay).add_(current, alpha=1.0 - decay)


def released(weights: torch.Tensor, ema: torch.Tensor | None) -> torch.Tensor:
    """The model a run releases: the average (at the weights' dtype) when there is one, else `weights`."""
    return weights if ema is None else ema.to(weights.dtype)
