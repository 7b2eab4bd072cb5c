"""Rubric metrics (NGSS.md, "Metrics"): per-label accuracy, exact match, score MAE, micro- and
macro-F1, overall and per school; −1 (unscored) entries are left out of every metric."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# ----------------------------------------------------------------------------- metrics


def predictions_from_probabilities(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(N, K) int8 0/1 predictions: 1 where the sigmoid probability is >= `threshold`."""
    probabilities = np.asarray(probabilities, dtype=float)
    if np.any((probabilities < 0) | (probabilities > 1)) or np.any(np.isnan(probabilities)):
        raise ValueError("probabilities must lie in [0, 1]")
    return (probabilities >= threshold).astype(np.int8)


def _f1(tp: int, fp: int, fn: int) -> float:
    """F1 = 2TP / (2TP + FP + FN); 0.0 when that is 0/0 (no positives predicted or true), as
    scikit-learn's `zero_division=0`."""
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def _metrics(predictions: np.ndarray, labels: np.ndarray) -> dict:
    scored = labels != -1  # (N, K)
    correct = (predictions == labels) & scored
    scored_per_label = scored.sum(axis=0)
    positive, predicted = (labels == 1) & scored, (predictions == 1) & scored
    tp = (positive & predicted).sum(axis=0)
    fp = (predicted & ~positive).sum(axis=0)
    fn = (positive & ~predicted).sum(axis=0)
    has_data = scored_per_label > 0
    label_accuracy = [float(c / n) if n else None for c, n in zip(correct.sum(axis=0), scored_per_label)]
    label_f1 = [_f1(int(t), int(p), int(n)) if d else None for t, p, n, d in zip(tp, fp, fn, has_data)]
    rows = scored.any(axis=1)  # rows with at least one scored element
    row_correct = np.all(correct | ~scored, axis=1)[rows]
    score_error = np.abs((predictions * scored).sum(axis=1) - (labels * scored).sum(axis=1))[rows]
    scored_accuracies = [a for a in label_accuracy if a is not None]
    scored_f1 = [f for f in label_f1 if f is not None]
    return {
        "per_label_accuracy": float(np.mean(scored_accuracies)) if scored_accuracies else None,
        "label_accuracy": label_accuracy,
        "entry_accuracy": float(correct.sum() / scored.sum()) if scored.any() else None,
        "exact_match": float(row_correct.mean()) if rows.any() else None,
        "score_mae": float(score_error.mean()) if rows.any() else None,
        "micro_f1": _f1(int(tp.sum()), int(fp.sum()), int(fn.sum())) if scored.any() else None,
        "macro_f1": float(np.mean(scored_f1)) if scored_f1 else None,
        "label_f1": label_f1,
        "num_examples": int(len(labels)),
        "num_scored": int(scored.sum()),
    }


def rubric_metrics(
    predictions: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    group_names: Sequence[str] | Mapping[int, str] | None = None,
) -> dict:
    """Rubric metrics of (N, K) 0/1 `predictions` against (N, K) `labels` in {0, 1, -1}.

    Entries labelled -1 (unscored) are left out of every metric. Definitions:
    - `label_accuracy[k]`: fraction of label k's scored entries predicted right (None if it has none);
    - `per_label_accuracy`: mean of `label_accuracy` over labels with scored entries
      (the paper's "accuracy"); `entry_accuracy`: fraction of all scored entries right
      (the two differ when labels have different numbers of scored entries);
    - `exact_match` ("rubric match"): fraction of rows, among rows with a scored entry,
      whose scored entries are all right;
    - `score_mae`: mean absolute difference of the total score (sum of scored elements),
      predicted vs true, over the same rows;
    - `micro_f1`: F1 of all scored entries pooled; `label_f1[k]`: F1 of label k; `macro_f1`:
      their mean over labels with scored entries. F1 is 0.0 where it is 0/0 (no true and no
      predicted positives), as scikit-learn's `zero_division=0`;
    - `num_examples`: rows; `num_scored`: scored entries.
    With `groups` ((N,) school index per row), `per_group` maps each group's name
    (`group_names[g]`, else `str(g)`) to the same metrics on its rows. Plain floats, ints,
    lists and None: JSON-able as is.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.ndim != 2 or predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must be the same (N, K) shape")
    if not np.isin(predictions, (0, 1)).all():
        raise ValueError("predictions must be 0 or 1 (threshold probabilities first)")
    if not np.isin(labels, (-1, 0, 1)).all():
        raise ValueError("labels must be 0, 1 or -1 (unscored)")
    predictions, labels = predictions.astype(np.int64), labels.astype(np.int64)
    result = _metrics(predictions, labels)
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (len(labels),):
            raise ValueError(f"groups must have shape ({len(labels)},), got {groups.shape}")
        result["per_group"] = {
            str(group_names[group] if group_names is not None else group): _metrics(
                predictions[groups == group], labels[groups == group]
            )
            for group in np.unique(groups).tolist()
        }
    return result
