"""Metrics of a grid cell against scikit-learn's reference implementations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from mammo_ray.auc import auc
from mammo_ray.classify.metrics import (
    auc_rows,
    balanced_accuracy,
    best_threshold,
    binary_scores,
    bootstrap_auc_interval,
)
from tests.random_data import binary_labels


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    scores = rng.standard_normal(n) + 1.2 * y
    return y, scores


def test_auc_and_balanced_accuracy_match_sklearn_including_ties():
    y, scores = _data()
    assert auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    rounded = np.round(scores)  # many ties
    assert auc(y, rounded) == pytest.approx(roc_auc_score(y, rounded), abs=1e-12)
    predicted = scores > 0.5
    assert balanced_accuracy(y, predicted) == pytest.approx(balanced_accuracy_score(y, predicted))
    assert np.isnan(auc(np.ones(5), np.arange(5.0)))


@pytest.mark.parametrize("seed", range(8))
def test_scores_equal_sklearn_on_random_data_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = binary_labels(rng, 2, 80)
    n = len(y)
    scores = np.round(rng.normal(size=n) + y, int(seed % 3))  # 0, 1 or 2 decimals: ties
    assert auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-15)
    predicted = scores > 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UndefinedMetricWarning / "classes not in y_true" noise
        out = binary_scores(y, predicted)
        assert balanced_accuracy(y.astype(bool), predicted) == out["balanced_accuracy"]
    assert out == {
        "accuracy": accuracy_score(y, predicted),
        "balanced_accuracy": balanced_accuracy_score(y, predicted),
        "precision": precision_score(y, predicted, zero_division=0),
        "recall": recall_score(y, predicted, zero_division=0),
        "specificity": recall_score(1 - y, ~predicted, zero_division=0),
    }


def test_edge_cases_keep_their_values():
    # AUC: NaN with a single class, no rows or a NaN score (never sklearn's ValueError).
    assert np.isnan(auc(np.zeros(4), np.arange(4.0))) and np.isnan(auc([], []))
    assert np.isnan(auc(np.array([0, 1, 1]), np.array([0.2, np.nan, 0.5])))
    # Recall NaN without positives, precision 0 when nothing is called positive.
    none_positive = binary_scores(np.zeros(4, int), np.array([1, 0, 1, 0]))
    assert np.isnan(none_positive["recall"]) and none_positive["precision"] == 0.0
    assert none_positive["accuracy"] == 0.5 and none_positive["balanced_accuracy"] == 0.5
    # Balanced accuracy: classes only predicted are left out (sklearn's rule, without its warning).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert balanced_accuracy(np.array([1, 1, 1]), np.array([True, False, True])) == pytest.approx(2 / 3)
    assert np.isnan(balanced_accuracy(np.zeros(0), np.zeros(0)))


def test_vectorised_auc_rows_equal_roc_auc_score_row_by_row():
    rng = np.random.default_rng(7)
    labels = rng.random((300, 25)) < 0.35
    scores = np.round(rng.normal(size=(300, 25)) + labels, 1)  # many ties
    labels[0], labels[1] = True, False  # rows with a single class
    values = auc_rows(labels, scores)
    assert np.isnan(values[:2]).all()
    expected = [roc_auc_score(row, score) if 0 < row.sum() < row.size else np.nan
                for row, score in zip(labels, scores, strict=True)]
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)


def test_bootstrap_interval_is_the_percentiles_of_the_resampled_aucs():
    y, scores = _data(60, seed=4)
    rng = np.random.default_rng(np.random.SeedSequence([3, 0xA0C]))
    index = rng.integers(0, len(y), size=(300, len(y)))
    aucs = np.array([roc_auc_score(y[i], scores[i]) for i in index if 0 < y[i].sum() < len(y)])
    low, high = bootstrap_auc_interval(y, scores, 300, 0.9, seed=3, chunk=64)
    assert (low, high) == pytest.approx(tuple(np.percentile(aucs, [5, 95])), abs=1e-12)


def test_binary_scores():
    out = binary_scores(np.array([1, 1, 0, 0, 0]), np.array([1, 0, 1, 0, 0]))
    assert out == pytest.approx({"accuracy": 0.6, "balanced_accuracy": (0.5 + 2 / 3) / 2, "precision": 0.5,
                                 "recall": 0.5, "specificity": 2 / 3})
    assert binary_scores(np.array([1, 0]), np.array([0, 0]))["precision"] == 0.0


def test_bootstrap_interval_brackets_the_auc_and_is_reproducible():
    y, scores = _data(200)
    low, high = bootstrap_auc_interval(y, scores, 500, 0.95, seed=1)
    assert low < auc(y, scores) < high
    assert 0.02 < high - low < 0.3
    assert (low, high) == bootstrap_auc_interval(y, scores, 500, 0.95, seed=1)
    assert np.isnan(bootstrap_auc_interval(np.zeros(10), np.arange(10.0), 100)[0])
    assert np.isnan(bootstrap_auc_interval(y, scores, 0)[0])


def test_best_threshold_maximises_balanced_accuracy_on_the_given_scores():
    y, scores = _data(400, seed=3)
    threshold = best_threshold(y, scores)
    best = balanced_accuracy(y, scores >= threshold)
    grid = np.quantile(scores, np.linspace(0.01, 0.99, 199))
    assert all(best >= balanced_accuracy(y, scores >= t) - 1e-12 for t in grid)
    # Shifted scores: the threshold follows them (it is not stuck at 0).
    assert best_threshold(y, scores + 10.0) == pytest.approx(threshold + 10.0)
    assert best_threshold(np.zeros(4), np.arange(4.0)) == 0.0
    # Perfect separation: the cut falls between the classes.
    assert 1.0 < best_threshold(np.array([0, 0, 1, 1]), np.array([0.0, 1.0, 3.0, 4.0])) < 3.0
