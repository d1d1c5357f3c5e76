"""The image pass: ingest, several extractors and zero-shot over one read and decode of each image."""

from __future__ import annotations

import shutil
import warnings

import pandas as pd
import pytest

from mammo_ray import storage, tables
from mammo_ray.compare import compare_outputs
from mammo_ray.config import EmbedConfig, ExtractorConfig, IngestConfig, ZeroShotConfig
from mammo_ray.datasets.synthetic import SyntheticSource, generate_cohort
from mammo_ray.stages.embed import EmbedTask, read_embeddings, run_embed
from mammo_ray.stages.inference import run_pass
from mammo_ray.stages.ingest import run_ingest
from mammo_ray.stages.zero_shot import ZeroShotTask, read_zero_shot, run_zero_shot

pytestmark = pytest.mark.usefixtures("ray_session")

OPTIONS = EmbedConfig(batch_size=4)
READ = IngestConfig(batch_size=2, rows_per_block=4)
EXTRACTORS = [
    ExtractorConfig(name="imagenet_resnet18", weights="random-init:1", input_size=64),
    # The same NYU preprocessing (scale, source, tta): one prepared input serves both.
    ExtractorConfig(name="nyu_lcc", weights="random-init:2", nyu_scale=0.125),
    ExtractorConfig(name="nyu_avg", weights="random-init:2", nyu_scale=0.125, pool="4x4"),
]
ZERO_SHOT_CONFIG = ZeroShotConfig(weights="random-init:2", nyu_scale=0.125)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, mini_mias_dir) -> pd.DataFrame:
    """Synthetic DICOMs, one corrupt file (an error of every output) and one PNG without a known side (an
    error of zero-shot only: no head fits it; the extractors embed it)."""
    root = tmp_path_factory.mktemp("pass-cohort")
    cohort = generate_cohort(str(root / "cohort"), SyntheticSource(patients=2, seed=4, rows=256))
    corrupt = root / "corrupt.dcm"
    corrupt.write_bytes(b"DICM but not really")
    png = root / "sideless.png"
    shutil.copy(mini_mias_dir / "mdb001.png", png)
    extra = cohort.iloc[[0, 0]].assign(image_id=["x/corrupt", "x/sideless"], uri=[str(corrupt), str(png)],
                                       laterality=[None, None], view=[None, None])
    return pd.concat([cohort, extra], ignore_index=True)


def _tasks() -> list:
    return [*(EmbedTask(spec) for spec in EXTRACTORS), ZeroShotTask(ZERO_SHOT_CONFIG)]


def test_one_pass_writes_what_separate_stages_write_and_decodes_each_image_once(manifest, tmp_path):
    together, apart = str(tmp_path / "one-pass"), str(tmp_path / "separate")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_pass(manifest, together, _tasks(), OPTIONS, READ, ingest=True)
    assert not [w for w in caught if "ray_remote_args" in str(w.message)]  # named parameters only (Ray 2.64)

    readable = len(manifest) - 1
    assert (result.images, result.decoded) == (len(manifest), readable)  # once each; the corrupt one fails
    # Per image: ResNet-18, then the CC and the MLO trunk once each for nyu_lcc, nyu_avg and zero-shot
    # (same weights, same windows), where the outputs alone would run five forwards.
    assert result.forwards == 3 * readable
    assert result.ingest is not None and (result.ingest.images, result.ingest.errors) == (readable, 1)
    assert [(r.written, r.skipped, r.errors) for r in result.runs] == [(readable, 0, 1)] * 3 + [(readable - 1, 0, 2)]

    run_ingest(manifest, apart, READ)
    for spec in EXTRACTORS:
        run_embed(manifest, apart, spec, OPTIONS, READ)
    run_zero_shot(manifest, apart, ZERO_SHOT_CONFIG, OPTIONS, READ)
    compared = compare_outputs(together, apart, atol=1e-5)
    assert all(r.equal for r in compared), [(r.table, r.problems) for r in compared if not r.equal]
    assert {r.table for r in compared} >= {"ingest/images.parquet", "errors/zero_shot.parquet",
                                           "errors/embed-nyu_lcc.parquet", "zero_shot/_index.parquet"}

    # The side-less PNG: embedded by every extractor, an errors row of zero-shot alone.
    errors = storage.read_table(tables.errors_uri(together, "zero_shot")).to_pandas()
    assert dict(zip(errors["image_id"], errors["error_type"], strict=True)) == {
        "x/corrupt": "DecodeError", "x/sideless": "UnknownLateralityError"}
    for spec in EXTRACTORS:
        assert "x/sideless" in set(read_embeddings(together, manifest, spec, READ)["image_id"])
    assert "x/sideless" not in set(read_zero_shot(together, manifest, ZERO_SHOT_CONFIG, READ)["image_id"])


def test_each_output_resumes_from_what_it_has_and_a_complete_pass_decodes_nothing(manifest, tmp_path):
    output = str(tmp_path / "out")
    first, second = EXTRACTORS[0], EXTRACTORS[1]
    half = manifest.iloc[: len(manifest) // 2]
    run_embed(manifest, output, second, OPTIONS, READ)  # one output complete ...
    run_embed(half, output, first, OPTIONS, READ)  # ... the other interrupted half-way

    resumed = run_pass(manifest, output, [EmbedTask(first), EmbedTask(second)], OPTIONS, READ)
    missing = len(manifest) - len(half) - 1  # the corrupt image is never stored
    assert [(r.written, r.skipped) for r in resumed.runs] == [(missing, len(half)), (0, len(manifest) - 1)]
    assert resumed.decoded == missing  # only images some output still needs are decoded

    again = run_pass(manifest, output, [EmbedTask(first), EmbedTask(second)], OPTIONS, READ)
    assert [r.written for r in again.runs] == [0, 0] and again.decoded == 0
    for spec in (first, second):
        assert len(read_embeddings(output, manifest, spec, READ)) == len(manifest) - 1
