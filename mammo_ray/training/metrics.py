"""Validation metrics from predicted class probabilities: scikit-learn's, with the edge cases fixed.

- accuracy: `accuracy_score` of the argmax predictions.
- binary (2 classes): `precision_score` / `recall_score` of class 1 (zero_division=0); AUROC
  (`mammo_ray.auc.auc`, i.e. `roc_auc_score`) of the class-1 probability.
- more classes (BI-RADS): macro `precision_score` / `recall_score` over the classes present in the
  targets or the predictions (sklearn's default label set, zero_division=0); AUROC one-vs-rest, macro
  over the classes that have both positives and negatives in the targets (with every class present
  that is sklearn's ``roc_auc_score(multi_class="ovr", average="macro")``).
- AUROC is NaN when the targets hold a single class (or a probability is NaN).
- `metric_intervals`: each metric's percentile interval under resampling patients (a patient's images
  go together).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.metrics import accuracy_score, precision_score, recall_score

from mammo_ray.auc import auc
from mammo_ray.classify.stats import patient_bootstrap_weights, percentile_interval, weighted_auc_rows

METRIC_NAMES: tuple[str, ...] = ("accuracy", "auroc", "precision", "recall")


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
        auroc = auc(y_true == 1, proba[:, 1])
    else:  # one-vs-rest, macro over the classes it is defined for
        per_class = [auc(y_true == c, proba[:, c]) for c in range(k)]
        defined = [a for a in per_class if not math.isnan(a)]
        auroc = float(np.mean(defined)) if defined else math.nan
    return {"accuracy": accuracy, "auroc": auroc, "precision": float(precision), "recall": float(recall)}


def metric_intervals(y_true: np.ndarray, proba: np.ndarray, groups: np.ndarray, n_resamples: int = 1000,
                     level: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Per METRIC_NAMES, the percentile interval of `classification_metrics`' value under a patient-cluster
    bootstrap (a patient's images go together). Each resample weighs an image by how often its patient was
    drawn, which is the metric of the resample's images repeated that often, so every definition above holds
    as is (tested against sklearn on the repeated rows). (NaN, NaN) where a metric is undefined, and for all
    when `n_resamples` is 0."""
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if n_resamples <= 0 or y_true.size == 0:
        return {name: (math.nan, math.nan) for name in METRIC_NAMES}
    weights = patient_bootstrap_weights(groups, n_resamples, seed)
    values = _weighted_metrics(y_true, proba, weights)
    return {name: percentile_interval(values[name], level) for name in METRIC_NAMES}


def _weighted_metrics(y_true: np.ndarray, proba: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """classification_metrics under each row of `weights` (B, n), vectorised over the rows."""
    k = proba.shape[1]
    y_pred = proba.argmax(axis=1)
    total = weights.sum(axis=1)
    out = {"accuracy": weights @ (y_pred == y_true) / total}
    classes = [1] if k == 2 else list(range(k))
    hits = np.stack([weights @ ((y_pred == c) & (y_true == c)) for c in classes])  # (classes, B)
    actual = np.stack([weights @ (y_true == c) for c in classes])
    called = np.stack([weights @ (y_pred == c) for c in classes])
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(called > 0, hits / called, 0.0)  # zero_division=0
        recall = np.where(actual > 0, hits / actual, 0.0)
    present = (actual > 0) | (called > 0)  # sklearn's macro label set: classes in the targets or predictions
    out["precision"] = (precision * present).sum(axis=0) / np.maximum(present.sum(axis=0), 1)
    out["recall"] = (recall * present).sum(axis=0) / np.maximum(present.sum(axis=0), 1)
    if np.isnan(proba).any():
        out["auroc"] = np.full(len(weights), np.nan)
        return out
    aucs = np.stack([weighted_auc_rows(y_true == c, proba[:, c], weights) for c in classes])  # NaN: class absent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample where no class is defined: NaN, skipped
        out["auroc"] = np.nanmean(aucs, axis=0)
    return out
