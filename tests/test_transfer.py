"""The transfer stage reads only fine-tuning and grid tables that describe the current inputs."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from mammo_ray import storage, tables
from mammo_ray.config import GridConfig
from mammo_ray.errors import StaleTableError
from mammo_ray.stages.transfer import run_transfer

INPUTS = {"grid": {"manifest": "m1"}, "finetune": {"manifest": "m1", "weights": {}}}


def _write(uri: str, stage: str, inputs: dict) -> None:
    table = pa.Table.from_pandas(pd.DataFrame({"x": [1]}), preserve_index=False)
    storage.write_table(tables.with_provenance(table, stage, inputs=inputs), uri)


def test_missing_and_out_of_date_inputs_are_refused_by_name(tmp_path):
    output = str(tmp_path)
    with pytest.raises(StaleTableError, match="finetune.parquet: not there: run the finetune stage"):
        run_transfer(output, GridConfig(), INPUTS)
    _write(tables.finetune_uri(output), "finetune", INPUTS["finetune"])
    _write(tables.finetune_predictions_uri(output), "finetune", INPUTS["finetune"])
    _write(tables.grid_predictions_uri(output), "grid", {"manifest": "m0"})  # an earlier manifest's grid
    with pytest.raises(StaleTableError, match="grid_predictions.parquet: computed on other inputs.*rerun the grid"):
        run_transfer(output, GridConfig(), INPUTS)
    assert not storage.exists(tables.finetune_vs_frozen_uri(output))  # nothing written from stale rows
