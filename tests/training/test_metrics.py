"""Our metrics against sklearn's on the same predictions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score

from mammo_ray.auc import auc
from mammo_ray.training.metrics import classification_metrics
from tests.random_data import binary_labels


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("seed", range(12))
def test_binary_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = binary_labels(rng, 5, 120)
    n = len(y)
    logits = rng.normal(size=(n, 2)) + y[:, None] * [0, 0.7]
    if seed % 3 == 0:
        logits = np.round(logits, 1)  # ties in the scores
    proba = _softmax(logits)
    ours = classification_metrics(y, proba)
    pred = proba.argmax(1)
    assert ours["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert ours["precision"] == pytest.approx(precision_score(y, pred, zero_division=0))
    assert ours["recall"] == pytest.approx(recall_score(y, pred, zero_division=0))
    assert ours["auroc"] == pytest.approx(roc_auc_score(y, proba[:, 1]))


@pytest.mark.parametrize("seed", range(12))
def test_multiclass_metrics_match_sklearn_macro_one_vs_rest(seed):
    rng = np.random.default_rng(100 + seed)
    k = int(rng.integers(3, 8))
    n = int(rng.integers(3 * k, 150))
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    proba = _softmax(rng.normal(size=(n, k)) + np.eye(k)[y] * 0.8)
    ours = classification_metrics(y, proba)
    pred = proba.argmax(1)
    assert ours["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert ours["precision"] == pytest.approx(precision_score(y, pred, average="macro", zero_division=0))
    assert ours["recall"] == pytest.approx(recall_score(y, pred, average="macro", zero_division=0))
    expected = roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=list(range(k)))
    assert ours["auroc"] == pytest.approx(expected)


def test_multiclass_with_a_class_missing_from_the_targets():
    rng = np.random.default_rng(5)
    y = rng.choice([0, 1, 3], size=60)  # class 2 of 4 never occurs in this validation split
    proba = _softmax(rng.normal(size=(60, 4)))
    ours = classification_metrics(y, proba)
    per_class = [roc_auc_score(y == c, proba[:, c]) for c in (0, 1, 3)]
    assert ours["auroc"] == pytest.approx(np.mean(per_class))
    pred = proba.argmax(1)
    assert ours["precision"] == pytest.approx(precision_score(y, pred, average="macro", zero_division=0))


def test_degenerate_inputs():
    assert math.isnan(auc(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3])))
    assert math.isnan(classification_metrics(np.zeros(0, int), np.zeros((0, 2)))["accuracy"])
    single = classification_metrics(np.array([0, 0]), np.array([[0.9, 0.1], [0.2, 0.8]]))
    assert single["accuracy"] == 0.5 and math.isnan(single["auroc"]) and single["precision"] == 0.0
    with pytest.raises(ValueError):
        classification_metrics(np.array([0, 2]), np.full((2, 2), 0.5))


def test_multiclass_with_few_labels_present_and_a_single_target_class():
    proba = _softmax(np.random.default_rng(9).normal(size=(30, 5)))
    y = np.where(np.arange(30) % 2 == 0, 1, 4)
    pred = proba.argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = classification_metrics(y, proba)
    # Macro over the classes in the targets or the predictions only (sklearn's default labels).
    assert ours["precision"] == precision_score(y, pred, average="macro", zero_division=0)
    assert ours["recall"] == recall_score(y, pred, average="macro", zero_division=0)
    defined = [roc_auc_score(y == c, proba[:, c]) for c in (1, 4)]
    assert ours["auroc"] == pytest.approx(np.mean(defined))
    single = classification_metrics(np.full(30, 2), proba)
    assert math.isnan(single["auroc"]) and single["accuracy"] == accuracy_score(np.full(30, 2), pred)


def test_nan_probabilities_give_nan_auroc_not_an_error():
    # A diverged run (NaN logits) still reports its epoch; sklearn alone would raise on NaN scores.
    proba = np.full((6, 3), np.nan)
    out = classification_metrics(np.array([0, 1, 2, 0, 1, 2]), proba)
    assert math.isnan(out["auroc"]) and out["accuracy"] == pytest.approx(1 / 3)
    binary = classification_metrics(np.array([0, 1, 1]), np.array([[0.5, 0.5], [np.nan, np.nan], [0.2, 0.8]]))
    assert math.isnan(binary["auroc"])


def test_each_resample_is_the_metric_of_its_patients_images_repeated():
    """The vectorised resample metrics against sklearn (classification_metrics) on the drawn rows themselves."""
    from mammo_ray.classify.stats import patient_bootstrap_weights
    from mammo_ray.training.metrics import _weighted_metrics

    rng = np.random.default_rng(5)
    patients = np.repeat(np.arange(12), 3)
    for k in (2, 4):
        y = rng.integers(0, k, patients.size)
        proba = rng.dirichlet(np.ones(k), patients.size)
        weights = patient_bootstrap_weights(patients, 20, seed=1)
        vectorised = _weighted_metrics(y, proba, weights)
        for b, row in enumerate(weights):
            drawn = np.repeat(np.arange(y.size), row.astype(int))
            expected = classification_metrics(y[drawn], proba[drawn])
            for name, value in expected.items():
                assert vectorised[name][b] == pytest.approx(value, nan_ok=True), (k, b, name)


def test_metric_intervals_resample_patients_and_match_the_binary_patient_bootstrap():
    from mammo_ray.classify.stats import patient_bootstrap_auc
    from mammo_ray.training.metrics import metric_intervals

    rng = np.random.default_rng(3)
    patients = np.repeat(np.arange(30), 4)  # 4 images a patient, all of one label: clustered
    y = np.repeat(rng.integers(0, 2, 30), 4)
    p1 = 1 / (1 + np.exp(-(y - 0.5 + np.repeat(rng.standard_normal(30), 4))))
    proba = np.column_stack([1 - p1, p1])
    intervals = metric_intervals(y, proba, patients, 500, 0.95, 0)
    assert intervals["auroc"] == patient_bootstrap_auc(y, p1, patients, 500, 0.95, 0)
    point = classification_metrics(y, proba)
    for name, (low, high) in intervals.items():
        assert low < point[name] < high, name
    per_image = metric_intervals(y, proba, np.arange(y.size), 500, 0.95, 0)
    width = {name: high - low for name, (low, high) in intervals.items()}
    assert all(width[name] > per_image[name][1] - per_image[name][0] for name in width)  # clustered evidence
    # More classes: the macro definitions of the point estimates; undefined -> NaN.
    y3 = np.repeat(rng.integers(0, 3, 30), 4)
    proba3 = rng.dirichlet(np.ones(3), y3.size) + 0.3 * np.eye(3)[y3]
    proba3 /= proba3.sum(axis=1, keepdims=True)
    low3, high3 = metric_intervals(y3, proba3, patients, 300, 0.9, 0)["auroc"]
    assert low3 < classification_metrics(y3, proba3)["auroc"] < high3
    assert all(np.isnan(metric_intervals(np.zeros(8, int), np.full((8, 2), 0.5), np.arange(8), 100)["auroc"]))
    assert all(np.isnan(v) for pair in metric_intervals(y, proba, patients, 0).values() for v in pair)
