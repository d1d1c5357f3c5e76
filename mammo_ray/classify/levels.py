"""Breast and exam level beside image level, the NYU model's own units.

A breast's score is the mean of its views' out-of-fold scores and its label the highest of theirs; an exam's
score is the highest of its breasts' and so its label. The AUC is computed per repeat and averaged, its
interval resampling patients as at image level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mammo_ray.auc import auc
from mammo_ray.classify.stats import patient_bootstrap_auc


@dataclass(frozen=True)
class LevelAUC:
    units: int
    auc: float
    ci_low: float
    ci_high: float


def breast_and_exam_keys(frame: pd.DataFrame) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Per row of a manifest-joined frame: its breast (patient, exam, side) and exam (patient, exam). An image
    without a side is a breast of its own; an image without an exam belongs to its patient's one exam."""
    patient = frame["patient_id"].astype(str)
    exam = frame["exam_id"].where(frame["exam_id"].notna(), "").astype(str) if "exam_id" in frame else ""
    side = frame["laterality"] if "laterality" in frame else pd.Series([None] * len(frame), index=frame.index)
    exams = patient + "|" + exam
    breasts = np.where(side.notna(), exams + "|" + side.astype(str), "image|" + frame["image_id"].astype(str))
    return tuple(map(str, breasts)), tuple(map(str, exams))


def level_auc(keys: Sequence[str], y: np.ndarray, scores: np.ndarray, groups: np.ndarray, how: str,
              n_resamples: int, level: float, seed: int, from_breasts: Sequence[str] | None = None) -> LevelAUC:
    """AUC over the units `keys` names: scores (R, n) reduced by `how` ('mean' or 'max') within a unit,
    labels by max. `from_breasts`: reduce to breasts (by mean) first, then to `keys` by `how`."""
    scores = np.atleast_2d(scores)
    frame = pd.DataFrame(scores.T)
    frame["label"], frame["group"], frame["unit"] = np.asarray(y), np.asarray(groups), list(keys)
    if from_breasts is not None:
        frame["breast"] = list(from_breasts)
        frame = frame.groupby("breast").agg({**{c: "mean" for c in range(scores.shape[0])}, "label": "max",
                                             "group": "first", "unit": "first"})
    units = frame.groupby("unit").agg({**{c: how for c in range(scores.shape[0])}, "label": "max", "group": "first"})
    unit_scores = units[list(range(scores.shape[0]))].to_numpy().T
    labels = units["label"].to_numpy().astype(bool)
    value = float(np.mean([auc(labels, row) for row in unit_scores]))
    low, high = patient_bootstrap_auc(labels, unit_scores, units["group"].to_numpy(), n_resamples, level, seed)
    return LevelAUC(len(units), value, low, high)


__all__ = ["LevelAUC", "breast_and_exam_keys", "level_auc"]
