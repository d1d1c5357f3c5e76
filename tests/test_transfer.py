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


def test_each_fine_tuned_run_keeps_its_own_predictions_when_a_model_starts_from_several_weights():
    from mammo_ray.classify.comparisons import finetuned_matrices

    runs = [("resnet50", "", "imagenet"), ("resnet50", "", "none"), ("nyu", "l_mlo", "nyu"), ("nyu", "r_cc", "nyu")]
    rows = pd.DataFrame([{"model": m, "variant": v, "pretrained_on": p, "task": "binary", "stage": "all",
                          "stage_index": 0, "auroc": 0.5 + i / 10} for i, (m, v, p) in enumerate(runs)])
    predictions = pd.DataFrame([{"model": m, "variant": v, "pretrained_on": p, "task": "binary", "stage": "all",
                                 "image_id": f"img{j}", "target": j % 2, "probabilities": [1 - i / 10, i / 10]}
                                for i, (m, v, p) in enumerate(runs) for j in range(4)])
    matrices = finetuned_matrices(rows, predictions)
    assert {label: (frozen, auc) for label, (frozen, auc, _) in matrices.items()} == {
        "finetuned:resnet50 (imagenet)": ("imagenet_resnet50", 0.5),
        "finetuned:resnet50 (none)": ("imagenet_resnet50", 0.6),
        "finetuned:nyu/l_mlo": ("nyu_avg", 0.7), "finetuned:nyu/r_cc": ("nyu_lcc", 0.8)}
    for i, (_, _, matrix) in enumerate(matrices.values()):
        assert len(matrix) == 4 and (matrix[0] == i / 10).all()  # one run's four images, its own scores
