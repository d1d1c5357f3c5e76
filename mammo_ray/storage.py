"""One way from a URI to bytes, tables and listings: local paths, file:// and s3://.

S3 goes through s3fs; the endpoint, region and credentials come from the standard AWS variables
(AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION /
AWS_DEFAULT_REGION) or from an `S3Config` (the study config's `storage.s3` section). Credentials are never
stored in a config that travels to Ray workers: each process takes them from its own environment or
instance profile.

Writes are atomic: locally a temporary file in the target folder is renamed over the target; on S3
an object becomes visible only when its upload completes. A reader never sees half a file.

Two kinds of failure, kept apart (`wrap_error`): a problem of one file (not found, a folder, not a
regular file, too large, permission) is a StorageError, which an image stage turns into an errors row;
a failure of the store itself (connection refused or reset, timeouts, throttling and 5xx beyond the
retries, credentials refused, a full or read-only disk) is a StoreUnavailableError, which fails the
stage. Retries are bounded so that a dead store is noticed within about a minute, not minutes per file.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import posixpath
import stat
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import IO

import fsspec
import fsspec.asyn
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mammo_ray import s3_listing
from mammo_ray.errors import StorageError, StoreUnavailableError
from mammo_ray.s3_settings import S3Config

_SUPPORTED_SCHEMES = ("", "file", "s3")
#: 2 GiB: far above any mammogram (a full-field DICOM is 10-60 MB), far below what would exhaust a worker.
DEFAULT_MAX_BYTES = 2 * 1024**3


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


def filesystem(uri: str, s3: S3Config | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem serving `uri` and the path to use with it."""
    scheme, path = split_uri(uri)
    if scheme == "file":
        return _local_filesystem(), path
    return _s3_filesystem((s3 or S3Config()).merged_with_env()), path


def arrow_filesystem(uri: str, s3: S3Config | None = None) -> tuple[pafs.FileSystem, str]:
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
def _s3_filesystem(options: S3Config) -> fsspec.AbstractFileSystem:
    import s3fs  # imported here: local-only use never pays for botocore

    client_kwargs: dict[str, str] = {}
    if options.endpoint_url:
        client_kwargs["endpoint_url"] = options.endpoint_url
    if options.region:
        client_kwargs["region_name"] = options.region
    # Listings must reflect writes made moments ago by other processes: no listing cache.
    # Retries: botocore's (6 attempts, backoff) survive a store that fails a few percent of requests;
    # s3fs's own loop adds one more round for dropped connections and read timeouts. Short connect and
    # read timeouts keep a dead endpoint from costing minutes per request.
    fs = s3fs.S3FileSystem(
        anon=options.anonymous,
        client_kwargs=client_kwargs,
        use_listings_cache=False,
        skip_instance_cache=True,
        config_kwargs={"retries": {"max_attempts": 6, "mode": "adaptive"}, "connect_timeout": 5,
                       "read_timeout": 15},
    )
    fs.retries = 2  # s3fs's own retry rounds (a class attribute, not a constructor argument)
    return fs


#: Exception class names (botocore, aiohttp, asyncio, the builtins) that mean the store, not a file, failed.
_STORE_FAILURES = frozenset({
    "EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",
    "ProxyConnectionError", "HTTPClientError", "ConnectionError", "NoCredentialsError", "PartialCredentialsError",
    "CredentialRetrievalError", "ClientConnectionError", "ServerTimeoutError", "ServerDisconnectedError",
    "TimeoutError", "FSTimeoutError", "IncompleteRead", "ResponseParserError",
})
#: S3 error codes of the store or the credentials as a whole (a 5xx is always the store's).
_STORE_ERROR_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed", "ServiceUnavailable",
    "InternalError", "ExpiredToken", "InvalidAccessKeyId", "InvalidToken", "SignatureDoesNotMatch",
    "TokenRefreshRequired",
})
#: errno values of a local store that failed (disk full, read-only, stale NFS handle, network file system down).
_STORE_ERRNOS = frozenset({errno.EIO, errno.ENOSPC, errno.EROFS, errno.ESTALE, errno.ETIMEDOUT, errno.ENOTCONN,
                           errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENETDOWN, errno.ENETUNREACH, errno.ECONNREFUSED,
                           errno.ECONNRESET, errno.EDQUOT})


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def store_failure(error: BaseException) -> str | None:
    """Why `error` is a failure of the store rather than of one file, or None when it is about the file."""
    for cause in _causes(error):
        response = getattr(cause, "response", None)
        if isinstance(response, dict) and "Error" in response:  # an S3 ClientError: its code decides
            code = str(response["Error"].get("Code", ""))
            status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if status >= 500 or code in _STORE_ERROR_CODES:
                return f"S3 answered {status or ''} {code}".replace("  ", " ")
            return None
    for cause in _causes(error):
        if isinstance(cause, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
            return None
        if {kind.__name__ for kind in type(cause).__mro__} & _STORE_FAILURES:
            return f"{type(cause).__name__}: {cause}"
        if isinstance(cause, OSError) and cause.errno in _STORE_ERRNOS:
            return f"{type(cause).__name__}: {cause}"
    return None


def wrap_error(uri: str, action: str, error: Exception) -> StorageError | StoreUnavailableError:
    """A backend failure as one of the two declared kinds (see the module doc)."""
    if isinstance(error, (StorageError, StoreUnavailableError)):
        return error
    reason = store_failure(error)
    if reason is not None:
        return StoreUnavailableError(uri, f"cannot {action}: {reason}")
    if isinstance(error, FileNotFoundError):
        return StorageError(uri, "not found")
    if isinstance(error, PermissionError):
        return StorageError(uri, f"permission denied while trying to {action}")
    return StorageError(uri, f"cannot {action}: {type(error).__name__}: {error}")


def exists(uri: str, s3: S3Config | None = None) -> bool:
    fs, path = filesystem(uri, s3)
    try:
        return bool(fs.exists(path))
    except Exception as error:  # noqa: BLE001 - every backend failure becomes one declared type
        raise wrap_error(uri, "check existence", error) from error


def read_bytes(uri: str, s3: S3Config | None = None, max_bytes: int | None = None) -> bytes:
    """The bytes of one file. A local path that is not a regular file (a folder, FIFO, device or socket) is
    refused without being opened; a file larger than `max_bytes` is refused from its size, before it is
    read (on S3 in the same single request: a ranged GET of max_bytes + 1)."""
    scheme, path = split_uri(uri)
    if scheme == "file":
        return _read_local(uri, path, max_bytes)
    fs, path = filesystem(uri, s3)
    try:
        data = fs.cat_file(path) if max_bytes is None else fs.cat_file(path, start=0, end=max_bytes + 1)
    except IsADirectoryError:
        raise StorageError(uri, "is a folder, not a file") from None
    except Exception as error:  # noqa: BLE001 - every backend failure becomes one declared type (wrap_error)
        if max_bytes is not None and _range_not_satisfiable(error) and _is_empty_object(fs, path):
            return b""  # S3 answers a range starting at 0 with 416 only for an empty object: its bytes are b""
        raise wrap_error(uri, "read", error) from error
    if max_bytes is not None and len(data) > max_bytes:
        raise _too_large(uri, None, max_bytes)
    return data


def _range_not_satisfiable(error: BaseException) -> bool:
    """Whether `error` is S3's 416 InvalidRange answer to a ranged GET."""
    for cause in _causes(error):
        response = getattr(cause, "response", None)
        if isinstance(response, dict) and "Error" in response:
            status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            return status == 416 or response["Error"].get("Code") == "InvalidRange"
    return False


def _is_empty_object(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    try:
        return fs.info(path).get("size") == 0
    except Exception:  # noqa: BLE001 - the read's own error is the one reported
        return False


def _read_local(uri: str, path: str, max_bytes: int | None) -> bytes:
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise StorageError(uri, "is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):  # opening a FIFO blocks forever, a device reads forever
            raise StorageError(uri, f"not a regular file ({_file_kind(info.st_mode)}): not opened")
        if max_bytes is not None and info.st_size > max_bytes:
            raise _too_large(uri, info.st_size, max_bytes)
        with open(path, "rb") as handle:
            data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    except Exception as error:  # noqa: BLE001 - every backend failure becomes one declared type (wrap_error)
        raise wrap_error(uri, "read", error) from error
    if max_bytes is not None and len(data) > max_bytes:  # it grew after the stat
        raise _too_large(uri, None, max_bytes)
    return data


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a plain file"


def _too_large(uri: str, size: int | None, max_bytes: int) -> StorageError:
    shown = f"{size} bytes" if size is not None else f"more than {max_bytes} bytes"
    return StorageError(uri, f"file too large: {shown} exceeds ingest.max_bytes = {max_bytes}; not read")


@contextlib.contextmanager
def open_input(uri: str, s3: S3Config | None = None) -> Iterator[IO[bytes]]:
    """A binary file object for reading; the whole object is read once (metadata-sized files)."""
    yield io.BytesIO(read_bytes(uri, s3))


def write_bytes(uri: str, data: bytes, s3: S3Config | None = None) -> None:
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
    except Exception as error:  # noqa: BLE001 - every backend failure becomes one declared type (wrap_error)
        raise wrap_error(uri, "write", error) from error


def write_table(table: pa.Table, uri: str, s3: S3Config | None = None) -> None:
    """Write an Arrow table as one Parquet file, atomically."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    write_bytes(uri, sink.getvalue().to_pybytes(), s3)


def read_table(uri: str, s3: S3Config | None = None, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file, or every Parquet file under a folder, as one Arrow table (optionally some columns).

    On S3 one listing names the files, which `read_files` then reads: an output of thousands of part files
    costs its transfers and nothing more."""
    scheme, path = split_uri(uri)
    if scheme == "s3":
        # As pyarrow reads a folder: files named `_...` (an output's `_index.parquet`) are not its rows.
        listed = {item: details for item, details in list_file_details(uri, [".parquet"], s3).items()
                  if split_uri(item)[1] == path or not posixpath.basename(item).startswith("_")}
        if not listed:
            raise StorageError(uri, "no Parquet file there")
        return read_files(listed, s3, columns)
    try:
        return pq.read_table(path, columns=columns)
    except Exception as error:  # noqa: BLE001 - every backend failure becomes one declared type (wrap_error)
        raise wrap_error(uri, "read Parquet", error) from error


def read_files(listed: Mapping[str, Mapping], s3: S3Config | None = None,
               columns: list[str] | None = None) -> pa.Table:
    """The Parquet files of one store `listed` by `list_file_details` as one table, in name order: each
    opened with what the listing said of it (no HEAD request per file), several at once."""
    items = sorted(listed.items())
    fs, _ = filesystem(items[0][0], s3)

    def read(item: tuple[str, Mapping]) -> pa.Table:
        uri, details = item
        try:
            with fs.open(split_uri(uri)[1], "rb", size=details["size"]) as handle:
                if split_uri(uri)[0] == "s3":
                    handle.details = dict(details)  # what s3fs would otherwise ask a HEAD request for
                return pq.read_table(handle, columns=columns)
        except Exception as error:  # noqa: BLE001 - every backend failure becomes one declared type (wrap_error)
            raise wrap_error(uri, "read Parquet", error) from error

    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        return pa.concat_tables(list(pool.map(read, items)), promote_options="default")


def list_files(uri: str, extensions: Iterable[str] | None = None, s3: S3Config | None = None) -> list[str]:
    """Every file under `uri` (recursively), as full URIs in sorted order.

    `extensions` filters case-insensitively ('.dcm', 'png'); hidden files and our own temporary
    files are never listed. On S3 listings only (key ranges at once), nothing per file (`_list_s3`).
    """
    return sorted(list_file_details(uri, extensions, s3))


def list_file_details(uri: str, extensions: Iterable[str] | None = None,
                      s3: S3Config | None = None) -> dict[str, dict]:
    """`list_files` with what the same one listing says of each file (`size`; on S3 its `ETag` too): no
    request per file."""
    suffixes = tuple("." + e.lower().lstrip(".") for e in extensions) if extensions else None
    scheme, _ = split_uri(uri)
    fs, path = filesystem(uri, s3)
    try:
        if scheme == "s3":
            found = _list_s3(fs, path)
            if not found:  # S3 has no empty folders: nothing under the prefix is nothing there
                raise StorageError(uri, "not found")
        elif not fs.exists(path):
            raise StorageError(uri, "not found")
        else:
            found = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    except StorageError:
        raise
    except Exception as error:  # noqa: BLE001 - every backend failure becomes one declared type (wrap_error)
        raise wrap_error(uri, "list", error) from error
    result = {}
    for item, info in found.items():
        name = posixpath.basename(item)
        if name.startswith("."):
            continue
        if suffixes and not name.lower().endswith(suffixes):
            continue
        result[item if scheme == "file" else "s3://" + item] = info
    return result


def _list_s3(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, dict]:
    """'bucket/key' -> info (size, ETag) of every object under `path` (or `path` itself when it is one object):
    listings of 1,000 keys a page, the key ranges between the tree's folders at once (mammo_ray.s3_listing),
    without the existence and folder checks that would each list the prefix again."""
    bucket, _, key = path.partition("/")
    prefix = key.rstrip("/") + "/" if key.rstrip("/") else ""
    found = fsspec.asyn.sync(fs.loop, s3_listing.list_objects, fs, bucket, prefix)
    if not found and key and fs.isfile(path):
        return {path: fs.info(path)}
    return found


def remove_empty_folder(uri: str) -> None:
    """Remove a local folder if it is empty (a study refused before writing anything leaves nothing behind);
    os.rmdir never removes a folder another process has just written into. S3 has no folders."""
    scheme, path = split_uri(uri)
    if scheme == "file":
        with contextlib.suppress(OSError):
            os.rmdir(path)


def remove(uri: str, recursive: bool = False, s3: S3Config | None = None) -> None:
    fs, path = filesystem(uri, s3)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=recursive)
    except Exception as error:  # noqa: BLE001 - every backend failure becomes one declared type (wrap_error)
        raise wrap_error(uri, "remove", error) from error


def remove_files(uris: Sequence[str], s3: S3Config | None = None) -> None:
    """Remove many files of one store at once (on S3, batched DeleteObjects requests: no request per file);
    files already gone are no error."""
    if not uris:
        return
    fs, _ = filesystem(uris[0], s3)
    paths = [split_uri(uri)[1] for uri in uris]
    try:
        fs.rm(paths)
    except FileNotFoundError:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                fs.rm(path)
    except Exception as error:  # noqa: BLE001 - every backend failure becomes one declared type (wrap_error)
        raise wrap_error(uris[0], "remove", error) from error
