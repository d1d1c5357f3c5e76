"""What the collection adapters share: reading a metadata table as text, listing an image tree once, and
reading a DICOM header without its pixels.

An adapter makes no request per file where its metadata table already names the files: one listing of the
image tree (paginated by the store) tells which named files exist. Only the adapters whose labels or
orientation live in the headers (CMMD, a plain DICOM folder), and CBIS-DDSM, whose full images are told
from crops and masks by their pixels, read each file, and then only its first bytes.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pydicom
from pydicom.dataset import Dataset

from mammo_ray import storage
from mammo_ray.errors import ManifestError, StorageError, StoreUnavailableError

#: Bytes read for a header: enough for the header of every mammogram we have seen (a few KB, the
#: pixels follow); a longer header is read whole.
HEADER_PREFIX_BYTES = 64 * 1024
#: The Pixel Data tag as it is written in little-endian files (every syntax the adapters meet).
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
#: Header reads in flight at once: they wait on the store, not on a CPU.
HEADER_THREADS = 16


def read_text_table(uri: str, required: Sequence[str], one_of: Sequence[Sequence[str]] = ()) -> pd.DataFrame:
    """A CSV as text (no value converted, '' for empty), column names and values stripped, plus `row`
    (1-based data row number). Every missing required column, and every group of `one_of` with none of its
    columns present, is named in one ManifestError with the columns found."""
    with storage.open_input(uri) as handle:
        try:
            frame = pd.read_csv(handle, dtype=str, keep_default_na=False)
        except Exception as error:  # noqa: BLE001 - any parser failure is a bad metadata file
            raise ManifestError(uri, [f"cannot parse CSV: {type(error).__name__}: {error}"]) from error
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in required if column not in frame.columns]
    missing += [" or ".join(repr(c) for c in group) for group in one_of if not set(group) & set(frame.columns)]
    if missing:
        raise ManifestError(uri, [f"missing column(s) {', '.join(missing)}; "
                                  f"found columns: {', '.join(repr(c) for c in frame.columns)}"])
    frame = frame.map(lambda value: value.strip() if isinstance(value, str) else value)
    frame["row"] = range(1, len(frame) + 1)
    return frame


def relative_path(root_uri: str, uri: str) -> str:
    """The path of `uri` below `root_uri`, '/'-separated ('<patient>/<image>.dcm')."""
    root = storage.split_uri(root_uri)[1].rstrip("/")
    path = storage.split_uri(uri)[1].replace("\\", "/")
    return path[len(root) + 1:] if path.startswith(root + "/") else path


def index_tree(root_uri: str, extensions: Iterable[str]) -> dict[str, str]:
    """relative path -> URI of every file under `root_uri` with one of
    `extensions`: one listing of the tree, no request per file."""
    return {relative_path(root_uri, uri): uri for uri in storage.list_files(root_uri, list(extensions))}


def read_dicom_header(uri: str) -> Dataset:
    """The DICOM header of `uri` (no pixel data), from its first HEADER_PREFIX_BYTES where that holds
    the whole header; a StorageError names the file when it cannot be read or parsed."""
    prefix = _read_prefix(uri, HEADER_PREFIX_BYTES)
    # A prefix cut between two header elements parses without error but lacks the later tags: trust it only
    # when it is the whole file or reaches the pixel data element (7FE0,0010), else read the whole file.
    if len(prefix) < HEADER_PREFIX_BYTES or _PIXEL_DATA_TAG in prefix:
        try:
            return pydicom.dcmread(io.BytesIO(prefix), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - a header longer than the prefix: read the whole file below
            pass
    whole = storage.read_bytes(uri)  # outside the guard below: a store outage is raised as it is
    try:
        return pydicom.dcmread(io.BytesIO(whole), stop_before_pixels=True)
    except Exception as error:  # noqa: BLE001 - a file we cannot parse is named, whatever the parser says
        raise StorageError(uri, f"not a readable DICOM ({type(error).__name__}: {error})") from None


def read_dicom_headers(uris: Sequence[str], threads: int = HEADER_THREADS) -> dict[str, Dataset | StorageError]:
    """uri -> its header (read_dicom_header), or the StorageError naming why it could not be read; the reads
    run `threads` at a time (each is one request's latency on a store). A store failure
    (StoreUnavailableError) is raised: it is no property of the file."""
    def read(uri: str) -> Dataset | StorageError:
        try:
            return read_dicom_header(uri)
        except StoreUnavailableError:
            raise
        except StorageError as error:
            return error

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return dict(zip(uris, pool.map(read, uris), strict=True))


def device_from_header(header: Dataset) -> str | None:
    """'Manufacturer ManufacturerModelName' from a header (safe tags: no person, no place), None where both are
    blank."""
    parts = (str(header.get(keyword, "") or "").strip() for keyword in ("Manufacturer", "ManufacturerModelName"))
    return " ".join(part for part in parts if part) or None


def _read_prefix(uri: str, size: int) -> bytes:
    """The first `size` bytes of a file (one ranged GET on S3); a local non-regular file is not opened."""
    scheme, path = storage.split_uri(uri)
    try:
        if scheme == "file":
            if not stat.S_ISREG(os.stat(path).st_mode):
                raise StorageError(uri, "not a regular file: not opened")
            with open(path, "rb") as handle:
                return handle.read(size)
        fs, path = storage.filesystem(uri)
        return fs.cat_file(path, start=0, end=size)
    except StorageError:
        raise
    except Exception as error:  # noqa: BLE001 - every backend failure becomes one declared type
        raise storage.wrap_error(uri, "read", error) from error


def file_stem(uri: str) -> str:
    """'…/1-1.dcm' -> '1-1'."""
    return posixpath.splitext(posixpath.basename(storage.split_uri(uri)[1]))[0]
