"""Validation splits for fine-tuning, deterministic by seed.

Two protocols (docs/design.md, "Fine-tuning splits"):

- ``patient`` (default): no patient has images on both sides. StratifiedGroupKFold with
  n_splits = round(1 / val_fraction) (but never more than the number of patients), first fold held
  out; stratified by the task's target where every class has enough patients, else a plain
  GroupShuffleSplit (still grouped).
- ``paper``: the paper's image-level split, a stratified 20% of the images (sklearn's
  ``train_test_split``: ceil(0.2 * 410) = 82 validation images for INbreast, so accuracies are
  multiples of 1/82 as in Table 1). Images of one patient may sit on both sides: that leak is the
  point of reproducing it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

Protocol = Literal["patient", "paper"]
PROTOCOLS: tuple[str, ...] = ("patient", "paper")


@dataclass(frozen=True)
class Split:
    """Positions (into the frame that was split) of the training and validation rows, sorted."""

    train: np.ndarray
    val: np.ndarray
    protocol: str
    stratified: bool

    def __post_init__(self) -> None:
        if np.intersect1d(self.train, self.val).size:
            raise AssertionError("a row is in both the training and the validation split")


def _check(frame: pd.DataFrame, target: str, val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    if len(frame) < 2:
        raise ValueError(f"cannot split {len(frame)} image(s) into training and validation")
    if target not in frame.columns:
        raise ValueError(f"the frame has no target column {target!r}")


def patient_split(
    frame: pd.DataFrame, *, target: str = "target", group: str = "patient_id", val_fraction: float = 0.2,
    seed: int = 0,
) -> Split:
    """Hold out about `val_fraction` of the patients (all their images), stratified where possible."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    _check(frame, target, val_fraction)
    groups = frame[group].astype(str).to_numpy()
    y = frame[target].to_numpy()
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError(f"a patient-grouped split needs at least 2 patients, got {n_groups}")
    n_splits = min(n_groups, max(2, round(1.0 / val_fraction)))
    # Stratification needs every class on at least n_splits patients.
    patients_per_class = pd.Series(groups).groupby(y).nunique()
    if len(patients_per_class) > 1 and patients_per_class.min() >= n_splits:
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            train, val = next(folds.split(np.zeros(len(y)), y, groups))
        stratified = True
    else:
        splitter = GroupShuffleSplit(n_splits=1, test_size=1.0 / n_splits, random_state=seed)
        train, val = next(splitter.split(np.zeros(len(y)), y, groups))
        stratified = False
    return Split(np.sort(train), np.sort(val), "patient", stratified)


def paper_split(
    frame: pd.DataFrame, *, target: str = "target", val_fraction: float = 0.2, seed: int = 0
) -> Split:
    """The paper's image-level split: ceil(val_fraction * n) images, stratified by target when possible."""
    from sklearn.model_selection import train_test_split

    _check(frame, target, val_fraction)
    positions = np.arange(len(frame))
    y = frame[target].to_numpy()
    counts = pd.Series(y).value_counts()
    n_val = int(np.ceil(val_fraction * len(frame)))
    stratify = y if len(counts) > 1 and counts.min() >= 2 and n_val >= len(counts) else None
    train, val = train_test_split(positions, test_size=val_fraction, random_state=seed, shuffle=True,
                                  stratify=stratify)
    return Split(np.sort(train), np.sort(val), "paper", stratify is not None)


def make_split(frame: pd.DataFrame, protocol: str, *, target: str = "target", val_fraction: float = 0.2,
               seed: int = 0) -> Split:
    """`patient` or `paper` split of `frame` (see the module doc)."""
    if protocol == "patient":
        return patient_split(frame, target=target, val_fraction=val_fraction, seed=seed)
    if protocol == "paper":
        return paper_split(frame, target=target, val_fraction=val_fraction, seed=seed)
    raise ValueError(f"unknown protocol {protocol!r} (use one of {PROTOCOLS})")
