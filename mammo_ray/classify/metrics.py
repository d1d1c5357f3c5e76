"""Metrics of a grid cell: scikit-learn's, plus what it lacks (the bootstrap AUC interval, the threshold).

Every scalar metric is `sklearn.metrics`; the wrappers here only fix the edge cases the tables rely on:
NaN for an AUC (`mammo_ray.auc.auc`, shared with `training.metrics`) or a balanced accuracy that is undefined,
precision 0 when nothing is called positive, recall NaN when there are no positives. `auc_rows` is
the one vectorised AUC (thousands of bootstrap resamples at once); it is tested against
`roc_auc_score`.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_score, recall_score, roc_curve

from mammo_ray.classify.stats import percentile_interval

__all__ = ["auc_rows", "balanced_accuracy", "best_threshold", "binary_scores", "bootstrap_auc_interval"]


def _labels(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    return values.astype(np.int64) if values.dtype == bool else values


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """sklearn's balanced accuracy (mean recall over the classes present in y_true); NaN when empty."""
    y_true, y_pred = _labels(y_true), _labels(y_pred)
    if y_true.size == 0:
        return float("nan")
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": those are left out, as meant
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y_true, y_pred))


def binary_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """accuracy, balanced accuracy, precision (0 when nothing is called positive), recall = sensitivity (NaN
    without positives), specificity (NaN without negatives)."""
    y_true = np.asarray(y_true).astype(bool).astype(np.int64)
    y_pred = np.asarray(y_pred).astype(bool).astype(np.int64)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "precision": float(precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, zero_division=np.nan)),
        "specificity": float(recall_score(1 - y_true, 1 - y_pred, zero_division=np.nan)),
    }


def auc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC of every row of (labels, scores), both (B, n), by the rank-sum formula (ties count one half,
    which equals roc_auc_score); NaN where a row lacks a class."""
    ranks = rankdata(scores, axis=1)
    n_pos = labels.sum(axis=1).astype(np.float64)
    n_neg = labels.shape[1] - n_pos
    rank_sum = np.where(labels, ranks, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    values[(n_pos == 0) | (n_neg == 0)] = np.nan
    return values


def bootstrap_auc_interval(
    y_true: np.ndarray, scores: np.ndarray, n_resamples: int = 1000, level: float = 0.95, seed: int = 0,
    chunk: int = 200,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC: resample the held-out rows with replacement.

    Resamples without both classes are dropped. (NaN, NaN) when there are no usable resamples.
    """
    y_true = np.asarray(y_true, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if n_resamples <= 0 or len(y_true) == 0 or y_true.all() or not y_true.any():
        return float("nan"), float("nan")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA0C]))
    values = []
    for start in range(0, n_resamples, chunk):
        count = min(chunk, n_resamples - start)
        index = rng.integers(0, len(y_true), size=(count, len(y_true)))
        values.append(auc_rows(y_true[index], scores[index]))
    return percentile_interval(np.concatenate(values), level)


def best_threshold(y_true: np.ndarray, scores: np.ndarray) -> float:
    """The decision threshold (predict positive when score >= t) maximising balanced accuracy.

    Meant for out-of-fold scores of training data only. The cut is placed halfway between the
    chosen score and the next lower one, so a new score equal to neither falls on a sensible side.
    Ties between cuts go to the one nearest 0 (the classifier's own rule). Falls back to 0.0 when
    the scores cannot separate anything (one class, or all scores equal).
    """
    y_true = np.asarray(y_true, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if y_true.all() or not y_true.any() or np.ptp(scores) == 0:
        return 0.0
    fpr, tpr, cuts = roc_curve(y_true, scores, drop_intermediate=False)
    balanced = (tpr + 1.0 - fpr) / 2.0
    finite = np.isfinite(cuts)
    balanced = np.where(finite, balanced, -np.inf)
    distinct = np.unique(scores)  # ascending
    candidates = np.flatnonzero(balanced >= balanced.max() - 1e-12)
    midpoints = []
    for index in candidates:
        cut = cuts[index]
        lower = distinct[distinct < cut]
        midpoints.append((cut + lower[-1]) / 2.0 if lower.size else cut - 1e-9)
    midpoints = np.asarray(midpoints)
    return float(midpoints[np.argmin(np.abs(midpoints))])
