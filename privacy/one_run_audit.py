"""An empirical ε from one training run (Steinke, Nasr & Jagielski 2023, "Privacy Auditing with
One (1) Training Run", NeurIPS 2023).

m canaries are drawn; each joins the training data independently with probability 1/2 (S_i = ±1).
After training the auditor scores every canary (here −loss of its random label under the final
model: an included canary was fitted to a label no other example teaches), guesses "included" for
the k highest scores and "excluded" for the k lowest, abstains on the rest, and counts how many of
its r = 2k guesses are right (v). Theorem 7 of the paper (its Algorithm 2 with δ): if training is
(ε, δ)-DP, then

    P[v correct or more] <= P[Binomial(r, q) >= v] + 2 m δ · max_{i=1..v} P[v−i <= Binomial(r, q) < v] / i,
    q = e^ε / (1 + e^ε)   (the accuracy of ε-DP randomized response).

The lower bound is the largest ε this p-value rejects at the chosen confidence (95%): a run that
were (ε, δ)-DP for any smaller ε would have produced this many correct guesses with probability
below 5%. One attack, one sample: a *lower* bound, never a proof of privacy; the accountant's ε
is the upper one, and a lower bound above it means a bug in one of the two.

Pure numpy (no torch, no scipy: the binomial is computed from log-factorials), keyword-only:

    epsilon_lower_bound(canaries=1000, guesses=100, correct=80, delta=1e-5)   # float, >= 0
    one_run_audit(scores, included, delta=1e-5)                               # dict, JSON-able
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "ATTACK",
    "GUESS_FRACTIONS",
    "METHOD",
    "count_correct",
    "epsilon_lower_bound",
    "one_run_audit",
    "p_value",
]

METHOD = "one_run"  # the stored audit's "method": how the report and the page tell it apart
ATTACK = "canary loss, one training run (Steinke, Nasr & Jagielski 2023)"
# The share of the canaries guessed (r = 2k of m: the top k "included", the bottom k "excluded").
# Each is tried with the confidence split between them (Bonferroni), so picking the best one
# afterwards is paid for: the reported bound holds at the stated confidence as a whole.
GUESS_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
BISECTION_STEPS = 60  # ε to ~1e-15 of its bracket; the p-value is cheap


def _check_counts(canaries: int, guesses: int, correct: int) -> None:
    if not 0 <= correct <= guesses <= canaries:
        raise ValueError(f"need 0 <= correct <= guesses <= canaries, got {correct}, {guesses}, {canaries}")


def _binomial_pmf(trials: int, epsilon: float) -> np.ndarray:
    """P[Binomial(trials, q) = j] for j = 0..trials, q = e^ε/(1 + e^ε), from log-factorials so
    that neither a large `trials` nor a large ε overflows. (trials + 1,) float64."""
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, trials + 1, dtype=np.float64)))])
    log_q = -math.log1p(math.exp(-epsilon))  # log e^ε/(1+e^ε), stable for large ε
    log_not_q = -epsilon + log_q  # log 1/(1+e^ε)
    j = np.arange(trials + 1, dtype=np.float64)
    log_pmf = log_factorial[-1] - log_factorial - log_factorial[::-1] + j * log_q + (trials - j) * log_not_q
    return np.exp(log_pmf)


def p_value(*, canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """The probability, were training (ε, δ)-DP, of `correct` or more right guesses out of `guesses`
    among `canaries` (each included with probability 1/2): the right-hand side of Theorem 7."""
    _check_counts(canaries, guesses, correct)
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need ε >= 0 and δ in [0, 1], got ε = {epsilon}, δ = {delta}")
    if correct == 0:
        return 1.0
    pmf = _binomial_pmf(guesses, epsilon)
    tail = float(pmf[correct:].sum())  # P[Binomial >= v]
    if delta == 0:
        return min(tail, 1.0)
    # below[i − 1] = P[v − i <= Binomial < v], i = 1..v: the δ term's worst window, per unit of width.
    below = np.cumsum(pmf[correct - 1 :: -1])
    worst = float(np.max(below / np.arange(1, correct + 1)))
    return min(tail + 2 * canaries * delta * worst, 1.0)


def epsilon_lower_bound(*, canaries: int, guesses: int, correct: int, delta: float, confidence: float = 0.95) -> float:
    """The largest ε whose p-value (`p_value`) stays below 1 − confidence: every (ε', δ)-DP claim
    with ε' below it is rejected at that confidence. 0 when even ε = 0 is not rejected.

    The p-value grows with ε (guessing well is likelier with a weaker guarantee), so a bisection
    finds it, as in the paper's own code."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    level = 1.0 - confidence

    def rejected(epsilon: float) -> bool:
        return p_value(canaries=canaries, guesses=guesses, correct=correct, epsilon=epsilon, delta=delta) < level

    if not rejected(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejected(high):  # terminates: as ε → ∞, q → 1 and P[Binomial >= v] → 1
        low, high = high, 2 * high
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        low, high = (middle, high) if rejected(middle) else (low, middle)
    return low


def count_correct(scores: np.ndarray, included: np.ndarray, k: int) -> int:
    """Right guesses when the k highest-scoring canaries are called included and the k lowest
    excluded (2k <= m). scores, included: (m,); ties keep the canaries' own order, which was drawn
    before inclusion and so says nothing about it."""
    if not 0 <= 2 * k <= len(scores):
        raise ValueError(f"need 0 <= 2k <= {len(scores)} canaries, got k = {k}")
    order = np.argsort(-scores, kind="stable")  # highest first
    return int(included[order[:k]].sum() + (~included[order[len(order) - k :]]).sum()) if k else 0


def one_run_audit(
    scores: Any, included: Any, *, delta: float, confidence: float = 0.95,
    fractions: tuple[float, ...] = GUESS_FRACTIONS,
) -> dict[str, Any]:  # fmt: skip
    """The ε lower bound the canaries' scores imply. scores: (m,) higher = "more likely included"
    (−loss, nats); included: (m,) bool, which canaries were really trained on.

    Each number of guesses r = 2k = fraction·m of `fractions` is tried at confidence
    1 − (1 − confidence)/(number of distinct k), and the best is reported: `epsilon_lower_bound`
    with its `guesses` (2k) and `correct`; also `canaries`, `included`, `delta`, `confidence`, the
    mean loss of included and excluded canaries (nats), `method` and `attack`. JSON-able. Where no
    bound is above 0, the largest number of guesses is the one reported."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    included = np.asarray(included, dtype=bool).reshape(-1)
    if scores.size != included.size or scores.size < 2:
        raise ValueError(f"need as many scores as canaries, at least 2; got {scores.size} and {included.size}")
    if not np.isfinite(scores).all():
        raise ValueError("canary scores must be finite (a model that diverged has no meaningful audit)")
    if not included.any() or included.all():
        raise ValueError("need both included and excluded canaries")
    canaries = scores.size
    # The k tried, most guesses first: with no bound above 0 anywhere, the row shown guesses them all.
    halves = sorted({max(1, min(canaries // 2, round(f * canaries / 2))) for f in fractions}, reverse=True)
    each = 1.0 - (1.0 - confidence) / len(halves)
    best = {"epsilon_lower_bound": 0.0, "guesses": 0, "correct": 0}
    for k in halves:
        correct = count_correct(scores, included, k)
        bound = epsilon_lower_bound(canaries=canaries, guesses=2 * k, correct=correct, delta=delta, confidence=each)
        if bound > best["epsilon_lower_bound"] or not best["guesses"]:  # ties: the earlier, larger k
            best = {"epsilon_lower_bound": bound, "guesses": 2 * k, "correct": correct}
    return {
        "method": METHOD, **best, "canaries": int(canaries), "included": int(included.sum()),
        "delta": float(delta), "confidence": float(confidence),
        "included_loss": float(-scores[included].mean()), "excluded_loss": float(-scores[~included].mean()),
        "attack": ATTACK,
    }  # fmt: skip
