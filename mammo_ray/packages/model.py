"""A frozen-feature pipeline fitted on all labelled images, with what scoring needs beside it: the decision
threshold and the calibration map, both from the study's out-of-fold scores (each image scored by a pipeline
that never saw it), and the shift reference of the training images' embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mammo_ray.classify.calibration import CalibrationMap, apply_calibration, fit_calibration
from mammo_ray.classify.data import GridData
from mammo_ray.classify.engine import build_pipeline, decision_scores
from mammo_ray.classify.metrics import best_threshold
from mammo_ray.config.grid import GridCell, GridConfig

#: Patient-bootstrap resamples of the training images behind the shift statistic's reference range.
SHIFT_RESAMPLES = 200


def mean_shift(scaled: np.ndarray) -> float:
    """sqrt(m) x the root mean square over features of the m images' mean standardised embedding: about 1 for
    images drawn like the training ones, whatever m (the mean's spread shrinks as 1/sqrt(m)); larger when the
    collection sits elsewhere (another scanner's presentation or noise moves every image the same way)."""
    scaled = np.asarray(scaled, dtype=np.float64)
    return float(np.sqrt(len(scaled)) * np.sqrt(np.mean(np.square(scaled.mean(axis=0))))) if len(scaled) else 0.0


@dataclass
class ShiftReference:
    """How far a collection's embeddings lie from the training images' (`mean_shift` after the pipeline's
    scaling), against its reference range: the same statistic over patient-bootstrap resamples of the training
    images (their median and 95th percentile). Per image, the root mean square of its standardised embedding
    (about 1 for a training image) is kept beside its score."""

    training_median: float
    training_q95: float

    @classmethod
    def fit(cls, scaled: np.ndarray, groups: np.ndarray, seed: int) -> ShiftReference:
        patients = np.unique(groups)
        rows = [np.flatnonzero(groups == patient) for patient in patients]
        rng = np.random.default_rng(seed)
        statistics = [mean_shift(scaled[np.concatenate([rows[i] for i in rng.integers(0, len(rows), len(rows))])])
                      for _ in range(SHIFT_RESAMPLES)]
        return cls(float(np.median(statistics)), float(np.quantile(statistics, 0.95)))

    @staticmethod
    def image_distances(scaled: np.ndarray) -> np.ndarray:
        return np.sqrt(np.mean(np.square(np.asarray(scaled, dtype=np.float64)), axis=1))

    def summary(self, scaled: np.ndarray) -> dict[str, Any]:
        """A collection's statistic against the training range; `beyond` when above its 95th percentile."""
        statistic = mean_shift(scaled)
        return {"images": int(len(scaled)), "mean_shift": statistic, "training_median": self.training_median,
                "training_q95": self.training_q95, "beyond_training_q95": bool(statistic > self.training_q95)}


@dataclass
class FittedModel:
    """What a package scores with: pipeline (imblearn: scale -> [Lasso] -> [SMOTE] -> classifier), calibration
    map, threshold on the decision score, shift reference."""

    pipeline: Any
    calibration: CalibrationMap
    threshold: float
    shift: ShiftReference

    def scores(self, X: np.ndarray) -> np.ndarray:
        return decision_scores(self.pipeline, X)

    def apply(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per row: decision score, calibrated probability, flag (score >= threshold), shift distance."""
        scores = self.scores(X)
        distances = self.shift.image_distances(self.scaled(X))
        return scores, apply_calibration(self.calibration, scores), scores >= self.threshold, distances

    def scaled(self, X: np.ndarray) -> np.ndarray:
        """The embeddings as the pipeline's first step standardises them (what the shift check reads)."""
        return self.pipeline.named_steps["scale"].transform(X)

    def support_vectors(self) -> int:
        """Rows of (standardised, selected) training embeddings the classifier keeps: an SVM's support vectors
        (after SMOTE, some synthetic); 0 for a model of coefficients only."""
        vectors = getattr(self.pipeline.named_steps["classify"], "support_vectors_", None)
        return 0 if vectors is None else int(vectors.shape[0])

    def parts(self) -> dict[str, Any]:
        """The objects saved (skops): everything fitted."""
        return {"pipeline": self.pipeline, "calibration": self.calibration}

    @classmethod
    def from_parts(cls, parts: dict[str, Any], threshold: float, shift_range: tuple[float, float]) -> FittedModel:
        return cls(parts["pipeline"], parts["calibration"], threshold, ShiftReference(*shift_range))


def fit_model(data: GridData, cell: GridCell, config: GridConfig, oof_scores: np.ndarray) -> FittedModel:
    """The cell's pipeline fitted on every labelled row of `data`; threshold and calibration from `oof_scores`
    (repeats x rows, the study's out-of-fold decision scores of these rows): the best balanced accuracy's cut
    and the `oof.calibration` map over every repeat's scores, as each fold chose its own inside its training
    folds."""
    pipeline, _ = build_pipeline(cell, config, data.n_rows)
    pipeline.fit(data.X, data.y)
    oof_scores = np.atleast_2d(np.asarray(oof_scores, dtype=np.float64))
    targets = np.tile(data.y, oof_scores.shape[0])
    threshold = best_threshold(targets, oof_scores.ravel())
    calibration = fit_calibration(config.oof.calibration, targets, oof_scores.ravel())
    shift = ShiftReference.fit(pipeline.named_steps["scale"].transform(data.X), data.groups, config.seed)
    return FittedModel(pipeline, calibration, float(threshold), shift)


__all__ = ["SHIFT_RESAMPLES", "FittedModel", "ShiftReference", "fit_model", "mean_shift"]
