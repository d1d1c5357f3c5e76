"""Which transfers better, fine-tuning or frozen features? The paper's second question on the same images.

Reads results/finetune.parquet, results/finetune_predictions.parquet and results/grid_predictions.parquet
(each must describe the current inputs: its provenance names them) and writes
results/finetune_vs_frozen.parquet (tables.COMPARISONS_SCHEMA): each fine-tuned network's validation images
scored by its last stage against the same network's frozen features under the grid's pre-specified compare
pipeline (out of fold), then the best of each side, with patient-cluster bootstrap intervals and Holm-adjusted
paired DeLong p-values (classify.comparisons.finetuned_vs_frozen).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from mammo_ray import storage, tables
from mammo_ray.classify.comparisons import finetuned_vs_frozen
from mammo_ray.config.grid import GridConfig
from mammo_ray.errors import StaleTableError

log = logging.getLogger("mammo_ray.transfer")
STAGE = "transfer"


def _current_table(uri: str, expected: Mapping[str, Any], stage: str) -> pa.Table:
    current = tables.describes(uri, expected)
    if current is None:
        raise StaleTableError(uri, f"not there: run the {stage} stage first")
    if not current:
        raise StaleTableError(uri, f"computed on other inputs than the current manifest and config: rerun the "
                                   f"{stage} stage")
    return storage.read_table(uri)


def run_transfer(output_uri: str, config: GridConfig, inputs: Mapping[str, Mapping[str, Any]]) -> pa.Table:
    """Write results/finetune_vs_frozen.parquet from the current fine-tuning and grid tables; `inputs`: the
    current {"grid": ..., "finetune": ...} digests, recorded as its provenance."""
    rows = _current_table(tables.finetune_uri(output_uri), inputs["finetune"], "finetune").to_pandas()
    predicted = _current_table(tables.finetune_predictions_uri(output_uri), inputs["finetune"], "finetune").to_pandas()
    grid = _current_table(tables.grid_predictions_uri(output_uri), inputs["grid"], "grid").to_pandas()
    frame = finetuned_vs_frozen(rows, predicted, grid, config.compare_pipeline(), config.bootstrap, config.ci_level,
                                config.seed)
    table = tables.with_provenance(pa.Table.from_pandas(frame, schema=tables.COMPARISONS_SCHEMA, preserve_index=False),
                                   STAGE, inputs={name: dict(value) for name, value in inputs.items()})
    storage.write_table(table, tables.finetune_vs_frozen_uri(output_uri))
    log.info("transfer: %d fine-tuned vs frozen comparisons -> %s", table.num_rows,
             tables.finetune_vs_frozen_uri(output_uri))
    return table


__all__ = ["STAGE", "run_transfer"]
