"""RSNA Screening Mammography (Kaggle 2022) adapter: train.csv (or test.csv) + `<split>_images/` -> manifest.

`label` = `cancer`, per breast (a breast whose images disagree is refused); `birads` stays null (RSNA's
BIRADS is a recall field); exam_id = patient_id; views other than CC/MLO are 'other' unless
`extra_views="grouped"`. test.csv rows get no label. The layout, quirks and checks: docs/design.md,
"RSNA Screening Mammography".
"""

from __future__ import annotations

from typing import Literal

import pandas as pd

from mammo_ray.datasets import sources
from mammo_ray.datasets.counts import MISSING_FILE, Tally
from mammo_ray.datasets.manifest import MANIFEST_COLUMNS, normalise_density, validate_manifest
from mammo_ray.errors import ManifestError

DATASET = "rsna"
KEY_COLUMNS: tuple[str, ...] = ("site_id", "patient_id", "image_id", "laterality", "view", "machine_id")
LABEL_COLUMNS: tuple[str, ...] = ("cancer", "biopsy")
VIEWS: dict[str, str] = {"CC": "CC", "MLO": "MLO", "AT": "other", "LM": "other", "ML": "other", "LMO": "other"}
GROUPED_VIEWS: dict[str, str] = {"CC": "CC", "MLO": "MLO", "AT": "CC", "LM": "MLO", "ML": "MLO", "LMO": "MLO"}
_BINARY = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}


def build_manifest(
    csv_uri: str,
    images_uri: str,
    *,
    extra_views: Literal["other", "grouped"] = "other",
    missing: Literal["error", "skip"] = "skip",
) -> pd.DataFrame:
    """A validated manifest of the rows of `csv_uri` (train.csv or test.csv) whose image file is under
    `images_uri` (`<patient_id>/<image_id>.dcm`, found by one listing). `missing="error"` names every row
    without a file instead of dropping it (a local copy is often a subset)."""
    if extra_views not in ("other", "grouped"):
        raise ValueError(f"extra_views must be 'other' or 'grouped', not {extra_views!r}")
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', not {missing!r}")
    table = sources.read_text_table(csv_uri, KEY_COLUMNS)
    labelled = "cancer" in table.columns
    if labelled and "biopsy" not in table.columns:
        raise ManifestError(csv_uri, ["column 'cancer' without 'biopsy': not train.csv as published"])
    views = VIEWS if extra_views == "other" else GROUPED_VIEWS
    files = sources.index_tree(images_uri, [".dcm"])
    tally = Tally(images_uri, read=len(table))

    problems: list[str] = []
    records: list[dict] = []
    for row in table.to_dict("records"):
        where = f"row {row['row']} (image_id {row['image_id']})"
        row_problems = _check_row(row, labelled)
        if row_problems:
            problems.extend(f"{where}: {problem}" for problem in row_problems)
            continue
        uri = files.get(f"{row['patient_id']}/{row['image_id']}.dcm")
        if uri is None:
            if missing == "error":
                problems.append(f"{where}: no file {row['patient_id']}/{row['image_id']}.dcm under {images_uri}")
            tally.drop(MISSING_FILE)
            continue
        patient = f"{DATASET}/{row['patient_id']}"
        cancer = _BINARY[row["cancer"]] if labelled else None
        records.append({
            "image_id": f"{DATASET}/{row['image_id']}",
            "uri": uri,
            "dataset": DATASET,
            "patient_id": patient,
            "exam_id": patient,
            "laterality": row["laterality"],
            "view": views[row["view"]],
            "birads": None,
            "label": cancer,
            "pathology": None if cancer is None else _pathology(cancer, _BINARY[row["biopsy"]]),
            "density": row.get("density") or None,
            "site": row["site_id"],
            "device": f"machine {row['machine_id']}" if row["machine_id"] else None,
        })
    if labelled:
        problems.extend(_breast_conflicts(table))
    if problems:
        raise ManifestError(csv_uri, problems)
    return tally.attach(validate_manifest(pd.DataFrame.from_records(records, columns=MANIFEST_COLUMNS),
                                          source=csv_uri))


def _check_row(row: dict, labelled: bool) -> list[str]:
    problems = []
    for column in ("patient_id", "image_id"):
        if not row[column].isdigit():
            problems.append(f"{column} {row[column]!r} is not a number")
    if row["laterality"] not in ("L", "R"):
        problems.append(f"laterality {row['laterality']!r} is not L or R")
    if row["view"] not in VIEWS:
        problems.append(f"view {row['view']!r} is none of {', '.join(VIEWS)}")
    if labelled:
        for column in LABEL_COLUMNS:
            if row[column] not in _BINARY:
                problems.append(f"{column} {row[column]!r} is not 0 or 1")
    for column in ("age", "BIRADS"):
        value = row.get(column, "")
        if value and not _is_number(value):
            problems.append(f"{column} {value!r} is not a number")
    try:
        normalise_density(row.get("density"))
    except ValueError as error:
        problems.append(str(error))
    return problems


def _breast_conflicts(table: pd.DataFrame) -> list[str]:
    """The breasts whose images carry different cancer labels (the label is per breast: 0 in the real file)."""
    problems = []
    valid = table[table["cancer"].isin(list(_BINARY))]
    labels = valid["cancer"].map(_BINARY)
    for (patient, side), group in labels.groupby([valid["patient_id"], valid["laterality"]]):
        if group.nunique() > 1:
            rows = ", ".join(str(r) for r in valid.loc[group.index, "row"])
            problems.append(f"breast {patient}_{side}: cancer differs between its images (rows {rows})")
    return problems


def _pathology(cancer: int, biopsy: int) -> str:
    if cancer:
        return "malignant"
    return "benign" if biopsy else "normal"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
