"""Validation metrics from predicted class probabilities, without sklearn (tested against it).

- accuracy: share of argmax predictions equal to the target.
- binary (2 classes): precision and recall of class 1 (0 when undefined, like sklearn's
  zero_division=0); AUROC of the class-1 probability.
- more classes (BI-RADS): macro precision / recall over the classes present in the targets or the
  predictions (sklearn's default label set, zero_division=0); AUROC one-vs-rest, macro over the
  classes that have both positives and negatives in the targets (with every class present that is
  sklearn's ``roc_auc_score(multi_class="ovr", average="macro")``).
- AUROC is the Mann-Whitney statistic with average ranks for ties, which equals the area under the
  trapezoidal ROC curve; NaN when the targets hold a single class.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

METRIC_NAMES: tuple[str, ...] = ("accuracy", "auroc", "precision", "recall")


def binary_auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of `score` for the positives y_true == 1; NaN if one class only."""
    y_true = np.asarray(y_true).astype(bool)
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(np.asarray(score, dtype=np.float64))
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _precision_recall(y_true: np.ndarray, y_pred: np.ndarray, label: int) -> tuple[float, float]:
    true_positive = int(np.sum((y_pred == label) & (y_true == label)))
    predicted = int(np.sum(y_pred == label))
    actual = int(np.sum(y_true == label))
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / actual if actual else 0.0
    return precision, recall


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """accuracy, auroc, precision, recall of probabilities `proba` (n, k) against targets in [0, k)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[0] != y_true.shape[0]:
        raise ValueError(
            f"expected probabilities of shape (n, k) with n = {y_true.shape[0]}, got {proba.shape}"
        )
    k = proba.shape[1]
    if k < 2:
        raise ValueError("need at least 2 classes")
    if y_true.size == 0:
        return {name: math.nan for name in METRIC_NAMES}
    if y_true.min() < 0 or y_true.max() >= k:
        raise ValueError(f"targets must lie in [0, {k}), got {sorted(set(y_true.tolist()))}")
    y_pred = proba.argmax(axis=1)
    accuracy = float(np.mean(y_pred == y_true))
    if k == 2:
        precision, recall = _precision_recall(y_true, y_pred, 1)
        auroc = binary_auroc(y_true == 1, proba[:, 1])
    else:
        labels = np.union1d(y_true, y_pred)
        pairs = [_precision_recall(y_true, y_pred, int(label)) for label in labels]
        precision = float(np.mean([p for p, _ in pairs]))
        recall = float(np.mean([r for _, r in pairs]))
        per_class = [binary_auroc(y_true == c, proba[:, c]) for c in range(k)]
        defined = [a for a in per_class if not math.isnan(a)]
        auroc = float(np.mean(defined)) if defined else math.nan
    return {"accuracy": accuracy, "auroc": auroc, "precision": float(precision), "recall": float(recall)}
