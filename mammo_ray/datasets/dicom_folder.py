"""Any folder tree of DICOMs -> manifest: orientation, patient and exam from the headers, labels from a CSV.

For collections with no adapter of their own (a hospital's PACS export, EMBED's cohort tree). Each file's
header is read once (its first bytes, one ranged request, several at a time):
- laterality: ImageLaterality / Laterality; view: ViewPosition / ViewCodeSequence (mammo_ray.imaging.dicom);
- patient, exam, image: PatientID, StudyInstanceUID, SOPInstanceUID, **pseudonymised**: each becomes
  `<dataset>/<kind>-<first 16 hex of sha256(salt + value)>`, so no raw PatientID reaches an output. The salt is
  per study and required; keep it secret and the same across runs (the ids, and so every cache, depend on it);
- device: Manufacturer + ManufacturerModelName; site: InstitutionName is NOT read (identifying).

Labels come from `labels_uri` keyed by `key="sop_instance_uid"` (a `SOPInstanceUID` column) or
`key="file_name"` (a `file_name` column holding each file's name, e.g. `IMG0001.dcm`), with any of the
columns label, birads, pathology, density, site. An image without a row gets no label; a row matching no
image, or two rows for one key, is refused. A file without PatientID, StudyInstanceUID or SOPInstanceUID is
refused by name (a pseudonym needs a value), and so are two files with one SOPInstanceUID.
"""

from __future__ import annotations

import hashlib
import posixpath
from typing import Literal

import pandas as pd

from mammo_ray import storage
from mammo_ray.datasets import sources
from mammo_ray.datasets.counts import Tally
from mammo_ray.datasets.manifest import MANIFEST_COLUMNS, validate_manifest
from mammo_ray.errors import ManifestError, StorageError
from mammo_ray.imaging.dicom import laterality_from_tags, view_from_tags

EXTENSIONS: tuple[str, ...] = (".dcm", ".dicom")
LABEL_COLUMNS: tuple[str, ...] = ("label", "birads", "pathology", "density", "site")
KEY_COLUMNS: dict[str, str] = {"sop_instance_uid": "SOPInstanceUID", "file_name": "file_name"}
_IDENTIFIERS: tuple[tuple[str, str], ...] = (
    ("patient", "PatientID"), ("exam", "StudyInstanceUID"), ("image", "SOPInstanceUID"),
)
MIN_SALT_LENGTH = 16


def pseudonym(dataset: str, kind: str, value: str, salt: str) -> str:
    """'<dataset>/<kind>-<16 hex>': the same value and salt always give the same id; without the salt it
    cannot be reversed by hashing candidate ids."""
    digest = hashlib.sha256(f"{salt}\x00{kind}\x00{value}".encode()).hexdigest()[:16]
    return f"{dataset}/{kind}-{digest}"


def build_manifest(
    images_uri: str,
    *,
    dataset: str,
    salt: str,
    labels_uri: str | None = None,
    key: Literal["sop_instance_uid", "file_name"] = "sop_instance_uid",
) -> pd.DataFrame:
    """A validated, pseudonymised manifest of every .dcm / .dicom file under `images_uri`."""
    if not dataset or "/" in dataset:
        raise ValueError(f"dataset {dataset!r} must be a non-empty name without '/'")
    if not isinstance(salt, str) or len(salt) < MIN_SALT_LENGTH:
        raise ValueError(f"salt must be a secret string of at least {MIN_SALT_LENGTH} characters (the "
                         "pseudonyms of patient, exam and image ids are keyed by it)")
    if key not in KEY_COLUMNS:
        raise ValueError(f"key must be one of {', '.join(KEY_COLUMNS)}, not {key!r}")
    labels = _labels(labels_uri, KEY_COLUMNS[key]) if labels_uri else {}
    uris = sorted(sources.index_tree(images_uri, EXTENSIONS).values())
    problems: list[str] = []
    if key == "file_name":
        problems.extend(_repeated_names(uris))
    records: list[dict] = []
    matched: set[str] = set()
    seen: dict[str, str] = {}  # SOPInstanceUID -> uri
    for uri, header in sources.read_dicom_headers(uris).items():
        if isinstance(header, StorageError):
            problems.append(str(header))
            continue
        values = {kind: str(header.get(keyword, "") or "").strip() for kind, keyword in _IDENTIFIERS}
        absent = [keyword for kind, keyword in _IDENTIFIERS if not values[kind]]
        if absent:
            problems.append(f"{uri}: no {', '.join(absent)} in the header")
            continue
        if values["image"] in seen:
            problems.append(f"{uri}: SOPInstanceUID {values['image']} also in {seen[values['image']]}")
            continue
        seen[values["image"]] = uri
        lookup = values["image"] if key == "sop_instance_uid" else posixpath.basename(storage.split_uri(uri)[1])
        row = labels.get(lookup, {})
        if row:
            matched.add(lookup)
        records.append({
            "image_id": pseudonym(dataset, "image", values["image"], salt),
            "uri": uri,
            "dataset": dataset,
            "patient_id": pseudonym(dataset, "patient", values["patient"], salt),
            "exam_id": pseudonym(dataset, "exam", values["exam"], salt),
            "laterality": laterality_from_tags(header),
            "view": view_from_tags(header),
            "device": sources.device_from_header(header),
            **{column: row.get(column) or None for column in LABEL_COLUMNS},
        })
    problems.extend(f"{labels_uri}: {KEY_COLUMNS[key]} {value!r} matches no image under {images_uri}"
                    for value in sorted(set(labels) - matched))
    if problems:
        raise ManifestError(images_uri, problems)
    frame = validate_manifest(pd.DataFrame.from_records(records, columns=MANIFEST_COLUMNS), source=images_uri)
    return Tally(images_uri, read=len(uris)).attach(frame)  # every file kept (a bad one is refused)


def _repeated_names(uris: list[str]) -> list[str]:
    """Two files of one name make a label keyed by file name ambiguous: each such name, with its files."""
    by_name: dict[str, list[str]] = {}
    for uri in uris:
        by_name.setdefault(posixpath.basename(storage.split_uri(uri)[1]), []).append(uri)
    return [f"file name {name!r} is not unique ({', '.join(found)}): key the labels by sop_instance_uid"
            for name, found in sorted(by_name.items()) if len(found) > 1]


def _labels(uri: str, key_column: str) -> dict[str, dict]:
    table = sources.read_text_table(uri, [key_column])
    if not any(column in table.columns for column in LABEL_COLUMNS):
        raise ManifestError(uri, [f"none of the columns {', '.join(LABEL_COLUMNS)}; found "
                                  f"{', '.join(repr(c) for c in table.columns if c != 'row')}"])
    labels: dict[str, dict] = {}
    problems = []
    for row in table.to_dict("records"):
        value = row[key_column]
        if not value:
            problems.append(f"row {row['row']}: empty {key_column}")
        elif value in labels:
            problems.append(f"row {row['row']}: {key_column} {value!r} has a second row")
        else:
            labels[value] = {column: row.get(column) for column in LABEL_COLUMNS}
    if problems:
        raise ManifestError(uri, problems)
    return labels
