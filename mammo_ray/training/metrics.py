"""Validation metrics from predicted class probabilities: scikit-learn's, with the edge cases fixed.

- accuracy: `accuracy_score` of the argmax predictions.
- binary (2 classes): `precision_score` / `recall_score` of class 1 (zero_division=0); AUROC
  (`binary_auroc`, i.e. `roc_auc_score`) of the class-1 probability.
- more classes (BI-RADS): macro `precision_score` / `recall_score` over the classes present in the
  targets or the predictions (sklearn's default label set, zero_division=0); AUROC one-vs-rest, macro
  over the classes that have both positives and negatives in the targets (with every class present
  that is sklearn's ``roc_auc_score(multi_class="ovr", average="macro")``).
- AUROC is NaN when the targets hold a single class (or a probability is NaN).
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score

METRIC_NAMES: tuple[str, ...] = ("accuracy", "auroc", "precision", "recall")


def binary_auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """sklearn's roc_auc_score of `score` for the positives y_true != 0; NaN (never sklearn's ValueError)
    unless both classes are present, or when a score is NaN (a diverged run)."""
    y_true = np.asarray(y_true).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    if y_true.all() or not y_true.any() or np.isnan(score).any():
        return math.nan
    return float(roc_auc_score(y_true, score))


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
    accuracy = float(accuracy_score(y_true, y_pred))
    average = "binary" if k == 2 else "macro"
    precision = precision_score(y_true, y_pred, average=average, zero_division=0)
    recall = recall_score(y_true, y_pred, average=average, zero_division=0)
    if k == 2:
        auroc = binary_auroc(y_true == 1, proba[:, 1])
    else:  # one-vs-rest, macro over the classes it is defined for
        per_class = [binary_auroc(y_true == c, proba[:, c]) for c in range(k)]
        defined = [a for a in per_class if not math.isnan(a)]
        auroc = float(np.mean(defined)) if defined else math.nan
    return {"accuracy": accuracy, "auroc": auroc, "precision": float(precision), "recall": float(recall)}
