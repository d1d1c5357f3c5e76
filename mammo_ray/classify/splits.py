"""The splits of the grid's protocols (docs/design.md, "The paper protocol" and "The leak-free protocol").

Every function returns sorted or scikit-learn-ordered row indices and depends only on the labels, the patient
groups and the config's seeds, so the same data gives the same folds in every cell, trial and rerun. A split
the data cannot make (more folds than patients, or than images of the larger class) raises ValueError naming
the counts and the setting to change.

paper: over images, patients ignored (synthetic SMOTE rows included). leak_free: by patient
(StratifiedGroupKFold), for its holdout evaluation and for its out-of-fold repeats and their inner
threshold folds.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from mammo_ray.config.grid import GridConfig

Folds = list[tuple[np.ndarray, np.ndarray]]  # (fit rows, check rows) per fold


def check_patients(n_splits: int, y: np.ndarray, groups: np.ndarray, key: str) -> None:
    """Refuse a patient-grouped split into more folds than there are patients, naming the counts and the
    setting (`key`); scikit-learn's own message speaks of groups or class members."""
    patients = len(np.unique(groups))
    if patients < n_splits:
        positive, negative = (len(np.unique(groups[y == label])) for label in (1, 0))
        raise ValueError(f"too few patients for {n_splits} folds ({key}): {patients} labelled patients ({positive} "
                         f"with a positive image, {negative} with a negative one)")


def check_images(n_splits: int, y: np.ndarray, key: str) -> None:
    """Refuse a stratified split over images into more folds than its larger class has images."""
    positive, negative = int(np.sum(y == 1)), int(np.sum(y == 0))
    if max(positive, negative) < n_splits:
        raise ValueError(f"too few images for {n_splits} folds ({key}): {len(y)} labelled images ({positive} "
                         f"positive, {negative} negative)")


def leak_free_holdout(y: np.ndarray, groups: np.ndarray, config: GridConfig) -> tuple[np.ndarray, np.ndarray]:
    """Patient-grouped, stratified held-out split: the first fold of StratifiedGroupKFold(round(1/f))."""
    n_splits = max(2, round(1.0 / config.test_fraction))
    check_patients(n_splits, y, groups, "grid.test_fraction")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=config.seed)
    train, test = next(splitter.split(np.zeros(len(y)), y, groups))
    return np.sort(train), np.sort(test)


def leak_free_folds(y: np.ndarray, groups: np.ndarray, config: GridConfig) -> Folds:
    """`cv_folds` StratifiedGroupKFold folds by patient (indices into the given rows)."""
    check_patients(config.cv_folds, y, groups, "grid.cv_folds")
    splitter = StratifiedGroupKFold(n_splits=config.cv_folds, shuffle=True, random_state=config.seed)
    return list(splitter.split(np.zeros(len(y)), y, groups))


def oof_splits(y: np.ndarray, groups: np.ndarray, config: GridConfig, repeats: int | None = None) -> list[Folds]:
    """Per repeat, `oof.folds` StratifiedGroupKFold folds by patient over all rows, each repeat shuffled
    by its own seed drawn from `seed`."""
    count = config.oof.repeats if repeats is None else repeats
    check_patients(config.oof.folds, y, groups, "grid.oof.folds")
    seeds = np.random.SeedSequence([config.seed, 0x00F]).generate_state(count)
    return [list(StratifiedGroupKFold(n_splits=config.oof.folds, shuffle=True, random_state=int(seed))
                 .split(np.zeros(len(y)), y, groups)) for seed in seeds]


def threshold_folds(fit_rows: np.ndarray, y: np.ndarray, groups: np.ndarray, config: GridConfig) -> Folds:
    """Inner folds of an outer fold's training rows (indices into all rows), for its threshold."""
    check_patients(config.oof.threshold_folds, y[fit_rows], groups[fit_rows], "grid.oof.threshold_folds")
    splitter = StratifiedGroupKFold(n_splits=config.oof.threshold_folds, shuffle=True, random_state=config.seed)
    return [(fit_rows[fit], fit_rows[check])
            for fit, check in splitter.split(np.zeros(len(fit_rows)), y[fit_rows], groups[fit_rows])]


def paper_holdout(y: np.ndarray, config: GridConfig) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split over images (synthetic SMOTE rows included), as train_test_split does it."""
    train, test = train_test_split(
        np.arange(len(y)), test_size=config.test_fraction, stratify=y, random_state=config.seed
    )
    return np.sort(train), np.sort(test)


def paper_folds(y: np.ndarray, config: GridConfig) -> Folds:
    """`cv_folds` StratifiedKFold folds over images of the whole (oversampled) data set."""
    check_images(config.cv_folds, y, "grid.cv_folds")
    splitter = StratifiedKFold(n_splits=config.cv_folds, shuffle=True, random_state=config.seed)
    return list(splitter.split(np.zeros(len(y)), y))


__all__ = ["Folds", "check_images", "check_patients", "leak_free_folds", "leak_free_holdout", "oof_splits",
           "paper_folds", "paper_holdout", "threshold_folds"]
