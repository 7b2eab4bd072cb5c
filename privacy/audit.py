"""Empirical privacy audit: a loss-threshold membership-inference attack (Yeom et al. 2018).

The attacker sees one example and the model's loss on it, and guesses "member" (the
example was trained on) when the loss is low. Score = −loss (nats of cross-entropy),
so members should score higher. Two numbers summarise how well that works:

- AUC, the Mann–Whitney statistic: the probability that a random member scores above a
  random non-member (ties count 1/2). 0.5 = the attack cannot tell them apart.
- Membership advantage (Yeom et al.): max over thresholds t of TPR(t) − FPR(t), where the
  attack says "member" when score >= t. 0 = no better than guessing.

An audit is a lower bound on leakage (one simple attack, one finite sample), never a
proof of privacy. The scoring functions are pure numpy; only `audit_model` needs torch
(imported when called, so the report can use the rest without it).

    scores_in, scores_out = -member_losses, -nonmember_losses   # (n,), (m,) float
    membership_auc(scores_in, scores_out), membership_advantage(scores_in, scores_out)
    audit_model(model, members_x, members_y, nonmembers_x, nonmembers_y)   # dict, JSON-able
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "ATTACK",
    "advantage_bound",
    "advantage_chance_level",
    "audit_model",
    "auc_chance_sd",
    "example_losses",
    "membership_advantage",
    "membership_auc",
]

ATTACK = "loss threshold (Yeom et al. 2018)"


def _scores(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite (a model that diverged has no meaningful audit)")
    return array


def membership_auc(member_scores: Any, nonmember_scores: Any) -> float:
    """P(member score > non-member score) + ½·P(equal): the Mann–Whitney U / (n·m).

    member_scores: (n,), nonmember_scores: (m,), any real unit where higher means "more
    likely a member" (here −loss). Returns a value in [0, 1]; 0.5 = chance.
    """
    members = _scores("member_scores", member_scores)
    nonmembers = np.sort(_scores("nonmember_scores", nonmember_scores))
    below = np.searchsorted(nonmembers, members, side="left")  # non-members strictly lower
    tied = np.searchsorted(nonmembers, members, side="right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (members.size * nonmembers.size))


def membership_advantage(member_scores: Any, nonmember_scores: Any) -> tuple[float, float]:
    """(advantage, threshold): max over thresholds t of TPR(t) − FPR(t), and the t reaching it.

    The attack says "member" when score >= t; t ranges over every observed score (the
    smallest one calls everything a member, TPR = FPR = 1, so the advantage is >= 0).
    Shapes as in `membership_auc`; the threshold is in score units. The threshold is
    the best one *in hindsight* on this sample, so the advantage is an optimistic
    (attacker-favouring) estimate; see `advantage_chance_level`.
    """
    members = np.sort(_scores("member_scores", member_scores))
    nonmembers = np.sort(_scores("nonmember_scores", nonmember_scores))
    thresholds = np.unique(np.concatenate([members, nonmembers]))  # ascending
    tpr = 1.0 - np.searchsorted(members, thresholds, side="left") / members.size
    fpr = 1.0 - np.searchsorted(nonmembers, thresholds, side="left") / nonmembers.size
    gaps = tpr - fpr
    best = int(np.argmax(gaps))
    return float(max(gaps[best], 0.0)), float(thresholds[best])


def auc_chance_sd(members: int, non_members: int) -> float:
    """Standard deviation of the AUC when members and non-members score alike (no leakage):
    sqrt((n + m + 1) / (12 n m)), the null variance of Mann–Whitney U over (n m)²."""
    if members < 1 or non_members < 1:
        raise ValueError(f"need at least one member and one non-member, got {members}, {non_members}")
    return math.sqrt((members + non_members + 1) / (12.0 * members * non_members))


def advantage_chance_level(members: int, non_members: int, *, level: float = 0.95) -> float:
    """The advantage that chance alone stays below with probability `level` (no leakage).

    The advantage is the one-sided two-sample Kolmogorov–Smirnov statistic D⁺, whose null
    tail is P(D⁺ > d) ≈ exp(−2 d² n m / (n + m)) (asymptotic, Smirnov 1939).
    """
    if members < 1 or non_members < 1:
        raise ValueError(f"need at least one member and one non-member, got {members}, {non_members}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return math.sqrt(math.log(1.0 / (1.0 - level)) * (members + non_members) / (2.0 * members * non_members))


def advantage_bound(epsilon: float, delta: float) -> float:
    """The largest membership advantage (TPR − FPR) any attack can have against an (ε, δ)-DP
    training run, for independently drawn examples: (e^ε − 1 + 2δ)/(e^ε + 1), capped at 1.

    (ε, δ)-DP bounds both error rates of any test (TPR ≤ e^ε·FPR + δ, and the same for the
    complements: Kairouz, Oh & Viswanath 2015), which caps TPR − FPR there (Humphries et al.
    2020). 1 for ε past what e^ε can hold: the bound is 1 long before."""
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need ε >= 0 and δ in [0, 1], got ε = {epsilon}, δ = {delta}")
    if epsilon > 700:
        return 1.0
    return min((math.exp(epsilon) - 1 + 2 * delta) / (math.exp(epsilon) + 1), 1.0)


def example_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 0) -> np.ndarray:
    """Per-example loss (nats; `objectives.example_losses`: cross-entropy, or mean BCE over the
    scored labels) of `model` on x: (N, ...) and y: (N,) int64 or (N, K) → (N,) float64.

    Evaluation mode, no gradients; the model's train/eval mode is restored afterwards.
    """
    import torch

    from engine import objectives

    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    batch_size = batch_size or objectives.EVAL_BATCH  # 0: as the rounds evaluate
    was_training = model.training
    model.eval()
    losses = []
    try:
        with torch.no_grad():
            for start in range(0, len(y), batch_size):
                logits = model(x[start : start + batch_size])  # (B, classes)
                target = y[start : start + batch_size]
                losses.append(objectives.example_losses(logits, target).double())
    finally:
        model.train(was_training)
    return torch.cat(losses).numpy() if losses else np.zeros(0)


def audit_model(
    model: nn.Module,
    members_x: torch.Tensor,
    members_y: torch.Tensor,
    nonmembers_x: torch.Tensor,
    nonmembers_y: torch.Tensor,
) -> dict[str, Any]:
    """Run the loss-threshold attack on `model`; returns a JSON-able dict:

    `auc` (in [0, 1]), `advantage` (in [0, 1]), `threshold` (a cross-entropy in nats: the
    best attack says "member" when an example's loss is <= it), `members`, `non_members`
    (counts), `member_loss` and `non_member_loss` (mean cross-entropy, nats), `attack`.
    Inputs: x (N, 1, 28, 28) float, y (N,) int64, for the trained-on and held-out examples.
    """
    member_losses = example_losses(model, members_x, members_y)
    nonmember_losses = example_losses(model, nonmembers_x, nonmembers_y)
    member_scores, nonmember_scores = -member_losses, -nonmember_losses
    advantage, threshold = membership_advantage(member_scores, nonmember_scores)
    return {
        "auc": membership_auc(member_scores, nonmember_scores),
        "advantage": advantage,
        "threshold": -threshold,  # back from score (−loss) to loss units
        "members": int(member_losses.size),
        "non_members": int(nonmember_losses.size),
        "member_loss": float(member_losses.mean()),
        "non_member_loss": float(nonmember_losses.mean()),
        "attack": ATTACK,
    }
