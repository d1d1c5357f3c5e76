"""mini-MIAS adapter: Info.txt + a folder of mdbNNN.png / mdbNNN.pgm -> manifest.

Info.txt has one row per abnormality, short rows and bottom-left coordinates; mini-MIAS has no BI-RADS,
so the label comes from the pathology. Odd film numbers are right breasts, even ones left, and every film
is an MLO view. The quirks and the laterality evidence: docs/design.md, "mini-MIAS".
"""

from __future__ import annotations

import posixpath
import re
from typing import Literal

import pandas as pd

from mammo_ray import storage
from mammo_ray.datasets.counts import MISSING_FILE, Tally
from mammo_ray.datasets.manifest import (
    MANIFEST_COLUMNS,
    label_from_pathology,
    validate_manifest,
)
from mammo_ray.errors import ManifestError

DATASET = "mias"
IMAGE_SIZE = 1024  # every mini-MIAS film is 1024 x 1024 pixels
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".pgm")  # the first one found wins when both exist
BACKGROUND_TISSUE = {"F": "fatty", "G": "fatty-glandular", "D": "dense-glandular"}
ABNORMALITY_CLASSES = ("CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM", "NORM")
SEVERITIES = {"B": "benign", "M": "malignant"}
INFO_COLUMNS = ["ref", "number", "background", "abnormality", "severity", "x", "y", "radius", "line"]

# ASCII digits only: str.isdigit() accepts '²', which int() refuses, and re's \d accepts '٣', which
# int() reads as 3 (so 'mdb٠٠١' would be a second mdb001). Whole numbers are bounded in length:
# int() refuses strings of over 4300 digits.
_REF_PATTERN = re.compile(r"^mdb(\d{3})$", re.IGNORECASE | re.ASCII)
_NUMBER_PATTERN = re.compile(r"^[-+]?\d+(?:\.\d*)?$", re.ASCII)
_WHOLE_NUMBER = re.compile(r"\d{1,9}", re.ASCII)


def parse_info(text: str, source: str = "Info.txt") -> pd.DataFrame:
    """One row per Info.txt data row (one abnormality, or one NORM film).

    Columns: ref ('mdb001'), number (1), background (F/G/D), abnormality (CALC...NORM), severity (B/M
    or None), x, y, radius (nullable ints, None where Info.txt omits them), line (1-based line number in
    the file). `y` is converted to a TOP-left origin (row index): y = 1024 - y_info, so it can be used
    directly as a pixel row. Lines that do not start with an `mdbNNN` reference (the free-text header,
    rulers, blank lines) are skipped; a data line that breaks the format is an error, and every such
    line is listed in one ManifestError.
    """
    rows: list[dict] = []
    problems: list[str] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens or not _REF_PATTERN.match(tokens[0]):
            continue
        where = f"line {line_number} ({line.strip()!r})"
        ref = tokens[0].lower()
        if len(tokens) < 3:
            problems.append(f"{where}: expected at least reference, background tissue and abnormality class")
            continue
        background, abnormality = tokens[1].upper(), tokens[2].upper()
        if background not in BACKGROUND_TISSUE:
            problems.append(f"{where}: background tissue {tokens[1]!r} is not one of F, G, D")
            continue
        if abnormality not in ABNORMALITY_CLASSES:
            problems.append(
                f"{where}: abnormality class {tokens[2]!r} is not one of {', '.join(ABNORMALITY_CLASSES)}"
            )
            continue
        rest = tokens[3:]
        severity = None
        if abnormality == "NORM":
            if rest:
                problems.append(f"{where}: a NORM row takes no severity or coordinates")
                continue
        else:
            if not rest or rest[0].upper() not in SEVERITIES:
                problems.append(f"{where}: abnormality {abnormality} needs a severity B or M")
                continue
            severity = rest[0].upper()
            rest = rest[1:]
        x = y = radius = None
        if rest and _NUMBER_PATTERN.match(rest[0]):
            # Either x, y and radius all three, or none (widely distributed calcifications: '*NOTE 3*').
            if len(rest) < 3 or not all(_WHOLE_NUMBER.fullmatch(t) for t in rest[:3]):
                problems.append(f"{where}: expected x, y and radius as three whole numbers")
                continue
            x, y_info, radius = (int(t) for t in rest[:3])
            if not (0 <= x <= IMAGE_SIZE and 0 <= y_info <= IMAGE_SIZE):
                problems.append(
                    f"{where}: centre ({x}, {y_info}) lies outside the {IMAGE_SIZE}x{IMAGE_SIZE} image"
                )
                continue
            if radius > IMAGE_SIZE:
                problems.append(f"{where}: radius {radius} is larger than the {IMAGE_SIZE}x{IMAGE_SIZE} image")
                continue
            y = IMAGE_SIZE - y_info  # Info.txt counts y from the bottom; pixel rows count from the top
        rows.append(
            {
                "ref": ref,
                "number": int(ref[3:]),
                "background": background,
                "abnormality": abnormality,
                "severity": severity,
                "x": x,
                "y": y,
                "radius": radius,
                "line": line_number,
            }
        )
    if problems:
        raise ManifestError(source, problems)
    frame = pd.DataFrame.from_records(rows, columns=INFO_COLUMNS)
    for column in ("x", "y", "radius"):
        frame[column] = pd.array(frame[column].tolist(), dtype="Int64")
    return frame


def image_pathology(rows: pd.DataFrame) -> str:
    """The film's pathology from its Info.txt rows: malignant if any M, else benign if any B, else normal."""
    severities = set(rows["severity"].dropna())
    if "M" in severities:
        return "malignant"
    if "B" in severities:
        return "benign"
    return "normal"


def build_manifest(
    info_uri: str,
    images_uri: str,
    *,
    positive: Literal["malignant", "abnormal"] = "malignant",
    missing: Literal["error", "skip"] = "error",
) -> pd.DataFrame:
    """A validated manifest of mini-MIAS: one row per film listed in Info.txt.

    `positive="malignant"` labels malignant films 1 (benign and normal 0); `positive="abnormal"` labels
    every film with an abnormality 1. Images are `<ref>.png` or `<ref>.pgm` under `images_uri`
    (searched recursively; .png is taken when both exist). `missing="error"` lists every film without
    an image file in one ManifestError; `missing="skip"` drops them. Files not named in Info.txt are
    ignored. patient_id pairs the films of one woman: mdb001+mdb002 -> 'mias/p001'.
    """
    if positive not in ("malignant", "abnormal"):
        raise ValueError(f"positive must be 'malignant' or 'abnormal', not {positive!r}")
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', not {missing!r}")
    raw = storage.read_bytes(info_uri)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    info = parse_info(text, source=info_uri)
    if info.empty:
        raise ManifestError(info_uri, ["no data rows (lines starting with mdbNNN) found"])
    images = _index_images(images_uri)
    tally = Tally(images_uri, read=info["ref"].nunique())  # one film per reference (Info.txt: a row per finding)

    records: list[dict] = []
    problems: list[str] = []
    for ref, rows in info.groupby("ref", sort=True):
        number = int(rows["number"].iloc[0])
        backgrounds = set(rows["background"])
        if len(backgrounds) > 1:
            problems.append(f"{ref}: rows disagree on background tissue ({', '.join(sorted(backgrounds))})")
            continue
        uri = images.get(ref)
        if uri is None:
            if missing == "error":
                problems.append(f"{ref} (line {rows['line'].iloc[0]}): no image file {ref}.png or {ref}.pgm")
            tally.drop(MISSING_FILE)
            continue
        pathology = image_pathology(rows)
        patient = f"{DATASET}/p{(number + 1) // 2:03d}"
        records.append(
            {
                "image_id": f"{DATASET}/{ref}",
                "uri": uri,
                "dataset": DATASET,
                "patient_id": patient,
                "exam_id": patient,  # one pair of films per woman
                "laterality": "R" if number % 2 == 1 else "L",  # evidence: docs/design.md, "mini-MIAS"
                "view": "MLO",
                "birads": None,
                "label": label_from_pathology(pathology, positive),
                "pathology": pathology,
            }
        )
    if problems:
        raise ManifestError(info_uri, problems)
    return tally.attach(validate_manifest(pd.DataFrame.from_records(records, columns=MANIFEST_COLUMNS),
                                          source=info_uri))


def _index_images(images_uri: str) -> dict[str, str]:
    found: dict[str, dict[str, str]] = {}
    for uri in storage.list_files(images_uri, IMAGE_EXTENSIONS):
        stem, _, ext = posixpath.basename(uri).rpartition(".")
        if _REF_PATTERN.match(stem):
            found.setdefault(stem.lower(), {}).setdefault("." + ext.lower(), uri)
    return {ref: next(by_ext[e] for e in IMAGE_EXTENSIONS if e in by_ext) for ref, by_ext in found.items()}
