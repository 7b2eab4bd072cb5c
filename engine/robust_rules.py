"""The Byzantine-robust aggregation rules as pure functions over a stack of client weights,
(n, P): per-coordinate median and trimmed mean (Yin et al. 2018), Krum and Multi-Krum
(Blanchard et al. 2017), Bulyan (El Mhamdi et al. 2018). None trusts a client's example count,
because a malicious client can claim any. Their strategy classes, which pick the stack and f
from the config, are in `engine.strategies`. Sums run in float64; results come back in the
input dtype. A rule with too few updates for its f raises `ValueError`.
"""

from __future__ import annotations

import torch

F64 = torch.float64


def _require_updates(rule: str, byzantine_clients: int, count: int, minimum: int) -> None:
    if count < minimum:
        raise ValueError(f"{rule} with f={byzantine_clients} needs at least {minimum} updates, got {count}")


def _median64(stack: torch.Tensor) -> torch.Tensor:
    ordered = stack.sort(dim=0).values  # (n, P)
    n = stack.shape[0]
    return (ordered[(n - 1) // 2].to(F64) + ordered[n // 2].to(F64)) / 2  # (P,); even n: mean of the middle two


def coordinate_median(stack: torch.Tensor) -> torch.Tensor:
    """Yin et al. 2018: per-coordinate median of (n, P) weights; even n averages the middle two (numpy.median)."""
    return _median64(stack).to(stack.dtype)


def trimmed_mean(stack: torch.Tensor, *, trim_fraction: float) -> torch.Tensor:
    """Yin et al. 2018: per coordinate drop the ⌊β·n⌋ largest and smallest, average the rest (scipy trim_mean)."""
    cut = int(trim_fraction * stack.shape[0])
    kept = stack.sort(dim=0).values[cut : stack.shape[0] - cut]  # (n − 2·cut, P), never empty as β < 0.5
    return kept.mean(dim=0, dtype=F64).to(stack.dtype)


def pairwise_squared_distances(stack: torch.Tensor) -> torch.Tensor:
    """‖y_i − y_j‖² for (n, P) weights, as (n, n) float64 via the Gram matrix: O(n²P) in one matmul."""
    centred = stack.to(F64)
    centred -= centred.mean(dim=0)  # distances are shift-invariant; centring limits cancellation in |a|²+|b|²−2ab
    gram = centred @ centred.T  # (n, n)
    norms = gram.diagonal()
    distances = (norms[:, None] + norms[None, :] - 2 * gram).clamp_min_(0)
    return distances.fill_diagonal_(0)


def krum_scores(distances: torch.Tensor, *, neighbours: int) -> torch.Tensor:
    """Blanchard et al. 2017: per update, the sum of squared distances to its `neighbours` nearest others, (n,)."""
    to_others = distances.clone().fill_diagonal_(float("inf"))
    return to_others.sort(dim=1).values[:, :neighbours].sum(dim=1)


def krum(stack: torch.Tensor, *, byzantine_clients: int) -> torch.Tensor:
    """Blanchard et al. 2017: the update whose n − f − 2 nearest neighbours are closest; needs n ≥ 2f + 3."""
    n, f = stack.shape[0], byzantine_clients
    _require_updates("krum", f, n, 2 * f + 3)
    scores = krum_scores(pairwise_squared_distances(stack), neighbours=n - f - 2)
    return stack[int(scores.argmin())].clone()


def multi_krum(stack: torch.Tensor, *, byzantine_clients: int, keep: int = 0) -> torch.Tensor:
    """Blanchard et al. 2017: mean of the m lowest Krum scores (scored once; m = keep, or n − f if 0)."""
    n, f = stack.shape[0], byzantine_clients
    _require_updates("multi_krum", f, n, 2 * f + 3)
    keep = keep or n - f
    if keep > n:
        raise ValueError(f"multi_krum with federation.multi_krum_keep={keep} needs at least {keep} updates, got {n}")
    scores = krum_scores(pairwise_squared_distances(stack), neighbours=n - f - 2)
    chosen = torch.argsort(scores, stable=True)[:keep]
    return stack[chosen].mean(dim=0, dtype=F64).to(stack.dtype)


def bulyan(stack: torch.Tensor, *, byzantine_clients: int) -> torch.Tensor:
    """El Mhamdi et al. 2018: θ = n − 2f picks by repeated Krum, then a per-coordinate trimmed mean around the median.

    Each pick runs Krum on the remaining set (n−f−2 neighbours of the shrinking set, or all other remaining ones
    once that drops below 1) and removes the winner. Per coordinate the β = θ − 2f selected values closest to the
    selection's median are averaged. Needs n ≥ 4f + 3.
    """
    n, f = stack.shape[0], byzantine_clients
    _require_updates("bulyan", f, n, 4 * f + 3)
    chosen = stack[bulyan_selection(pairwise_squared_distances(stack), byzantine_clients=f)]  # (θ, P)
    closest = (chosen.to(F64) - _median64(chosen)).abs().argsort(dim=0, stable=True)[: chosen.shape[0] - 2 * f]
    return chosen.gather(0, closest).mean(dim=0, dtype=F64).to(stack.dtype)  # closest: (β, P) row indices


def bulyan_selection(distances: torch.Tensor, *, byzantine_clients: int) -> list[int]:
    """Bulyan's first stage: indices of θ = n − 2f picks, each the Krum winner of the rest, in pick order."""
    f = byzantine_clients
    remaining, selected = list(range(distances.shape[0])), []
    for _ in range(distances.shape[0] - 2 * f):
        left = len(remaining)
        neighbours = left - f - 2 if left - f - 2 >= 1 else left - 1  # small sets: all other remaining ones
        scores = krum_scores(distances[remaining][:, remaining], neighbours=neighbours)
        selected.append(remaining.pop(int(scores.argmin())))
    return selected
