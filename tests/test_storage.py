"""Storage against the local filesystem and a real S3 protocol endpoint (moto server)."""

from __future__ import annotations

import os
import threading

import pyarrow as pa
import pytest

from mammo_ray import storage
from mammo_ray.errors import StorageError
from mammo_ray.s3_settings import S3Config


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_bucket") + "/root"


def test_bytes_round_trip_and_listing_with_extension_filter(root):
    storage.write_bytes(storage.join(root, "a", "one.dcm"), b"1")
    storage.write_bytes(storage.join(root, "a", "two.DCM"), b"22")
    storage.write_bytes(storage.join(root, "b", "three.png"), b"333")
    storage.write_bytes(storage.join(root, "notes.txt"), b"x")

    assert storage.read_bytes(storage.join(root, "a", "two.DCM")) == b"22"
    dicoms = storage.list_files(root, extensions=[".dcm"])
    assert [uri.rsplit("/", 1)[1] for uri in dicoms] == ["one.dcm", "two.DCM"]
    assert all(uri.startswith(root.split("://")[0]) for uri in dicoms)
    assert len(storage.list_files(root)) == 4
    assert len(storage.list_files(root, extensions=["png", "dcm"])) == 3


def test_table_round_trip(root):
    table = pa.table({"image_id": ["a", "b"], "value": [1.5, 2.5]})
    uri = storage.join(root, "tables", "t.parquet")
    storage.write_table(table, uri)
    assert storage.read_table(uri).equals(table)
    assert storage.exists(uri)


def test_missing_file_names_the_uri(root):
    uri = storage.join(root, "nope.dcm")
    with pytest.raises(StorageError, match="nope.dcm.*not found"):
        storage.read_bytes(uri)
    with pytest.raises(StorageError, match="not found"):
        storage.list_files(storage.join(root, "no-folder"))


def test_s3_options_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    options = S3Config.from_env()
    assert options.endpoint_url == "http://127.0.0.1:9"  # the S3-specific variable wins
    assert options.region == "eu-west-1"
    explicit = S3Config(endpoint_url="http://127.0.0.1:7").merged_with_env()
    assert explicit.endpoint_url == "http://127.0.0.1:7" and explicit.region == "eu-west-1"


@pytest.mark.parametrize("uri", ["", "gs://bucket/x", "s3:///no-bucket", "ftp://host/x"])
def test_bad_uris_are_refused_by_name(uri):
    with pytest.raises(StorageError):
        storage.split_uri(uri)


def test_uri_forms():
    assert storage.split_uri("s3://bucket/key/x.dcm") == ("s3", "bucket/key/x.dcm")
    assert storage.split_uri("file:///data/x.dcm") == ("file", "/data/x.dcm")
    assert storage.join("s3://bucket/base", "a", "b.png") == "s3://bucket/base/a/b.png"


def test_local_write_is_atomic_for_readers(tmp_path):
    """A reader polling the target only ever sees the old or the new content, never a prefix."""
    uri = str(tmp_path / "table.bin")
    old, new = b"o" * 4_000_000, b"n" * 8_000_000
    storage.write_bytes(uri, old)
    seen: set[int] = set()
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            with open(uri, "rb") as handle:
                seen.add(len(handle.read()))

    reader = threading.Thread(target=poll)
    reader.start()
    for _ in range(10):
        storage.write_bytes(uri, new)
        storage.write_bytes(uri, old)
    stop.set()
    reader.join()
    assert seen <= {len(old), len(new)}
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temporaries left


def test_s3_reader_never_sees_a_partial_object(s3_bucket):
    """On S3 an object is visible only after its single PUT completes; a failed write leaves nothing."""
    uri = s3_bucket + "/atomic/big.bin"

    with pytest.raises(StorageError):
        storage.write_bytes(uri, object())  # type: ignore[arg-type]
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"x" * 6_000_000)
    assert len(storage.read_bytes(uri)) == 6_000_000



def test_s3_listing_of_a_prefix_an_object_and_nothing(s3_bucket):
    """Folder markers are no files, one object lists as itself, and an empty prefix is not found."""
    for key in ("tree/a/1.dcm", "tree/a/deeper/2.dcm", "tree/0.dcm"):
        storage.write_bytes(f"{s3_bucket}/{key}", b"x")
    storage.write_bytes(f"{s3_bucket}/tree/b/", b"")  # a console-made folder marker
    assert storage.list_files(f"{s3_bucket}/tree", [".dcm"]) == [
        f"{s3_bucket}/tree/0.dcm", f"{s3_bucket}/tree/a/1.dcm", f"{s3_bucket}/tree/a/deeper/2.dcm"]
    assert storage.list_files(f"{s3_bucket}/tree/0.dcm") == [f"{s3_bucket}/tree/0.dcm"]
    with pytest.raises(StorageError, match="not found"):
        storage.list_files(f"{s3_bucket}/nothing-here")


def test_s3_listing_in_key_ranges_returns_every_object_once(s3_bucket, monkeypatch):
    """A tree with enough folders is listed as key ranges at once (mammo_ray.s3_listing): every object once,
    whatever the folder names' order traps ('12' < '123' < '123-a' as folders, not as keys), with files above
    the folders, deeper folders, a folder marker and pages of 3 keys (S3's are 1,000)."""
    from mammo_ray import s3_listing

    monkeypatch.setattr(s3_listing, "PAGE_KEYS", 3)
    names = ["12", "123", "123-a", "123.b", "1230", *[f"p{index:02d}" for index in range(36)]]
    keys = ["big/top.csv", "big/other/x.dcm"]
    for index, name in enumerate(names):
        keys += [f"big/images/{name}/{image}.dcm" for image in range(1 + index % 3)]
        if index % 7 == 0:
            keys.append(f"big/images/{name}/deeper/view.dcm")
    for key in keys:
        storage.write_bytes(f"{s3_bucket}/{key}", b"x")
    fs, _ = storage.filesystem(s3_bucket)
    fs.call_s3("put_object", Bucket=s3_bucket.removeprefix("s3://"), Key="big/images/p01/", Body=b"")  # a marker
    assert len(names) >= s3_listing.MIN_FOLDERS  # the ranges are used, not one listing

    listed = storage.list_files(f"{s3_bucket}/big")
    assert listed == sorted(f"{s3_bucket}/{key}" for key in keys)
    sizes = storage.list_file_details(f"{s3_bucket}/big/images")
    assert len(sizes) == len(keys) - 2 and {info["size"] for info in sizes.values()} == {1}
