"""The output's layout, fit for large runs: the image pass writes one part file per batch (a retried batch
replaces its own) and leaves its feature stores as few files of about `embed.part_bytes`; a compaction cut
short costs nothing; a table is read with one call by pandas, DuckDB and Ray Data; on S3 reading and
compacting a feature store costs one listing and the file transfers, no request per file beyond them."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import boto3
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from mammo_ray import feature_store, storage
from mammo_ray.config import EmbedConfig, ExtractorConfig
from mammo_ray.datasets.synthetic import SyntheticSource, generate_cohort
from mammo_ray.stages.embed import embedding_key, embeddings_uri, read_embeddings, run_embed
from tests.flaky_s3 import FlakyS3Proxy

pytestmark = pytest.mark.usefixtures("ray_session")

SPEC = ExtractorConfig(name="imagenet_resnet18", input_size=32, weights="random-init:1")
#: Smaller than any part file: nothing is merged, the folder keeps one file per batch.
NO_MERGING = 2**10


def _parts(output: Path) -> list[Path]:
    return sorted(Path(feature_store.key_uri(embeddings_uri(str(output), SPEC.name), embedding_key(SPEC)))
                  .glob("part-*.parquet"))


def _vectors(output: Path, manifest: pd.DataFrame) -> np.ndarray:
    return np.stack(read_embeddings(str(output), manifest, SPEC)["embedding"])


@pytest.fixture(scope="module")
def batches(tmp_path_factory) -> tuple[pd.DataFrame, Path]:
    """A cohort embedded two images a batch, without merging: one part file per batch."""
    folder = tmp_path_factory.mktemp("layout")
    manifest = generate_cohort(str(folder / "cohort"), SyntheticSource(patients=6, seed=2, rows=64))
    run_embed(manifest, str(folder / "batches"), SPEC, EmbedConfig(batch_size=2, part_bytes=NO_MERGING))
    return manifest, folder / "batches"


def test_the_pass_leaves_files_of_the_target_size_with_the_same_rows(batches, tmp_path):
    manifest, unmerged = batches
    parts = _parts(unmerged)
    assert len(parts) == len(manifest) // 2  # one file per batch of two

    merged = tmp_path / "merged"
    run_embed(manifest, str(merged), SPEC, EmbedConfig(batch_size=2))  # the default target, 128 MiB
    assert len(_parts(merged)) == 1
    np.testing.assert_array_equal(_vectors(merged, manifest), _vectors(unmerged, manifest))

    # A target of about three batch files: groups of three files each, the rows unchanged.
    target = 3 * int(np.median([path.stat().st_size for path in parts]))
    shutil.copytree(unmerged, tmp_path / "grouped")
    done = feature_store.compact(embeddings_uri(str(tmp_path / "grouped"), SPEC.name), embedding_key(SPEC), target)
    assert (done.files_before, done.merged) == (len(parts), len(parts))
    assert 1 < done.files_after <= -(-len(parts) // 2) and len(_parts(tmp_path / "grouped")) == done.files_after
    np.testing.assert_array_equal(_vectors(tmp_path / "grouped", manifest), _vectors(unmerged, manifest))


def test_a_compaction_cut_short_leaves_rows_readers_take_once_and_the_next_one_cleans(batches, tmp_path):
    manifest, unmerged = batches
    output = tmp_path / "cut"
    shutil.copytree(unmerged, output)
    parts = _parts(output)
    # What a compaction killed between writing its merged file and removing the small ones leaves behind.
    whole = pq.ParquetDataset([str(path) for path in parts]).read()
    pq.write_table(whole, parts[0].parent / "part-merged-before-the-cut.parquet")
    assert pq.ParquetDataset([str(path) for path in _parts(output)]).read().num_rows == 2 * len(manifest)

    np.testing.assert_array_equal(_vectors(output, manifest), _vectors(unmerged, manifest))  # each image once
    done = feature_store.compact(embeddings_uri(str(output), SPEC.name), embedding_key(SPEC), 2**27)
    assert done.files_after == 1
    (left,) = _parts(output)
    assert pq.read_metadata(left).num_rows == len(manifest)
    np.testing.assert_array_equal(_vectors(output, manifest), _vectors(unmerged, manifest))


def test_pandas_duckdb_and_ray_data_read_a_table_with_one_call(batches):
    manifest, output = batches
    store = str(_parts(output)[0].parent)
    expected = sorted(read_embeddings(str(output), manifest, SPEC)["content_sha256"])

    assert sorted(pd.read_parquet(store)["content_sha256"]) == expected
    assert sorted(ray.data.read_parquet(store).to_pandas()["content_sha256"]) == expected
    rows = duckdb.sql(f"select content_sha256 from read_parquet('{store}/*.parquet')").fetchall()
    assert sorted(row[0] for row in rows) == expected
    # The errors folder of an output reads the same way: every stage's rows, one call.
    assert list(pd.read_parquet(output / "errors").columns[:3]) == ["image_id", "uri", "stage"]


def test_on_s3_a_feature_store_is_read_and_compacted_without_a_request_per_file(batches, s3_endpoint, monkeypatch):
    manifest, output = batches
    bucket = "layout-store"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    table_uri = embeddings_uri(f"s3://{bucket}/study", SPEC.name)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for path in output.rglob("*.parquet"):
        client.upload_file(str(path), bucket, f"study/{path.relative_to(output).as_posix()}")
    parts = len(_parts(output))
    key = embedding_key(SPEC)

    with FlakyS3Proxy(s3_endpoint, failure_rate=0.0, delay_rate=0.0) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        read = storage.read_table(feature_store.key_uri(table_uri, key))
        reading = Counter(verb for verb, _, _ in proxy.stats.log)
        done = feature_store.compact(table_uri, key, 2**27)
        compacting = Counter(verb for verb, _, _ in proxy.stats.log) - reading
        vectors = np.stack(feature_store.read_view(table_uri, manifest, key, "embed")["embedding"])

    assert read.num_rows == len(manifest) and parts > 10
    assert reading == {"GET": parts + 1}  # one listing, one transfer per file, no HEAD
    assert (done.files_before, done.files_after) == (parts, 1)
    # A listing (and the folder's existence), the transfers, one merged file written, one batched delete.
    assert compacting["HEAD"] <= 2 and compacting["GET"] <= parts + 3, compacting
    assert compacting["POST"] <= 2 and compacting["DELETE"] == 0, compacting
    np.testing.assert_array_equal(vectors, _vectors(output, manifest))
    assert pa.types.is_fixed_size_list(read.schema.field("embedding").type)
