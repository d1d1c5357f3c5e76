"""External validation: does a pipeline fitted at one site hold at another?

For a pair (train A, test B) of data sources and every leak_free pipeline of the grid (selection,
balancing, classifier): the internal estimate is the grid's own leak_free protocol run inside A alone
(patient-grouped CV, every fit inside the training folds, so every choice a pipeline makes is made inside
A); the external one is the same pipeline fitted once on all of A and scored once on every image of B,
with a patient-cluster bootstrap interval over B's patients. The drop is internal AUC - external AUC. No
image, patient or fitted statistic of B is used before B is scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from mammo_ray.auc import auc
from mammo_ray.classify.data import CellResult, GridData
from mammo_ray.classify.engine import build_pipeline
from mammo_ray.classify.protocols import evaluate_cells
from mammo_ray.classify.stats import patient_bootstrap_auc
from mammo_ray.config.grid import GridCell, GridConfig
from mammo_ray.schemas import EXTERNAL_SCHEMA

EXTERNAL_COLUMNS: list[str] = EXTERNAL_SCHEMA.names
#: The columns that are AUCs (float, NaN where not computed).
EXTERNAL_METRICS = EXTERNAL_COLUMNS[EXTERNAL_COLUMNS.index("internal_auc"):]


def subset(data: GridData, rows: np.ndarray) -> GridData:
    """The rows `rows` (indices) of `data`, patient groups renumbered."""
    pick = np.asarray(rows, dtype=np.int64)

    def part(values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(np.asarray(values, dtype=object)[pick]) if values else ()

    return GridData(
        extractor=data.extractor, X=data.X[pick], y=data.y[pick],
        groups=pd.factorize(data.groups[pick])[0].astype(np.int64), n_dropped=0,
        weights_ids=data.weights_ids, preprocess_ids=data.preprocess_ids, image_ids=part(data.image_ids),
        breasts=part(data.breasts), exams=part(data.exams),
    )


def source_rows(data: GridData, sources: pd.Series, source: str) -> GridData:
    """The rows of `data` that come from data source `source`; `sources`: image id -> source."""
    return subset(data, np.flatnonzero(sources.reindex(list(data.image_ids)).to_numpy() == source))


def external_cells(cells: Sequence[GridCell]) -> list[GridCell]:
    """The cells external validation scores: the leak_free pipelines (the nested 'selected' choice is no
    pipeline of its own)."""
    return [cell for cell in cells if cell.protocol == "leak_free" and cell.selection != "selected"]


def external_validation(data: GridData, sources: pd.Series, train: str, test: str, cells: Sequence[GridCell],
                        config: GridConfig, internal: Sequence[CellResult] | None = None) -> pd.DataFrame:
    """One row per cell of external_cells(`cells`): internal (CV within `train`) beside external (`train` ->
    `test`). `sources`: the data source of each image id of `data`. `internal`: those cells' results on
    `train` alone where the caller ran them (the grid stage runs them as Ray Tune trials, with the grid's);
    else they are evaluated here, in this process."""
    fit_data, test_data = source_rows(data, sources, train), source_rows(data, sources, test)
    chosen = external_cells(cells)
    base = {"extractor": data.extractor, "train": train, "test": test, "n_train": fit_data.n_rows,
            "n_train_positive": fit_data.n_positive, "n_test": test_data.n_rows,
            "n_test_positive": test_data.n_positive}
    problem = unusable(fit_data, train) or unusable(test_data, test)
    if problem:
        return pd.DataFrame([{**base, **_cell_columns(cell), "status": "failed", "error": problem}
                             for cell in chosen], columns=EXTERNAL_COLUMNS)
    if internal is None:
        internal = evaluate_cells(fit_data, chosen, internal_config(config))
    rows = []
    for cell, inside in zip(chosen, internal, strict=True):
        row = {**base, **_cell_columns(cell), "internal_auc": inside.auc, "internal_ci_low": inside.auc_ci_low,
               "internal_ci_high": inside.auc_ci_high}
        try:
            scores = _fit_and_score(cell, config, fit_data, test_data)
        except Exception as error:  # noqa: BLE001 - one pipeline that cannot fit A fails its row, not the rest
            rows.append({**row, "status": "failed", "error": f"{type(error).__name__}: {error}"})
            continue
        labels = test_data.y.astype(bool)
        low, high = patient_bootstrap_auc(labels, scores, test_data.groups, config.bootstrap, config.ci_level,
                                          config.seed)
        external = auc(labels, scores)
        rows.append({**row, "status": "ok" if inside.status == "ok" else inside.status, "error": inside.error,
                     "external_auc": external, "external_ci_low": low, "external_ci_high": high,
                     "drop": None if inside.auc is None else inside.auc - external})
    return pd.DataFrame(rows, columns=EXTERNAL_COLUMNS)


def internal_config(config: GridConfig) -> GridConfig:
    """The grid's settings for the internal estimate: no permutation control (the grid's own runs it)."""
    return config.model_copy(update={"permutations": 0})


def _fit_and_score(cell: GridCell, config: GridConfig, fit_data: GridData, test_data: GridData) -> np.ndarray:
    """The cell's pipeline (scale -> [Lasso] -> [SMOTE] -> classifier) fitted on all of A, B's decision scores."""
    model, _ = build_pipeline(cell, config, fit_data.n_rows)
    with threadpool_limits(limits=1):
        model.fit(fit_data.X, fit_data.y)
        return np.asarray(model.decision_function(test_data.X), dtype=np.float64).ravel()


def unusable(data: GridData, name: str) -> str | None:
    """Why `data` of source `name` cannot be fitted or scored (no rows, one class), or None."""
    if data.n_rows == 0:
        return f"source {name!r} has no labelled image with these embeddings"
    if data.n_positive in (0, data.n_rows):
        return f"source {name!r} has one class only ({data.n_positive} positive of {data.n_rows})"
    return None


def _cell_columns(cell: GridCell) -> dict[str, str]:
    return {"selection": cell.selection, "balancing": cell.balancing, "classifier": cell.classifier}
