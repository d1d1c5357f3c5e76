"""VinDr-Mammo (PhysioNet 1.0.0) adapter: breast-level_annotations.csv + images/<study_id>/<image_id>.dicom.

No pathology, no patient id: `label` is the malignancy proxy the config chooses (`label_proxy`
"birads_5", "birads_4_plus" or "none"; no default), patient_id = exam_id = `vindr/<study_id>`, `split`
keeps one official split or both. `read_findings` reads finding_annotations.csv (boxes, categories). The
layout, quirks and checks: docs/design.md, "VinDr-Mammo".
"""

from __future__ import annotations

import ast
import re
from typing import Literal

import pandas as pd

from mammo_ray import storage
from mammo_ray.datasets import sources
from mammo_ray.datasets.counts import MISSING_FILE, OTHER_SPLIT, REPEATED, Tally
from mammo_ray.datasets.manifest import MANIFEST_COLUMNS, normalise_density, validate_manifest
from mammo_ray.errors import ManifestError

DATASET = "vindr"
ANNOTATIONS = "breast-level_annotations.csv"
FINDINGS = "finding_annotations.csv"
METADATA = "metadata.csv"
REQUIRED_COLUMNS: tuple[str, ...] = (
    "study_id", "image_id", "laterality", "view_position", "breast_birads", "breast_density", "split",
)
LABEL_PROXIES: dict[str, frozenset[int] | None] = {
    "birads_5": frozenset({5}), "birads_4_plus": frozenset({4, 5}), "none": None,
}
SPLITS: tuple[str, ...] = ("training", "test")
_BIRADS = re.compile(r"^BI-RADS ([1-5])$")
_FINDING_BIRADS = re.compile(r"^BI-RADS ([3-5])$")
_DENSITY = re.compile(r"^DENSITY [A-D]$")
_HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def build_manifest(
    root_uri: str,
    *,
    label_proxy: str | None = None,
    split: Literal["training", "test"] | None = None,
    missing: Literal["error", "skip"] = "skip",
) -> pd.DataFrame:
    """A validated manifest of the images of `root_uri`'s breast-level_annotations.csv that have a file."""
    if label_proxy not in LABEL_PROXIES:
        raise ValueError(
            f"VinDr-Mammo has no pathology: label_proxy must be chosen, one of {', '.join(LABEL_PROXIES)} "
            f"('birads_5': BI-RADS 5 is malignant; 'birads_4_plus': BI-RADS 4-5), not {label_proxy!r}"
        )
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)} or None, not {split!r}")
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', not {missing!r}")
    csv_uri = storage.join(root_uri, ANNOTATIONS)
    table = sources.read_text_table(csv_uri, REQUIRED_COLUMNS)
    positive = LABEL_PROXIES[label_proxy]
    images_uri = storage.join(root_uri, "images")
    files = sources.index_tree(images_uri, [".dicom"])
    metadata_uri = storage.join(root_uri, METADATA)
    devices = _devices(metadata_uri) if storage.exists(metadata_uri) else {}
    tally = Tally(images_uri, read=len(table))

    problems: list[str] = []
    records: dict[str, dict] = {}
    for row in table.to_dict("records"):
        where = f"row {row['row']} (image_id {row['image_id']})"
        row_problems = _check_row(row)
        if row_problems:
            problems.extend(f"{where}: {problem}" for problem in row_problems)
            continue
        if split is not None and row["split"] != split:
            tally.drop(OTHER_SPLIT)
            continue
        birads = int(_BIRADS.match(row["breast_birads"]).group(1))
        record = {
            "image_id": f"{DATASET}/{row['image_id']}",
            "uri": files.get(f"{row['study_id']}/{row['image_id']}.dicom"),
            "dataset": DATASET,
            "patient_id": f"{DATASET}/{row['study_id']}",
            "exam_id": f"{DATASET}/{row['study_id']}",
            "laterality": row["laterality"],
            "view": row["view_position"],
            "birads": str(birads),
            "label": None if positive is None else int(birads in positive),
            "pathology": None,
            "density": normalise_density(row["breast_density"]),
            "site": None,
            "device": devices.get(row["image_id"]),
        }
        earlier = records.get(record["image_id"])
        if earlier is not None and earlier != record:
            problems.append(f"{where}: image listed again with different values")
        elif earlier is not None:
            tally.drop(REPEATED)  # the same image, the same values: one image
        records[record["image_id"]] = record
    if missing == "error":
        problems.extend(f"{image_id}: no file {image_id.split('/', 1)[1]}.dicom under {images_uri}"
                        for image_id, record in records.items() if record["uri"] is None)
    if problems:
        raise ManifestError(csv_uri, problems)
    kept = [record for record in records.values() if record["uri"] is not None]
    tally.drop(MISSING_FILE, len(records) - len(kept))
    return tally.attach(validate_manifest(pd.DataFrame.from_records(kept, columns=MANIFEST_COLUMNS), source=csv_uri))


def read_findings(root_uri: str) -> pd.DataFrame:
    """finding_annotations.csv as one row per box: `categories` a list of str (the file writes Python lists
    in single quotes, "['Suspicious Calcification', 'Mass']"), `finding_birads` an int or None, the box
    clipped to the image (19 rows have xmin < 0, 20 have xmax > width) and None for 'No Finding' rows.
    A list that does not parse, or a box that is not numbers, is refused by row."""
    uri = storage.join(root_uri, FINDINGS)
    table = sources.read_text_table(uri, (*REQUIRED_COLUMNS, "finding_categories", "finding_birads",
                                          "xmin", "ymin", "xmax", "ymax", "height", "width"))
    problems: list[str] = []
    records = []
    for row in table.to_dict("records"):
        where = f"row {row['row']} (image_id {row['image_id']})"
        try:
            categories = ast.literal_eval(row["finding_categories"])
            if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
                raise ValueError("not a list of names")
            box = _clipped_box(row)
        except (ValueError, SyntaxError) as error:
            problems.append(f"{where}: {error}")
            continue
        birads = _FINDING_BIRADS.match(row["finding_birads"])
        if row["finding_birads"] and not birads:
            problems.append(f"{where}: finding_birads {row['finding_birads']!r} is not 'BI-RADS 3'..'BI-RADS 5'")
            continue
        records.append({"study_id": row["study_id"], "image_id": row["image_id"], "laterality": row["laterality"],
                        "view": row["view_position"], "categories": categories,
                        "finding_birads": int(birads.group(1)) if birads else None, **box})
    if problems:
        raise ManifestError(uri, problems)
    return pd.DataFrame.from_records(records)


def _clipped_box(row: dict) -> dict[str, float | None]:
    corners = ("xmin", "ymin", "xmax", "ymax")
    if not any(row[c] for c in corners):
        return dict.fromkeys(corners)
    height, width = float(row["height"]), float(row["width"])
    limits = {"xmin": width, "xmax": width, "ymin": height, "ymax": height}
    return {c: min(max(float(row[c]), 0.0), limits[c]) for c in corners}


def _check_row(row: dict) -> list[str]:
    problems = []
    for column in ("study_id", "image_id"):
        if not _HEX_ID.match(row[column]):
            problems.append(f"{column} {row[column]!r} is not a 32-digit hex id")
    checks = (
        ("laterality", row["laterality"] in ("L", "R"), "L or R"),
        ("view_position", row["view_position"] in ("CC", "MLO"), "CC or MLO"),
        ("breast_birads", bool(_BIRADS.match(row["breast_birads"])), "'BI-RADS 1'..'BI-RADS 5'"),
        ("breast_density", bool(_DENSITY.match(row["breast_density"])), "'DENSITY A'..'DENSITY D'"),
        ("split", row["split"] in SPLITS, " or ".join(SPLITS)),
    )
    problems.extend(f"{column} {row[column]!r} is not {expected}" for column, ok, expected in checks if not ok)
    return problems


def _devices(metadata_uri: str) -> dict[str, str]:
    """image_id -> 'Manufacturer Model' from metadata.csv, whose first column is the image's SOP Instance UID."""
    table = sources.read_text_table(metadata_uri, ["Manufacturer", "Manufacturer's Model Name"])
    image_column = table.columns[0]
    if not image_column.startswith("SOP Instance UID"):
        raise ManifestError(metadata_uri, [f"first column is {image_column!r}, not 'SOP Instance UID'"])
    devices = {}
    for row in table.to_dict("records"):
        device = " ".join(part for part in (row["Manufacturer"], row["Manufacturer's Model Name"]) if part)
        if device:
            devices[row[image_column]] = device
    return devices
