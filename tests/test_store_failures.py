"""A failure of the store is not a bad image: it fails the stage, nothing is recorded as done, and the rerun
does the work. Reads are bounded: a FIFO or an oversized file is an errors row, never a hung or exhausted job."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mammo_ray import storage, tables
from mammo_ray.config import EmbedConfig, ExtractorConfig, IngestConfig
from mammo_ray.datasets.manifest import validate_manifest, write_manifest
from mammo_ray.datasets.synthetic import SyntheticSource, generate_cohort
from mammo_ray.errors import StorageError, StoreUnavailableError
from mammo_ray.image_stream import decode_batch

REPO = Path(__file__).resolve().parent.parent


def _dead_endpoint() -> str:
    """An address where nothing listens: every connection is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.timeout(300)
def test_an_unreachable_store_fails_the_read_instead_of_making_error_rows(s3_bucket, monkeypatch):
    """Connection refused, after the bounded retries: a StoreUnavailableError out of the decode step, where
    a missing file on a live store is an errors row."""
    storage.write_bytes(s3_bucket + "/a.dcm", b"x" * 10)
    manifest = validate_manifest(pd.DataFrame([{"image_id": "a", "uri": s3_bucket + "/a.dcm", "dataset": "d",
                                                "patient_id": "p"}]), source="test")
    absent = manifest.assign(uri=s3_bucket + "/absent.dcm")
    rows = decode_batch(absent, IngestConfig())
    assert rows["error_type"].tolist() == ["StorageError"] and rows["error_message"].str.endswith("not found").all()
    monkeypatch.setenv("AWS_ENDPOINT_URL", _dead_endpoint())
    storage._s3_filesystem.cache_clear()
    try:
        with pytest.raises(StoreUnavailableError, match="storage unavailable.*a.dcm.*EndpointConnectionError"):
            decode_batch(manifest, IngestConfig())
    finally:
        storage._s3_filesystem.cache_clear()


def _client_error(status: int, code: str) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


def _translated(status: int, code: str) -> Exception:
    """A ClientError as s3fs hands it over: translated to an OSError, the ClientError as its cause."""
    from s3fs.errors import translate_boto_error

    return translate_boto_error(_client_error(status, code))


@pytest.mark.parametrize(("error", "store"), [
    (lambda: _translated(503, "SlowDown"), True),  # throttling that outlasted the retries
    (lambda: _translated(500, "InternalError"), True),
    (lambda: _translated(502, "BadGateway"), True),
    (lambda: _translated(403, "ExpiredToken"), True),  # the credentials, not this file
    (lambda: _translated(404, "NoSuchKey"), False),
    (lambda: _translated(403, "AccessDenied"), False),  # one object's permissions
    (lambda: _translated(400, "InvalidObjectState"), False),  # archived: this object only
    (lambda: __import__("botocore.exceptions").exceptions.EndpointConnectionError(endpoint_url="http://x"), True),
    (lambda: __import__("botocore.exceptions").exceptions.ReadTimeoutError(endpoint_url="http://x"), True),
    (lambda: ConnectionResetError(104, "reset"), True),
    (lambda: OSError(28, "No space left on device"), True),
    (lambda: FileNotFoundError(2, "gone"), False),
    (lambda: IsADirectoryError(21, "folder"), False),
])
def test_store_failures_are_told_apart_from_problems_of_one_file(error, store):
    wrapped = storage.wrap_error("s3://b/k", "read", error())
    assert isinstance(wrapped, StoreUnavailableError if store else StorageError)


@pytest.mark.timeout(120)
def test_a_fifo_and_an_oversized_file_are_refused_without_reading_them(tmp_path):
    fifo = tmp_path / "named-pipe.dcm"
    os.mkfifo(fifo)  # opening it for reading would block forever: nobody writes to it
    with pytest.raises(StorageError, match="not a regular file \\(a FIFO\\): not opened"):
        storage.read_bytes(str(fifo))
    big = tmp_path / "big.dcm"
    with open(big, "wb") as handle:
        handle.truncate(3 * 1024 * 1024)  # sparse: 3 MiB on paper
    with pytest.raises(StorageError, match="3145728 bytes exceeds ingest.max_bytes = 1048576"):
        storage.read_bytes(str(big), max_bytes=1024 * 1024)
    assert storage.read_bytes(str(big), max_bytes=4 * 1024 * 1024)[:4] == b"\0\0\0\0"


@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(600)
def test_a_fifo_and_an_oversized_file_are_errors_rows_and_the_good_image_lands(tmp_path, s3_bucket):
    from mammo_ray.stages.embed import read_embeddings, run_embed
    from mammo_ray.stages.ingest import run_ingest

    good = generate_cohort(str(tmp_path / "cohort"), SyntheticSource(patients=1, rows=96)).iloc[:1]
    os.mkfifo(tmp_path / "pipe.dcm")
    with open(tmp_path / "big.dcm", "wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    bad = pd.DataFrame([{"image_id": name, "uri": str(tmp_path / f"{name}.dcm"), "dataset": "x", "patient_id": "p9"}
                        for name in ("pipe", "big")])
    manifest = validate_manifest(pd.concat([good, bad], ignore_index=True), source="test")
    options = IngestConfig(max_bytes=8 * 1024 * 1024)  # the synthetic DICOM is ~20 KiB
    started = time.monotonic()
    ingested = run_ingest(manifest, str(tmp_path / "out"), options)
    print(f"ingest with a FIFO and a 64 MiB file: {time.monotonic() - started:.1f} s")
    assert (ingested.images, ingested.errors) == (1, 2)
    errors = storage.read_table(ingested.errors_uri).to_pandas().set_index("image_id")
    assert "not a regular file (a FIFO)" in errors.loc["pipe", "message"]
    assert "67108864 bytes exceeds ingest.max_bytes" in errors.loc["big", "message"]

    spec = ExtractorConfig(name="imagenet_resnet18", input_size=32)
    embedded = run_embed(manifest, str(tmp_path / "out"), spec, EmbedConfig(batch_size=2), options)
    assert (embedded.embedded, embedded.errors) == (1, 2)
    view = read_embeddings(str(tmp_path / "out"), manifest, spec, read=options)
    assert view["image_id"].tolist() == [good.iloc[0]["image_id"]]


def _study(config: Path, endpoint: str, *stages: str, timeout: int = 600) -> tuple[subprocess.CompletedProcess, float]:
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "AWS_ENDPOINT_URL": endpoint}
    started = time.monotonic()
    completed = subprocess.run([sys.executable, "jobs/full_study.py", "--config", str(config), "--stages", *stages],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return completed, time.monotonic() - started


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_study_during_a_storage_outage_fails_and_the_rerun_does_the_work(tmp_path, s3_bucket):
    """Images on S3, the endpoint down: the study exits non-zero (within a couple of minutes, not minutes per
    image), records no stage as done and writes no errors rows; with the store back the rerun completes."""
    cohort = generate_cohort(s3_bucket + "/cohort", SyntheticSource(patients=2, rows=96))
    manifest_uri = str(tmp_path / "manifest.parquet")
    write_manifest(cohort, manifest_uri)
    output = tmp_path / "study"
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "name": "outage", "output": str(output), "data": {"manifest": manifest_uri}, "ray": {"num_cpus": 2},
    }))

    down, seconds = _study(config, _dead_endpoint(), "manifest", "ingest", timeout=300)
    print(f"outage noticed: exit {down.returncode} after {seconds:.1f} s (Ray start included)")
    assert down.returncode == 3, down.stderr[-3000:]
    assert "storage unavailable" in down.stderr and "rerun the study once the store is back" in down.stderr
    # The declared error in a few lines, naming the store, not Ray's task traceback and retry advice: those
    # are in the log file it names.
    lines = down.stderr.strip().splitlines()
    assert len(lines) < 15, down.stderr
    assert any(line.startswith("mammo-ray: error: storage unavailable") and s3_bucket in line for line in lines)
    assert "Traceback" not in down.stderr and "DataContext" not in down.stderr
    kept = Path(lines[-1].rpartition(" are in ")[2])
    assert "StoreUnavailableError" in kept.read_text() and "Traceback" in kept.read_text()
    kept.unlink()
    assert not storage.exists(tables.ledger_uri(str(output), "ingest"))  # nothing recorded as done
    assert not storage.exists(tables.errors_uri(str(output), "ingest"))  # and no image blamed for it

    # The store back: the same config, rerun here on the session's Ray (its workers reach moto), does the work.
    from mammo_ray.config import load_config
    from mammo_ray.study import run_study

    back = run_study(load_config(str(config)), ["manifest", "ingest"])
    assert back.ran == ["manifest", "ingest"]
    assert (back.counts["ingested_images"], back.counts["ingest_errors"]) == (8, 0)
    assert storage.read_table(tables.errors_uri(str(output), "ingest")).num_rows == 0


@pytest.mark.slow
def test_a_second_study_on_the_same_output_is_refused_and_the_first_finishes_untouched(tmp_path, s3_endpoint):
    output = tmp_path / "study"

    def config(seed: int) -> Path:
        path = tmp_path / f"seed{seed}.yaml"
        path.write_text(yaml.safe_dump({
            "name": f"seed{seed}", "output": str(output), "ray": {"num_cpus": 2},
            "data": {"synthetic": {"patients": 3, "rows": 96, "seed": seed}},
            "embed": {"extractors": [{"name": "imagenet_resnet18", "input_size": 32}]},
        }))
        return path

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    first = subprocess.Popen([sys.executable, "jobs/full_study.py", "--config", str(config(0)), "--stages",
                              "manifest", "ingest", "embed"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lock = output / "_lock.json"
    deadline = time.monotonic() + 300
    while not lock.exists():
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the first study never took the lock"
        time.sleep(0.1)

    second, _ = _study(config(1), s3_endpoint, "manifest", "ingest", "embed", timeout=300)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"pid {first.pid}" in second.stderr and str(output) in second.stderr

    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["counts"]["manifest_rows"] == 12 and summary["counts"]["embedded:imagenet_resnet18"] == 12
    manifest = storage.read_table(tables.manifest_uri(str(output))).to_pandas()
    assert set(manifest["image_id"]) == set(pd.read_parquet(output / "cohort" / "manifest.parquet")["image_id"])
    assert not lock.exists()  # released at the end
    assert json.loads((output / "_stages" / "embed.json").read_text())["counts"] == {
        k: v for k, v in summary["counts"].items() if k.endswith(":imagenet_resnet18") or k.startswith("pass_")}
