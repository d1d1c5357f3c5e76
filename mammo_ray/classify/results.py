"""A cell's numbers from its scores: what the protocols write into a CellResult once every fit has scored.

Pure functions of scores, labels and the config (nothing is fitted here but the bootstrap resamples): the
held-out evaluation (`finish_holdout`: the paper protocol and leak_free holdout), the out-of-fold one
(`finish_oof`, and `fill_out_of_fold`, which the nested selection's row shares) and the breast and exam
levels. Each fills the result it is given in place.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import brier_score_loss

from mammo_ray.auc import auc
from mammo_ray.classify.data import CellResult, GridData
from mammo_ray.classify.levels import level_auc
from mammo_ray.classify.metrics import binary_scores, bootstrap_auc_interval
from mammo_ray.classify.stats import patient_bootstrap_auc
from mammo_ray.config.grid import GridConfig


def finish_holdout(result: CellResult, fold_scores: list[float], test_rows: np.ndarray, y_test: np.ndarray,
                   test_scores: np.ndarray, threshold: float | None, config: GridConfig,
                   test_groups: np.ndarray | None = None) -> CellResult:
    """Fill the CV and held-out numbers. threshold None: the classifier's own rule (score > 0). The AUC
    interval resamples the test rows' patients when `test_groups` are given, else the rows (the paper's
    test rows include synthetic SMOTE rows, which belong to no patient)."""
    result.test_rows = [int(row) for row in test_rows]
    result.test_targets = [int(target) for target in y_test]
    result.test_scores = [float(score) for score in test_scores]
    result.cv_fold_scores = [float(s) for s in fold_scores]
    if fold_scores:  # none in the permutation control's reruns
        result.cv_balanced_accuracy_mean = float(np.mean(fold_scores))
        result.cv_balanced_accuracy_std = float(np.std(fold_scores))
    predicted = test_scores > 0 if threshold is None else test_scores >= threshold
    result.threshold = 0.0 if threshold is None else float(threshold)
    held_out = binary_scores(y_test, predicted)
    result.accuracy = held_out["accuracy"]
    result.balanced_accuracy = held_out["balanced_accuracy"]
    result.precision = held_out["precision"]
    result.recall = held_out["recall"]
    result.specificity = held_out["specificity"]
    result.auc = auc(y_test, test_scores)
    result.first_repeat_auc = result.auc
    if test_groups is None:
        result.auc_ci_low, result.auc_ci_high = bootstrap_auc_interval(
            y_test, test_scores, config.bootstrap, config.ci_level, seed=config.seed)
        result.interval = "image bootstrap"
    else:
        result.auc_ci_low, result.auc_ci_high = patient_bootstrap_auc(
            y_test, test_scores, test_groups, config.bootstrap, config.ci_level, seed=config.seed)
        result.interval = "patient bootstrap"
    return result


def finish_oof(result: CellResult, oof: np.ndarray, called: np.ndarray, probability: np.ndarray,
               fold_scores: list[float], cuts: list[float], n_kept: list[int], data: GridData,
               config: GridConfig) -> None:
    """The numbers of an out-of-fold cell: per repeat over all images, then the mean over repeats; the AUC
    interval resamples patients (each resample averages the repeats)."""
    result.n_features = int(np.median(n_kept))
    result.threshold = float(np.median(cuts))
    result.cv_fold_scores = [float(s) for s in fold_scores]
    result.cv_balanced_accuracy_mean = float(np.mean(fold_scores))
    result.cv_balanced_accuracy_std = float(np.std(fold_scores))
    fill_out_of_fold(result, data, oof, called, config)
    if np.isfinite(probability).all():
        result.brier = float(np.mean([brier_score_loss(data.y, p) for p in probability]))
        result.test_probabilities = [float(p) for p in probability.ravel()]


def fill_out_of_fold(result: CellResult, data: GridData, oof: np.ndarray, called: np.ndarray,
                     config: GridConfig) -> None:
    """The numbers every out-of-fold row has, from its scores (R, n) and calls (R, n): metrics per repeat over
    all images, then their mean; the AUC interval resamples patients (each resample averages the repeats);
    breast/exam level and the per-image rows."""
    y = data.y
    repeats, n = oof.shape
    result.evaluation, result.oof_repeats, result.n_test = "oof", repeats, n
    result.n_train = int(round(n * (1.0 - 1.0 / config.oof.folds)))
    per_repeat = [binary_scores(y, predicted) for predicted in called]
    for name in ("accuracy", "balanced_accuracy", "precision", "recall", "specificity"):
        setattr(result, name, float(np.nanmean([scores[name] for scores in per_repeat])))
    aucs = [auc(y, scores) for scores in oof]
    result.auc, result.first_repeat_auc = float(np.mean(aucs)), float(aucs[0])
    result.auc_ci_low, result.auc_ci_high = patient_bootstrap_auc(
        y, oof, data.groups, config.bootstrap, config.ci_level, seed=config.seed)
    result.interval = "patient bootstrap"
    fill_levels(result, data, oof, config)
    result.test_rows = [int(row) for row in np.tile(np.arange(n), repeats)]
    result.test_repeats = [int(r) for r in np.repeat(np.arange(repeats), n)]
    result.test_targets = [int(target) for target in np.tile(y, repeats)]
    result.test_scores = [float(score) for score in oof.ravel()]


def fill_levels(result: CellResult, data: GridData, scores: np.ndarray, config: GridConfig) -> None:
    """Breast- and exam-level AUCs of out-of-fold `scores` (R, n), when the data names breasts and exams."""
    if not data.breasts:
        return
    breast = level_auc(data.breasts, data.y, scores, data.groups, "mean", config.bootstrap, config.ci_level,
                       config.seed)
    exam = level_auc(data.exams, data.y, scores, data.groups, "max", 0, config.ci_level, config.seed,
                     from_breasts=data.breasts)
    result.n_breasts, result.auc_breast = breast.units, breast.auc
    result.auc_breast_ci_low, result.auc_breast_ci_high = breast.ci_low, breast.ci_high
    result.n_exams, result.auc_exam = exam.units, exam.auc


__all__ = ["fill_levels", "fill_out_of_fold", "finish_holdout", "finish_oof"]
