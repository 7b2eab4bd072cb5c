"""Catching Byzantine clients: a suspicion score per client per round from what the server sees.

Pure numpy functions over the round's (n, P) stack of updates (each client's new weights − the
global weights); no I/O, no state, no torch (the page imports `flag_quality`). The round loop
keeps the history (`RunState.flagged_rounds`: which clients were flagged in which rounds) and
asks `to_exclude` who is left out of the aggregate under `federation.exclusion = "flagged"`.

    scores = score_updates(np.stack(updates), client_ids=[3, 7, 9, 12])   # (n, P) → n scores
    flagged = {s.client_id for s in scores if s.flagged}
    history = record_flags(history, round_number, flagged)
    dropped = to_exclude(history, round_number, flags=2, window=3)   # flagged in 2 of the last 3 rounds
    quality = flag_quality(client_rows)   # precision / recall against who really was malicious

The score combines three robust statistics of update i against the round's robust centre c (the
coordinate-wise median of the updates, which a minority of attackers cannot drag far):

    distance   D_i = ‖u_i − c‖ / median_j ‖u_j − c‖        (1 for a typical client)
    direction  cos_i = ⟨u_i, c⟩ / (‖u_i‖·‖c‖)               (sign flips point away: ≈ −1)
    magnitude  z_i = |‖u_i‖ − median ‖u‖| / (1.4826·MAD)    (robust z-score of the norm)

each mapped onto [0, 1] — clip((D − 1)/2), (1 − cos)/2, clip(z/6) — and averaged with equal
weights. Each part reaches ½ at its own "clearly odd" point (D = 2, cos = 0, z = 3), so a score
≥ FLAG_THRESHOLD = ½ means the update is, on average, as odd as that. Honest IID clients score
about 0.05–0.2; sign-flip, scale and Gaussian updates 0.7–1. Subtler attackers (label flipping:
measured 0.38–0.58 on MNIST) stand out against the round's own scores instead, so a score is also
flagged when it is an outlier among them — above median + 3·1.4826·MAD of the round's scores —
and at least OUTLIER_FLOOR (so a tight honest crowd does not flag its own tail). See `flag_rule`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

FLAG_THRESHOLD = 0.5  # a combined score at or above this flags the client for the round
OUTLIER_FLOOR = 0.25  # a score below this is never flagged as an outlier among the round's scores
OUTLIER_Z = 3.0  # an outlier lies more than this many robust σ (1.4826·MAD) above the round's median score
MIN_UPDATES = 3  # fewer updates have no meaningful median: nobody is scored
MAD_TO_SIGMA = 1.4826  # MAD × this estimates σ for normally distributed values
DISTANCE_SPAN = 2.0  # D = 1 + span scores 1 (D = 2 scores ½)
NORM_Z_SPAN = 6.0  # z = span scores 1 (z = 3 scores ½)


@dataclass(frozen=True)
class Suspicion:
    """One client's suspicion in one round: the combined `score` in [0, 1], its three parts as
    measured (`distance` D, `cosine`, `norm_z`), and whether it is `flagged` (`flag_rule`)."""

    client_id: int
    score: float
    distance: float
    cosine: float
    norm_z: float
    flagged: bool


def robust_centre(updates: np.ndarray) -> np.ndarray:
    """The coordinate-wise median of an (n, P) stack: (P,) float64, the mean of the two middle
    values when n is even (not the lower one, which would lean towards one side)."""
    if updates.ndim != 2 or updates.shape[0] < 1:
        raise ValueError(f"expected an (n, P) stack of n >= 1 updates; got shape {tuple(updates.shape)}")
    return np.median(updates, axis=0).astype(np.float64)


def _ratio(value: float, scale: float) -> float:
    """value / scale, where a zero scale makes any non-zero value infinitely odd."""
    if scale > 0:
        return value / scale
    return 0.0 if value == 0 else math.inf


def combine(distance: float, cosine: float, norm_z: float) -> float:
    """The one score in [0, 1]: the mean of clip((D − 1)/2), (1 − cos)/2 and clip(z/6)."""
    parts = (
        min(max((distance - 1.0) / DISTANCE_SPAN, 0.0), 1.0),
        min(max((1.0 - cosine) / 2.0, 0.0), 1.0),
        min(max(norm_z / NORM_Z_SPAN, 0.0), 1.0),
    )
    return sum(parts) / len(parts)


def flag_rule(scores: Sequence[float], *, threshold: float = FLAG_THRESHOLD) -> list[bool]:
    """Which of a round's combined scores are flagged: score ≥ threshold, or score ≥ OUTLIER_FLOOR and
    above median + OUTLIER_Z·1.4826·MAD of the round's scores (robust: the attackers, a minority,
    barely move the median or the MAD)."""
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        return []
    centre = float(np.median(values))
    cut = centre + OUTLIER_Z * MAD_TO_SIGMA * float(np.median(np.abs(values - centre)))
    return [bool(v >= threshold or (v >= OUTLIER_FLOOR and v > cut)) for v in values]


def score_updates(updates: np.ndarray, client_ids: Sequence[int], *, threshold: float = FLAG_THRESHOLD) -> list[Suspicion]:
    """One `Suspicion` per row of the (n, P) `updates` (client `client_ids[i]`'s update), or an
    empty list when n < MIN_UPDATES (no robust centre to speak of). Sums in float64; flags by `flag_rule`."""
    if updates.ndim != 2 or updates.shape[0] != len(client_ids):
        raise ValueError(f"expected an (n, P) stack with n = {len(client_ids)} client ids; got {tuple(updates.shape)}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold!r}")
    if len(client_ids) < MIN_UPDATES:
        return []
    centre = robust_centre(updates)  # (P,) float64
    distances, norms, dots = np.empty(len(updates)), np.empty(len(updates)), np.empty(len(updates))  # (n,) each
    for i, row in enumerate(updates):  # one row at a time in float64: no float64 copy of the whole stack
        row = row.astype(np.float64)
        distances[i], norms[i], dots[i] = np.linalg.norm(row - centre), np.linalg.norm(row), row @ centre
    centre_norm = float(np.linalg.norm(centre))
    typical_distance, typical_norm = float(np.median(distances)), float(np.median(norms))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(norms - typical_norm)))
    parts = []
    for i in range(len(client_ids)):
        scale = float(norms[i]) * centre_norm
        cosine = float(dots[i]) / scale if scale > 0 else 0.0
        parts.append((_ratio(float(distances[i]), typical_distance), cosine,
                      _ratio(abs(float(norms[i]) - typical_norm), spread)))  # fmt: skip
    scores = [combine(*part) for part in parts]
    flags = flag_rule(scores, threshold=threshold)
    return [
        Suspicion(int(client), score, *part, flagged)
        for client, score, part, flagged in zip(client_ids, scores, parts, flags, strict=True)
    ]


FlagHistory = dict[int, tuple[int, ...]]  # client → the rounds it was flagged in, ascending


def record_flags(history: Mapping[int, tuple[int, ...]], round_number: int, flagged: Iterable[int]) -> FlagHistory:
    """A new history: `history` with `round_number` added for every client in `flagged`."""
    updated = dict(history)
    for client in flagged:
        updated[client] = (*updated.get(client, ()), round_number)
    return updated


def to_exclude(history: Mapping[int, Sequence[int]], round_number: int, *, flags: int, window: int) -> set[int]:
    """The clients flagged in at least `flags` of the last `window` rounds, this one included
    (rounds round_number − window + 1 … round_number). flags = window = 1: flagged now."""
    if not 1 <= flags <= window:
        raise ValueError(f"need 1 <= flags <= window; got flags={flags}, window={window}")
    first = round_number - window + 1
    return {client for client, rounds in history.items() if sum(first <= r <= round_number for r in rounds) >= flags}


def _scored(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def flag_quality(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Precision and recall of the flags against who really was malicious, over every scored
    (client, round): rows with keys `suspicion` (None/NaN: not scored), `flagged`, `malicious`.
    None when nothing was scored or no scored client was malicious (nothing to catch). Precision
    is None when nothing was flagged (undefined, not 0)."""
    true_pos = false_pos = false_neg = true_neg = 0
    for row in rows:
        if not _scored(row.get("suspicion")):
            continue
        flagged, malicious = bool(row.get("flagged")), bool(row.get("malicious"))
        true_pos += flagged and malicious
        false_pos += flagged and not malicious
        false_neg += malicious and not flagged
        true_neg += not (flagged or malicious)
    if true_pos + false_neg == 0:
        return None
    flags = true_pos + false_pos
    return {
        "precision": true_pos / flags if flags else None, "recall": true_pos / (true_pos + false_neg),
        "true_positives": true_pos, "false_positives": false_pos, "false_negatives": false_neg,
        "true_negatives": true_neg,
    }  # fmt: skip
