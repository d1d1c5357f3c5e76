"""Statistics a reviewer accepts: intervals that resample patients, paired comparisons, a permutation null.

Images of one patient are not independent (two views of a breast, two breasts of a woman), so every
interval here resamples *patients* with replacement (a patient-cluster bootstrap) and every
comparison of two score sets is paired on the same images:

- `weighted_auc_rows`: the AUC of many weightings of one (labels, scores) at once; a bootstrap
  resample is a weighting (how often each row's patient was drawn), so no resampled copies are built.
- `patient_bootstrap_weights`, `patient_bootstrap_auc`, `patient_bootstrap_auc_difference`.
- `delong_test`: the paired DeLong test of two correlated AUCs (DeLong, DeLong & Clarke-Pearson 1988,
  in the midrank form of Sun & Xu 2014).
- `holm`: Holm's step-down adjustment of p-values for the comparisons made.
- `permute_labels_by_patient`: a label permutation that keeps each patient's images together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

__all__ = [
    "DeLongResult", "delong_test", "holm", "patient_bootstrap_auc", "patient_bootstrap_auc_difference",
    "patient_bootstrap_weights", "percentile_interval", "permutation_p_value", "permute_labels_by_patient",
    "weighted_auc_rows",
]


def weighted_auc_rows(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of (labels, scores) under each row of `weights` (B, n): sum over positive-negative pairs of
    w_i w_j ([s_i > s_j] + [s_i = s_j] / 2) / (W_pos W_neg); integer weights give the AUC of the data with
    each row repeated that often. NaN where a weighting leaves a class empty."""
    labels = np.asarray(labels, dtype=bool)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    levels, inverse = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True)
    one_hot = np.zeros((labels.size, levels.size))
    one_hot[np.arange(labels.size), inverse] = 1.0
    negative = (weights * ~labels) @ one_hot  # (B, levels): negative weight at each distinct score
    below = np.cumsum(negative, axis=1) - negative  # negative weight strictly below each level
    credit = below + negative / 2.0  # ties count one half
    positive = weights * labels
    n_pos, n_neg = positive.sum(axis=1), negative.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (positive * credit[:, inverse]).sum(axis=1) / (n_pos * n_neg)
    values[(n_pos == 0) | (n_neg == 0)] = np.nan
    return values


def patient_bootstrap_weights(groups: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) row weights: each resample draws as many patients as there are, with replacement,
    and a row weighs as often as its patient was drawn."""
    codes = np.unique(np.asarray(groups), return_inverse=True)[1]
    n_patients = int(codes.max()) + 1 if codes.size else 0
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB007]))
    drawn = rng.integers(0, n_patients, size=(n_resamples, n_patients))
    counts = np.zeros((n_resamples, n_patients))
    np.add.at(counts, (np.arange(n_resamples)[:, None], drawn), 1.0)
    return counts[:, codes]


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` percentile interval of the finite `values`; (NaN, NaN) when there are none."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def _mean_auc(labels: np.ndarray, score_sets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per weighting, the mean AUC over the score sets (R, n): repeats of an out-of-fold evaluation."""
    return np.mean([weighted_auc_rows(labels, scores, weights) for scores in score_sets], axis=0)


def patient_bootstrap_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, n_resamples: int = 1000,
                          level: float = 0.95, seed: int = 0, chunk: int = 250) -> tuple[float, float]:
    """Percentile interval of the AUC under resampling patients. `scores` (n,) or (R, n): R out-of-fold
    repeats, whose AUCs are averaged within each resample. (NaN, NaN) without usable resamples."""
    labels = np.asarray(labels, dtype=bool)
    score_sets = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if n_resamples <= 0 or labels.all() or not labels.any():
        return float("nan"), float("nan")
    weights = patient_bootstrap_weights(groups, n_resamples, seed)
    values = np.concatenate([_mean_auc(labels, score_sets, weights[start:start + chunk])
                             for start in range(0, n_resamples, chunk)])
    return percentile_interval(values, level)


def patient_bootstrap_auc_difference(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray,
                                     groups: np.ndarray, n_resamples: int = 1000, level: float = 0.95,
                                     seed: int = 0, chunk: int = 250) -> tuple[float, float]:
    """Percentile interval of AUC(a) - AUC(b), paired: both score sets under the same resampled patients."""
    labels = np.asarray(labels, dtype=bool)
    a = np.atleast_2d(np.asarray(scores_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(scores_b, dtype=np.float64))
    if n_resamples <= 0 or labels.all() or not labels.any():
        return float("nan"), float("nan")
    weights = patient_bootstrap_weights(groups, n_resamples, seed)
    values = np.concatenate([
        _mean_auc(labels, a, weights[start:start + chunk]) - _mean_auc(labels, b, weights[start:start + chunk])
        for start in range(0, n_resamples, chunk)])
    return percentile_interval(values, level)


@dataclass(frozen=True)
class DeLongResult:
    """Two correlated AUCs on the same images, their difference, its standard error and two-sided p."""

    auc_a: float
    auc_b: float
    difference: float
    standard_error: float
    z: float
    p_value: float


def _placements(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components by midranks: for each positive, the share of negatives it outscores
    (V10); for each negative, the share of positives that outscore it (V01); ties count one half."""
    positives, negatives = scores[labels], scores[~labels]
    rank_all = rankdata(scores)
    v10 = (rank_all[labels] - rankdata(positives)) / negatives.size
    v01 = 1.0 - (rank_all[~labels] - rankdata(negatives)) / positives.size
    return v10, v01


def delong_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> DeLongResult:
    """The paired DeLong test of H0: AUC(a) = AUC(b), both scored on the same images."""
    labels = np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        raise ValueError("DeLong needs both classes among the labels")
    v10_a, v01_a = _placements(labels, np.asarray(scores_a, dtype=np.float64))
    v10_b, v01_b = _placements(labels, np.asarray(scores_b, dtype=np.float64))
    auc_a, auc_b = float(v10_a.mean()), float(v10_b.mean())
    s10 = np.cov(np.vstack([v10_a, v10_b]))
    s01 = np.cov(np.vstack([v01_a, v01_b]))
    covariance = s10 / v10_a.size + s01 / v01_a.size
    variance = float(covariance[0, 0] + covariance[1, 1] - 2.0 * covariance[0, 1])
    difference = auc_a - auc_b
    if variance <= 0.0:  # identical scores, or perfect separation by both: nothing to test
        return DeLongResult(auc_a, auc_b, difference, 0.0, 0.0 if difference == 0 else np.inf,
                            1.0 if difference == 0 else 0.0)
    error = float(np.sqrt(variance))
    z = difference / error
    return DeLongResult(auc_a, auc_b, difference, error, float(z), float(2.0 * norm.sf(abs(z))))


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), in the order given; NaN stays NaN."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    running = 0.0
    for position, index in enumerate(order):
        running = max(running, min(1.0, (m - position) * p[index]))
        adjusted[index] = running
    return adjusted


def permute_labels_by_patient(labels: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels permuted between patients, each patient's images kept together: the label blocks of
    patients with the same number of images are shuffled among them, so the class counts and the
    within-patient structure stay and only the link between a patient's images and labels goes."""
    labels = np.asarray(labels)
    codes = np.unique(np.asarray(groups), return_inverse=True)[1]
    rows_of = [np.flatnonzero(codes == code) for code in range(int(codes.max()) + 1)] if codes.size else []
    permuted = labels.copy()
    by_size: dict[int, list[np.ndarray]] = {}
    for rows in rows_of:
        by_size.setdefault(rows.size, []).append(rows)
    for patients in by_size.values():
        for rows, source in zip(patients, rng.permutation(len(patients)), strict=True):
            permuted[rows] = labels[patients[source]]
    return permuted


def permutation_p_value(observed: float, null: np.ndarray) -> float:
    """One-sided p of `observed` against a permutation null: (1 + #null >= observed) / (1 + #null)."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if not np.isfinite(observed) or null.size == 0:
        return float("nan")
    return float((1 + np.sum(null >= observed)) / (1 + null.size))
