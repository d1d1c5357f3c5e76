"""The one AUC of the package: the grid's cells and fine-tuning's validation both score with it.

sklearn's `roc_auc_score`, with the undefined cases as NaN instead of its ValueError.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score


def auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """sklearn's roc_auc_score of `score` for the positives y_true != 0; NaN (never sklearn's ValueError)
    unless both classes are present, or when a score is NaN (a diverged run)."""
    y_true = np.asarray(y_true).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    if y_true.all() or not y_true.any() or np.isnan(score).any():
        return math.nan
    return float(roc_auc_score(y_true, score))
