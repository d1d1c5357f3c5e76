"""The data types of the classifier grid: the feature table the classifiers see, the numbers of one cell."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mammo_ray.classify.cells import cell_settings, cv_folds_of
from mammo_ray.classify.levels import breast_and_exam_keys
from mammo_ray.config.base import stable_hash
from mammo_ray.config.grid import GridCell, GridConfig


@dataclass(frozen=True)
class GridData:
    """One extractor's labelled feature table, as the classifiers see it.

    X: (n, d) float32; y: (n,) 0/1; groups: (n,) integer patient codes (a row without a patient is its
    own group). `n_dropped` rows had no label and are not in X. `image_ids`: the image of each row
    (empty when the data did not come from images).
    """

    extractor: str
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    n_dropped: int = 0
    weights_ids: tuple[str, ...] = ()
    preprocess_ids: tuple[str, ...] = ()
    image_ids: tuple[str, ...] = ()
    breasts: tuple[str, ...] = ()  # per row: its breast (patient, exam, side); empty when not known
    exams: tuple[str, ...] = ()  # per row: its exam (patient, exam)

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_positive(self) -> int:
        return int(np.sum(self.y == 1))

    @classmethod
    def from_embeddings(cls, frame: pd.DataFrame, extractor: str | None = None) -> GridData:
        """From a `read_embeddings` frame: keep labelled rows, patients as groups (image_id when null)."""
        name = extractor or (str(frame["extractor"].iloc[0]) if len(frame) else "unknown")
        labelled = frame[frame["label"].notna()].sort_values("image_id", kind="stable").reset_index(drop=True)
        n_dropped = len(frame) - len(labelled)
        if labelled.empty:
            raise ValueError(f"{name}: no labelled rows ({n_dropped} without a label)")
        X = np.stack([np.asarray(v, dtype=np.float32) for v in labelled["embedding"]])
        y = labelled["label"].astype(int).to_numpy().astype(np.int8)
        if not set(np.unique(y)) <= {0, 1}:
            raise ValueError(f"{name}: labels must be 0/1, found {sorted(set(np.unique(y)))}")
        patient = labelled["patient_id"].astype(object).where(labelled["patient_id"].notna(), None)
        keys = [p if p is not None else f"image:{i}" for p, i in zip(patient, labelled["image_id"], strict=True)]
        groups = pd.factorize(pd.Series(keys))[0].astype(np.int64)
        return cls(
            extractor=name, X=X, y=y, groups=groups, n_dropped=int(n_dropped),
            weights_ids=tuple(sorted(map(str, labelled["weights_id"].dropna().unique()))),
            preprocess_ids=tuple(sorted(map(str, labelled["preprocess_id"].dropna().unique())))
            if "preprocess_id" in labelled else (),
            image_ids=tuple(map(str, labelled["image_id"])),
            **dict(zip(("breasts", "exams"), breast_and_exam_keys(labelled), strict=True)),
        )

    @classmethod
    def combine(cls, parts: list[GridData]) -> GridData:
        """Several extractors' features of the same images side by side (the paper's third question: do both
        together help?): the images every part has, features concatenated in the order given; named
        'a+b'. Labels and patients must agree (they come from one manifest)."""
        name = "+".join(part.extractor for part in parts)
        common = sorted(set.intersection(*(set(part.image_ids) for part in parts)))
        if not common:
            raise ValueError(f"{name}: the extractors share no image")
        rows = [pd.Index(part.image_ids).get_indexer(common) for part in parts]
        first, first_rows = parts[0], rows[0]
        for part, part_rows in zip(parts[1:], rows[1:], strict=True):
            if not np.array_equal(part.y[part_rows], first.y[first_rows]):
                raise ValueError(f"{name}: {part.extractor} and {first.extractor} disagree on labels")
        return cls(
            extractor=name, X=np.hstack([part.X[part_rows] for part, part_rows in zip(parts, rows, strict=True)]),
            y=first.y[first_rows], groups=pd.factorize(first.groups[first_rows])[0].astype(np.int64),
            n_dropped=max(part.n_dropped for part in parts),
            weights_ids=tuple(sorted({w for part in parts for w in part.weights_ids})),
            preprocess_ids=tuple(sorted({p for part in parts for p in part.preprocess_ids})),
            image_ids=tuple(common),
            breasts=tuple(np.asarray(first.breasts)[first_rows]) if first.breasts else (),
            exams=tuple(np.asarray(first.exams)[first_rows]) if first.exams else (),
        )

    def content_hash(self) -> str:
        """Names exactly the rows the classifiers see: features, labels, patient groups and images."""
        digest = hashlib.sha256()
        for array in (self.X, self.y, self.groups):
            digest.update(str((array.dtype.str, array.shape)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update("\n".join(self.image_ids).encode())
        return digest.hexdigest()[:24]


@dataclass
class CellResult:
    """The numbers of one grid cell (one row of grid.parquet)."""

    extractor: str
    protocol: str
    selection: str
    balancing: str
    classifier: str
    status: str = "ok"
    error: str | None = None
    n_rows: int = 0
    n_positive: int = 0
    n_dropped_unlabelled: int = 0
    n_train: int | None = None
    n_test: int | None = None
    n_features_in: int | None = None
    n_features: int | None = None
    cv_folds: int | None = None
    cv_balanced_accuracy_mean: float | None = None
    cv_balanced_accuracy_std: float | None = None
    cv_fold_scores: list[float] = field(default_factory=list)
    threshold: float | None = None
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    auc: float | None = None
    auc_ci_low: float | None = None
    auc_ci_high: float | None = None
    precision: float | None = None
    recall: float | None = None
    specificity: float | None = None
    brier: float | None = None  # oof: of the in-fold calibrated probabilities (oof.calibration)
    n_breasts: int | None = None  # breast level (mean of a breast's views) and exam level (max of its breasts)
    auc_breast: float | None = None
    auc_breast_ci_low: float | None = None
    auc_breast_ci_high: float | None = None
    n_exams: int | None = None
    auc_exam: float | None = None
    evaluation: str = "holdout"  # 'holdout' (one held-out split) or 'oof' (every image, per repeat)
    oof_repeats: int | None = None
    interval: str | None = None  # what the AUC interval resamples: 'patient bootstrap' or 'image bootstrap'
    first_repeat_auc: float | None = None  # the AUC the permutation null is compared with
    permutations: int = 0
    null_auc_mean: float | None = None
    null_auc_q95: float | None = None
    permutation_p: float | None = None
    null_aucs: list[float] = field(default_factory=list)
    control_seconds: float = 0.0
    scale_path: str | None = None
    classifier_seconds: float = 0.0
    unconverged_fits: int = 0  # classifier fits stopped at their max_iter (evaluation and control together)
    cell_config: str = "{}"
    cell_hash: str = ""
    # The held-out rows behind the metrics (for ROC curves): row indices into the data the split was
    # made on (paper + smote: rows >= n_rows are synthetic), their labels and decision scores; for oof
    # every row once per repeat (`test_repeats`).
    test_rows: list[int] = field(default_factory=list)
    test_repeats: list[int] = field(default_factory=list)
    test_probabilities: list[float] = field(default_factory=list)  # oof: in-fold calibration
    # oof, per outer fold (repeat-major): its threshold and the AUC of its inner folds' pooled scores (what
    # nested selection chooses by, never looking at the outer fold).
    fold_thresholds: list[float] = field(default_factory=list)
    inner_aucs: list[float] = field(default_factory=list)
    test_targets: list[int] = field(default_factory=list)
    test_scores: list[float] = field(default_factory=list)

    @classmethod
    def blank(cls, cell: GridCell, data: GridData | None, config: GridConfig, *,
              settings: Mapping[str, Any] | None = None, notes: Mapping[str, Any] | None = None) -> CellResult:
        """A cell's row before any fit, the one way every row starts: its settings (`cell_settings(config, cell)`
        unless given) as `cell_config` and `cell_hash` (`notes` join cell_config only, not the hash), its CV
        folds, and the counts of `data` (left empty when None: a trial that never ran)."""
        settings = dict(cell_settings(config, cell) if settings is None else settings)
        result = cls(**cell.as_dict(), cv_folds=cv_folds_of(config, cell.protocol),
                     cell_config=json.dumps({**settings, **(notes or {})}, sort_keys=True),
                     cell_hash=stable_hash(settings))
        if data is not None:
            result.n_rows, result.n_positive, result.n_dropped_unlabelled = data.n_rows, data.n_positive, data.n_dropped
            result.n_features_in = int(data.X.shape[1]) if data.X.ndim == 2 else None
        return result

    @property
    def cell(self) -> GridCell:
        return GridCell(self.extractor, self.selection, self.balancing, self.classifier, self.protocol)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fail(self, error: BaseException | str) -> CellResult:
        self.status = "failed"
        if isinstance(error, BaseException):
            self.error = f"{type(error).__name__}: {error}"
        else:
            self.error = str(error)
        return self
