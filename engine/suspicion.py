"""Catching Byzantine clients: a suspicion score per client per round from what the server sees.

Pure numpy functions over the round's (n, P) stack of updates (each client's new weights − the
global weights); no I/O, no state, no torch (the page imports `flag_quality`). The round loop
keeps the histories (`RunState.flagged_rounds`: which clients were flagged in which rounds;
`RunState.directions`: each client's running relative direction, below) and
asks `to_exclude` who is left out of the aggregate under `federation.exclusion = "flagged"`.

    scores = score_updates(np.stack(updates), client_ids=[3, 7, 9, 12],   # (n, P) → n scores
                           history=directions, segments=[784 * 200, 200, ...])  # h per client; layer sizes
    directions = record_directions(directions, scores)
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

History over rounds (pass `history`): label flipping on non-IID data is a mild outlier in any one
round, as are honest clients with skewed labels; what sets it apart is that it keeps pulling
elsewhere, more so as the global model learns what it unlearns. So each round also measures a
client's relative direction, its layer-wise cosine to the centre over the round's median one,

    ρ_i = clip(cos̄_i / median_j cos̄_j, 0, 1),   cos̄_i = Σ_l (P_l/P)·cos(u_i[l], c[l])   (l: layers)

(per layer, so the few large last-layer values do not drown the first layer's direction), and keeps
its running mean h_i ← ½·h_i + ½·ρ_i (h_i = ρ_i the first time it is scored). The history part
1 − h_i reaches ½ when a client has pointed, on recent average, half as much along the centre as the
typical client; the score is then the larger of the round's own and the history's, and a history
part ≥ FLAG_THRESHOLD flags. A round outlier (`flag_rule`'s second clause) is then flagged only while
h < OUTLIER_HISTORY: one that points along the centre round after round is an honest client with more
or fewer examples than most, which is what every clean non-IID false flag measured was. Measured on
MNIST MLP, Dirichlet α = 0.5, 20 clients, 5 rounds: honest clients keep h ≥ 0.62 in clean runs; label
flippers fall below 0.5 within 2 (60k examples) to 5 (6k) rounds (bench/byzantine.py).
The round loop keeps h per client in `RunState.directions` (so a resumed run scores alike).
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
OUTLIER_HISTORY = 0.9  # with a history, a round outlier is flagged only when its h is below this
HISTORY_DECAY = 0.5  # h ← decay·h + (1 − decay)·ρ: a round's weight halves with each later round


@dataclass(frozen=True)
class Suspicion:
    """One client's suspicion in one round: the `score` in [0, 1], the round's three parts as
    measured (`distance` D, `cosine`, `norm_z`), whether it is `flagged`, and with a history the
    relative direction ρ this round (`direction`) and the running mean h after it (`history`; None
    without a history)."""

    client_id: int
    score: float
    distance: float
    cosine: float
    norm_z: float
    flagged: bool
    direction: float | None = None
    history: float | None = None


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


def score_updates(
    updates: np.ndarray, client_ids: Sequence[int], *, threshold: float = FLAG_THRESHOLD,
    history: Mapping[int, float] | None = None, segments: Sequence[int] | None = None,
) -> list[Suspicion]:  # fmt: skip
    """One `Suspicion` per row of the (n, P) `updates` (client `client_ids[i]`'s update), or an
    empty list when n < MIN_UPDATES (no robust centre to speak of). Sums in float64; flags by `flag_rule`.

    `history` (client → h before this round; absent: first time scored) turns on the history part;
    each `Suspicion.history` is then the client's h to keep for the next round. `segments` are the
    layers' sizes in flat order (summing to P; None: one layer) for the layer-wise cosine."""
    if updates.ndim != 2 or updates.shape[0] != len(client_ids):
        raise ValueError(f"expected an (n, P) stack with n = {len(client_ids)} client ids; got {tuple(updates.shape)}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold!r}")
    if len(client_ids) < MIN_UPDATES:
        return []
    sizes = np.asarray(segments if segments is not None else [updates.shape[1]], dtype=np.int64)
    if sizes.ndim != 1 or (sizes < 1).any() or int(sizes.sum()) != updates.shape[1]:
        raise ValueError(f"segments must be positive sizes summing to P = {updates.shape[1]}")
    centre = robust_centre(updates)  # (P,) float64
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # (L,) first index of each layer
    centre_layers = np.sqrt(np.add.reduceat(centre * centre, starts))  # (L,) the centre's norm per layer
    n = len(updates)
    distances, norms, dots, layered = np.empty(n), np.empty(n), np.empty(n), np.empty(n)  # (n,) each
    for i, row in enumerate(updates):  # one row at a time in float64: no float64 copy of the whole stack
        row = row.astype(np.float64)
        distances[i], norms[i], dots[i] = np.linalg.norm(row - centre), np.linalg.norm(row), row @ centre
        layered[i] = _layer_cosine(np.add.reduceat(row * centre, starts), np.sqrt(np.add.reduceat(row * row, starts)),
                                   centre_layers, sizes)  # fmt: skip
    centre_norm = float(np.linalg.norm(centre))
    typical_distance, typical_norm = float(np.median(distances)), float(np.median(norms))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(norms - typical_norm)))
    parts = []
    for i in range(n):
        scale = float(norms[i]) * centre_norm
        cosine = float(dots[i]) / scale if scale > 0 else 0.0
        parts.append((_ratio(float(distances[i]), typical_distance), cosine,
                      _ratio(abs(float(norms[i]) - typical_norm), spread)))  # fmt: skip
    scores = [combine(*part) for part in parts]
    flags = flag_rule(scores, threshold=threshold)
    if history is None:
        return [
            Suspicion(int(c), sc, *part, flag)
            for c, sc, part, flag in zip(client_ids, scores, parts, flags, strict=True)
        ]
    directions = relative_directions(layered)
    remembered = [remember(history.get(int(c)), rho) for c, rho in zip(client_ids, directions, strict=True)]
    return [
        Suspicion(int(c), max(sc, 1.0 - h), *part, _flag_with_history(sc, flag, h, threshold), rho, h)
        for c, sc, part, flag, rho, h in zip(client_ids, scores, parts, flags, directions, remembered, strict=True)
    ]


def _flag_with_history(score: float, flagged: bool, history: float, threshold: float) -> bool:
    """Flagged with a history: the round's score at the threshold, the history part 1 − h at it, or a
    round outlier (`flag_rule`) whose direction is not that of a typical client (h < OUTLIER_HISTORY)."""
    return score >= threshold or 1.0 - history >= threshold or (flagged and history < OUTLIER_HISTORY)


def _layer_cosine(dots: np.ndarray, norms: np.ndarray, centre_norms: np.ndarray, sizes: np.ndarray) -> float:
    """The size-weighted mean over layers of cos(u[l], c[l]) from the (L,) per-layer dot products and
    norms; layers where the centre does not move carry no direction and are left out (0 if all are)."""
    moving = centre_norms > 0
    if not moving.any():
        return 0.0
    scale = norms[moving] * centre_norms[moving]
    cosines = np.divide(dots[moving], scale, out=np.zeros_like(scale), where=scale > 0)
    return float(np.average(cosines, weights=sizes[moving]))


def relative_directions(cosines: Sequence[float]) -> list[float]:
    """ρ_i = clip(cos_i / median_j cos_j, 0, 1) for a round's layer-wise cosines: 1 for a client
    pointing along the centre at least as much as the typical one, 0 for one pointing away. A
    round whose median cosine is ≤ 0 has no common direction to compare with: every ρ is 1."""
    values = np.asarray(cosines, dtype=np.float64)
    typical = float(np.median(values)) if values.size else 0.0
    if typical <= 0:
        return [1.0] * values.size
    return [float(v) for v in np.clip(values / typical, 0.0, 1.0)]


def remember(previous: float | None, direction: float, *, decay: float = HISTORY_DECAY) -> float:
    """The running mean after a round: h = decay·previous + (1 − decay)·direction, or `direction`
    the first time (previous None). Stays in [0, 1] when both are."""
    if previous is None:
        return float(direction)
    return decay * float(previous) + (1.0 - decay) * float(direction)


FlagHistory = dict[int, tuple[int, ...]]  # client → the rounds it was flagged in, ascending
DirectionHistory = dict[int, float]  # client → h, the running mean of its relative direction ρ


def record_directions(history: Mapping[int, float], scores: Iterable[Suspicion]) -> DirectionHistory:
    """A new history: `history` with each scored client's h after this round (`Suspicion.history`);
    clients not scored this round keep theirs."""
    updated = dict(history)
    updated.update({s.client_id: s.history for s in scores if s.history is not None})
    return updated


def leading_sizes(sizes: Sequence[int], total: int) -> list[int]:
    """The first layers' sizes that cover exactly the first `total` values of the flat vector (FedPer
    scores the shared body only, without the head's trailing layers). ValueError if no prefix does."""
    covered, kept = 0, []
    for size in sizes:
        if covered == total:
            break
        covered += int(size)
        kept.append(int(size))
    if covered != total:
        raise ValueError(f"no leading layers cover exactly {total} values (sizes {list(sizes)})")
    return kept


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
