"""The statistics of the study: patient-cluster bootstrap, DeLong, Holm, the patient-block permutation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mammo_ray.classify.stats import (
    delong_test,
    holm,
    patient_bootstrap_auc,
    patient_bootstrap_auc_difference,
    patient_bootstrap_weights,
    permutation_p_value,
    permute_labels_by_patient,
    weighted_auc_rows,
)


def _pairwise_delong(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong 1988 written out from its definition: the kernel psi over every positive-negative pair,
    structural components as row and column means, the 2x2 covariance of the two AUCs."""
    components = []
    for scores in (a, b):
        pos, neg = scores[labels][:, None], scores[~labels][None, :]
        psi = (pos > neg) + 0.5 * (pos == neg)
        components.append((psi.mean(axis=1), psi.mean(axis=0)))
    m, n = labels.sum(), (~labels).sum()
    s10 = np.array([[np.sum((x - x.mean()) * (y - y.mean())) / (m - 1) for y, _ in components] for x, _ in components])
    s01 = np.array([[np.sum((x - x.mean()) * (y - y.mean())) / (n - 1) for _, y in components] for _, x in components])
    cov = s10 / m + s01 / n
    return components[0][0].mean() - components[1][0].mean(), float(np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]))


def test_delong_matches_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(80) < 0.3
    a = np.round(labels + rng.normal(0, 1.0, 80), 1)  # rounded: many ties
    b = np.round(0.5 * labels + rng.normal(0, 1.0, 80), 1)
    result = delong_test(labels, a, b)
    difference, error = _pairwise_delong(labels, a, b)
    assert result.auc_a == pytest.approx(roc_auc_score(labels, a), abs=1e-12)
    assert result.auc_b == pytest.approx(roc_auc_score(labels, b), abs=1e-12)
    assert result.difference == pytest.approx(difference, abs=1e-12)
    assert result.standard_error == pytest.approx(error, rel=1e-10)
    assert 0.0 < result.p_value < 1.0


def test_delong_identical_scores_and_a_clear_difference() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(60, bool), np.zeros(140, bool)]
    good = labels * 2.0 + rng.normal(0, 1, 200)
    noise = rng.normal(0, 1, 200)
    assert delong_test(labels, good, good).p_value == 1.0
    clear = delong_test(labels, good, noise)
    assert clear.difference > 0.3 and clear.p_value < 1e-6
    with pytest.raises(ValueError, match="both classes"):
        delong_test(np.ones(5, bool), good[:5], noise[:5])


def test_weighted_auc_equals_repeated_rows() -> None:
    rng = np.random.default_rng(1)
    labels = rng.random(50) < 0.4
    scores = np.round(rng.normal(size=50), 1)
    weights = rng.integers(0, 4, size=(6, 50))
    got = weighted_auc_rows(labels, scores, weights)
    for row, value in zip(weights, got, strict=True):
        repeated = np.repeat(np.arange(50), row)
        assert value == pytest.approx(roc_auc_score(labels[repeated], scores[repeated]), abs=1e-12)
    assert np.isnan(weighted_auc_rows(labels, scores, (~labels).astype(float))[0])  # no positives left


def test_patient_bootstrap_draws_whole_patients() -> None:
    groups = np.repeat(np.arange(30), 4)  # 30 patients, 4 images each
    weights = patient_bootstrap_weights(groups, 200, seed=0)
    assert weights.shape == (200, 120)
    per_patient = weights.reshape(200, 30, 4)
    assert (per_patient == per_patient[:, :, :1]).all()  # a patient's images weigh the same
    assert (weights.sum(axis=1) == 120).all()  # as many patients drawn as there are
    assert np.array_equal(weights, patient_bootstrap_weights(groups, 200, seed=0))


def test_patient_interval_is_wider_than_the_image_interval_when_images_cluster() -> None:
    """Four near-copies per patient: resampling images pretends 4x the data; resampling patients does not."""
    rng = np.random.default_rng(2)
    patient_label = rng.random(40) < 0.4
    patient_score = patient_label * 0.8 + rng.normal(0, 1, 40)
    labels = np.repeat(patient_label, 4)
    scores = np.repeat(patient_score, 4) + rng.normal(0, 0.01, 160)
    groups = np.repeat(np.arange(40), 4)
    by_patient = patient_bootstrap_auc(labels, scores, groups, 1000, seed=0)
    by_image = patient_bootstrap_auc(labels, scores, np.arange(160), 1000, seed=0)
    assert by_patient[0] < roc_auc_score(labels, scores) < by_patient[1]
    assert (by_patient[1] - by_patient[0]) > 1.5 * (by_image[1] - by_image[0])


def test_paired_difference_interval() -> None:
    rng = np.random.default_rng(4)
    labels = rng.random(300) < 0.3
    shared = rng.normal(0, 1, 300)
    a = labels * 1.5 + shared
    b = labels * 0.5 + shared
    low, high = patient_bootstrap_auc_difference(labels, a, b, np.arange(300) // 3, 500, seed=1)
    assert 0.0 < low < roc_auc_score(labels, a) - roc_auc_score(labels, b) < high
    low, high = patient_bootstrap_auc_difference(labels, a, a, np.arange(300) // 3, 200, seed=1)
    assert low == high == 0.0
    # Repeats (R, n) average within each resample.
    stacked = patient_bootstrap_auc(labels, np.vstack([a, a]), np.arange(300), 300, seed=5)
    assert stacked == patient_bootstrap_auc(labels, a, np.arange(300), 300, seed=5)


def test_holm_against_hand_computed_values() -> None:
    # sorted 0.01, 0.02, 0.03, 0.5 -> 4*0.01, 3*0.02, max(0.06, 2*0.03), max(0.06, 0.5)
    adjusted = holm(np.array([0.03, 0.5, 0.01, 0.02]))
    assert np.allclose(adjusted, [0.06, 0.5, 0.04, 0.06])
    assert np.allclose(holm(np.array([0.4, 0.9])), [0.8, 0.9])
    assert np.isnan(holm(np.array([np.nan, 0.01])))[0] and holm(np.array([np.nan, 0.01]))[1] == 0.01


def test_permutation_keeps_patients_together() -> None:
    groups = np.array([0, 0, 1, 1, 2, 3, 3, 4, 5, 5, 5, 6, 6, 6])
    labels = np.array([1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0])
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        permuted = permute_labels_by_patient(labels, groups, rng)
        assert permuted.sum() == labels.sum()
        for size in (1, 2, 3):  # each patient gets the label block of a patient with as many images
            patients = [g for g in np.unique(groups) if (groups == g).sum() == size]
            original = sorted(tuple(labels[groups == g]) for g in patients)
            assert sorted(tuple(permuted[groups == g]) for g in patients) == original
        seen.add(tuple(permuted))
    assert len(seen) > 1


def test_permutation_p_value() -> None:
    assert permutation_p_value(0.9, np.array([0.5, 0.6, 0.95])) == pytest.approx(2 / 4)
    assert permutation_p_value(0.99, np.full(99, 0.5)) == pytest.approx(1 / 100)
    assert np.isnan(permutation_p_value(float("nan"), np.array([0.5])))
