"""The image pass: ingest, several extractors and zero-shot over one read and decode of each image."""

from __future__ import annotations

import shutil
import warnings

import pandas as pd
import pytest

from mammo_ray import storage, tables
from mammo_ray.compare import compare_outputs
from mammo_ray.config import EmbedConfig, ExtractorConfig, IngestConfig, ZeroShotConfig, parse_config
from mammo_ray.datasets.manifest import write_manifest
from mammo_ray.datasets.synthetic import SyntheticSource, generate_cohort
from mammo_ray.stages.embed import EmbedTask, read_embeddings, run_embed
from mammo_ray.stages.inference import IngestedContent, run_pass
from mammo_ray.stages.ingest import run_ingest
from mammo_ray.stages.zero_shot import ZeroShotTask, read_zero_shot, run_zero_shot
from mammo_ray.study import run_study

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
    counts = [(r.written, r.skipped, r.errors) for r in result.runs.values()]
    assert counts == [(readable, 0, 1)] * 3 + [(readable - 1, 0, 2)]

    # Apart: ingest alone, zero-shot alone, the extractors without them (sharing the NYU trunks only between
    # nyu_lcc and nyu_avg).
    run_ingest(manifest, apart, READ)
    run_pass(manifest, apart, [EmbedTask(spec) for spec in EXTRACTORS], OPTIONS, READ)
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
    assert [(r.written, r.skipped) for r in resumed.runs.values()] == [(missing, len(half)),
                                                                     (0, len(manifest) - 1)]
    assert resumed.decoded == missing  # only images some output still needs are decoded

    again = run_pass(manifest, output, [EmbedTask(first), EmbedTask(second)], OPTIONS, READ)
    assert [r.written for r in again.runs.values()] == [0, 0] and again.decoded == 0
    for spec in (first, second):
        assert len(read_embeddings(output, manifest, spec, READ)) == len(manifest) - 1


def test_images_added_to_an_output_are_the_only_ones_decoded_and_ingest_writes_what_a_fresh_run_writes(tmp_path):
    cohort = generate_cohort(str(tmp_path / "cohort"), SyntheticSource(patients=9, seed=5, rows=96))
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(b"DICM but not really")  # an errors row in both runs: read again, never recorded
    cohort = pd.concat([cohort, cohort.iloc[[0]].assign(image_id="x/corrupt", uri=str(corrupt))], ignore_index=True)
    held_back = cohort["patient_id"] == cohort["patient_id"].iloc[-2]  # the last patient's 4 images
    manifest_uri = str(tmp_path / "manifest.parquet")

    def config(name: str):
        return parse_config({"name": name, "output": str(tmp_path / name), "data": {"manifest": manifest_uri},
                             "embed": {"extractors": [{"name": "imagenet_resnet18", "input_size": 32}]}})

    stages = ["manifest", "ingest", "embed"]
    grown, fresh = config("grown"), config("fresh")
    write_manifest(cohort[~held_back], manifest_uri)
    assert run_study(grown, stages).counts["pass_decoded"] == 32
    write_manifest(cohort, manifest_uri)
    added = run_study(grown, stages)
    assert added.ran == stages and added.counts["pass_decoded"] == 4  # only the new images
    assert (added.counts["ingested_images"], added.counts["ingest_errors"]) == (36, 1)
    assert run_study(fresh, stages).counts["pass_decoded"] == 36

    for uri in (tables.ingest_uri, lambda output: tables.errors_uri(output, "ingest")):
        kept, computed = (storage.read_table(uri(c.output)) for c in (grown, fresh))
        pd.testing.assert_frame_equal(kept.to_pandas(), computed.to_pandas())
        assert tables.provenance_of(kept.schema) == tables.provenance_of(computed.schema)
    assert len(storage.read_table(tables.ingest_uri(grown.output))) == 36


def test_an_ingest_record_stands_for_an_image_only_where_the_files_own_tags_do_not_matter():
    records = pd.DataFrame({"content_sha256": ["tagged", "untagged"], "laterality": ["L", None],
                            "view": ["CC", None]})
    ingested = IngestedContent.of(records)
    assert ("tagged", "R", "MLO") in ingested  # the manifest gives both: the tags are not needed
    # The manifest leaves the side open: "L" may have been the file's tag or an earlier manifest's.
    assert ("tagged", None, "CC") not in ingested
    assert ("untagged", None, None) in ingested  # null there: the manifest's and the tag's
    assert ("unknown", "L", "CC") not in ingested and ("tagged", "L", "CC") not in IngestedContent.of(None)
