"""Heatmaps as an output of the one image pass: each image decoded once for every output, each output computing
only what its own store lacks, a stride change recomputing the heatmaps and nothing else, and an image whose
heatmaps are an errors row an errors row of every output that reads them."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammo_ray import storage, tables
from mammo_ray.config import HeatmapsConfig, SyntheticSource, parse_config
from mammo_ray.datasets.manifest import read_manifest, write_manifest
from mammo_ray.datasets.synthetic import generate_cohort
from mammo_ray.imaging.heatmaps import PatchGrid
from mammo_ray.stages.heatmaps import figure_uri, heatmap_images, heatmaps_key, read_heatmaps
from mammo_ray.study import run_study
from tests.image_builders import png_bytes

EXTRACTOR = {"name": "imagenet_resnet18", "input_size": 32}
# The image+heatmaps model as an extractor, on small windows (a tenth of NYU's).
WITH_HEATMAPS = {"name": "nyu_lcc_heatmaps", "weights": "random-init:3", "nyu_scale": 0.1}
# The synthetic images taken as half-resolution ones, worked at half resolution: crops of a few patches each.
HEATMAPS = {"enabled": True, "stride": 70, "scale": 0.5, "source_resolution": 0.5, "batch_size": 8}


BLANK = "blank-cc"


def _manifest(tmp_path) -> str:
    """Two synthetic patients and one blank image (it decodes; no output finds a breast in it)."""
    path = tmp_path / "manifest.parquet"
    if not path.exists():
        cohort = generate_cohort(str(tmp_path / "cohort"), SyntheticSource(patients=2, rows=384))
        blank = tmp_path / "blank.png"
        blank.write_bytes(png_bytes(np.zeros((384, 300), dtype=np.uint16)))
        row = {**cohort.iloc[0].to_dict(), "image_id": BLANK, "uri": str(blank), "patient_id": "blank",
               "exam_id": "blank", "laterality": "L", "view": "CC", "birads": "1", "label": 0}
        write_manifest(pd.concat([cohort, pd.DataFrame([row])], ignore_index=True), str(path))
    return str(path)


def _config(tmp_path, **heatmaps):
    return parse_config({"name": "heatmaps", "output": str(tmp_path / "study"),
                         "data": {"manifest": _manifest(tmp_path)},
                         "embed": {"extractors": [EXTRACTOR, WITH_HEATMAPS]},
                         "zero_shot": {"nyu_scale": 0.1, "heatmaps_weights": "random-init:4"},
                         "heatmaps": {**HEATMAPS, **heatmaps}})


def read_provenance_key(config) -> dict:
    return heatmaps_key(config.heatmaps, config.ingest).as_dict()


@pytest.mark.usefixtures("ray_session")
def test_heatmaps_share_the_pass_resume_per_output_and_follow_the_stride(tmp_path, caplog):
    stages = ["manifest", "ingest", "heatmaps", "embed", "zero_shot"]
    config = _config(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mammo_ray.heatmaps"):
        first = run_study(config, stages)
    assert first.ran == stages
    # Before the pass, on CPUs, what the heatmaps will cost: measured seconds per patch, multiplied out.
    (cost,) = [record.getMessage() for record in caplog.records if record.name == "mammo_ray.heatmaps"]
    assert re.search(r"heatmaps on CPU: \d+\.\d+ s per patch measured here .* at scale 0\.5 is about \d+ patches "
                     r"at stride 70: about \d+\.\d s per image, .* at stride 256 about \d+ patches", cost), cost
    manifest = read_manifest(f"{config.output}/manifest.parquet")
    images = len(manifest)
    # One pass for ingest, the extractor, the heatmaps and the image-only zero-shot model: each image decoded once;
    # then one for the outputs that read the stored heatmaps (the image+heatmaps extractor and zero-shot model).
    assert first.counts["pass_images"] == images >= 4 and first.counts["pass_decoded"] == 2 * images
    assert first.counts["pass_outputs"] == 6
    assert first.counts["embedded:nyu_lcc_heatmaps"] == first.counts["zero_shot_heatmaps_scored"] == images - 1
    assert first.counts["heatmaps_computed"] == images - 1 and first.counts["heatmaps_errors"] == 1, str(first.counts)
    # The blank image's heatmaps are an errors row, and so is it for both outputs that read them, saying why.
    heatmaps_errors = storage.read_table(tables.errors_uri(config.output, "heatmaps")).to_pandas()
    assert heatmaps_errors["image_id"].tolist() == [BLANK]
    for stage in ("embed:nyu_lcc_heatmaps", "zero_shot_heatmaps"):
        errors = storage.read_table(tables.errors_uri(config.output, stage)).to_pandas()
        assert errors["image_id"].tolist() == [BLANK], stage
        assert errors["error_type"].tolist() == ["MissingHeatmapsError"], stage
        assert "errors/heatmaps.parquet" in errors["message"].iloc[0], stage
    # Figure 2 of the highest-BI-RADS image of each view, drawn from the stored heatmaps, with what it shows.
    drawn = json.loads(Path(figure_uri(config.output), "figure.json").read_text())
    assert first.counts["heatmaps_figure_images"] == len(drawn["image_ids"]) == 2
    assert drawn["key"] == read_provenance_key(config) and Path(figure_uri(config.output), "figure.png").stat().st_size

    rows = read_heatmaps(config.output, manifest, config.heatmaps)
    assert sorted(rows["image_id"]) == sorted(set(manifest["image_id"]) - {BLANK})
    for row in rows.itertuples():
        grid = PatchGrid.over(row.crop_height, row.crop_width, stride=70)
        assert len(row.malignant) == len(row.benign) == grid.count > 1
        benign, malignant = heatmap_images(row)
        assert benign.shape == malignant.shape == (row.crop_height, row.crop_width)
        assert malignant.min() >= 0 and malignant.max() <= 1
        np.testing.assert_allclose(malignant[:1, :1], row.malignant[0], atol=1e-6)  # only patch 0 covers (0, 0)

    # Another stride: the heatmaps and what reads them (the image+heatmaps extractor and zero-shot model) are
    # computed again, nothing else (an output resuming beside complete ones: tests/test_image_pass.py).
    coarse = HeatmapsConfig(**{**HEATMAPS, "stride": 35})
    again = run_study(_config(tmp_path, stride=35), stages)
    # (The manifest stage reads a given manifest again every run: only a synthetic cohort is fingerprinted.)
    assert again.ran == ["manifest", "heatmaps", "embed", "zero_shot"] and again.skipped == ["ingest"]
    assert (again.counts["heatmaps_computed"], again.counts["heatmaps_skipped"]) == (images - 1, 0)
    assert (again.counts["embedded:nyu_lcc_heatmaps"], again.counts["zero_shot_heatmaps_scored"]) == (
        images - 1, images - 1)
    # (The blank image, an errors row of every output, is tried again: neither computed nor skipped.)
    assert (again.counts["embedded:imagenet_resnet18"], again.counts["skipped:imagenet_resnet18"]) == (0, images - 1)
    assert (again.counts["zero_shot_scored"], again.counts["zero_shot_skipped"]) == (0, images - 1)
    strided = read_heatmaps(config.output, manifest, coarse)
    assert (strided["stride"] == 35).all() and (strided["malignant"].map(len) > rows["malignant"].map(len)).all()

    # Figure 2 follows what it shows: another image asked for is stale until the heatmaps stage draws it again
    # (from the stored heatmaps: nothing is computed), and the report then shows it as current.
    from mammo_ray.current import CurrentInputs
    from mammo_ray.stages.report import _current_figure_2

    other_image = manifest.loc[manifest["image_id"] != BLANK, "image_id"].iloc[-1]
    chosen = _config(tmp_path, stride=35, figure_images=[other_image])
    figure, problem = _current_figure_2(CurrentInputs(chosen))
    assert figure is None and "out of date" in problem
    redrawn = run_study(chosen, stages)
    assert redrawn.ran == ["manifest", "heatmaps"] and redrawn.counts["heatmaps_computed"] == 0
    drawn = json.loads(Path(figure_uri(config.output), "figure.json").read_text())
    assert drawn["image_ids"] == [other_image] == chosen.heatmaps.figure_images
    assert _current_figure_2(CurrentInputs(chosen)) == (Path(figure_uri(config.output), "figure.png").read_bytes(),
                                                        None)
