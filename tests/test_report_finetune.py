"""The report's Table 1 section from finetune tables built by hand: intervals, view heads, constant outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mammo_ray.report.finetune import finetune_section


def _tables(runs: list[tuple[str, str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, predictions = [], []
    for index, (model, variant) in enumerate(runs):
        run = {"model": model, "variant": variant, "pretrained_on": "none", "task": "binary", "stage": "all"}
        rows.append({**run, "stage_index": 0, "protocol": "patient", "image_size": 64, "epochs": 1,
                     "accuracy": 0.7, "accuracy_ci_low": 0.55, "accuracy_ci_high": 0.85, "auroc": 0.5 + index / 10,
                     "auroc_ci_low": np.nan, "auroc_ci_high": np.nan, "precision": 0.5, "recall": 0.5,
                     "n_train": 10, "n_val": 4, "weights_id": "random-init:0"})
        constant = model == "squeezenet1_1"  # a random-init SqueezeNet: [0.5, 0.5] for every image
        predictions += [{**run, "image_id": f"i{j}", "target": j % 2,
                         "probabilities": [0.5, 0.5] if constant else [1 - j / 4, j / 4]} for j in range(4)]
    return pd.DataFrame(rows), pd.DataFrame(predictions)


def test_table_1_shows_intervals_flags_constant_runs_and_names_view_heads_only_when_there_are_some():
    finetune, predictions = _tables([("squeezenet1_1", ""), ("nyu", "l_mlo"), ("nyu", "r_cc")])
    section = finetune_section(finetune, predictions)
    (_, table), = section.tables
    assert list(table["variant"]) == ["", "l_mlo", "r_cc"]
    assert list(table["accuracy CI"]) == ["0.550-0.850"] * 3 and list(table["auroc CI"]) == [""] * 3  # NaN: blank
    assert list(table.columns).index("accuracy CI") == list(table.columns).index("accuracy") + 1
    assert list(table["flag"].astype(bool)) == [True, False, False]
    assert any("1 fine-tuned runs give the same output" in p for p in section.paragraphs)

    finetune, predictions = _tables([("resnet18", ""), ("small_cnn", "")])
    (_, table), = finetune_section(finetune, predictions).tables
    assert "variant" not in table.columns and "flag" not in table.columns
