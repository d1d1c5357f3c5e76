"""The manifest: one row per image, the only thing stages downstream of the adapters read.

Contract (docs/design.md, "Manifest"): image_id, uri, dataset, patient_id, exam_id, laterality (L/R),
view (CC/MLO/other), birads (normalised string or null), label (0/1 or null), pathology; and the
subgroup columns density (A-D or null), site and device (free text or null).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from mammo_ray import storage, tables
from mammo_ray.datasets.counts import SourceCounts, counts_of
from mammo_ray.errors import ManifestError, StorageError
from mammo_ray.privacy import is_locator
from mammo_ray.schemas import MANIFEST_COLUMNS, MANIFEST_SCHEMA
from mammo_ray.vocabulary import normalise_laterality, normalise_view

BIRADS_VALUES: tuple[str, ...] = ("0", "1", "2", "3", "4", "4a", "4b", "4c", "5", "6")
# The binary task of the paper: {1,2,3} benign-ish, {4*,5,6} suspicious. 0 (incomplete) has no label.
_BIRADS_NEGATIVE = {"1", "2", "3"}
_BIRADS_POSITIVE = {"4", "4a", "4b", "4c", "5", "6"}
PATHOLOGY_VALUES: tuple[str, ...] = ("normal", "benign", "malignant")
DENSITY_VALUES: tuple[str, ...] = ("A", "B", "C", "D")

_BIRADS_PATTERN = re.compile(r"^(?:bi-?rads\s*)?([0-6])\s*([abc]?)$")


def normalise_birads(value: object) -> str | None:
    """'4A', 'BI-RADS 4a', 4, '4.0' -> '4a' / '4'; null-like -> None; anything else -> ValueError."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if float(value) != int(value):
            raise ValueError(f"unknown BI-RADS value {value!r}")
        value = str(int(value))
    text = str(value).strip().lower()
    if text in {"", "nan", "none", "null"}:
        return None
    if text.endswith(".0"):
        text = text[:-2]
    match = _BIRADS_PATTERN.match(text)
    if not match or (match.group(2) and match.group(1) != "4"):
        raise ValueError(f"unknown BI-RADS value {value!r} (expected one of {', '.join(BIRADS_VALUES)})")
    return match.group(1) + match.group(2)


def label_from_birads(birads: str | None) -> int | None:
    """Binary label of the paper: BI-RADS {1,2,3} -> 0, {4,4a,4b,4c,5,6} -> 1, 0 or missing -> None."""
    if birads in _BIRADS_NEGATIVE:
        return 0
    if birads in _BIRADS_POSITIVE:
        return 1
    return None


def normalise_pathology(value: object) -> str | None:
    """'MALIGNANT', 'M', 'BENIGN_WITHOUT_CALLBACK', 'NORM' -> malignant / benign / normal."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip().lower()
    if text in {"", "nan", "none"}:
        return None
    if text in {"m", "malignant"}:
        return "malignant"
    if text in {"b", "benign", "benign_without_callback"}:
        return "benign"
    if text in {"n", "norm", "normal"}:
        return "normal"
    raise ValueError(f"unknown pathology {value!r} (expected normal, benign or malignant)")


def label_from_pathology(pathology: str | None, positive: str = "malignant") -> int | None:
    """Binary label from pathology: positive='malignant' (malignant vs rest) or 'abnormal' (vs normal)."""
    if pathology is None:
        return None
    if positive == "malignant":
        return int(pathology == "malignant")
    if positive == "abnormal":
        return int(pathology != "normal")
    raise ValueError(f"unknown positive class {positive!r} (expected 'malignant' or 'abnormal')")


_DENSITY_PATTERN = re.compile(r"^(?:(?:breast\s+)?density\s*|acr\s*)?([abcd1-4])$")


def normalise_density(value: object) -> str | None:
    """Breast density as the BI-RADS category A-D: 'A', 'DENSITY C', 'acr 2', 3, '4.0' -> A-D; null-like -> None.

    Collections write the same four categories as letters (RSNA, VinDr-Mammo's 'DENSITY A') or as 1-4
    (CBIS-DDSM, INbreast's ACR); 1-4 map to A-D. Anything else (CBIS's two rows of 0) -> ValueError.
    """
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return None
    text = str(value).strip().lower()
    if text in {"", "nan", "none", "null"}:
        return None
    if text.endswith(".0"):
        text = text[:-2]
    match = _DENSITY_PATTERN.match(text)
    if not match:
        raise ValueError(f"unknown breast density {value!r} (expected A-D or 1-4)")
    found = match.group(1)
    return DENSITY_VALUES[int(found) - 1] if found.isdigit() else found.upper()


def _normalise_text(value: object) -> str | None:
    """Free text (site, device) stripped; null-like -> None."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return None
    text = str(value).strip()
    return text or None


_LABEL_TEXT: dict[str, int | None] = {
    "0": 0, "0.0": 0, "false": 0, "1": 1, "1.0": 1, "true": 1,
    "": None, "nan": None, "none": None, "null": None, "<na>": None,
}


def normalise_label(value: object) -> int | None:
    """0/1 as int, bool, float or text ('1', ' TRUE ', '0.0') -> 0 / 1; null-like -> None; else ValueError.

    A CSV column holding one 'true' among its 1s is read as text, and a Parquet one may be float (nulls)
    or bool: every form of the same label must mean the same, so that only the truly bad rows are named.
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, numbers.Real):
        if pd.isna(value):
            return None
        if value in (0, 1):
            return int(value)
        shown = value.item() if isinstance(value, np.generic) else value
        raise ValueError(f"label {shown!r} is not 0, 1 or null")
    if isinstance(value, str) and value.strip().lower() in _LABEL_TEXT:
        return _LABEL_TEXT[value.strip().lower()]
    raise ValueError(f"label {value!r} is not 0, 1 or null")


def validate_manifest(frame: pd.DataFrame, source: str, check_files: bool = False) -> pd.DataFrame:
    """Check a manifest against the contract and return it with canonical column order and dtypes.

    Every problem is collected (duplicate ids, unusable URIs, unknown BI-RADS, bad labels, and missing
    files with `check_files`) and raised together as one ManifestError naming the rows, so a user fixes
    the file in one pass.
    """
    problems: list[str] = []
    missing_columns = [c for c in ("image_id", "uri", "dataset", "patient_id") if c not in frame.columns]
    if missing_columns:
        raise ManifestError(source, [f"missing required column(s): {', '.join(missing_columns)}"])
    frame = frame.copy()
    for column in MANIFEST_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    frame = frame[MANIFEST_COLUMNS].reset_index(drop=True)

    for column in ("image_id", "uri", "dataset", "patient_id"):
        for index in frame.index[frame[column].isna() | (frame[column].astype(str).str.strip() == "")]:
            problems.append(f"row {index}: empty {column}")
    frame["image_id"] = frame["image_id"].astype("string")
    duplicated = frame["image_id"].duplicated(keep=False) & frame["image_id"].notna()
    for image_id, rows in frame.index[duplicated].groupby(frame["image_id"][duplicated]).items():
        problems.append(f"duplicate image_id {image_id!r} in rows {', '.join(map(str, rows))}")

    _check_uris(frame, problems)
    _normalise_column(frame, "birads", normalise_birads, problems)
    _normalise_column(frame, "laterality", normalise_laterality, problems)
    _normalise_column(frame, "view", normalise_view, problems)
    _normalise_column(frame, "pathology", normalise_pathology, problems)
    _normalise_column(frame, "density", normalise_density, problems)
    _normalise_column(frame, "site", _normalise_text, problems)
    _normalise_column(frame, "device", _normalise_text, problems)
    labels = []
    for index, value in frame["label"].items():
        try:
            labels.append(normalise_label(value))
        except ValueError as error:
            problems.append(f"row {index} ({frame.at[index, 'image_id']}): {error}")
            labels.append(None)

    if check_files and not problems:
        for index, uri in frame["uri"].items():
            if not storage.exists(uri):
                problems.append(f"row {index} ({frame.at[index, 'image_id']}): file not found: {uri}")
    if problems:
        raise ManifestError(source, problems)
    frame["label"] = pd.array(labels, dtype="Int8")
    return frame


def _check_uris(frame: pd.DataFrame, problems: list[str]) -> None:
    """Every uri must be one storage can resolve (scheme, bucket) and hold no '..' path segment.

    Parsing a URI reads nothing, so this costs no request per image; a URI that cannot mean one file
    is refused here, naming its row, rather than at ingest after the work has started. '..' is refused
    for every scheme: a manifest (from any source) must not point the job at files outside its folders.
    """
    for index, uri in frame["uri"].items():
        if uri is None or (isinstance(uri, float) and pd.isna(uri)):
            continue  # reported as an empty uri
        if not isinstance(uri, str):
            problems.append(f"row {index} ({frame.at[index, 'image_id']}): uri {uri!r} is not text")
            continue
        if not uri.strip() or is_locator(uri):
            continue  # a locator (mammo_ray.privacy) names a file without its path: nothing to resolve here
        if ".." in re.split(r"[/\\]", uri.partition("://")[2] or uri):
            problems.append(f"row {index} ({frame.at[index, 'image_id']}): uri {uri}: a '..' path segment "
                            "is not allowed")
            continue
        try:
            storage.split_uri(uri)
        except StorageError as error:
            problems.append(f"row {index} ({frame.at[index, 'image_id']}): uri {error}")


def _normalise_column(frame: pd.DataFrame, column: str, normalise: Callable[[object], object],
                      problems: list[str]) -> None:
    values = []
    for index, value in frame[column].items():
        try:
            values.append(normalise(value))
        except ValueError as error:
            problems.append(f"row {index} ({frame.at[index, 'image_id']}): {column}: {error}")
            values.append(None)
    frame[column] = pd.Series(values, index=frame.index, dtype="object")


def to_table(frame: pd.DataFrame) -> pa.Table:
    """A validated manifest frame as an Arrow table with the contract's schema."""
    return pa.Table.from_pandas(frame[MANIFEST_COLUMNS], schema=MANIFEST_SCHEMA, preserve_index=False)


def write_manifest(frame: pd.DataFrame, uri: str, check_files: bool = False,
                   sources: Mapping[str, SourceCounts] | None = None) -> pd.DataFrame:
    """Validate and write a manifest as Parquet (atomically). Returns the validated frame. `sources`: what each
    source read, kept and dropped, written into the provenance (`sources`); by default the counts the adapter
    that built `frame` attached to it, as 'data'."""
    if sources is None:
        own = counts_of(frame)
        sources = {} if own is None else {"data": own}
    validated = validate_manifest(frame, source=uri, check_files=check_files)
    inputs = {"manifest": tables.manifest_digest(validated)}
    table = tables.with_provenance(to_table(validated), "manifest", inputs=inputs,
                                   sources={name: counts.as_dict() for name, counts in sources.items()})
    storage.write_table(table, uri)
    return validated


#: Columns a CSV manifest holds as text, whatever they look like ('001', '4', '1.png' stay text).
_CSV_TEXT_COLUMNS = {name: str for name in MANIFEST_COLUMNS if name != "label"}


def read_manifest(uri: str, check_files: bool = False) -> pd.DataFrame:
    """Read and validate a manifest from Parquet or CSV (local or s3://)."""
    if uri.lower().endswith(".csv"):
        with storage.open_input(uri) as handle:
            try:
                frame = pd.read_csv(handle, dtype=_CSV_TEXT_COLUMNS)
            except Exception as error:  # noqa: BLE001 - any parser failure is a bad manifest file
                raise ManifestError(uri, [f"cannot parse CSV: {type(error).__name__}: {error}"]) from error
    else:
        frame = storage.read_table(uri).to_pandas()
    return validate_manifest(frame, source=uri, check_files=check_files)


def manifest_from_records(records: Iterable[dict], source: str) -> pd.DataFrame:
    """Build and validate a manifest from adapter records (dicts with manifest keys)."""
    frame = pd.DataFrame.from_records(list(records), columns=MANIFEST_COLUMNS)
    return validate_manifest(frame, source=source)
