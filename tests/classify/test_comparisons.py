"""Paired extractor comparisons on out-of-fold predictions: a better extractor is found, equal ones are not."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from mammo_ray.classify import GridData, evaluate_cells
from mammo_ray.classify.cells import comparison_pairs, grid_cells
from mammo_ray.classify.comparisons import paired_comparisons
from mammo_ray.config import GridConfig
from mammo_ray.config.grid import combinations
from mammo_ray.stages.grid import comparisons_table, predictions_table


def _extractors(signals: dict[str, float], seed: int = 0) -> dict[str, GridData]:
    """Feature tables of the same 240 images (60 patients): a few label-shifted features plus noise, the
    shift (in standard deviations) per extractor."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(60), 4)
    y = (rng.random(60) < 0.3).repeat(4).astype(np.int8)  # a patient's images share the label
    images = tuple(f"img{i:03d}" for i in range(240))
    tables = {}
    for name, signal in signals.items():
        X = rng.standard_normal((240, 30)).astype(np.float32)
        X[:, :3] += signal * y[:, None]
        tables[name] = GridData(name, X, y, groups, image_ids=images)
    return tables


def test_the_better_extractor_is_found_and_holm_adjusts():
    datasets = _extractors({"strong": 1.2, "weak": 0.2})
    datasets["weak_too"] = replace(datasets["weak"], extractor="weak_too")  # the same features, renamed
    config = GridConfig(protocols=["leak_free"], selection=["none"], balancing=["none"], classifiers=["logreg"],
                        permutations=0, bootstrap=500, oof={"repeats": 3})
    results = [r for data in datasets.values()
               for r in evaluate_cells(data, grid_cells(config, [data.extractor]), config)]
    predictions = predictions_table(results, datasets).to_pandas()
    assert set(predictions["repeat"]) == {0, 1, 2} and len(predictions) == 3 * 3 * 240
    table = comparisons_table(predictions, datasets, config).to_pandas().set_index(["a", "b"])
    assert list(table.index) == [("strong", "weak"), ("strong", "weak_too"), ("weak", "weak_too")]
    found = table.loc[("strong", "weak")]
    assert found["difference"] > 0.15 and found["ci_low"] > 0 and found["holm_p"] < 0.05
    assert found["n_images"] == 240 and found["n_positive"] == predictions["target"].iloc[:240].sum()
    equal = table.loc[("weak", "weak_too")]
    assert (equal["difference"], equal["ci_low"], equal["ci_high"], equal["holm_p"]) == (0.0, 0.0, 0.0, 1.0)
    assert (table["holm_p"] >= table["delong_p"]).all()

    # Only the images both extractors scored are compared; a missing extractor is no comparison.
    fewer = predictions[~((predictions["extractor"] == "weak") & (predictions["image_id"] < "img040"))]
    groups = {name: pd.Series(data.groups, index=list(data.image_ids)) for name, data in datasets.items()}
    partial = paired_comparisons(fewer, [("strong", "weak"), ("strong", "absent")], "none", "none", "logreg", groups)
    assert list(partial["n_images"]) == [200]


def test_combined_extractor_concatenates_the_images_both_have():
    datasets = _extractors({"a": 1.0, "b": 0.5})
    b = datasets["b"]
    keep = np.arange(b.n_rows) >= 8  # b lacks the first two patients' images
    shorter = GridData("b", b.X[keep], b.y[keep], b.groups[keep], image_ids=tuple(np.array(b.image_ids)[keep]))
    both = GridData.combine([datasets["a"], shorter])
    assert both.extractor == "a+b" and both.X.shape == (232, 60)
    assert both.image_ids == shorter.image_ids
    assert np.array_equal(both.X[:, :30], datasets["a"].X[8:]) and np.array_equal(both.X[:, 30:], shorter.X)
    assert len(np.unique(both.groups)) == 58
    relabelled = replace(shorter, y=1 - shorter.y)
    with pytest.raises(ValueError, match="disagree on labels"):
        GridData.combine([datasets["a"], relabelled])
    elsewhere = replace(shorter, image_ids=tuple(f"other{i}" for i in range(shorter.n_rows)))
    with pytest.raises(ValueError, match="a\\+b: the extractors share no image"):
        GridData.combine([datasets["a"], elsewhere])
    config = GridConfig()
    assert combinations(config, ["imagenet_resnet50", "nyu_lcc", "nyu_avg"]) == [["nyu_avg", "imagenet_resnet50"]]
    assert combinations(config, ["imagenet_resnet18"]) == []
    pairs = comparison_pairs(config, ["imagenet_resnet50", "nyu_lcc", "nyu_avg", "nyu_avg+imagenet_resnet50"])
    assert len(pairs) == 6 and ("nyu_avg", "nyu_avg+imagenet_resnet50") in pairs
