"""CBIS-DDSM adapter: the case-description CSVs + the full-mammogram DICOMs -> manifest.

One manifest row per case folder (an image): label 1 if any abnormality of that image is MALIGNANT,
pathology malignant/benign, birads the highest assessment; labels are per image, never per patient. The
images are found in the distribution's tree, any folder of DICOMs (case folder from the PatientID tag) or
the NBIA download tree; where headers are read, a full mammogram is recognised by its pixels
(`pixel_kind`), never by a name. The quirks handled: docs/design.md, "CBIS-DDSM".
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from typing import Literal

import pandas as pd
from pydicom.dataset import Dataset

from mammo_ray import storage
from mammo_ray.datasets import sources
from mammo_ray.datasets.counts import MISSING_FILE, Tally
from mammo_ray.datasets.manifest import (
    MANIFEST_COLUMNS,
    normalise_birads,
    normalise_pathology,
    validate_manifest,
)
from mammo_ray.errors import ManifestError, StorageError

DATASET = "cbis_ddsm"
DENSITY_COLUMNS: tuple[str, ...] = ("breast_density", "breast density")
REQUIRED_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "left or right breast",
    "image view",
    "abnormality id",
    "abnormality type",
    "assessment",
    "pathology",
    "image file path",
)
# A full-mammogram case folder; cropped images and ROI masks live in '<case folder>_<abnormality id>'.
CASE_FOLDER_PATTERN = re.compile(
    r"^(?P<type>Mass|Calc)-(?P<split>Training|Test)_(?P<patient>P_\d+)_(?P<side>LEFT|RIGHT)_(?P<view>CC|MLO)$"
)
_ROI_FOLDER_PATTERN = re.compile(r"^(?:Mass|Calc)-(?:Training|Test)_P_\d+_(?:LEFT|RIGHT)_(?:CC|MLO)_\d+$")
#: A 16-bit file whose short side is below this is a crop (FORMATS.md §4: full images 2,600-4,100 px in a
#: sample, the 8 real DICOMs 2,576-2,920; crops are the size of an abnormality).
FULL_IMAGE_MIN_SIDE = 2000
#: Masks are 8-bit (0/255); full images and crops 16-bit (FORMATS.md §4).
MASK_MAX_BITS = 8
PixelKind = Literal["full mammogram", "ROI mask", "cropped image"]


def read_case_csv(csv_uri: str) -> pd.DataFrame:
    """One case-description CSV as one row per abnormality, checked.

    Returns the CSV's columns (as text, whitespace stripped; the density column renamed to
    `breast_density` whichever spelling the file uses) plus `case_folder` (the image key), `source`
    (the CSV's file name) and `row` (the 1-based data row number, header excluded). Every row with an
    unparseable case folder, a case folder that disagrees with the patient/side/view columns, an
    unknown pathology or assessment is listed in one ManifestError.
    """
    name = posixpath.basename(storage.split_uri(csv_uri)[1])
    frame = sources.read_text_table(csv_uri, REQUIRED_COLUMNS, one_of=[DENSITY_COLUMNS])
    density = [c for c in DENSITY_COLUMNS if c in frame.columns]
    if len(density) > 1:
        raise ManifestError(
            csv_uri, [f"both density columns {DENSITY_COLUMNS[0]!r} and {DENSITY_COLUMNS[1]!r}"]
        )
    frame = frame.rename(columns={density[0]: "breast_density"})
    frame["case_folder"] = frame["image file path"].str.split("/", n=1).str[0]
    frame["source"] = name

    problems: list[str] = []
    for row in frame.to_dict("records"):
        where = f"{name} row {row['row']}"
        match = CASE_FOLDER_PATTERN.match(row["case_folder"])
        if not match:
            problems.append(
                f"{where}: image file path {row['image file path']!r} does not start with a case folder"
            )
            continue
        expected = (row["patient_id"], row["left or right breast"].upper(), row["image view"].upper())
        if (match["patient"], match["side"], match["view"]) != expected:
            problems.append(
                f"{where}: case folder {row['case_folder']} disagrees with "
                f"patient/side/view {'/'.join(expected)}"
            )
        for column, normalise in (("pathology", normalise_pathology), ("assessment", normalise_birads)):
            try:
                if normalise(row[column]) is None:
                    problems.append(f"{where} ({row['case_folder']}): empty {column}")
            except ValueError as error:
                problems.append(f"{where} ({row['case_folder']}): {column}: {error}")
        if row["breast_density"] and row["breast_density"] not in {"0", "1", "2", "3", "4"}:
            problems.append(
                f"{where} ({row['case_folder']}): breast density {row['breast_density']!r} is not 0-4"
            )
    if problems:
        raise ManifestError(csv_uri, problems)
    return frame


def image_table(case_csv_uris: Sequence[str]) -> pd.DataFrame:
    """The abnormality rows of all CSVs aggregated to one row per image (case folder).

    Columns: case_folder, patient_id, laterality (L/R), view, abnormality_type, split, n_abnormalities,
    pathology (malignant if any abnormality is, else benign), birads (highest assessment), label,
    density (A-D, None where rows disagree), image_file_path, sources.
    """
    if isinstance(case_csv_uris, str):
        case_csv_uris = [case_csv_uris]
    if not case_csv_uris:
        raise ManifestError("cbis_ddsm", ["no case-description CSV given"])
    tables: list[pd.DataFrame] = []
    problems: list[str] = []
    for uri in case_csv_uris:  # every CSV is checked, so one error lists the problems of all of them
        try:
            tables.append(read_case_csv(uri))
        except ManifestError as error:
            name = posixpath.basename(storage.split_uri(uri)[1])
            problems.extend(p if p.startswith(name) else f"{name}: {p}" for p in error.problems)
    if problems:
        raise ManifestError(", ".join(case_csv_uris), problems)
    rows = pd.concat(tables, ignore_index=True)
    records = []
    for case_folder, group in rows.groupby("case_folder", sort=True):
        match = CASE_FOLDER_PATTERN.match(case_folder)
        assert match is not None  # read_case_csv checked every row
        paths = sorted(set(group["image file path"]))
        if len(paths) > 1:
            problems.append(f"{case_folder}: several image file paths: {', '.join(paths)}")
            continue
        pathologies = [normalise_pathology(v) for v in group["pathology"]]
        assessments = [normalise_birads(v) for v in group["assessment"]]
        malignant = "malignant" in pathologies
        records.append(
            {
                "case_folder": case_folder,
                "patient_id": match["patient"],
                "laterality": match["side"][0],
                "view": match["view"],
                "abnormality_type": match["type"].lower(),
                "split": "train" if match["split"] == "Training" else "test",
                "n_abnormalities": len(group),
                "pathology": "malignant" if malignant else "benign",
                "birads": max(assessments, key=_birads_rank),
                "label": int(malignant),
                "density": _density(group["breast_density"]),
                "image_file_path": paths[0],
                "sources": ";".join(sorted(set(group["source"]))),
            }
        )
    if problems:
        raise ManifestError(", ".join(case_csv_uris), problems)
    return pd.DataFrame.from_records(records)


def build_manifest(
    case_csv_uris: Sequence[str],
    images_uri: str,
    *,
    missing: Literal["error", "skip"] = "skip",
    nbia_metadata_uri: str | None = None,
) -> pd.DataFrame:
    """A validated manifest of the CBIS-DDSM images described by `case_csv_uris` that have a file.

    `images_uri` (local or s3://, searched recursively for .dcm files) holds either the distribution's
    tree or arbitrarily named DICOMs whose PatientID is the case folder. By default images described in
    the CSVs but absent from `images_uri` are dropped (`missing="skip"`: a local copy is often a subset);
    `missing="error"` lists them all in one ManifestError. DICOM files that cannot be attributed to a
    case folder, and two files for one case folder, are always errors; files of case folders not in the
    CSVs (and cropped/ROI files) are ignored.

    `nbia_metadata_uri`: the NBIA download's metadata.csv. Each CSV path `<Subject ID>/<Study UID>/<Series
    UID>/000000.dcm` is then resolved through it: the row of that (Subject ID, Study UID, Series UID) gives
    the `File Location` (relative to the folder of metadata.csv, e.g. `./CBIS-DDSM/Mass-Training_P_00001_LEFT_CC/
    07-20-2016-DDSM-74994/1.000000-full mammogram images-24515`), whose one full mammogram by its pixels
    (`pixel_kind`, from the header's first bytes) is the image, whatever it is named on disk (`1-1.dcm` where
    the CSV says `000000.dcm`). So a full image is known by the series UIDs of its own CSV row and its pixels,
    never by a name or a series description (those lie: FORMATS.md §4); a location whose files hold no full
    mammogram, or several, is refused by name with each file's bit depth and size.
    """
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', not {missing!r}")
    if isinstance(case_csv_uris, str):
        case_csv_uris = [case_csv_uris]
    source = ", ".join(case_csv_uris)
    images = image_table(case_csv_uris)
    wanted = {row["case_folder"]: row["image_file_path"] for row in images.to_dict("records")}
    if nbia_metadata_uri is None:
        files, devices, problems = _index_images(images_uri, wanted)
    else:
        files, devices, problems = _resolve_through_nbia(nbia_metadata_uri, wanted)
    # One image per case folder (the CSVs write a row per abnormality), looked for where the files are resolved.
    tally = Tally(images_uri if nbia_metadata_uri is None else nbia_metadata_uri, read=len(images))

    records = []
    for row in images.to_dict("records"):
        uri = files.get(row["case_folder"])
        if uri is None:
            if missing == "error":
                problems.append(f"{row['case_folder']} ({row['sources']}): no image file under {images_uri}")
            tally.drop(MISSING_FILE)
            continue
        patient = f"{DATASET}/{row['patient_id']}"
        records.append(
            {
                "image_id": f"{DATASET}/{row['case_folder']}",
                "uri": uri,
                "dataset": DATASET,
                "patient_id": patient,
                "exam_id": patient,  # a DDSM case is one screening exam of one woman
                "laterality": row["laterality"],
                "view": row["view"],
                "birads": row["birads"],
                "label": row["label"],
                "pathology": row["pathology"],
                "density": row["density"],
                "device": devices.get(uri),
            }
        )
    if problems:
        raise ManifestError(source, problems)
    return tally.attach(validate_manifest(pd.DataFrame.from_records(records, columns=MANIFEST_COLUMNS),
                                          source=source))


def pixel_kind(header: Dataset) -> PixelKind:
    """What a CBIS-DDSM file is by the pixels its header describes (bit depth, rows, columns): 8-bit is an ROI
    mask, 16-bit with a short side under FULL_IMAGE_MIN_SIDE a cropped image, else a full mammogram."""
    bits = int(header.get("BitsStored") or header.get("BitsAllocated") or 0)
    if bits <= MASK_MAX_BITS:
        return "ROI mask"
    if min(int(header.get("Rows") or 0), int(header.get("Columns") or 0)) < FULL_IMAGE_MIN_SIDE:
        return "cropped image"
    return "full mammogram"


def _pixels(uri: str, header: Dataset) -> str:
    """'…/1-1.dcm (8-bit 4006x1846: ROI mask)', for messages."""
    bits = header.get("BitsStored") or header.get("BitsAllocated")
    return f"{uri} ({bits}-bit {header.get('Rows')}x{header.get('Columns')}: {pixel_kind(header)})"


def _index_images(images_uri: str, wanted: dict[str, str]) -> tuple[dict[str, str], dict[str, str | None], list[str]]:
    """case folder -> file URI for the case folders in `wanted`, file URI -> device where its header was read,
    and the problems found on the way."""
    candidates: dict[str, list[tuple[str, str]]] = {}  # case folder -> [(uri, relative path)]
    unnamed: list[tuple[str, str]] = []  # files whose path names no case folder: their header does
    problems: list[str] = []
    root = storage.split_uri(images_uri)[1].rstrip("/")
    for uri in storage.list_files(images_uri, [".dcm"]):
        path = storage.split_uri(uri)[1]
        relative = path[len(root) + 1 :] if path.startswith(root + "/") else path
        folders = relative.replace("\\", "/").split("/")[:-1]
        key = next((p for p in folders if CASE_FOLDER_PATTERN.match(p)), None)
        if key is None and any(_ROI_FOLDER_PATTERN.match(p) for p in folders):
            continue  # a cropped image or ROI mask of the distribution's tree
        if key is None:
            unnamed.append((uri, relative))
        elif key in wanted:
            candidates.setdefault(key, []).append((uri, relative))
    devices: dict[str, str | None] = {}
    for (uri, relative), header in zip(unnamed, sources.read_dicom_headers([u for u, _ in unnamed]).values(),
                                       strict=True):
        if isinstance(header, StorageError):
            problems.append(str(header))
            continue
        patient_id = str(header.get("PatientID", "") or "").strip()
        if _ROI_FOLDER_PATTERN.match(patient_id):
            continue  # a cropped image or ROI mask, by its header
        if not CASE_FOLDER_PATTERN.match(patient_id):
            problems.append(f"image file {uri}: neither a case folder in its path nor a CBIS-DDSM PatientID "
                            f"(like 'Mass-Test_P_00173_LEFT_CC') in its header (PatientID {patient_id!r})")
        elif patient_id in wanted and pixel_kind(header) != "full mammogram":
            problems.append(f"{patient_id}: PatientID names a full image but the pixels are not one: "
                            f"{_pixels(uri, header)}")
        elif patient_id in wanted:
            candidates.setdefault(patient_id, []).append((uri, relative))
            devices[uri] = sources.device_from_header(header)
    files: dict[str, str] = {}
    for key, found in sorted(candidates.items()):
        if len(found) == 1:
            files[key] = found[0][0]
            continue
        exact = [uri for uri, relative in found if relative.endswith(wanted[key])]
        if len(exact) == 1:
            files[key] = exact[0]
        else:
            problems.append(f"{key}: several image files: {', '.join(uri for uri, _ in found)}")
    return files, devices, problems


#: The NBIA metadata.csv columns the resolution needs (the rest vary by NBIA version: FORMATS.md §4).
NBIA_COLUMNS: tuple[str, ...] = ("Subject ID", "Study UID", "Series UID", "File Location")


def _resolve_through_nbia(metadata_uri: str, wanted: dict[str, str]
                          ) -> tuple[dict[str, str], dict[str, str | None], list[str]]:
    """case folder -> file URI through the NBIA metadata.csv, file URI -> device, and the problems found on the
    way. The one full mammogram of each File Location is chosen by its pixels (`pixel_kind`)."""
    table = sources.read_text_table(metadata_uri, NBIA_COLUMNS)
    base = posixpath.dirname(metadata_uri) or "."  # File Location is relative to metadata.csv's folder
    locations: dict[tuple[str, str, str], str] = {}
    for row in table.to_dict("records"):
        key = (row["Subject ID"], row["Study UID"], row["Series UID"])
        locations[key] = row["File Location"].replace("\\", "/").removeprefix("./").strip("/")
    by_folder: dict[str, list[str]] = {}
    for relative, uri in sources.index_tree(base, [".dcm"]).items():
        by_folder.setdefault(posixpath.dirname(relative), []).append(uri)
    problems: list[str] = []
    candidates: dict[str, tuple[str, list[str]]] = {}  # case folder -> (File Location, its files)
    for case_folder, path in sorted(wanted.items()):
        parts = path.split("/")
        if len(parts) != 4:
            problems.append(f"{case_folder}: image file path {path!r} is not "
                            "<Subject ID>/<Study UID>/<Series UID>/<file>")
            continue
        location = locations.get((parts[0], parts[1], parts[2]))
        if location is None:
            continue  # not downloaded (not in metadata.csv): like a file absent from a local copy
        candidates[case_folder] = (location, sorted(by_folder.get(location, [])))
    headers = sources.read_dicom_headers([uri for _, uris in candidates.values() for uri in uris])
    found: dict[str, str] = {}
    devices: dict[str, str | None] = {}
    for case_folder, (location, uris) in candidates.items():
        unreadable = [str(headers[uri]) for uri in uris if isinstance(headers[uri], StorageError)]
        if unreadable:
            problems.extend(f"{case_folder}: {message}" for message in unreadable)
            continue
        full = [uri for uri in uris if pixel_kind(headers[uri]) == "full mammogram"]
        if len(full) == 1:
            found[case_folder] = full[0]
            devices[full[0]] = sources.device_from_header(headers[full[0]])
        else:
            described = ", ".join(_pixels(uri, headers[uri]) for uri in uris) or "no .dcm file"
            problems.append(f"{case_folder}: metadata.csv File Location {location!r} holds {len(full)} full "
                            f"mammograms by their pixels, not one: {described}")
    return found, devices, problems


def _density(values: pd.Series) -> str | None:
    """The image's density (1-4 -> A-D): its rows' one value; None where they disagree or say 0 (calc test
    has two rows of density 0, which is no BI-RADS density category)."""
    found = {value for value in values if value in {"1", "2", "3", "4"}}
    return "ABCD"[int(found.pop()) - 1] if len(found) == 1 else None


def _birads_rank(value: str | None) -> tuple[int, str]:
    return (-1, "") if value is None else (int(value[0]), value[1:])
