"""Generic CSV adapter: any table with one row per image -> manifest, through a column mapping.

`columns` maps manifest columns to the CSV's own column names, e.g.
`{"uri": "path", "patient_id": "subject", "birads": "BIRADS"}`. A manifest column left out of the
mapping is taken from a CSV column of the same name when there is one. `uri` is required; relative
paths are resolved against `images_root`, or the CSV's own folder when that is None. Identifiers are
made unique across datasets by prefixing them with `<dataset>/` (unless already so prefixed).
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Mapping
from typing import Literal

import pandas as pd

from mammo_ray import storage
from mammo_ray.datasets.counts import Tally
from mammo_ray.datasets.manifest import (
    MANIFEST_COLUMNS,
    label_from_birads,
    label_from_pathology,
    normalise_birads,
    normalise_label,
    normalise_pathology,
    validate_manifest,
)
from mammo_ray.errors import ManifestError

MAPPABLE_COLUMNS: tuple[str, ...] = tuple(c for c in MANIFEST_COLUMNS if c != "dataset")
_SNIFF_DELIMITERS = ",;\t|"
_PREFIXED_COLUMNS = ("image_id", "patient_id", "exam_id")


def build_manifest(
    csv_uri: str,
    *,
    columns: Mapping[str, str],
    dataset: str,
    images_root: str | None = None,
    delimiter: str | None = None,
    label_from: Literal["label", "birads", "pathology"] = "label",
) -> pd.DataFrame:
    """A validated manifest from a CSV with one row per image.

    - `columns`: manifest column -> CSV column. Keys must be manifest columns other than `dataset`
      (which is the `dataset` argument); every mapped CSV column must exist. Both are checked first and
      every bad key is named in one ManifestError.
    - `image_id` defaults to `<dataset>/<file stem of uri>`; `patient_id` defaults to the image_id (each
      image its own patient: then patient-grouped folds are image folds) and `exam_id` to the
      patient_id. Mapped image/patient/exam ids are prefixed with `<dataset>/`.
    - `delimiter`: None sniffs it among , ; tab |.
    - `label_from`: "label" takes the label column as given (0/1, blank = null); "birads" derives it
      from BI-RADS ({1,2,3} -> 0, {4*,5,6} -> 1); "pathology" from pathology (malignant -> 1).
    """
    if not isinstance(columns, Mapping) or not all(
        isinstance(key, str) and isinstance(name, str) for key, name in columns.items()
    ):
        raise TypeError(f"columns must be a mapping of manifest column -> CSV column name, got {columns!r}")
    if not dataset or "/" in dataset:
        raise ManifestError(csv_uri, [f"dataset {dataset!r} must be a non-empty name without '/'"])
    if label_from not in ("label", "birads", "pathology"):
        raise ManifestError(csv_uri, [f"label_from {label_from!r} is not one of label, birads, pathology"])
    table = _read_csv(csv_uri, delimiter)
    source_columns = _resolve_columns(csv_uri, columns, table.columns, label_from)

    base = images_root if images_root is not None else _parent(csv_uri)
    records: list[dict] = []
    problems: list[str] = []
    refused_uris: set[str] = set()  # the problem prefix of each row whose uri was refused above
    # Rows are numbered from 0 over the data rows (header excluded), as validate_manifest numbers them,
    # so that every problem of the file lands in one error with one numbering.
    for index, row in enumerate(table.to_dict("records")):
        value = {column: _cell(row.get(name)) for column, name in source_columns.items()}
        record: dict[str, object] = {column: value.get(column) for column in MAPPABLE_COLUMNS}
        record["dataset"] = dataset
        uri = value.get("uri")
        refused = None
        if uri is not None:
            try:
                record["uri"] = uri = _resolve(base, uri)
            except ValueError as error:
                refused = str(error)  # reported below, once the row's image_id is known
            name = posixpath.basename(uri.replace("\\", "/"))
            stem = name.rpartition(".")[0] or name
            record["image_id"] = _prefixed(dataset, value.get("image_id") or stem)
        elif image_id := value.get("image_id"):
            record["image_id"] = _prefixed(dataset, image_id)
        if refused:
            problems.append(f"row {index} ({record['image_id']}): {refused}")
            refused_uris.add(f"row {index} ({record['image_id']}): uri ")
        patient = value.get("patient_id")
        record["patient_id"] = _prefixed(dataset, patient) if patient else record["image_id"]
        exam = value.get("exam_id")
        record["exam_id"] = _prefixed(dataset, exam) if exam else record["patient_id"]
        try:
            record["label"] = _label(value, label_from)
        except ValueError as error:
            problems.append(f"row {index} ({record['image_id']}): {error}")
            record["label"] = None
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=MANIFEST_COLUMNS)
    try:
        manifest = validate_manifest(frame, source=csv_uri)
    except ManifestError as error:
        # A uri refused above still holds its '..': validate_manifest would name it a second time.
        problems.extend(p for p in error.problems if not p.startswith(tuple(refused_uris)))
    if problems:
        raise ManifestError(csv_uri, sorted(problems, key=_row_number))
    return Tally(csv_uri, read=len(table)).attach(manifest)  # every row kept (a bad one is refused)


def _row_number(problem: str) -> int:
    """Sort key: the row a problem names ('row 12 ...'), problems naming several rows last."""
    parts = problem.split(" ", 2)
    if parts[0] == "row" and len(parts) > 1 and parts[1].rstrip(":").isdigit():
        return int(parts[1].rstrip(":"))
    return 1 << 62


def _read_csv(csv_uri: str, delimiter: str | None) -> pd.DataFrame:
    raw = storage.read_bytes(csv_uri)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:65536], delimiters=_SNIFF_DELIMITERS).delimiter
        except csv.Error:
            delimiter = ","
    try:
        table = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=False)
    except Exception as error:  # noqa: BLE001 - any parser failure is a bad metadata file
        raise ManifestError(csv_uri, [f"cannot parse CSV (delimiter {delimiter!r}): {error}"]) from error
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _resolve_columns(
    csv_uri: str, columns: Mapping[str, str], present: pd.Index, label_from: str
) -> dict[str, str]:
    """manifest column -> CSV column, after checking every key and every mapped column."""
    problems: list[str] = []
    for key, name in columns.items():
        if key == "dataset":
            problems.append("mapping key 'dataset': the dataset name is the `dataset` argument, not a column")
        elif key not in MAPPABLE_COLUMNS:
            problems.append(f"unknown mapping key {key!r} (manifest columns: {', '.join(MAPPABLE_COLUMNS)})")
        elif name not in present:
            problems.append(
                f"mapping {key!r} -> {name!r}: the CSV has no column {name!r} "
                f"(columns: {', '.join(repr(c) for c in present)})"
            )
    resolved = {key: name for key, name in columns.items() if key in MAPPABLE_COLUMNS}
    for column in MAPPABLE_COLUMNS:
        if column not in resolved and column in present:
            resolved[column] = column
    if "uri" not in resolved and not problems:
        problems.append("no 'uri' column: map one with columns={'uri': '<CSV column with the image paths>'}")
    if label_from != "label" and label_from not in resolved and not problems:
        problems.append(f"label_from={label_from!r} needs a {label_from!r} column: map one in `columns`")
    if problems:
        raise ManifestError(csv_uri, problems)
    return resolved


def _label(value: Mapping[str, str | None], label_from: str) -> int | None:
    # An unknown BI-RADS or pathology gives no label here: validate_manifest reports the value itself.
    if label_from == "birads":
        try:
            return label_from_birads(normalise_birads(value.get("birads")))
        except ValueError:
            return None
    if label_from == "pathology":
        try:
            return label_from_pathology(normalise_pathology(value.get("pathology")))
        except ValueError:
            return None
    return normalise_label(value.get("label"))


def _cell(value: object) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def _prefixed(dataset: str, identifier: str) -> str:
    return identifier if identifier.startswith(dataset + "/") else f"{dataset}/{identifier}"


def _resolve(base: str, path: str) -> str:
    """A CSV path as a URI: URIs and absolute paths stay; relative paths are joined onto `base`.

    A relative path stays inside `base`: its '..' segments are resolved here, and one that climbs
    above `base` is refused (ValueError), so a metadata file cannot point the job at files outside
    its images root (locally the join would quietly leave it; on S3 the key would keep the '..').
    """
    if "://" in path or path.startswith("/"):
        return path
    parts: list[str] = []
    for part in path.replace("\\", "/").split("/"):
        if part == "..":
            if not parts:
                raise ValueError(f"uri {path!r}: '..' climbs out of the images root {base}")
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    if not parts:
        raise ValueError(f"uri {path!r} names the images root {base} itself, not a file")
    return storage.join(base, *parts)


def _parent(uri: str) -> str:
    scheme, path = storage.split_uri(uri)
    parent = posixpath.dirname(path)
    return parent if scheme == "file" else "s3://" + parent
