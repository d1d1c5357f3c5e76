"""Storage that fails (issue 7): the fault-injecting proxy itself, the library's S3 layer through it, and
the whole study through it, whose outputs must equal those of a clean run.

The faults come from `tests/flaky_s3.py`: a seeded share of requests answers 503 SlowDown / 500
InternalError or has its connection reset, another share is only delayed. No fault is retried by the
proxy or by these tests: surviving them is the library's job (botocore retries in storage._s3_filesystem).
"""

from __future__ import annotations

import http.client
import json
import os
import posixpath
import subprocess
import sys
import time
import urllib.parse
import zlib
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError

from mammo_ray import feature_store, schemas, storage
from mammo_ray import tables as tables_contract
from mammo_ray.config import parse_config
from mammo_ray.s3_settings import S3Config
from mammo_ray.stages.embed import embedding_key
from mammo_ray.stages.zero_shot import zero_shot_key
from mammo_ray.study import run_study
from tests.flaky_s3 import FlakyS3Proxy

REPO = Path(__file__).resolve().parent.parent
STAGES = ["manifest", "ingest", "embed", "zero_shot", "grid"]


def _client(endpoint: str, attempts: int = 10) -> BaseClient:
    return boto3.client("s3", endpoint_url=endpoint,
                        config=Config(retries={"total_max_attempts": attempts, "mode": "standard"}))


def _bucket(s3_bucket: str) -> str:
    return s3_bucket.removeprefix("s3://")


def test_proxy_injects_faults_and_otherwise_forwards_faithfully(s3_endpoint, s3_bucket):
    bucket = _bucket(s3_bucket)
    blobs = {"empty": b"", "small.txt": b"hello", "bytes.bin": bytes(range(256)) * 4, "big.bin": os.urandom(300_000)}
    with FlakyS3Proxy(s3_endpoint, failure_rate=0.35, delay_rate=0.15, seed=7) as proxy:
        client = _client(proxy.endpoint)
        for key, data in blobs.items():
            client.put_object(Bucket=bucket, Key=f"p/{key}", Body=data, Metadata={"origin": key})
        for key, data in blobs.items():
            got = client.get_object(Bucket=bucket, Key=f"p/{key}")
            assert got["Body"].read() == data and got["Metadata"] == {"origin": key}  # body and headers
            assert client.head_object(Bucket=bucket, Key=f"p/{key}")["ContentLength"] == len(data)
        ranged = client.get_object(Bucket=bucket, Key="p/big.bin", Range="bytes=10-19")
        assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206 and ranged["Body"].read() == blobs["big.bin"][10:20]
        listed = client.list_objects_v2(Bucket=bucket, Prefix="p/")["Contents"]
        assert sorted(o["Key"] for o in listed) == sorted(f"p/{k}" for k in blobs)
        client.delete_object(Bucket=bucket, Key="p/empty")
        with pytest.raises(ClientError, match="404"):
            client.head_object(Bucket=bucket, Key="p/empty")
        stats = proxy.stats
    assert stats.failures > 0 and stats.resets > 0 and stats.delays > 0
    assert stats.requests == stats.forwarded + stats.failures + stats.resets and stats.upstream_errors == 0
    assert {"PUT", "GET", "HEAD"} & set(stats.faulted_methods)
    # What the proxy stored is what moto holds: nothing was written twice or half.
    direct = boto3.client("s3", endpoint_url=s3_endpoint)
    assert direct.get_object(Bucket=bucket, Key="p/big.bin")["Body"].read() == blobs["big.bin"]


def test_a_client_without_retries_sees_each_kind_of_fault(s3_endpoint, s3_bucket):
    """The faults are real on the wire: S3 error codes a client parses, and resets it cannot read past."""
    bucket = _bucket(s3_bucket)
    seen: set[str] = set()
    with FlakyS3Proxy(s3_endpoint, failure_rate=1.0, delay_rate=0.0, seed=1) as proxy:
        client = _client(proxy.endpoint, attempts=1)
        for _ in range(12):
            try:
                client.put_object(Bucket=bucket, Key="never", Body=b"x")
            except ClientError as error:
                seen.add(error.response["Error"]["Code"])
            except ConnectionClosedError:
                seen.add("reset")
        assert proxy.stats.forwarded == 0
    assert seen == {"SlowDown", "InternalError", "reset"}
    with pytest.raises(ClientError, match="404"):  # a faulted PUT never reached the store
        boto3.client("s3", endpoint_url=s3_endpoint).head_object(Bucket=bucket, Key="never")


def _chunked(payload: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(payload), size):
        yield payload[start:start + size]


def test_proxy_forwards_chunked_and_aws_chunked_bodies_as_raw_bytes(s3_endpoint, s3_bucket):
    bucket = _bucket(s3_bucket)
    data = os.urandom(70_000)
    checksum = b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    aws_chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in _chunked(data, 16_384))
    aws_chunked += f"0\r\nx-amz-checksum-crc32:{checksum}\r\n\r\n".encode()
    aws_headers = {"Content-Encoding": "aws-chunked", "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                   "x-amz-decoded-content-length": str(len(data)), "x-amz-trailer": "x-amz-checksum-crc32"}
    with FlakyS3Proxy(s3_endpoint, failure_rate=0.0, delay_rate=0.0) as proxy:
        endpoint = urllib.parse.urlsplit(proxy.endpoint)
        connection = http.client.HTTPConnection(endpoint.hostname, endpoint.port, timeout=30)
        uploads = {  # key -> (body, headers, let http.client add the chunked framing)
            "chunked": (_chunked(data, 10_000), {"Transfer-Encoding": "chunked"}, True),
            "aws-chunked-in-chunked": (_chunked(aws_chunked, 9_999), {**aws_headers, "Transfer-Encoding": "chunked"},
                                       True),
            "aws-chunked": (aws_chunked, aws_headers, False),
        }
        for key, (body, headers, encode) in uploads.items():  # one keep-alive connection for all three
            connection.request("PUT", f"/{bucket}/{key}", body=body, headers=headers, encode_chunked=encode)
            response = connection.getresponse()
            assert response.status == 200, response.read()
            response.read()
        connection.close()
        assert proxy.stats.forwarded == len(uploads)
    direct = boto3.client("s3", endpoint_url=s3_endpoint)
    for key in uploads:
        assert direct.get_object(Bucket=bucket, Key=key)["Body"].read() == data, key


def test_the_storage_layer_survives_a_flaky_store(s3_endpoint, s3_bucket):
    """Every storage call the stages make, through s3fs with the library's own retry settings."""
    table = pa.table({"image_id": [f"i{n}" for n in range(500)], "value": np.arange(500, dtype=np.float32)})
    with FlakyS3Proxy(s3_endpoint, failure_rate=0.3, delay_rate=0.1, seed=3) as proxy:
        s3 = S3Config(endpoint_url=proxy.endpoint)
        for n in range(2):
            root = f"{s3_bucket}/layer/{n}"
            storage.write_bytes(f"{root}/a.dcm", b"dicom-%d" % n, s3)
            storage.write_table(table, f"{root}/t/part-0.parquet", s3)
            assert storage.exists(f"{root}/a.dcm", s3) and not storage.exists(f"{root}/absent", s3)
            assert storage.read_bytes(f"{root}/a.dcm", s3) == b"dicom-%d" % n
            assert storage.read_table(f"{root}/t", s3).equals(table)
            assert storage.list_files(root, extensions=[".dcm"], s3=s3) == [f"{root}/a.dcm"]
            storage.remove(f"{root}/t", recursive=True, s3=s3)
            assert not storage.exists(f"{root}/t/part-0.parquet", s3)
        stats = proxy.stats
    assert stats.failures > 0 and stats.resets > 0


# --- the promise: the study on a flaky store writes what it writes on a clean one -------------------------

def _study_config(output: str, endpoint: str | None = None) -> dict:
    config: dict = {
        "name": "flaky-storage",
        "output": output,
        "data": {"synthetic": {"patients": 6, "rows": 96}},
        "embed": {"extractors": [{"name": "imagenet_resnet18", "input_size": 64}]},
        "zero_shot": {"nyu_scale": 0.125},
        "grid": {"cv_folds": 3, "bootstrap": 10, "classifiers": ["logreg"], "selection": ["none"],
                 "balancing": ["none", "smote"], "smote": {"k_neighbors": 1}, "permutations": 2,
                 "oof": {"repeats": 1}},
    }
    if endpoint:
        config["storage"] = {"s3": {"endpoint_url": endpoint}}
    return config


def _run_in_own_driver(config: dict, folder: Path) -> dict:
    """Run the study with `mammo-ray run` in a driver process of its own, joined to the session's Ray.

    A new driver is a new Ray job, so its workers get the config's storage settings through the job's
    runtime environment, as under `ray job submit`. (This test process already holds a Ray whose workers
    were started with AWS_ENDPOINT_URL pointing at moto; a run_study here would reach them unchanged.)
    """
    import ray

    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL_S3"}
    env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    completed = subprocess.run(
        [sys.executable, "-m", "mammo_ray.cli", "run", "--config", str(path), "--stages", *STAGES],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=400, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _relative(uri: str, output: str) -> str:
    return uri[len(output) + 1:]


def _tables(output: str) -> dict[str, str]:
    """Every Parquet table under a study output by its relative path; a folder of part files is one table."""
    tables = {}
    for uri in storage.list_files(output, extensions=[".parquet"]):
        folder, name = posixpath.split(uri[len(output) + 1:])
        relative = folder if name.startswith("part-") else posixpath.join(folder, name)
        tables[relative] = storage.join(output, relative)
    return tables


#: Columns that order a table's rows: image tables by image, feature stores by their key (no image ids).
_ROW_KEYS = ("image_id", "extractor", "selection", "balancing", "classifier", "protocol", "stage",
             *schemas.FEATURE_KEY_COLUMNS)


def _comparable(table: pa.Table, output: str) -> pd.DataFrame:
    """A table with what may differ between equal runs removed: timings, and the output prefix in URIs."""
    frame = table.to_pandas()
    frame = frame.drop(columns=[c for c in frame.columns if c.endswith("seconds")])
    for column in frame.columns:
        values = frame[column]
        if values.dtype.kind not in "biufcmM":  # strings and nested values
            frame[column] = values.map(
                lambda v: v.replace(output, "<output>") if isinstance(v, str)
                else v.tolist() if isinstance(v, np.ndarray) else v
            )
    keys = [c for c in _ROW_KEYS if c in frame.columns]
    return frame.sort_values(keys).reset_index(drop=True) if keys else frame


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_the_study_on_a_flaky_store_writes_what_a_clean_run_writes(s3_endpoint, s3_bucket, tmp_path):
    clean_out, flaky_out = f"{s3_bucket}/clean", f"{s3_bucket}/flaky"
    started = time.perf_counter()
    clean = run_study(parse_config(_study_config(clean_out)), STAGES)
    clean_seconds = time.perf_counter() - started
    with FlakyS3Proxy(s3_endpoint, failure_rate=0.1, delay_rate=0.1, seed=11) as proxy:
        started = time.perf_counter()
        flaky = _run_in_own_driver(_study_config(flaky_out, proxy.endpoint), tmp_path)
        flaky_seconds = time.perf_counter() - started
        stats = proxy.stats
    print(f"\nclean {clean_seconds:.1f} s, flaky {flaky_seconds:.1f} s; proxy: {stats.requests} requests, "
          f"{stats.failures} 5xx, {stats.resets} resets, {stats.delays} delays, {dict(stats.faulted_methods)}")

    assert clean.ran == STAGES and flaky["ran"] == STAGES
    assert flaky["counts"] == clean.counts
    assert clean.counts["ingest_errors"] == 0 and clean.counts["grid_cells_failed"] == 0
    assert stats.failures > 0 and stats.resets > 0 and stats.delays > 0 and stats.upstream_errors == 0
    # The workers went through the proxy too: they, not the driver, read the images.
    images_read = {path for path in stats.forwarded_paths("GET") if path.endswith(".dcm")}
    assert len(images_read) == clean.counts["manifest_rows"]

    tables = _tables(clean_out)
    print(f"tables compared: {sorted(tables)}")
    assert set(tables) == set(_tables(flaky_out))
    config = parse_config(_study_config(clean_out))
    (spec,) = config.embed.extractors
    read = config.ingest
    model_outputs = {tables_contract.embeddings_uri(clean_out, spec.name): embedding_key(spec, read),
                     tables_contract.zero_shot_uri(clean_out): zero_shot_key(config.zero_shot, read)}
    # The feature store folder of each model output under the study's model key, and its index.
    features = {_relative(feature_store.key_uri(folder, key), clean_out) for folder, key in model_outputs.items()}
    indexes = {_relative(tables_contract.index_uri(folder), clean_out) for folder in model_outputs}
    assert {"manifest.parquet", "ingest/images.parquet", "errors/ingest.parquet",
            f"errors/embed-{spec.name}.parquet", "errors/zero_shot.parquet", "results/grid.parquet",
            *indexes, *features} <= set(tables)
    for relative in sorted(tables):
        expected = _comparable(storage.read_table(storage.join(clean_out, relative)), clean_out)
        actual = _comparable(storage.read_table(storage.join(flaky_out, relative)), flaky_out)
        if relative in features:  # a feature store: one row per key, no image ids
            key = list(schemas.FEATURE_KEY_COLUMNS)
            assert not actual.duplicated(subset=key).any(), f"{relative}: a retried write left duplicate rows"
        elif relative.startswith(("manifest", "ingest/", "embeddings/", "zero_shot")):
            assert actual["image_id"].is_unique, f"{relative}: a retried write left duplicate rows"
        # Empty only where nothing went wrong (errors), nothing is to compare (one extractor: no pair) or no
        # external validation was asked for (one data source).
        may_be_empty = relative.startswith("errors/") or relative in ("results/comparisons.parquet",
                                                                       "results/external.parquet")
        assert len(expected) or may_be_empty, f"{relative} is empty: nothing was compared"
        pd.testing.assert_frame_equal(actual, expected, check_exact=False, rtol=1e-5, atol=1e-6, obj=relative)
