"""Small copies of RSNA, VinDr-Mammo and CMMD laid out exactly as they are downloaded (FORMATS.md): the
published headers, value spellings and folder layouts, with real DICOM files (pydicom-written; JPEG 2000
and MONOCHROME1 where the collection has them). Pixels are tiny: these copies test the adapters and the
decoder, not the science."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless

from tests.image_builders import make_dicom

RSNA_HEADER = ("site_id,patient_id,image_id,laterality,view,age,cancer,biopsy,invasive,BIRADS,implant,density,"
               "machine_id,difficult_negative_case")
VINDR_HEADER = ("study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,"
                "split")
VINDR_FINDINGS_HEADER = ("study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,"
                         "breast_density,finding_categories,finding_birads,xmin,ymin,xmax,ymax,split")
VINDR_METADATA_HEADER = ("SOP Instance UID,Series Instance UID,SOP Instance UID,Patient's Age,View Position,"
                         "Image Laterality,Photometric Interpretation,Rows,Columns,Imager Pixel Spacing,"
                         "Pixel Spacing,Pixel Padding Value,Pixel Padding Range Limit,Window Center,Window Width,"
                         "Rescale Intercept,Rescale Slope,Rescale Type,Window Center & Width Explanation,"
                         "Manufacturer,Manufacturer's Model Name")
CMMD_HEADER = "ID1,LeftRight,Age,number,abnormality,classification,subtype"
_VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}


def gradient(rows: int = 48, columns: int = 32) -> np.ndarray:
    """A uint16 image whose values rise left to right: its orientation survives decoding visibly."""
    return (np.tile(np.arange(columns, dtype=np.uint16) * 100, (rows, 1)) + 50).astype(np.uint16)


def hex_id(*parts: object) -> str:
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


# --- RSNA (FORMATS.md §1) ------------------------------------------------------------------------------

#: (site, patient, image, laterality, view, age, cancer, biopsy, invasive, BIRADS, implant, density, machine,
#: difficult_negative_case): the traps of the real file: AT/LM/ML/LMO views, empty BIRADS and density (site 2),
#: age and BIRADS written as floats, True/False, a positive breast with biopsy.
RSNA_ROWS: tuple[tuple[str, ...], ...] = (
    ("1", "10006", "462822612", "L", "CC", "61.0", "0", "0", "0", "", "0", "", "29", "False"),
    ("1", "10006", "1459541791", "L", "MLO", "61.0", "0", "0", "0", "", "0", "", "29", "False"),
    ("1", "10006", "1864590858", "R", "MLO", "61.0", "0", "0", "0", "", "0", "", "29", "False"),
    ("1", "10006", "1874946579", "R", "CC", "61.0", "0", "0", "0", "", "0", "", "29", "False"),
    ("2", "10011", "220375232", "L", "CC", "55", "1", "1", "1", "0", "0", "B", "21", "False"),
    ("2", "10011", "270344397", "L", "MLO", "55", "1", "1", "1", "0", "0", "B", "21", "False"),
    ("2", "10011", "541722628", "R", "AT", "55", "0", "1", "0", "1.0", "0", "B", "21", "True"),
    ("2", "10011", "1031443799", "R", "LM", "55", "0", "1", "0", "1.0", "0", "B", "21", "True"),
    ("1", "10025", "562340703", "L", "ML", "", "0", "0", "0", "2", "1", "D", "49", "False"),
    ("1", "10025", "1365269360", "R", "LMO", "", "0", "0", "0", "2", "1", "D", "49", "False"),
)


def write_rsna(root: Path, rows: tuple[tuple[str, ...], ...] = RSNA_ROWS, *, skip_files: int = 0) -> Path:
    """`root/train.csv` + `root/train_images/<patient_id>/<image_id>.dcm`, JPEG 2000 Lossless (the other
    confirmed syntax, JPEG Lossless SV1, has a decoder here but no encoder to write it with), MONOCHROME1 for
    machine 49. The last `skip_files` rows get no file (a partial download)."""
    images = root / "train_images"
    lines = [RSNA_HEADER, *(",".join(row) for row in rows)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    for row in rows[: len(rows) - skip_files]:
        patient, image, side, view, machine = row[1], row[2], row[3], row[4], row[12]
        photometric = "MONOCHROME1" if machine == "49" else "MONOCHROME2"
        path = images / patient / f"{image}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make_dicom(gradient(), photometric=photometric, bits_stored=12, syntax=JPEG2000Lossless,
                                    PatientID=patient, ImageLaterality=side, ViewPosition=view))
    return root


# --- VinDr-Mammo (FORMATS.md §2) ----------------------------------------------------------------------

def vindr_rows(studies: int = 3) -> list[dict[str, str]]:
    """Four images per study (L/R x CC/MLO), BI-RADS and density spelt as published, both splits."""
    birads = ["BI-RADS 1", "BI-RADS 2", "BI-RADS 3", "BI-RADS 4", "BI-RADS 5", "BI-RADS 1"]
    density = ["DENSITY A", "DENSITY B", "DENSITY C", "DENSITY D"]
    rows = []
    for study in range(studies):
        for index, (side, view) in enumerate((("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))):
            breast = 2 * study + (side == "R")
            rows.append({
                "study_id": hex_id("study", study), "series_id": hex_id("series", study),
                "image_id": hex_id("image", study, index), "laterality": side, "view_position": view,
                "height": "3518", "width": "2800", "breast_birads": birads[breast % len(birads)],
                "breast_density": density[study % 4], "split": "test" if study == studies - 1 else "training",
            })
    return rows


def write_vindr(root: Path, rows: list[dict[str, str]] | None = None) -> Path:
    """The PhysioNet layout: the three CSVs (findings with single-quoted Python lists, metadata with its
    repeated `SOP Instance UID` header) and `images/<study_id>/<image_id>.dicom`; Planmed images (the
    2812x2012 machine) are MONOCHROME1, as the collection's are."""
    rows = vindr_rows() if rows is None else rows
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "breast-level_annotations.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=VINDR_HEADER.split(","))
        writer.writeheader()
        writer.writerows(rows)
    with open(root / "finding_annotations.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(VINDR_FINDINGS_HEADER.split(","))
        for row in rows:
            positive = row["breast_birads"] == "BI-RADS 5"
            categories = "['Suspicious Calcification', 'Mass']" if positive else "['No Finding']"
            finding = ["BI-RADS 5", "-3.5", "10", "2805", "40"] if positive else ["", "", "", "", ""]  # off the image
            writer.writerow([row[c] for c in VINDR_HEADER.split(",")[:-1]] + [categories, *finding, row["split"]])
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(VINDR_METADATA_HEADER.split(","))
        for index, row in enumerate(rows):
            planmed = index % 4 == 3
            writer.writerow([row["image_id"], row["series_id"], row["image_id"], "053Y", row["view_position"],
                             row["laterality"], "MONOCHROME1" if planmed else "MONOCHROME2", "48", "32", "", "",
                             "", "", "", "", "0", "1", "", "Default W/L" if planmed else "linear LUT",
                             "Planmed" if planmed else "SIEMENS",
                             "Planmed Nuance" if planmed else "Mammomat Inspiration"])
    for index, row in enumerate(rows):
        path = root / "images" / row["study_id"] / f"{row['image_id']}.dicom"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make_dicom(gradient(), photometric="MONOCHROME1" if index % 4 == 3 else "MONOCHROME2",
                                    bits_stored=12, syntax=JPEG2000Lossless, ImageLaterality=row["laterality"],
                                    ViewPosition=row["view_position"]))
    return root


# --- CMMD (FORMATS.md §3) -----------------------------------------------------------------------------

#: ID1 -> [(file, laterality, view)]: the usual order, and D1-1506's exception (1-1 is the MLO).
CMMD_FILES: dict[str, list[tuple[str, str, str]]] = {
    "D1-0001": [("1-1", "L", "CC"), ("1-2", "L", "MLO"), ("1-3", "R", "CC"), ("1-4", "R", "MLO")],
    "D1-1506": [("1-1", "R", "MLO"), ("1-2", "R", "CC")],
    "D2-0111": [("1-1", "L", "CC"), ("1-2", "L", "MLO"), ("1-3", "R", "CC"), ("1-4", "R", "MLO")],
}
#: One row per breast with a finding; D1-0001 R and D2-0111 L have images but no row.
CMMD_CLINICAL = (
    "D1-0001,L,44,2,calcification,Benign,",
    "D1-1506,R,51,2,mass,Malignant,",
    "D2-0111,R,60,2,both,Malignant,Luminal B",
)


def _view_code(view: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodeMeaning = _VIEW_CODES[view]
    code.CodingSchemeDesignator = "SCT"
    return code


def write_cmmd(root: Path, files: dict[str, list[tuple[str, str, str]]] | None = None,
               clinical: tuple[str, ...] = CMMD_CLINICAL) -> tuple[Path, Path]:
    """(clinical CSV, the `CMMD` folder): `CMMD/<ID1>/<MM-DD-YYYY-NNNNN>/1.000000-NNNNN/1-N.dcm`, 8-bit
    MONOCHROME2, laterality in ImageLaterality and the view only in ViewCodeSequence (no ViewPosition),
    PatientOrientation as CMMD writes it, Manufacturer blank."""
    files = CMMD_FILES if files is None else files
    root.mkdir(parents=True, exist_ok=True)
    table = root / "CMMD_clinicaldata_revision.csv"
    table.write_text("\n".join((CMMD_HEADER, *clinical)) + "\n")
    orientation = {("L", "CC"): ["A", "R"], ("L", "MLO"): ["A", "FR"], ("R", "CC"): ["P", "L"],
                   ("R", "MLO"): ["P", "FL"]}
    tree = root / "CMMD"
    for number, (patient, images) in enumerate(sorted(files.items())):
        series = tree / patient / f"07-18-2010-{49690 + number}" / f"1.000000-{35817 + number}"
        series.mkdir(parents=True, exist_ok=True)
        for instance, (name, side, view) in enumerate(images, start=1):
            pixels = (gradient() // 16).astype(np.uint8)
            data = make_dicom(pixels, PatientID=patient, ImageLaterality=side, InstanceNumber=instance,
                              PatientOrientation=orientation[(side, view)], Manufacturer="",
                              ViewCodeSequence=Sequence([_view_code(view)]), VOILUTFunction="SIGMOID",
                              WindowCenter="128", WindowWidth="256")
            (series / f"{name}.dcm").write_bytes(data)
    return table, tree
