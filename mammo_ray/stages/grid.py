"""The classifier grid (the paper's Table 2) on Ray Tune: embeddings tables in, results/grid.parquet out.

How it runs
-----------
1. Each extractor's embeddings table is read once (`read_embeddings`), unlabelled rows are dropped
   (counted per extractor), and its (X, y, patient groups) go into the object store ONCE through
   `tune.with_parameters`: trials read them from there (zero-copy for the float32 matrix), nothing is
   re-read per trial.
2. The grid's cells are grouped into Tune trials by `trial_grouping`: `cell` (one trial per cell),
   `preprocessing` (the cells sharing extractor, protocol, selection and balancing: the classifiers
   share each fold's scaler, Lasso and SMOTE), `selection` (the default: the cells sharing extractor,
   protocol and selection, so both balancings share each fold's scaler and Lasso too) or `protocol`
   (all cells of an extractor and protocol). A trial runs its folds in-process, single-threaded
   (`cpus_per_trial` = 1, n_jobs=1, BLAS limited to one thread); trials run in parallel, the most
   expensive first. Shared fits give exactly the numbers of fitting every cell on its own
   (mammo_ray.classify.evaluate_cell); only the repeated work goes.
3. A cell that fails is a row with status 'failed' and its error; a trial that crashes makes failed
   rows for its cells; an extractor whose table is missing makes failed rows without a trial.
4. `<output>/results/grid.parquet` is written atomically through mammo_ray.storage (local or s3://)
   with an explicit schema (GRID_SCHEMA) and provenance in its metadata, and beside it
   `grid_predictions.parquet`: the held-out decision score of every row of every cell (ROC curves).
   Tune's own experiment state is scratch: under `<output>/tune/` for a local output, in a temporary
   folder for s3://.
5. Crash-safe: every trial writes its unit's results to `<output>/results/grid_units/` (one file,
   atomically, named by the unit's cells and the content of its data) before it reports. A grid
   interrupted half-way runs only the units without a file when started again; the journal is removed
   once grid.parquet is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mammo_ray import layout, storage
from mammo_ray.classify.config import GridCell, GridConfig
from mammo_ray.classify.protocols import CellResult, GridData, evaluate_cells
from mammo_ray.faults import crash_point

log = logging.getLogger("mammo_ray.grid")

GRID_SCHEMA = pa.schema(
    [
        pa.field("extractor", pa.string(), nullable=False),
        pa.field("protocol", pa.string(), nullable=False),
        pa.field("selection", pa.string(), nullable=False),
        pa.field("balancing", pa.string(), nullable=False),
        pa.field("classifier", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("n_rows", pa.int64(), nullable=False),
        pa.field("n_positive", pa.int64(), nullable=False),
        pa.field("n_dropped_unlabelled", pa.int64(), nullable=False),
        pa.field("n_train", pa.int64()),
        pa.field("n_test", pa.int64()),
        pa.field("n_features_in", pa.int64()),
        pa.field("n_features", pa.int64()),
        pa.field("cv_folds", pa.int64()),
        pa.field("cv_balanced_accuracy_mean", pa.float64()),
        pa.field("cv_balanced_accuracy_std", pa.float64()),
        pa.field("cv_fold_scores", pa.list_(pa.float64())),
        pa.field("threshold", pa.float64()),
        pa.field("accuracy", pa.float64()),
        pa.field("balanced_accuracy", pa.float64()),
        pa.field("auc", pa.float64()),
        pa.field("auc_ci_low", pa.float64()),
        pa.field("auc_ci_high", pa.float64()),
        pa.field("precision", pa.float64()),
        pa.field("recall", pa.float64()),
        pa.field("scale_path", pa.string()),
        pa.field("weights_ids", pa.list_(pa.string())),
        pa.field("classifier_seconds", pa.float64()),
        pa.field("cell_config", pa.string(), nullable=False),
        pa.field("cell_hash", pa.string(), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
    ]
)

GRID_PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("extractor", pa.string(), nullable=False),
        pa.field("protocol", pa.string(), nullable=False),
        pa.field("selection", pa.string(), nullable=False),
        pa.field("balancing", pa.string(), nullable=False),
        pa.field("classifier", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("image_id", pa.string()),  # null: a synthetic SMOTE row (paper protocol)
        pa.field("target", pa.int8(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("cell_hash", pa.string(), nullable=False),
    ]
)

#: What each column of grid.parquet means (also written into the file's metadata).
GRID_COLUMNS_DOC = {
    "extractor/protocol/selection/balancing/classifier": "the cell",
    "status, error": "'ok', or 'failed' with '<ErrorType>: <message>'",
    "n_rows, n_positive": "labelled rows of the extractor's table and positives among them",
    "n_dropped_unlabelled": "rows of the table without a label (not used)",
    "n_train, n_test": "held-out split sizes (paper+smote: synthetic rows included)",
    "n_features_in, n_features": "features of the table / kept by Lasso in the final fit",
    "cv_*": "balanced accuracy of each CV fold (classifier's own rule, score > 0), mean, population std",
    "threshold": "held-out decision threshold: 0 for paper, best balanced accuracy on out-of-fold "
    "training scores for leak_free",
    "accuracy, balanced_accuracy, precision, recall": "held-out, at the threshold",
    "auc, auc_ci_low, auc_ci_high": "held-out ROC AUC and its percentile bootstrap interval",
    "scale_path": "'exact', or the scalable estimator that replaced an exact kernel SVM",
    "weights_ids": "weights of the extractor that made the embeddings",
    "classifier_seconds": "time in this cell's own fits (fits shared with other cells not counted)",
    "cell_config, cell_hash": "every setting of the cell (JSON) and its hash",
    "config_hash": "hash of the whole grid config",
}


def grid_uri(output_uri: str) -> str:
    return layout.grid_uri(output_uri)


def read_grid(output_uri: str) -> pd.DataFrame:
    return storage.read_table(grid_uri(output_uri)).to_pandas()


@dataclass
class GridResult:
    uri: str
    frame: pd.DataFrame
    config_hash: str
    dropped_unlabelled: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # read, tune, write (seconds)

    @property
    def n_ok(self) -> int:
        return int((self.frame["status"] == "ok").sum())

    @property
    def n_failed(self) -> int:
        return int((self.frame["status"] != "ok").sum())


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------


def available_extractors(output_uri: str) -> list[str]:
    """Names of the embeddings tables present under <output>/embeddings/ (folders holding Parquet)."""
    root = storage.join(output_uri, "embeddings")
    if not storage.exists(root):
        return []
    names = set()
    prefix = root.rstrip("/") + ("/" if storage.is_remote(root) else os.sep)
    for uri in storage.list_files(root, extensions=[".parquet"]):
        rest = uri[len(prefix):] if uri.startswith(prefix) else ""
        parts = rest.replace(os.sep, "/").split("/")
        if len(parts) >= 2:
            names.add(parts[0])
    return sorted(names)


def load_grid_data(output_uri: str, extractor: str) -> GridData:
    """An extractor's labelled embeddings as a GridData (raises when there is no such table)."""
    from mammo_ray.stages.embed import embeddings_uri, read_embeddings

    frame = read_embeddings(output_uri, extractor)
    if frame.empty:
        raise FileNotFoundError(f"no embeddings table at {embeddings_uri(output_uri, extractor)}")
    return GridData.from_embeddings(frame, extractor)


# ------------------------------------------------------------------------------------------------
# Trials
# ------------------------------------------------------------------------------------------------


def _unit_key(cell: GridCell, grouping: str) -> tuple[str, ...]:
    if grouping == "cell":
        return (cell.extractor, cell.protocol, cell.selection, cell.balancing, cell.classifier)
    if grouping == "preprocessing":
        return (cell.extractor, cell.protocol, cell.selection, cell.balancing)
    if grouping == "selection":
        return (cell.extractor, cell.protocol, cell.selection)
    return (cell.extractor, cell.protocol)


def _cost(cells: Sequence[GridCell], data: GridData, config: GridConfig) -> float:
    """A rough cost for ordering trials (largest first): rows each fold fits on, squared for exact
    kernel SVMs, linear otherwise; Lasso-selected cells are narrower."""
    n = data.n_rows
    extra = max(0, (n - data.n_positive) - data.n_positive)  # rows SMOTE adds
    total = 0.0
    for cell in cells:
        rows = float(n + extra if cell.balancing == "smote" else n)
        if cell.protocol == "leak_free":  # folds fit on the training split only
            rows *= 1.0 - config.test_fraction
        width = 0.2 if cell.selection == "lasso" else 1.0
        quadratic = cell.classifier.startswith("svm") and n <= config.scale.max_rows_exact
        total += (rows * rows if quadratic else rows * 100.0) * width
    return total


def plan_units(cells: Sequence[GridCell], datasets: dict[str, GridData], config: GridConfig) -> list[dict[str, Any]]:
    """Cells grouped into trial units, most expensive first (so the last trial to start is a short one)."""
    groups: dict[tuple[str, ...], list[GridCell]] = {}
    for cell in cells:
        groups.setdefault(_unit_key(cell, config.trial_grouping), []).append(cell)
    units = [
        {"extractor": members[0].extractor, "cells": [list(c.as_dict().values()) for c in members],
         "cost": _cost(members, datasets[members[0].extractor], config)}
        for members in groups.values()
    ]
    units.sort(key=lambda unit: -unit["cost"])
    for index, unit in enumerate(units):
        unit["id"] = index
    return units


def _cells_of(unit: dict[str, Any]) -> list[GridCell]:
    return [GridCell(*values) for values in unit["cells"]]


def unit_key(unit: dict[str, Any], data_hash: str, config: GridConfig) -> str:
    """Names a unit's results: the settings of its cells and the content of its data (`GridData.content_hash`),
    nothing else."""
    from mammo_ray.classify.config import settings_hash

    return settings_hash({"data": data_hash,
                          "cells": sorted(settings_hash(config.cell_settings(c)) for c in _cells_of(unit))})


def _unit_file(units_uri: str, unit: dict[str, Any]) -> str:
    return storage.join(units_uri, f"unit-{unit['key']}.json")


def _finished_units(units: Sequence[dict[str, Any]], units_uri: str) -> dict[int, list[CellResult]]:
    """unit id -> results, for the units an earlier (interrupted) run already wrote (one listing, then one
    read per finished unit)."""
    present = set(storage.list_files(units_uri)) if storage.exists(units_uri) else set()
    return {unit["id"]: [CellResult(**row) for row in json.loads(storage.read_bytes(_unit_file(units_uri, unit)))]
            for unit in units if _unit_file(units_uri, unit) in present}


def _grid_trial(trial_config: dict[str, Any], datasets: dict[str, GridData], grid_config: GridConfig,
                units_uri: str | None) -> None:
    """One Tune trial: every cell of its unit, folds in-process on one thread; journaled before reported."""
    from ray import tune

    unit = trial_config["unit"]
    results = evaluate_cells(datasets[unit["extractor"]], _cells_of(unit), grid_config, blas_threads=1)
    cells = json.dumps([r.to_dict() for r in results])
    if units_uri is not None:
        storage.write_bytes(_unit_file(units_uri, unit), cells.encode())
        crash_point("grid.unit_written")
    tune.report({"unit_id": unit["id"], "cells": cells})


def tune_grid(datasets: dict[str, GridData], cells: Sequence[GridCell], config: GridConfig,
              storage_path: str, name: str = "grid", units_uri: str | None = None) -> list[CellResult]:
    """Run `cells` (all of whose extractors are in `datasets`) as Ray Tune trials; one result per cell.

    `units_uri`: the journal folder. Units found there are not run again; every trial run now writes
    its unit there. Starts a local Ray when none is running. The datasets go to the object store once.
    """
    if not cells:
        return []
    units = plan_units(cells, datasets, config)
    data_hashes = {name: datasets[name].content_hash() for name in {unit["extractor"] for unit in units}}
    for unit in units:
        unit["key"] = unit_key(unit, data_hashes[unit["extractor"]], config)
    finished = _finished_units(units, units_uri) if units_uri is not None else {}
    if finished:
        log.info("grid: %d of %d trial units already done (skipped)", len(finished), len(units))
    by_cell: dict[GridCell, CellResult] = {r.cell: r for results in finished.values() for r in results}
    units = [unit for unit in units if unit["id"] not in finished]
    if units:
        by_cell.update(_run_units(datasets, units, config, storage_path, name, units_uri))
    return [by_cell[cell] for cell in cells]


def _run_units(datasets: dict[str, GridData], units: list[dict[str, Any]], config: GridConfig,
               storage_path: str, name: str, units_uri: str | None) -> dict[GridCell, CellResult]:
    import ray
    from ray import tune

    needed = {unit["extractor"] for unit in units}
    trainable = tune.with_resources(
        tune.with_parameters(_grid_trial, datasets={k: v for k, v in datasets.items() if k in needed},
                             grid_config=config, units_uri=units_uri),
        {"cpu": config.cpus_per_trial},
    )
    if not ray.is_initialized():
        ray.init()
    tuner = tune.Tuner(
        trainable,
        param_space={"unit": tune.grid_search(units)},
        tune_config=tune.TuneConfig(
            reuse_actors=True,
            max_concurrent_trials=config.max_concurrent_trials,
            trial_name_creator=lambda trial: f"unit-{trial.config['unit']['id']:03d}",
            trial_dirname_creator=lambda trial: f"unit-{trial.config['unit']['id']:03d}",
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )
    with contextlib.redirect_stdout(io.StringIO()) as banner, _credentials_out_of_tunes_reach():
        result_grid = tuner.fit()  # Tune's tables above: debug log, not stdout
    log.debug("%s", banner.getvalue())
    by_cell: dict[GridCell, CellResult] = {}
    seen_units: set[int] = set()
    for result in result_grid:
        unit = (result.config or {}).get("unit")
        if unit is None:
            continue
        seen_units.add(unit["id"])
        metrics = result.metrics or {}
        if result.error is None and "cells" in metrics:
            for row in json.loads(metrics["cells"]):
                cell_result = CellResult(**row)
                by_cell[cell_result.cell] = cell_result
        else:
            error = result.error or RuntimeError("the trial reported no results")
            for cell in _cells_of(unit):
                by_cell[cell] = _failed_result(cell, datasets[cell.extractor], config, _trial_error(error))
    for unit in units:
        if unit["id"] not in seen_units:
            for cell in _cells_of(unit):
                by_cell[cell] = _failed_result(cell, datasets[cell.extractor], config,
                                               "TrialError: the trial never ran")
    return by_cell


#: What Ray Tune copies from the driver's environment into every trainable's runtime_env, which Ray's
#: runtime-env agent then logs in plain text (and the GCS keeps). Trials read S3 with their own
#: process's credentials (inherited from their node, or an instance profile) instead.
_TUNE_PROPAGATED_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN",
                                "AWS_SESSION_TOKEN")


@contextlib.contextmanager
def _credentials_out_of_tunes_reach():
    """Hide the AWS credential variables from Tune while it registers and runs trainables."""
    hidden = {name: os.environ.pop(name) for name in _TUNE_PROPAGATED_CREDENTIALS if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(hidden)


def _trial_error(error: BaseException) -> str:
    """The root cause of a crashed trial, without Ray's wrapping and traceback."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    message = text[-1] if text else type(cause).__name__
    return f"TrialError: {message}"


def _failed_result(cell: GridCell, data: GridData | None, config: GridConfig, error: str) -> CellResult:
    from mammo_ray.classify.config import settings_hash

    settings = config.cell_settings(cell)
    result = CellResult(**cell.as_dict(), cv_folds=config.cv_folds, cell_config=json.dumps(settings, sort_keys=True),
                        cell_hash=settings_hash(settings))
    if data is not None:
        result.n_rows, result.n_positive, result.n_dropped_unlabelled = data.n_rows, data.n_positive, data.n_dropped
        result.n_features_in = int(data.X.shape[1]) if data.X.ndim == 2 else None
    return result.fail(error)


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------


def results_table(results: Sequence[CellResult], config: GridConfig,
                  weights: dict[str, Sequence[str]] | None = None,
                  dropped: dict[str, int] | None = None) -> pa.Table:
    """The grid.parquet table: one row per cell, GRID_SCHEMA, provenance in the metadata."""
    from mammo_ray import __version__

    weights = {k: list(v) for k, v in (weights or {}).items()}
    config_hash = config.config_hash()
    records = []
    for result in results:
        row = result.to_dict()
        row["weights_ids"] = weights.get(result.extractor, [])
        row["config_hash"] = config_hash
        for key, value in row.items():
            if isinstance(value, float) and not np.isfinite(value):
                row[key] = None
        records.append({name: row.get(name) for name in GRID_SCHEMA.names})
    table = pa.Table.from_pylist(records, schema=GRID_SCHEMA)
    metadata = {
        "mammo_ray.version": __version__,
        "mammo_ray.stage": "grid",
        "mammo_ray.config_hash": config_hash,
        "mammo_ray.grid_config": json.dumps(config.model_dump(mode="json"), sort_keys=True),
        "mammo_ray.weights_ids": json.dumps(weights, sort_keys=True),
        "mammo_ray.dropped_unlabelled": json.dumps(dropped or {}, sort_keys=True),
        "mammo_ray.columns": json.dumps(GRID_COLUMNS_DOC),
    }
    return table.replace_schema_metadata(metadata)


def predictions_table(results: Sequence[CellResult], datasets: dict[str, GridData]) -> pa.Table:
    """grid_predictions.parquet: one row per held-out row of every successful cell."""
    columns: dict[str, list] = {name: [] for name in GRID_PREDICTIONS_SCHEMA.names}
    for result in results:
        if result.status != "ok":
            continue
        image_ids = datasets[result.extractor].image_ids
        n = len(result.test_rows)
        for key in ("extractor", "protocol", "selection", "balancing", "classifier", "cell_hash"):
            columns[key] += [getattr(result, key)] * n
        columns["row"] += result.test_rows
        columns["image_id"] += [image_ids[row] if row < len(image_ids) else None for row in result.test_rows]
        columns["target"] += result.test_targets
        columns["score"] += result.test_scores
    return pa.table(columns, schema=GRID_PREDICTIONS_SCHEMA)


def read_grid_predictions(output_uri: str) -> pd.DataFrame:
    return storage.read_table(layout.grid_predictions_uri(output_uri)).to_pandas()


def run_grid(output_uri: str, config: GridConfig) -> GridResult:
    """The classifier grid on every configured extractor's embeddings; writes <output>/results/grid.parquet."""
    started = time.perf_counter()
    names = config.extractors if config.extractors is not None else available_extractors(output_uri)
    if not names:
        log.warning("grid: no embeddings tables under %s", storage.join(output_uri, "embeddings"))
    datasets: dict[str, GridData] = {}
    failures: dict[str, str] = {}
    for name in names:
        try:
            datasets[name] = load_grid_data(output_uri, name)
        except Exception as error:  # noqa: BLE001 - a missing table is failed rows, not a crashed study
            failures[name] = f"{type(error).__name__}: {error}"
            log.warning("grid: %s: %s", name, failures[name])
    read_done = time.perf_counter()
    dropped = {name: data.n_dropped for name, data in datasets.items()}
    for name, count in dropped.items():
        if count:
            log.info("grid: %s: %d rows without a label dropped", name, count)
    cells = config.cells(list(names))
    runnable = [cell for cell in cells if cell.extractor in datasets]
    scratch = None
    name = f"grid-{config.config_hash()}"
    if storage.is_remote(output_uri):
        scratch = tempfile.mkdtemp(prefix="mammo-grid-tune-")
        storage_path = scratch
    else:
        storage_path = storage.split_uri(storage.join(output_uri, "tune"))[1]
        shutil.rmtree(os.path.join(storage_path, name), ignore_errors=True)  # scratch of an earlier run
    units_uri = layout.grid_units_uri(output_uri)
    try:
        computed = tune_grid(datasets, runnable, config, storage_path, name=name, units_uri=units_uri)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    tune_done = time.perf_counter()
    by_cell = {result.cell: result for result in computed}
    results = [
        by_cell[cell] if cell in by_cell else _failed_result(cell, None, config, failures[cell.extractor])
        for cell in cells
    ]
    weights = {name: data.weights_ids for name, data in datasets.items()}
    table = results_table(results, config, weights, dropped)
    uri = grid_uri(output_uri)
    storage.write_table(predictions_table(results, datasets), layout.grid_predictions_uri(output_uri))
    storage.write_table(table, uri)  # last: its presence means the grid is complete
    storage.remove(units_uri, recursive=True)
    frame = table.to_pandas()
    finished = time.perf_counter()
    timings = {"read": read_done - started, "tune": tune_done - read_done, "write": finished - tune_done}
    outcome = GridResult(uri, frame, config.config_hash(), dropped, finished - started, timings)
    log.info("grid: %d cells (%d ok, %d failed) -> %s in %.1f s", len(frame), outcome.n_ok, outcome.n_failed,
             uri, outcome.seconds)
    return outcome


__all__ = [
    "GRID_COLUMNS_DOC", "GRID_PREDICTIONS_SCHEMA", "GRID_SCHEMA", "GridResult", "available_extractors", "grid_uri",
    "load_grid_data", "plan_units", "predictions_table", "read_grid", "read_grid_predictions", "results_table",
    "run_grid", "tune_grid", "unit_key",
]
