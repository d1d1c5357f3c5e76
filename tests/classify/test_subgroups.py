"""Subgroup metrics: AUC per view, side, density, BI-RADS group, site and device, intervals by patient."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mammo_ray.auc import auc
from mammo_ray.classify.subgroups import SMALL_CLASS, SMALL_IMAGES, birads_group, subgroup_metrics

PIPELINE = ("lasso", "smote", "svm_linear")


def _study(n_patients: int = 60, repeats: int = 2, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Four images per patient; the score separates the classes on site A and is noise on site B."""
    rng = np.random.default_rng(seed)
    manifest, predictions = [], []
    for patient in range(n_patients):
        site = "A" if patient % 2 == 0 else "B"
        for index, (side, view) in enumerate((("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))):
            image = f"p{patient}_{index}"
            target = int(rng.random() < 0.4)
            manifest.append({"image_id": image, "patient_id": f"p{patient}", "laterality": side, "view": view,
                             "birads": "5" if target else "2", "density": "ABCD"[patient % 4], "site": site,
                             "device": "vendor X" if patient < 50 else "vendor Y"})
            for repeat in range(repeats):
                signal = 2.0 * target if site == "A" else 0.0
                predictions.append({"extractor": "e", "protocol": "leak_free", "selection": PIPELINE[0],
                                    "balancing": PIPELINE[1], "classifier": PIPELINE[2], "repeat": repeat,
                                    "image_id": image, "target": target, "score": signal + rng.normal()})
    return pd.DataFrame(predictions), pd.DataFrame(manifest)


def test_every_subgroup_with_counts_auc_and_interval() -> None:
    predictions, manifest = _study()
    frame = subgroup_metrics(predictions, manifest, PIPELINE, n_resamples=200)
    by = frame.set_index(["subgroup", "value"])
    assert set(frame["subgroup"]) == {"view", "laterality", "density", "birads_group", "site", "device"}
    assert by.loc[("site", "A"), "n_images"] == 120 and by.loc[("site", "A"), "n_patients"] == 30
    # The signal lives on site A: its AUC is high, site B's is near chance, and each interval holds its AUC.
    assert by.loc[("site", "A"), "auc"] > 0.85 > 0.7 > by.loc[("site", "B"), "auc"]
    for row in frame.dropna(subset=["auc"]).itertuples():
        assert row.ci_low <= row.auc <= row.ci_high
    # The AUC is the mean over the out-of-fold repeats, computed on the subgroup's own images.
    cc = manifest.loc[manifest["view"] == "CC", "image_id"]
    rows = predictions[predictions["image_id"].isin(cc)]
    expected = np.mean([auc(r["target"].to_numpy().astype(bool), r["score"].to_numpy())
                        for _, r in rows.groupby("repeat")])
    assert np.isclose(by.loc[("view", "CC"), "auc"], expected)


def test_small_and_single_class_subgroups_are_marked_not_hidden() -> None:
    predictions, manifest = _study()
    frame = subgroup_metrics(predictions, manifest, PIPELINE, n_resamples=50).set_index(["subgroup", "value"])
    rule = (frame["n_images"] < SMALL_IMAGES) | (frame["n_positive"] < SMALL_CLASS) | (
        frame["n_images"] - frame["n_positive"] < SMALL_CLASS)
    assert (frame["small"] == rule).all()
    assert frame.loc[("device", "vendor Y"), "n_images"] == 40  # 10 patients: listed, whatever its size
    # BI-RADS groups here are one class each: no AUC, marked small, still listed with their counts.
    for value in ("1-3", "4-6"):
        assert np.isnan(frame.loc[("birads_group", value), "auc"]) and frame.loc[("birads_group", value), "small"]
        assert frame.loc[("birads_group", value), "n_images"] > 0


def test_only_the_pre_specified_leak_free_pipeline_counts() -> None:
    predictions, manifest = _study()
    other = predictions.assign(classifier="logistic", score=0.0)
    paper = predictions.assign(protocol="paper", score=0.0)
    frame = subgroup_metrics(pd.concat([predictions, other, paper]), manifest, PIPELINE, n_resamples=20)
    alone = subgroup_metrics(predictions, manifest, PIPELINE, n_resamples=20)
    pd.testing.assert_frame_equal(frame, alone)


def test_birads_groups() -> None:
    assert [birads_group(v) for v in ("0", "1", "3", "4a", "5", "6", None)] == [
        "0", "1-3", "1-3", "4-6", "4-6", "4-6", None]


def test_without_current_predictions_an_earlier_subgroups_table_is_removed(tmp_path) -> None:
    from mammo_ray import storage, tables
    from mammo_ray.config import parse_config
    from mammo_ray.datasets.manifest import validate_manifest
    from mammo_ray.stages.subgroups import write_subgroups

    predictions, manifest = _study(n_patients=12)
    manifest = validate_manifest(manifest.assign(uri=lambda m: "/data/" + m["image_id"] + ".dcm", dataset="d"),
                                 source="test")
    config = parse_config({"output": str(tmp_path), "grid": {"bootstrap": 10}})
    assert write_subgroups(config, manifest, predictions, PIPELINE, {}) is not None
    assert storage.exists(tables.subgroups_uri(config.output))
    # The grid's predictions no longer describe the manifest (labels corrected, grid not rerun): no table.
    assert write_subgroups(config, manifest, None, PIPELINE, {}) is None
    assert not storage.exists(tables.subgroups_uri(config.output))
