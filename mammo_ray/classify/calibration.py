"""In-fold calibration of the out-of-fold protocol: decision scores to probabilities (`oof.calibration`).

The map is fitted on a training fold's own out-of-fold scores (its inner threshold folds) and applied to the
outer fold's scores, so it never sees the images it maps. The probabilities feed the Brier score and the
reliability curves; the thresholds and AUCs come from the scores, never from these (docs/design.md,
"The leak-free protocol").
"""

from __future__ import annotations

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression


def calibrate(method: str, y_fit: np.ndarray, scores_fit: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Probabilities for `scores` from a map fitted on (scores_fit, y_fit). `platt`: a logistic regression of
    the label on the score; `isotonic`: sklearn's monotone step fit, clipped outside the fitted range. One
    class only: its share."""
    y_fit = np.asarray(y_fit).astype(int)
    if y_fit.min() == y_fit.max():
        return np.full(len(scores), float(y_fit[0]))
    if method == "isotonic":
        steps = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores_fit, y_fit)
        return np.asarray(steps.predict(np.asarray(scores, dtype=np.float64)), dtype=np.float64)
    model = LogisticRegression(C=1e4).fit(np.asarray(scores_fit).reshape(-1, 1), y_fit)
    return model.predict_proba(np.asarray(scores).reshape(-1, 1))[:, 1]


__all__ = ["calibrate"]
