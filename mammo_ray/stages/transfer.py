"""Which transfers better, fine-tuning or frozen features? The paper's second question on the same images.

Reads results/finetune.parquet, results/finetune_predictions.parquet and results/grid_predictions.parquet
(each must describe the current inputs: its provenance names them) and writes
results/finetune_vs_frozen.parquet (schemas.COMPARISONS_SCHEMA): each fine-tuned network's validation images
scored by its last stage against the same network's frozen features under the grid's pre-specified compare
pipeline (out of fold), then the best of each side, with patient-cluster bootstrap intervals and Holm-adjusted
paired DeLong p-values (classify.comparisons.finetuned_vs_frozen).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from mammo_ray import schemas, storage, tables
from mammo_ray.classify.cells import compare_pipeline
from mammo_ray.classify.comparisons import finetuned_vs_frozen
from mammo_ray.config.grid import GridConfig
from mammo_ray.current_tables import read_current
from mammo_ray.errors import StaleTableError
from mammo_ray.stages.stage import Counts, Stage

if TYPE_CHECKING:  # pragma: no cover
    from mammo_ray.current import CurrentInputs  # types only: CurrentInputs reads the image stages' model keys

log = logging.getLogger("mammo_ray.transfer")
NAME = "transfer"


def _current_table(uri: str, expected: Mapping[str, Any], stage: str) -> pd.DataFrame:
    frame, problem = read_current(uri, expected)
    if frame is None:
        raise StaleTableError(uri, problem or f"not there: run the {stage} stage first")
    return frame


def run_transfer(output_uri: str, config: GridConfig, inputs: Mapping[str, Mapping[str, Any]]) -> pa.Table:
    """Write results/finetune_vs_frozen.parquet from the current fine-tuning and grid tables; `inputs`: the
    current {"grid": ..., "finetune": ...} digests, recorded as its provenance."""
    rows = _current_table(tables.finetune_uri(output_uri), inputs["finetune"], "finetune")
    predicted = _current_table(tables.finetune_predictions_uri(output_uri), inputs["finetune"], "finetune")
    grid = _current_table(tables.grid_predictions_uri(output_uri), inputs["grid"], "grid")
    frame = finetuned_vs_frozen(rows, predicted, grid, compare_pipeline(config), config.bootstrap, config.ci_level,
                                config.seed)
    table = tables.with_provenance(pa.Table.from_pandas(frame, schema=schemas.COMPARISONS_SCHEMA, preserve_index=False),
                                   NAME, inputs={name: dict(value) for name, value in inputs.items()})
    storage.write_table(table, tables.finetune_vs_frozen_uri(output_uri))
    log.info("transfer: %d fine-tuned vs frozen comparisons -> %s", table.num_rows,
             tables.finetune_vs_frozen_uri(output_uri))
    return table




def _inputs(current: CurrentInputs) -> dict[str, Any]:
    return {"grid": current.grid_inputs(), "finetune": current.finetune_inputs()}


def _run(current: CurrentInputs) -> Counts:
    table = run_transfer(current.config.output, current.config.grid, _inputs(current))
    return {"finetune_vs_frozen_rows": table.num_rows}


# The paper's second question: fine-tuned networks against their frozen features, on the same images.
STAGE = Stage(NAME, _inputs, run=_run, sections=("grid", "finetune"),
              # the embeddings' indexes: which content the grid's predictions were computed on
              reads=(tables.EMBEDDINGS, tables.GRID_PREDICTIONS, tables.FINETUNE, tables.FINETUNE_PREDICTIONS),
              writes=(tables.FINETUNE_VS_FROZEN,))
