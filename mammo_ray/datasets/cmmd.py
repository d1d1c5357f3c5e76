"""CMMD (TCIA) adapter: the clinical table (its CSV export) + the TCIA download tree -> manifest.

Laterality and view come from each file's header, never from its name; `label` is the breast's
`classification` (Malignant -> 1, Benign -> 0), and `unlabelled` chooses what images of a breast without a
clinical row become ("skip", "keep" or "normal"). ID1 is patient and exam. The layout, quirks and checks:
docs/design.md, "CMMD".
"""

from __future__ import annotations

import re
from typing import Literal

import pandas as pd

from mammo_ray.datasets import sources
from mammo_ray.datasets.counts import UNLABELLED, Tally
from mammo_ray.datasets.manifest import MANIFEST_COLUMNS, validate_manifest
from mammo_ray.errors import ManifestError, StorageError
from mammo_ray.imaging.dicom import laterality_from_tags, view_from_tags

DATASET = "cmmd"
REQUIRED_COLUMNS: tuple[str, ...] = ("ID1", "LeftRight", "classification")
CLASSIFICATIONS: dict[str, str] = {"Malignant": "malignant", "Benign": "benign"}
_ID = re.compile(r"^D[12]-\d{4}$")


def build_manifest(
    clinical_csv_uri: str,
    images_uri: str,
    *,
    unlabelled: Literal["skip", "keep", "normal"] = "skip",
) -> pd.DataFrame:
    """A validated manifest of the DICOMs under `images_uri` (the folder holding the `<ID1>` folders)."""
    if unlabelled not in ("skip", "keep", "normal"):
        raise ValueError(f"unlabelled must be 'skip', 'keep' or 'normal', not {unlabelled!r}")
    if clinical_csv_uri.lower().endswith((".xlsx", ".xls")):
        raise ManifestError(clinical_csv_uri, ["give the clinical table as CSV (export the xlsx): pandas cannot "
                                               "read CMMD_clinicaldata_revision.xlsx as published"])
    breasts = _clinical(clinical_csv_uri)
    problems: list[str] = []
    studies: dict[str, str] = {}
    records: list[dict] = []
    files: dict[str, str] = {}  # uri -> ID1
    found = sources.index_tree(images_uri, [".dcm"])
    tally = Tally(images_uri, read=len(found))  # the rows are the files: labels are per breast
    for relative, uri in sorted(found.items()):
        parts = relative.split("/")
        patient = next((part for part in parts[:-1] if _ID.match(part)), None)
        if patient is None:
            problems.append(f"{uri}: no CMMD ID folder (D1-NNNN / D2-NNNN) in its path")
            continue
        below = parts[parts.index(patient) + 1 : -1]
        study = below[0] if below else ""
        if studies.setdefault(patient, study) != study:
            problems.append(f"{patient}: two study folders ({studies[patient]!r}, {study!r}); CMMD has one per "
                            "ID")
            continue
        files[uri] = patient
    for uri, header in sources.read_dicom_headers(list(files)).items():
        patient = files[uri]
        if isinstance(header, StorageError):
            problems.append(str(header))
            continue
        side, view = laterality_from_tags(header), view_from_tags(header)
        if side is None:
            problems.append(f"{uri}: no laterality in the header (ImageLaterality)")
            continue
        pathology = breasts.get((patient, side))
        if pathology is None and unlabelled == "skip":
            tally.drop(UNLABELLED)
            continue
        if pathology is None and unlabelled == "normal":
            pathology = "normal"
        records.append({
            "image_id": f"{DATASET}/{patient}/{sources.file_stem(uri)}",
            "uri": uri,
            "dataset": DATASET,
            "patient_id": f"{DATASET}/{patient}",
            "exam_id": f"{DATASET}/{patient}",
            "laterality": side,
            "view": view,
            "birads": None,
            "label": None if pathology is None else int(pathology == "malignant"),
            "pathology": pathology,
            "density": None,
            "site": None,
            "device": sources.device_from_header(header),
        })
    if problems:
        raise ManifestError(images_uri, problems)
    return tally.attach(validate_manifest(pd.DataFrame.from_records(records, columns=MANIFEST_COLUMNS),
                                          source=images_uri))


def _clinical(uri: str) -> dict[tuple[str, str], str]:
    """(ID1, L/R) -> malignant/benign, every bad or repeated row named in one ManifestError."""
    table = sources.read_text_table(uri, REQUIRED_COLUMNS)
    problems: list[str] = []
    breasts: dict[tuple[str, str], str] = {}
    for row in table.to_dict("records"):
        where = f"row {row['row']} (ID1 {row['ID1']})"
        bad = [message for ok, message in (
            (bool(_ID.match(row["ID1"])), f"ID1 {row['ID1']!r} is not D1-NNNN or D2-NNNN"),
            (row["LeftRight"] in ("L", "R"), f"LeftRight {row['LeftRight']!r} is not L or R"),
            (row["classification"] in CLASSIFICATIONS,
             f"classification {row['classification']!r} is not {' or '.join(CLASSIFICATIONS)}"),
        ) if not ok]
        if bad:
            problems.extend(f"{where}: {message}" for message in bad)
            continue
        key = (row["ID1"], row["LeftRight"])
        if key in breasts:
            problems.append(f"{where}: breast {row['ID1']} {row['LeftRight']} has a second row")
            continue
        breasts[key] = CLASSIFICATIONS[row["classification"]]
    if problems:
        raise ManifestError(uri, problems)
    return breasts

