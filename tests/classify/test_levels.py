"""Breast and exam level: a breast's views averaged, an exam's breasts maxed, labels by the highest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mammo_ray.classify.levels import breast_and_exam_keys, level_auc


def test_breast_and_exam_scores_and_labels():
    frame = pd.DataFrame({
        "image_id": [f"i{k}" for k in range(10)],
        "patient_id": ["p1"] * 4 + ["p2"] * 4 + ["p3", "p3"],
        "exam_id": ["e"] * 8 + [None, None],
        "laterality": ["L", "L", "R", "R", "L", "L", "R", "R", "L", None],
    })
    breasts, exams = breast_and_exam_keys(frame)
    assert breasts[:2] == ("p1|e|L", "p1|e|L") and breasts[9] == "image|i9" and exams[8] == "p3|"
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0, 1, 0])
    scores = np.array([[0.9, 0.1, 0.2, 0.2, 0.4, 0.2, 0.3, 0.3, 0.8, 0.1]])
    groups = np.array([0] * 4 + [1] * 4 + [2, 2])
    breast = level_auc(breasts, y, scores, groups, "mean", 0, 0.95, 0)
    # breasts: p1L (0.5, 1), p1R (0.2, 0), p2L (0.3, 0), p2R (0.3, 0), p3L (0.8, 1), i9 (0.1, 0)
    assert breast.units == 6
    assert breast.auc == pytest.approx(roc_auc_score([1, 0, 0, 0, 1, 0], [0.5, 0.2, 0.3, 0.3, 0.8, 0.1]))
    exam = level_auc(exams, y, scores, groups, "max", 0, 0.95, 0, from_breasts=breasts)
    # exams: p1 max(0.5, 0.2) label 1, p2 0.3 label 0, p3 max(0.8, 0.1) label 1
    assert exam.units == 3 and exam.auc == 1.0
