"""The subgroups stage: results/subgroups.parquet, AUC per view, side, density, BI-RADS group, site and device of
the grid's leak_free out-of-fold scores (classify.subgroups), for the pipelines fixed before scoring. Written
from the current grid predictions and manifest; the report shows it (report.subgroups)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from mammo_ray import schemas, storage, tables
from mammo_ray.classify.cells import compare_pipeline
from mammo_ray.classify.subgroups import subgroup_metrics
from mammo_ray.config import StudyConfig
from mammo_ray.current_tables import read_current
from mammo_ray.report.comparisons import compared_pipeline
from mammo_ray.stages.stage import Counts, Stage

if TYPE_CHECKING:  # pragma: no cover
    from mammo_ray.current import CurrentInputs  # types only: stages are above the current inputs' module

log = logging.getLogger("mammo_ray.subgroups")
NAME = "subgroups"
#: The grid's nested choice (selection, balancing and classifier picked by CV inside each training fold): like
#: grid.compare, fixed before the outer folds are scored, so its subgroups are shown too.
SELECTED_PIPELINE = ("selected", "selected", "selected")


def write_subgroups(config: StudyConfig, manifest: pd.DataFrame, predictions: pd.DataFrame | None,
                    pipeline: tuple[str, str, str] | None,
                    grid_inputs: Mapping[str, Any] | None) -> pd.DataFrame | None:
    """results/subgroups.parquet from the current grid `predictions` and `manifest`, for `pipeline` (the compare
    pipeline) and the nested choice; `grid_inputs`: what the predictions describe, recorded as its provenance.
    Without current predictions there is none, and an earlier one is removed: it described other inputs."""
    uri = tables.subgroups_uri(config.output)
    if predictions is None:
        storage.remove(uri)
        return None
    grid = config.grid
    pipelines = [p for p in (pipeline, SELECTED_PIPELINE) if p is not None]
    frames = [subgroup_metrics(predictions, manifest, chosen, n_resamples=grid.bootstrap, level=grid.ci_level,
                               seed=grid.seed)
              for chosen in dict.fromkeys(pipelines)]
    found = [frame for frame in frames if not frame.empty]
    frame = pd.concat(found, ignore_index=True) if found else frames[0]
    inputs = {"manifest": tables.manifest_digest(manifest), "grid": dict(grid_inputs or {})}
    table = pa.Table.from_pandas(frame, schema=schemas.SUBGROUPS_SCHEMA, preserve_index=False)
    storage.write_table(tables.with_provenance(table, NAME, inputs=inputs), uri)
    log.info("subgroups: %d rows -> %s", len(frame), uri)
    return frame


def _run(current: CurrentInputs) -> Counts:
    config = current.config
    expected = current.grid_inputs()
    predictions, _ = read_current(tables.grid_predictions_uri(config.output), expected)
    comparisons, _ = read_current(tables.comparisons_uri(config.output), expected)
    pipeline = compare_pipeline(config.grid) or compared_pipeline(comparisons)
    frame = write_subgroups(config, current.manifest(), predictions, pipeline, expected)
    return {"subgroup_rows": 0 if frame is None else len(frame)}


STAGE = Stage(NAME, lambda current: current.grid_inputs(), run=_run, sections=("grid",),
              reads=(tables.MANIFEST, tables.EMBEDDINGS, tables.GRID_PREDICTIONS, tables.COMPARISONS),
              writes=(tables.SUBGROUPS,))


__all__ = ["NAME", "SELECTED_PIPELINE", "STAGE", "write_subgroups"]
