"""Metrics of a grid cell against scikit-learn's reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from mammo_ray.classify.metrics import (
    auc,
    balanced_accuracy,
    best_threshold,
    binary_scores,
    bootstrap_auc_interval,
)


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


def test_binary_scores():
    out = binary_scores(np.array([1, 1, 0, 0, 0]), np.array([1, 0, 1, 0, 0]))
    assert out == pytest.approx({"accuracy": 0.6, "balanced_accuracy": (0.5 + 2 / 3) / 2, "precision": 0.5,
                                 "recall": 0.5})
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
