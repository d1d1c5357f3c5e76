"""Honest selection: the grid's best pipeline chosen inside each training fold, reported by its outer folds.

Picking the best of 36 cells by their out-of-fold AUC and reporting that AUC inflates it (the maximum of
many noisy estimates). Here, for every outer fold of every repeat, the cell chosen is the one whose inner
folds (the threshold folds, fitted on the outer fold's training images only) pooled the best AUC; the
chosen cell's scores of that outer fold's images make the selected row's out-of-fold scores. So the
choice never sees the images it is scored on, and the row estimates what "choose the best cell, then
apply it" gives on new patients (nested cross-validation, with the inner folds the cells already ran).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from mammo_ray.classify.data import CellResult, GridData
from mammo_ray.classify.results import fill_out_of_fold
from mammo_ray.classify.splits import oof_splits
from mammo_ray.config.grid import GridCell, GridConfig

SELECTED = "selected"


def _candidates(results: Sequence[CellResult], extractor: str) -> list[CellResult]:
    return [r for r in results if r.extractor == extractor and r.protocol == "leak_free" and r.status == "ok"
            and r.evaluation == "oof" and r.inner_aucs and np.isfinite(r.inner_aucs).all()]


def select_inside(results: Sequence[CellResult], datasets: Mapping[str, GridData],
                  config: GridConfig) -> list[CellResult]:
    """One 'selected' row per extractor with leak_free out-of-fold cells (none otherwise)."""
    rows = []
    for extractor, data in datasets.items():
        candidates = _candidates(results, extractor)
        if len(candidates) < 2:
            continue
        n = data.n_rows
        splits = oof_splits(data.y, data.groups, config)
        scores = np.zeros((len(splits), n))
        called = np.zeros((len(splits), n), dtype=bool)
        chosen: Counter[str] = Counter()
        fold = 0
        for repeat, folds in enumerate(splits):
            for _, check_rows in folds:
                best = max(candidates, key=lambda r, f=fold: r.inner_aucs[f])  # first of equals: stable order
                outer = np.asarray(best.test_scores[repeat * n:(repeat + 1) * n])[check_rows]
                scores[repeat, check_rows] = outer
                called[repeat, check_rows] = outer >= best.fold_thresholds[fold]
                chosen[best.cell.label.split("/", 2)[2]] += 1
                fold += 1
        rows.append(_selected_row(extractor, data, config, scores, called, chosen, len(candidates)))
    return rows


def _selected_row(extractor: str, data: GridData, config: GridConfig, scores: np.ndarray, called: np.ndarray,
                  chosen: Counter[str], n_candidates: int) -> CellResult:
    settings = {"extractor": extractor, "protocol": "leak_free", "selection": SELECTED, "balancing": SELECTED,
                "classifier": SELECTED, "candidates": n_candidates, "oof": config.oof.model_dump(mode="json"),
                "seed": config.seed}
    cell = GridCell(extractor, SELECTED, SELECTED, SELECTED, "leak_free")
    result = CellResult.blank(cell, data, config, settings=settings, notes={"chosen": dict(chosen.most_common())})
    result.cv_folds = config.oof.folds  # its outer folds: oof_splits, as its candidates'
    fill_out_of_fold(result, data, scores, called, config)
    return result


__all__ = ["SELECTED", "select_inside"]
