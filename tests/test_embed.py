"""The embedding stage on Ray Data: every extractor, incremental reruns, bad images, the GPU path."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from mammo_ray import feature_store, schemas, storage
from mammo_ray.config import EmbedConfig, ExtractorConfig
from mammo_ray.datasets.manifest import validate_manifest
from mammo_ray.datasets.synthetic import SyntheticSource, generate_cohort
from mammo_ray.models.catalogue import EXTRACTORS, dim, model_id, preprocess_id
from mammo_ray.stages.embed import embedding_key, errors_uri, read_embeddings, run_embed

pytestmark = pytest.mark.usefixtures("ray_session")

COHORT = SyntheticSource(patients=2, seed=11, rows=256)
OPTIONS = EmbedConfig(batch_size=4)


def _spec(name: str, **overrides) -> ExtractorConfig:
    settings = {"weights": "random-init:3", "input_size": 64, "nyu_scale": 0.125, **overrides}
    return ExtractorConfig(name=name, **settings)


@pytest.fixture(scope="module")
def s3_manifest(s3_endpoint) -> tuple[str, pd.DataFrame]:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="embed-cohort")
    root = "s3://embed-cohort/cohort"
    return root, generate_cohort(root, COHORT)


# The image+heatmaps extractors read the heatmaps stage's store: tests/test_heatmaps_pass.py runs them.
@pytest.mark.parametrize("name", sorted(name for name, (family, _) in EXTRACTORS.items() if family != "nyu_heatmaps"))
def test_every_extractor_embeds_the_cohort_from_s3(name, s3_manifest, s3_bucket):
    _, manifest = s3_manifest
    spec = _spec(name, pool="4x4" if name == "nyu_avg" else "global")
    result = run_embed(manifest, s3_bucket + "/out", spec, OPTIONS)
    assert (result.embedded, result.skipped, result.errors) == (len(manifest), 0, 0)

    key = embedding_key(spec)
    store = feature_store.key_uri(result.uri, key)
    table = storage.read_table(store)
    assert table.schema.equals(schemas.embeddings_schema(dim(spec)), check_metadata=False)
    assert table.num_rows == len(manifest)
    stored = table.to_pandas()
    assert "image_id" not in stored and "label" not in stored  # a feature store: keyed by content, not by image
    assert set(stored["weights_id"]) == {"random-init:3"} and set(stored["model_id"]) == {model_id(spec)}
    frame = read_embeddings(s3_bucket + "/out", manifest, spec)
    vectors = np.stack(frame["embedding"])
    assert vectors.shape == (len(manifest), dim(spec)) and np.isfinite(vectors).all()
    assert frame["breast_share"].between(0.05, 1.0).all()  # every image records its breast's share of the input
    assert read_embeddings(s3_bucket + "/out", manifest, spec, columns=["breast_share"]).columns.isin(
        ["embedding"]).sum() == 0  # a report reads the share without the vectors
    assert set(frame["weights_id"]) == {"random-init:3"}
    assert set(frame["preprocess_id"]) == {key.preprocess_id} and preprocess_id(spec) in key.preprocess_id
    assert frame["image_id"].tolist() == sorted(manifest["image_id"])
    assert frame["label"].tolist() == manifest.sort_values("image_id")["label"].tolist()
    assert len(set(map(bytes, vectors.astype(np.float32)))) == len(manifest)  # images differ, so do vectors


def test_new_images_add_exactly_their_rows(s3_manifest, s3_bucket, tmp_path):
    _, manifest = s3_manifest
    spec = _spec("imagenet_resnet18")
    out = s3_bucket + "/incremental"
    first = run_embed(manifest.iloc[:-4], out, spec, OPTIONS)
    assert first.embedded == len(manifest) - 4

    # (A rerun of the same images computes nothing: tests/test_image_pass.py; other weights make new rows:
    # tests/test_current_inputs.py.)
    grown = run_embed(manifest, out, spec, OPTIONS)
    assert (grown.embedded, grown.skipped) == (4, len(manifest) - 4)
    rows = read_embeddings(out, manifest, spec)
    assert len(rows) == len(manifest) and rows["image_id"].is_unique
    assert storage.read_table(feature_store.key_uri(grown.uri, embedding_key(spec))).num_rows == len(manifest)


def test_unreadable_and_breastless_images_are_error_rows_and_the_rest_is_embedded(s3_manifest, s3_bucket):
    root, manifest = s3_manifest
    black = np.zeros((128, 100), dtype=np.uint16)
    from mammo_ray.datasets.synthetic import synthetic_dicom_bytes

    storage.write_bytes(s3_bucket + "/bad/black.dcm", synthetic_dicom_bytes(
        black, patient_id="synth/BAD", exam_id="synth/BAD_E1", laterality="L", view="CC", spec=COHORT))
    storage.write_bytes(s3_bucket + "/bad/garbage.dcm", b"DICM" * 100)
    bad = pd.DataFrame(
        [
            {"image_id": "bad/black", "uri": s3_bucket + "/bad/black.dcm", "dataset": "bad", "patient_id": "bad/1"},
            {"image_id": "bad/garbage", "uri": s3_bucket + "/bad/garbage.dcm", "dataset": "bad", "patient_id": "bad/1"},
        ]
    )
    mixed = validate_manifest(pd.concat([manifest, bad], ignore_index=True), source="test")
    spec = _spec("nyu_lcc")
    result = run_embed(mixed, s3_bucket + "/mixed", spec, OPTIONS)
    assert (result.embedded, result.errors) == (len(manifest), 2)
    errors = storage.read_table(errors_uri(s3_bucket + "/mixed", spec.name)).to_pandas()
    kinds = dict(zip(errors["image_id"], errors["error_type"], strict=True))
    assert kinds == {"bad/black": "NoBreastFoundError", "bad/garbage": "DecodeError"}
    assert set(errors["stage"]) == {"embed:nyu_lcc"}
    assert all(uri.rsplit("/", 1)[1] in message for uri, message in zip(errors["uri"], errors["message"], strict=True))


GPU_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, pandas as pd, ray
    from ray.util.state import list_actors
    from mammo_ray.config import EmbedConfig, ExtractorConfig
    from mammo_ray.datasets.manifest import read_manifest
    from mammo_ray.stages.embed import read_embeddings, run_embed

    manifest_uri, out = sys.argv[1], sys.argv[2]
    context = ray.init(num_cpus=2, num_gpus=1, include_dashboard=True, log_to_driver=False)
    spec = ExtractorConfig(name="imagenet_resnet18", weights="random-init:3", input_size=64)
    result = run_embed(read_manifest(manifest_uri), out, spec, EmbedConfig(batch_size=4))
    listed = list_actors(address="http://" + context.dashboard_url, detail=True, limit=1000)
    actors = [a for a in listed if "MapWorker" in (a.class_name or "")]
    gpus = sorted({float((a.required_resources or {}).get("GPU", 0)) for a in actors})
    frame = read_embeddings(out, read_manifest(manifest_uri), spec)
    print(json.dumps({"embedded": result.embedded, "actor_gpus": gpus,
                      "vectors": {k: list(map(float, v)) for k, v in zip(frame["image_id"], frame["embedding"])}}))
    ray.shutdown()
    """
)


def test_gpu_path_schedules_actors_with_a_gpu_and_computes_the_same(s3_manifest, tmp_path):
    """A logical GPU on this CPU machine: actors ask for num_gpus=1 and still compute correctly on CPU."""
    import json

    root, manifest = s3_manifest
    script = tmp_path / "gpu_embed.py"
    script.write_text(GPU_SCRIPT)
    completed = subprocess.run(
        [sys.executable, str(script), root + "/manifest.parquet", str(tmp_path / "gpu-out")],
        capture_output=True, text=True, env=dict(os.environ), timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["embedded"] == len(manifest)
    assert report["actor_gpus"] == [1.0]

    cpu = run_embed(manifest, str(tmp_path / "cpu-out"), ExtractorConfig(
        name="imagenet_resnet18", weights="random-init:3", input_size=64), EmbedConfig(batch_size=4, num_gpus=0))
    assert cpu.embedded == len(manifest)
    reference = read_embeddings(str(tmp_path / "cpu-out"), manifest, ExtractorConfig(
        name="imagenet_resnet18", weights="random-init:3", input_size=64))
    for image_id, vector in zip(reference["image_id"], reference["embedding"], strict=True):
        np.testing.assert_allclose(report["vectors"][image_id], vector, rtol=1e-4, atol=1e-5)
