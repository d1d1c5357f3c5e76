"""In-fold calibration of the out-of-fold protocol: decision scores to probabilities (`oof.calibration`).

The map is fitted on a training fold's own out-of-fold scores (its inner threshold folds) and applied to the
outer fold's scores, so it never sees the images it maps. The probabilities feed the Brier score and the
reliability curves; the thresholds and AUCs come from the scores, never from these (docs/design.md,
"The leak-free protocol"). An exported model keeps its fitted map (`fit_calibration`) to score new images.
"""

from __future__ import annotations

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

#: A fitted map: sklearn's logistic regression (platt) or isotonic steps, or the one class's share.
CalibrationMap = LogisticRegression | IsotonicRegression | float


def fit_calibration(method: str, y_fit: np.ndarray, scores_fit: np.ndarray) -> CalibrationMap:
    """The map of (scores_fit, y_fit). `platt`: a logistic regression of the label on the score; `isotonic`:
    sklearn's monotone step fit, clipped outside the fitted range. One class only: its share."""
    y_fit = np.asarray(y_fit).astype(int)
    if y_fit.min() == y_fit.max():
        return float(y_fit[0])
    scores_fit = np.asarray(scores_fit, dtype=np.float64)
    if method == "isotonic":
        return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores_fit, y_fit)
    return LogisticRegression(C=1e4).fit(scores_fit.reshape(-1, 1), y_fit)


def apply_calibration(fitted: CalibrationMap, scores: np.ndarray) -> np.ndarray:
    """Probabilities of `scores` under a fitted map."""
    scores = np.asarray(scores, dtype=np.float64)
    if isinstance(fitted, float):
        return np.full(len(scores), fitted)
    if isinstance(fitted, IsotonicRegression):
        return np.asarray(fitted.predict(scores), dtype=np.float64)
    return fitted.predict_proba(scores.reshape(-1, 1))[:, 1]


def calibrate(method: str, y_fit: np.ndarray, scores_fit: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Probabilities for `scores` from a map fitted on (scores_fit, y_fit)."""
    return apply_calibration(fit_calibration(method, y_fit, scores_fit), scores)


__all__ = ["CalibrationMap", "apply_calibration", "calibrate", "fit_calibration"]
