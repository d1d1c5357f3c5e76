"""INbreast adapter: the distribution's INbreast.csv / INbreast.xls + a folder of images -> manifest.

Metadata quirks handled here (docs/design.md, "INbreast"):
- INbreast.csv is ';'-separated with CRLF line ends; `Patient ID` and `Patient age` are the literal
  word 'removed', so the metadata carries no patient key at all;
- INbreast.xls: only Sheet1 is read (same rows as the csv plus two trailer rows: a blank row and a
  row of column totals, which are dropped). Sheet2 is an unrelated table and is never read;
- BI-RADS values include 4a/4b/4c; one view is 'FB' (-> view 'other'); one ACR is blank (ACR 1-4 is the
  manifest's density A-D).

Images are named as in the distribution: `<File Name>_<patient hash>_MG_<L|R>_<view>_ANON.dcm` (or the
same stem with .png). The hash in the file name is the only patient key, so patient_id and exam_id come
from the matched file, never from the metadata. Rows are joined to files by the leading File Name.
"""

from __future__ import annotations

import io
import posixpath
import re
from typing import Literal

import pandas as pd

from mammo_ray import storage
from mammo_ray.datasets.counts import MISSING_FILE, Tally
from mammo_ray.datasets.manifest import (
    MANIFEST_COLUMNS,
    label_from_birads,
    normalise_birads,
    validate_manifest,
)
from mammo_ray.errors import ManifestError
from mammo_ray.vocabulary import normalise_laterality, normalise_view

DATASET = "inbreast"
REQUIRED_COLUMNS: tuple[str, ...] = ("Laterality", "View", "Acquisition date", "File Name", "Bi-Rads")
EXPECTED_COLUMNS: tuple[str, ...] = (
    "Patient ID",
    "Patient age",
    "Laterality",
    "View",
    "Acquisition date",
    "File Name",
    "ACR",
    "Bi-Rads",
)
IMAGE_EXTENSIONS: tuple[str, ...] = (".dcm", ".png")
# 22678622_d40b7c7e63ea98d5_MG_R_CC_ANON.dcm -> file name, patient hash, side, view token, extension.
FILE_NAME_PATTERN = re.compile(
    r"^(?P<file_name>\d+)_(?P<patient>[0-9a-fA-F]+)_MG_(?P<side>[LR])_(?P<view>[A-Za-z]+)_ANON\.(?P<ext>dcm|png)$",
    re.IGNORECASE,
)
_FILE_VIEW_TOKENS = {"CC": "CC", "ML": "MLO", "MLO": "MLO"}


def read_metadata(metadata_uri: str) -> pd.DataFrame:
    """The metadata rows of INbreast.csv or INbreast.xls (Sheet1), as text, trailer rows dropped.

    Returns the file's own columns plus `row`: the row number a spreadsheet shows (header = 1), used to
    name offending rows in errors.
    """
    raw = storage.read_bytes(metadata_uri)
    name = posixpath.basename(storage.split_uri(metadata_uri)[1]).lower()
    if name.endswith((".xls", ".xlsx")):
        try:
            frame = pd.read_excel(io.BytesIO(raw), sheet_name="Sheet1", dtype=object)
        except Exception as error:  # noqa: BLE001 - any reader failure is a bad metadata file
            raise ManifestError(
                metadata_uri, [f"cannot read Sheet1: {type(error).__name__}: {error}"]
            ) from error
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        try:
            frame = pd.read_csv(io.StringIO(text), sep=";", dtype=str, keep_default_na=False)
        except Exception as error:  # noqa: BLE001 - any parser failure is a bad metadata file
            raise ManifestError(metadata_uri, [f"cannot parse as ';'-separated CSV: {error}"]) from error
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        found = ", ".join(repr(c) for c in frame.columns)
        hint = ""
        if len(frame.columns) == 1 and "," in frame.columns[0]:
            hint = " (the file looks ','-separated; INbreast.csv is ';'-separated)"
        raise ManifestError(
            metadata_uri,
            [
                f"missing column(s) {', '.join(missing)}{hint}; expected the INbreast header "
                f"{';'.join(EXPECTED_COLUMNS)}; found columns: {found}"
            ],
        )
    frame = frame.map(_text)
    frame["row"] = range(2, len(frame) + 2)
    # Trailer rows (the xls has a blank row and a totals row after the data): rows without a File Name
    # at the end of the sheet. A row without a File Name in the middle stays and is reported.
    has_name = frame["File Name"].notna().to_numpy()
    if not has_name.any():
        raise ManifestError(metadata_uri, ["no data rows (no row has a File Name)"])
    last = int(has_name.nonzero()[0].max()) + 1
    return frame.iloc[:last].reset_index(drop=True)


def build_manifest(
    metadata_uri: str,
    images_uri: str,
    *,
    missing: Literal["error", "skip"] = "error",
) -> pd.DataFrame:
    """A validated manifest of INbreast: one row per metadata row that has an image file.

    `metadata_uri`: INbreast.csv or INbreast.xls; `images_uri`: a folder (local or s3://) holding the
    distribution's images, searched recursively. `missing="error"` raises a ManifestError listing every
    metadata row without an image file; `missing="skip"` drops those rows. Files whose name matches no
    metadata row are ignored; .dcm/.png files whose name does not follow the distribution's pattern
    are listed as errors.
    """
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', not {missing!r}")
    metadata = read_metadata(metadata_uri)
    files, problems = _index_images(images_uri)
    tally = Tally(images_uri, read=len(metadata))

    records: list[dict] = []
    seen: dict[str, int] = {}
    for row in metadata.to_dict("records"):
        where = f"row {row['row']}"
        file_name = row["File Name"]
        if file_name is None or not file_name.isdigit():
            problems.append(f"{where}: File Name {file_name!r} is not a number")
            continue
        where = f"row {row['row']} (File Name {file_name})"
        if file_name in seen:
            problems.append(f"{where}: File Name repeats row {seen[file_name]}")
            continue
        seen[file_name] = row["row"]
        try:
            birads = normalise_birads(row["Bi-Rads"])
            laterality = normalise_laterality(row["Laterality"])
            view = normalise_view(row["View"])
        except ValueError as error:
            problems.append(f"{where}: {error}")
            continue
        if row["Acquisition date"] is None:
            problems.append(f"{where}: empty Acquisition date")
            continue
        matches = files.get(file_name)
        if not matches:
            if missing == "error":
                problems.append(f"{where}: no image file {file_name}_<patient hash>_MG_..._ANON.dcm/.png")
            tally.drop(MISSING_FILE)
            continue
        match = _choose(matches)
        if match is None:
            problems.append(f"{where}: several image files: {', '.join(m['uri'] for m in matches)}")
            continue
        if match["side"] != laterality:
            problems.append(
                f"{where}: Laterality {row['Laterality']!r} but image file {match['uri']} "
                f"says {match['side']}"
            )
            continue
        file_view = _FILE_VIEW_TOKENS.get(match["view"])
        if view in ("CC", "MLO") and file_view is not None and file_view != view:
            problems.append(
                f"{where}: View {row['View']!r} but image file {match['uri']} says {match['view']}"
            )
            continue
        records.append(
            {
                "image_id": f"{DATASET}/{file_name}",
                "uri": match["uri"],
                "dataset": DATASET,
                "patient_id": f"{DATASET}/{match['patient']}",
                "exam_id": f"{DATASET}/{match['patient']}/{row['Acquisition date']}",
                "laterality": laterality,
                "view": view,
                "birads": birads,
                "label": label_from_birads(birads),
                "pathology": None,
                "density": row.get("ACR"),  # ACR 1-4 = density A-D; one row is blank
            }
        )
    if problems:
        raise ManifestError(metadata_uri, problems)
    frame = pd.DataFrame.from_records(records, columns=MANIFEST_COLUMNS)
    return tally.attach(validate_manifest(frame, source=metadata_uri))


def parse_image_name(name: str) -> dict[str, str] | None:
    """'22678622_d40b7c7e63ea98d5_MG_R_CC_ANON.dcm' -> file_name, patient (hash), side, view, ext."""
    match = FILE_NAME_PATTERN.match(name)
    if not match:
        return None
    parts = match.groupdict()
    parts["patient"] = parts["patient"].lower()
    parts["side"] = parts["side"].upper()
    parts["view"] = parts["view"].upper()
    parts["ext"] = parts["ext"].lower()
    return parts


def _index_images(images_uri: str) -> tuple[dict[str, list[dict[str, str]]], list[str]]:
    files: dict[str, list[dict[str, str]]] = {}
    problems: list[str] = []
    for uri in storage.list_files(images_uri, IMAGE_EXTENSIONS):
        parts = parse_image_name(posixpath.basename(uri))
        if parts is None:
            problems.append(
                f"image file {uri}: name does not follow <File Name>_<patient hash>_MG_<L|R>_<view>_ANON.dcm"
            )
            continue
        parts["uri"] = uri
        files.setdefault(parts["file_name"], []).append(parts)
    return files, problems


def _choose(matches: list[dict[str, str]]) -> dict[str, str] | None:
    """One file per File Name: a .dcm wins over a .png of the same stem; anything else is ambiguous."""
    if len(matches) == 1:
        return matches[0]
    stems = {posixpath.basename(m["uri"]).rsplit(".", 1)[0] for m in matches}
    dicoms = [m for m in matches if m["ext"] == "dcm"]
    if len(stems) == 1 and len(dicoms) == 1:
        return dicoms[0]
    return None


def _text(value: object) -> str | None:
    """A metadata cell as stripped text: blank/NaN -> None, 201001.0 (xls numbers) -> '201001'."""
    if value is None:
        return None
    if isinstance(value, float):
        if pd.isna(value):
            return None
        if value.is_integer():
            return str(int(value))
    text = str(value).strip()
    return text or None
