"""One way from a URI to bytes, tables and listings: local paths, file:// and s3://.

S3 goes through s3fs; the endpoint, region and credentials come from the standard AWS variables
(AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION /
AWS_DEFAULT_REGION) or from an explicit S3Options (the study config). Credentials are never stored in
an S3Options that travels to Ray workers: each process takes them from its own environment or
instance profile.

Writes are atomic: locally a temporary file in the target folder is renamed over the target; on S3
an object becomes visible only when its upload completes. A reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import IO

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mammo_ray.errors import StorageError

_SUPPORTED_SCHEMES = ("", "file", "s3")


@dataclass(frozen=True)
class S3Options:
    """Where S3 lives. None fields fall back to the environment (and then to AWS defaults)."""

    endpoint_url: str | None = None
    region: str | None = None
    anonymous: bool = False

    @classmethod
    def from_env(cls) -> S3Options:
        return cls(
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None,
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
        )

    def merged_with_env(self) -> S3Options:
        env = S3Options.from_env()
        return S3Options(
            endpoint_url=self.endpoint_url or env.endpoint_url,
            region=self.region or env.region,
            anonymous=self.anonymous,
        )


def split_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/key' -> ('s3', 'bucket/key'); '/data/x' or 'file:///data/x' -> ('file', '/data/x')."""
    if not isinstance(uri, str) or not uri:
        raise StorageError(str(uri), "empty URI")
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return "file", os.path.abspath(os.path.expanduser(uri))
    scheme = scheme.lower()
    if scheme not in _SUPPORTED_SCHEMES:
        raise StorageError(uri, f"unsupported scheme {scheme!r} (use a local path, file:// or s3://)")
    if scheme == "file":
        return "file", os.path.abspath(rest)
    if not rest or rest.startswith("/"):
        raise StorageError(uri, "an s3:// URI needs a bucket name")
    rest = rest.rstrip("/")
    # S3 keys are not normalised: 'images/../secrets/x' is a key of its own to S3 but the secrets
    # folder to a reader (and to fsspec, which may normalise it), so such a URI never means one thing.
    if any(part in (".", "..") for part in rest.split("/")):
        raise StorageError(uri, "an s3:// URI must not contain '.' or '..' path segments")
    return "s3", rest


def is_remote(uri: str) -> bool:
    return split_uri(uri)[0] == "s3"


def join(base: str, *parts: str) -> str:
    """Join path parts onto a URI with '/', keeping its scheme."""
    scheme, path = split_uri(base)
    if scheme == "file":
        return os.path.join(path, *parts)
    return "s3://" + posixpath.join(path, *parts)


def filesystem(uri: str, s3: S3Options | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem serving `uri` and the path to use with it."""
    scheme, path = split_uri(uri)
    if scheme == "file":
        return _local_filesystem(), path
    return _s3_filesystem((s3 or S3Options()).merged_with_env()), path


def arrow_filesystem(uri: str, s3: S3Options | None = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem (what Ray Data and pyarrow.dataset take) and the path to use with it."""
    scheme, path = split_uri(uri)
    if scheme == "file":
        return pafs.LocalFileSystem(), path
    fs, path = filesystem(uri, s3)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


@lru_cache(maxsize=1)
def _local_filesystem() -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("file")


@lru_cache(maxsize=16)
def _s3_filesystem(options: S3Options) -> fsspec.AbstractFileSystem:
    import s3fs  # imported here: local-only use never pays for botocore

    client_kwargs: dict[str, str] = {}
    if options.endpoint_url:
        client_kwargs["endpoint_url"] = options.endpoint_url
    if options.region:
        client_kwargs["region_name"] = options.region
    # Listings must reflect writes made moments ago by other processes: no listing cache.
    return s3fs.S3FileSystem(
        anon=options.anonymous,
        client_kwargs=client_kwargs,
        use_listings_cache=False,
        skip_instance_cache=True,
        config_kwargs={"retries": {"max_attempts": 8, "mode": "adaptive"}},
    )


def _wrap(uri: str, action: str, error: Exception) -> StorageError:
    if isinstance(error, StorageError):
        return error
    if isinstance(error, FileNotFoundError):
        return StorageError(uri, "not found")
    if isinstance(error, PermissionError):
        return StorageError(uri, f"permission denied while trying to {action}")
    return StorageError(uri, f"cannot {action}: {type(error).__name__}: {error}")


def exists(uri: str, s3: S3Options | None = None) -> bool:
    fs, path = filesystem(uri, s3)
    try:
        return bool(fs.exists(path))
    except Exception as error:  # noqa: BLE001 - every backend failure becomes one declared type
        raise _wrap(uri, "check existence", error) from error


def read_bytes(uri: str, s3: S3Options | None = None) -> bytes:
    fs, path = filesystem(uri, s3)
    try:
        if fs.isdir(path):
            raise StorageError(uri, "is a folder, not a file")
        return fs.cat_file(path)
    except Exception as error:  # noqa: BLE001
        raise _wrap(uri, "read", error) from error


@contextlib.contextmanager
def open_input(uri: str, s3: S3Options | None = None) -> Iterator[IO[bytes]]:
    """A binary file object for reading; the whole object is read once (metadata-sized files)."""
    yield io.BytesIO(read_bytes(uri, s3))


def write_bytes(uri: str, data: bytes, s3: S3Options | None = None) -> None:
    """Write `data` to `uri` atomically, creating parent folders as needed."""
    fs, path = filesystem(uri, s3)
    try:
        if split_uri(uri)[0] == "file":
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            temporary = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
            try:
                with open(temporary, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, path)
            finally:
                if os.path.exists(temporary):
                    os.remove(temporary)
        else:
            fs.pipe_file(path, data)  # a single PUT: visible only once complete
    except Exception as error:  # noqa: BLE001
        raise _wrap(uri, "write", error) from error


def write_table(table: pa.Table, uri: str, s3: S3Options | None = None) -> None:
    """Write an Arrow table as one Parquet file, atomically."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    write_bytes(uri, sink.getvalue().to_pybytes(), s3)


def read_table(uri: str, s3: S3Options | None = None, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file, or every Parquet file under a folder, as one Arrow table (optionally some columns)."""
    fs, path = arrow_filesystem(uri, s3)
    try:
        return pq.read_table(path, filesystem=fs, columns=columns)
    except Exception as error:  # noqa: BLE001
        raise _wrap(uri, "read Parquet", error) from error


def list_files(uri: str, extensions: Iterable[str] | None = None, s3: S3Options | None = None) -> list[str]:
    """Every file under `uri` (recursively), as full URIs in sorted order.

    `extensions` filters case-insensitively ('.dcm', 'png'); hidden files and our own temporary
    files are never listed.
    """
    suffixes = tuple("." + e.lower().lstrip(".") for e in extensions) if extensions else None
    scheme, _ = split_uri(uri)
    fs, path = filesystem(uri, s3)
    try:
        if not fs.exists(path):
            raise StorageError(uri, "not found")
        found = fs.find(path) if fs.isdir(path) else [path]
    except Exception as error:  # noqa: BLE001
        raise _wrap(uri, "list", error) from error
    result = []
    for item in found:
        name = posixpath.basename(item)
        if name.startswith("."):
            continue
        if suffixes and not name.lower().endswith(suffixes):
            continue
        result.append(item if scheme == "file" else "s3://" + item)
    return sorted(result)


def remove(uri: str, recursive: bool = False, s3: S3Options | None = None) -> None:
    fs, path = filesystem(uri, s3)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=recursive)
    except Exception as error:  # noqa: BLE001
        raise _wrap(uri, "remove", error) from error
