"""The classifier grid (the paper's Table 2) on Ray Tune: embeddings tables in, results/grid.parquet out.

How it runs
-----------
1. Each extractor's embeddings of the current manifest (`stages.embed.read_embeddings`: labels, patients
   and image ids from the manifest) come in as a GridData (unlabelled images dropped and counted), and
   its (X, y, patient groups) go into the object store ONCE through
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
   rows for its cells.
4. `<output>/results/grid.parquet` is written atomically through mammo_ray.storage (local or s3://)
   with an explicit schema (schemas.GRID_SCHEMA) and provenance in its metadata (the digests of the
   manifest and embeddings it was computed on), and beside it
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mammo_ray import storage, tables
from mammo_ray.classify.cells import compare_pipeline, comparison_pairs, grid_cells
from mammo_ray.classify.comparisons import paired_comparisons
from mammo_ray.classify.data import CellResult, GridData
from mammo_ray.classify.external import (
    EXTERNAL_COLUMNS,
    EXTERNAL_METRICS,
    external_cells,
    external_validation,
    internal_config,
    source_rows,
    unusable,
)
from mammo_ray.classify.protocols import evaluate_cells
from mammo_ray.classify.selection import select_inside
from mammo_ray.config.grid import GridCell, GridConfig, combinations
from mammo_ray.faults import crash_point
from mammo_ray.schemas import COMPARISONS_SCHEMA, EXTERNAL_SCHEMA, GRID_PREDICTIONS_SCHEMA, GRID_SCHEMA
from mammo_ray.stages.embed import read_embeddings
from mammo_ray.stages.grid_units import TrialUnit, cell_progress, finished_units, plan_units, unit_file
from mammo_ray.stages.stage import Counts, Stage, tables_missing

if TYPE_CHECKING:  # pragma: no cover
    from mammo_ray.current import CurrentInputs  # types only: CurrentInputs reads the image stages' model keys

log = logging.getLogger("mammo_ray.grid")

def grid_uri(output_uri: str) -> str:
    return tables.grid_uri(output_uri)


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


def grid_data(view: pd.DataFrame, extractor: str) -> GridData:
    """An extractor's embeddings of the current manifest (a `read_embeddings` frame) as a GridData."""
    return GridData.from_embeddings(view, extractor)


# ------------------------------------------------------------------------------------------------
# Trials
# ------------------------------------------------------------------------------------------------


def _grid_trial(trial_config: dict[str, int], units: dict[int, TrialUnit], datasets: dict[str, GridData],
                grid_config: GridConfig, units_uri: str | None) -> None:
    """One Tune trial: every cell of its unit, folds in-process on one thread; journaled before reported.
    Its result names the node it ran on (Tune's result.json), so where the grid ran can be read afterwards."""
    import ray
    from ray import tune

    unit = units[trial_config["unit"]]
    results = evaluate_cells(datasets[unit.extractor], unit.cells, grid_config, blas_threads=1)
    cells = json.dumps([r.to_dict() for r in results])
    if units_uri is not None:
        storage.write_bytes(unit_file(units_uri, unit), cells.encode())
        crash_point("grid.unit_written")
    tune.report({"unit_id": unit.id, "cells": cells, "node_id": ray.get_runtime_context().get_node_id()})


def tune_grid(datasets: dict[str, GridData], cells: Sequence[GridCell], config: GridConfig,
              storage_path: str, name: str = "grid", units_uri: str | None = None,
              label: str = "grid") -> list[CellResult]:
    """Run `cells` (all of whose extractors are in `datasets`) as Ray Tune trials; one result per cell; progress
    lines in cells, named `label`.

    `units_uri`: the journal folder. Units found there are not run again; every trial run now writes
    its unit there. Starts a local Ray when none is running. The datasets go to the object store once.
    """
    if not cells:
        return []
    units = plan_units(cells, datasets, config)
    data_hashes = {name: datasets[name].content_hash() for name in {unit.extractor for unit in units}}
    units = [unit.keyed(data_hashes[unit.extractor], config) for unit in units]
    finished = finished_units(units, units_uri) if units_uri is not None else {}
    if finished:
        log.info("grid: %d of %d trial units already done (skipped)", len(finished), len(units))
    by_cell: dict[GridCell, CellResult] = {r.cell: r for results in finished.values() for r in results}
    units = [unit for unit in units if unit.id not in finished]
    if units:
        by_cell.update(_run_units(datasets, units, config, storage_path, name, units_uri, label))
    return [by_cell[cell] for cell in cells]


def _run_units(datasets: dict[str, GridData], units: list[TrialUnit], config: GridConfig,
               storage_path: str, name: str, units_uri: str | None, label: str) -> dict[GridCell, CellResult]:
    import ray
    from ray import tune

    needed = {unit.extractor for unit in units}
    by_id = {unit.id: unit for unit in units}
    trainable = tune.with_resources(
        tune.with_parameters(_grid_trial, units=by_id,
                             datasets={k: v for k, v in datasets.items() if k in needed},
                             grid_config=config, units_uri=units_uri),
        {"cpu": config.cpus_per_trial},
    )
    if not ray.is_initialized():
        ray.init()
    tuner = tune.Tuner(
        trainable,
        # The search space holds unit ids only: Tune swaps other objects for placeholders its name creators see.
        param_space={"unit": tune.grid_search([unit.id for unit in units])},
        tune_config=tune.TuneConfig(
            reuse_actors=True,
            max_concurrent_trials=config.max_concurrent_trials,
            trial_name_creator=lambda trial: f"unit-{trial.config['unit']:03d}",
            trial_dirname_creator=lambda trial: f"unit-{trial.config['unit']:03d}",
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            verbose=0,
            callbacks=[cell_progress(by_id, label)],
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )
    with contextlib.redirect_stdout(io.StringIO()) as banner, _credentials_out_of_tunes_reach():
        result_grid = tuner.fit()  # Tune's tables above: debug log, not stdout
    log.debug("%s", banner.getvalue())
    by_cell: dict[GridCell, CellResult] = {}
    seen_units: set[int] = set()
    for result in result_grid:
        unit = by_id.get((result.config or {}).get("unit", -1))
        if unit is None:
            continue
        seen_units.add(unit.id)
        metrics = result.metrics or {}
        if result.error is None and "cells" in metrics:
            for row in json.loads(metrics["cells"]):
                cell_result = CellResult(**row)
                by_cell[cell_result.cell] = cell_result
        else:
            error = result.error or RuntimeError("the trial reported no results")
            for cell in unit.cells:
                by_cell[cell] = CellResult.blank(cell, datasets[cell.extractor], config).fail(_trial_error(error))
    for unit in units:
        if unit.id not in seen_units:
            for cell in unit.cells:
                by_cell[cell] = CellResult.blank(cell, datasets[cell.extractor], config).fail(
                    "TrialError: the trial never ran")
    return by_cell


#: What Ray Tune copies from the driver's environment into every trainable's runtime_env, which Ray's
#: runtime-env agent then logs in plain text (and the GCS keeps). Trials read S3 with their own
#: process's credentials (inherited from their node, or an instance profile) instead.
_TUNE_PROPAGATED_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN",
                                "AWS_SESSION_TOKEN")


@contextlib.contextmanager
def _credentials_out_of_tunes_reach() -> Iterator[None]:
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


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------


def results_table(results: Sequence[CellResult], config: GridConfig,
                  weights: dict[str, Sequence[str]] | None = None,
                  dropped: dict[str, int] | None = None, inputs: dict[str, Any] | None = None) -> pa.Table:
    """The grid.parquet table: one row per cell, GRID_SCHEMA, provenance in the metadata."""
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
    return tables.with_provenance(
        table, "grid", config_hash=config_hash, inputs=inputs,
        weights_ids=[w for ids in weights.values() for w in ids], weights_by_extractor=weights,
        grid_config=config.model_dump(mode="json"), dropped_unlabelled=dropped or {},
    )


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
        columns["repeat"] += result.test_repeats or [0] * n
        columns["image_id"] += [image_ids[row] if row < len(image_ids) else None for row in result.test_rows]
        columns["target"] += result.test_targets
        columns["score"] += result.test_scores
        columns["probability"] += result.test_probabilities or [None] * n
    return pa.table(columns, schema=GRID_PREDICTIONS_SCHEMA)


def comparisons_table(predictions: pd.DataFrame, datasets: Mapping[str, GridData], config: GridConfig,
                      metadata: Mapping[bytes, bytes] | None = None) -> pa.Table:
    """comparisons.parquet: the configured extractor pairs on the leak_free out-of-fold predictions of the
    compare pipeline (classify.comparisons); empty when the grid has no such predictions."""
    groups = {name: pd.Series(data.groups, index=list(data.image_ids)) for name, data in datasets.items()}
    pairs = comparison_pairs(config, list(datasets))
    selection, balancing, classifier = compare_pipeline(config)
    frame = paired_comparisons(predictions, pairs, selection, balancing, classifier, groups,
                               config.bootstrap, config.ci_level, config.seed)
    table = pa.Table.from_pandas(frame, schema=COMPARISONS_SCHEMA, preserve_index=False)
    return table.replace_schema_metadata(metadata)


def read_grid_predictions(output_uri: str) -> pd.DataFrame:
    return storage.read_table(tables.grid_predictions_uri(output_uri)).to_pandas()


def tune_internal(datasets: Mapping[str, GridData], sources: pd.Series | None, config: GridConfig,
                  storage_path: str, name: str, units_uri: str | None) -> dict[tuple[str, str], list[CellResult]]:
    """(extractor, train source) -> the internal estimate of every external pipeline: the grid's leak_free
    protocol on that source's rows alone, run as Ray Tune trials (one fan-out for every pair, journaled like
    the grid's units, so an interrupted grid does not run them again)."""
    parts: dict[str, GridData] = {}  # each (extractor, train source) as a dataset of its own for tune_grid
    origin: dict[str, tuple[str, str]] = {}
    cells: list[GridCell] = []
    for train in dict.fromkeys(pair.train for pair in config.external) if sources is not None else ():
        for extractor, data in datasets.items():
            fit_data = source_rows(data, sources, train)
            if unusable(fit_data, train) is None:
                key = f"{extractor} @ {train}"
                parts[key], origin[key] = fit_data, (extractor, train)
                cells += [replace(cell, extractor=key) for cell in external_cells(grid_cells(config, [extractor]))]
    results = tune_grid(parts, cells, internal_config(config), storage_path, name=internal_run_name(name),
                        units_uri=units_uri, label="grid: internal estimates")
    internal: dict[tuple[str, str], list[CellResult]] = {}
    for result in results:
        internal.setdefault(origin[result.cell.extractor], []).append(result)
    return internal


def internal_run_name(name: str) -> str:
    """Tune's experiment name for the internal estimates of the grid run `name`."""
    return f"{name}-internal"


def external_table(datasets: Mapping[str, GridData], sources: pd.Series | None, config: GridConfig,
                   internal: Mapping[tuple[str, str], list[CellResult]],
                   metadata: Mapping[bytes, bytes] | None = None) -> pa.Table:
    """results/external.parquet: every (train, test) pair of grid.external, for every extractor and leak_free
    pipeline (classify.external), beside its `internal` estimate (tune_internal); empty without pairs."""
    frames = [external_validation(data, sources, pair.train, pair.test, grid_cells(config, [name]), config,
                                  internal.get((name, pair.train)))
              for pair in config.external if sources is not None for name, data in datasets.items()]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=EXTERNAL_COLUMNS)
    table = pa.Table.from_pandas(frame.astype(dict.fromkeys(EXTERNAL_METRICS, "float64")), schema=EXTERNAL_SCHEMA,
                                 preserve_index=False)
    return table.replace_schema_metadata(metadata)


def run_grid(output_uri: str, config: GridConfig, datasets: Mapping[str, GridData],
             inputs: dict[str, Any] | None = None, sources: pd.Series | None = None) -> GridResult:
    """The classifier grid on each extractor's data; writes <output>/results/grid.parquet and its predictions.

    `datasets`: extractor name -> its labelled embeddings of the current manifest (`grid_data`).
    `inputs`: the digests of what the data describes (manifest, embeddings), recorded as provenance.
    `sources`: image_id -> data source, for grid.external (results/external.parquet).
    """
    started = time.perf_counter()
    datasets = dict(datasets)
    if not datasets:
        log.warning("grid: no extractor to run the grid on")
    dropped = {name: data.n_dropped for name, data in datasets.items()}
    for name, count in dropped.items():
        if count:
            log.info("grid: %s: %d images without a label dropped", name, count)
    cells = grid_cells(config, list(datasets))
    scratch = None
    name = f"grid-{config.config_hash()}"
    if storage.is_remote(output_uri):
        scratch = tempfile.mkdtemp(prefix="mammo-grid-tune-")
        storage_path = scratch
    else:
        storage_path = storage.split_uri(tables.tune_uri(output_uri))[1]
        for experiment in (name, internal_run_name(name)):  # scratch of an earlier run
            shutil.rmtree(os.path.join(storage_path, experiment), ignore_errors=True)
    units_uri = tables.grid_units_uri(output_uri)
    read_done = time.perf_counter()
    try:
        results = tune_grid(datasets, cells, config, storage_path, name=name, units_uri=units_uri)
        internal = tune_internal(datasets, sources, config, storage_path, name, units_uri)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    results = [*results, *select_inside(results, datasets, config)]  # the best cell, chosen inside the folds
    tune_done = time.perf_counter()
    weights = {name: data.weights_ids for name, data in datasets.items()}
    table = results_table(results, config, weights, dropped, inputs)
    predictions = predictions_table(results, datasets)
    predictions = predictions.replace_schema_metadata(table.schema.metadata)
    uri = grid_uri(output_uri)
    comparisons = comparisons_table(predictions.to_pandas(), datasets, config, table.schema.metadata)
    external = external_table(datasets, sources, config, internal, table.schema.metadata)
    storage.write_table(predictions, tables.grid_predictions_uri(output_uri))
    storage.write_table(comparisons, tables.comparisons_uri(output_uri))
    storage.write_table(external, tables.external_uri(output_uri))
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
    "GRID_PREDICTIONS_SCHEMA", "GRID_SCHEMA", "GridResult", "grid_data", "grid_uri",
    "predictions_table", "read_grid", "read_grid_predictions", "results_table", "run_grid", "study_datasets",
    "tune_grid",
]


def study_datasets(current: CurrentInputs) -> dict[str, GridData]:
    """The grid's tables of a study: each grid extractor's current embeddings joined to the current manifest,
    and their configured combinations."""
    config, manifest = current.config, current.manifest()
    datasets = {spec.name: grid_data(read_embeddings(config.output, manifest, spec, key=current.embedding_key(spec)),
                                     spec.name)
                for spec in config.grid_extractors}
    for members in combinations(config.grid, list(datasets)):
        combined = GridData.combine([datasets[name] for name in members])
        datasets[combined.extractor] = combined
    return datasets


def _run(current: CurrentInputs) -> Counts:
    config, manifest = current.config, current.manifest()
    datasets = study_datasets(current)
    sources = manifest.set_index("image_id")["dataset"] if config.grid.external else None
    result = run_grid(config.output, config.grid, datasets, current.grid_inputs(), sources)
    log.info("grid: %d cells ok, %d failed -> %s", result.n_ok, result.n_failed, result.uri)
    return {"grid_cells_ok": result.n_ok, "grid_cells_failed": result.n_failed}


STAGE = Stage("grid", lambda current: current.grid_inputs(), run=_run, sections=("grid",), needs_ray=True,
              reads=(tables.MANIFEST, tables.EMBEDDINGS),
              writes=(tables.GRID, tables.GRID_PREDICTIONS, tables.COMPARISONS, tables.EXTERNAL, tables.GRID_UNITS,
                      tables.TUNE),
              outputs_missing=tables_missing(tables.GRID, tables.GRID_PREDICTIONS, tables.COMPARISONS))
