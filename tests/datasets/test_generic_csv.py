"""Generic CSV adapter: mappings, path resolution, delimiter sniffing and error reporting."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mammo_ray.datasets import generic_csv
from mammo_ray.datasets.manifest import MANIFEST_COLUMNS
from mammo_ray.errors import ManifestError

CSV = (
    "path;subject;side;projection;BIRADS;diagnosis;y\n"
    "scans/a1.dcm;s1;LEFT;CC;4A;malignant;1\n"
    "scans/a2.dcm;s1;LEFT;MLO;BI-RADS 2;benign;0\n"
    "/abs/b1.png;s2;R;CC;1;normal;\n"
    "s3://bucket/c1.dcm;s3;R;MLO;5;malignant;1\n"
)
MAPPING = {
    "uri": "path",
    "patient_id": "subject",
    "laterality": "side",
    "view": "projection",
    "birads": "BIRADS",
    "pathology": "diagnosis",
    "label": "y",
}


@pytest.fixture()
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "meta" / "cohort.csv"
    path.parent.mkdir()
    path.write_text(CSV)
    return path


def test_mapping_with_sniffed_delimiter(csv_file: Path) -> None:
    manifest = generic_csv.build_manifest(str(csv_file), columns=MAPPING, dataset="local")

    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert manifest["image_id"].tolist() == ["local/a1", "local/a2", "local/b1", "local/c1"]
    assert manifest["uri"].tolist() == [
        str(csv_file.parent / "scans" / "a1.dcm"),  # relative: against the CSV's folder
        str(csv_file.parent / "scans" / "a2.dcm"),
        "/abs/b1.png",
        "s3://bucket/c1.dcm",
    ]
    assert manifest["patient_id"].tolist() == ["local/s1", "local/s1", "local/s2", "local/s3"]
    assert manifest["exam_id"].tolist() == manifest["patient_id"].tolist()
    assert manifest["laterality"].tolist() == ["L", "L", "R", "R"]
    assert manifest["birads"].tolist() == ["4a", "2", "1", "5"]
    assert manifest["label"].tolist() == [1, 0, pd.NA, 1]
    assert set(manifest["dataset"]) == {"local"}


def test_images_root_and_s3_root(csv_file: Path, tmp_path: Path) -> None:
    manifest = generic_csv.build_manifest(
        str(csv_file), columns=MAPPING, dataset="local", images_root=str(tmp_path / "images")
    )
    assert manifest["uri"].iloc[0] == str(tmp_path / "images" / "scans" / "a1.dcm")
    manifest = generic_csv.build_manifest(
        str(csv_file), columns=MAPPING, dataset="local", images_root="s3://bucket/root"
    )
    assert manifest["uri"].iloc[1] == "s3://bucket/root/scans/a2.dcm"


@pytest.mark.parametrize("label_from, expected", [("birads", [1, 0, 0, 1]), ("pathology", [1, 0, 0, 1])])
def test_label_from_birads_or_pathology(csv_file: Path, label_from: str, expected: list[int]) -> None:
    columns = {k: v for k, v in MAPPING.items() if k != "label"}
    manifest = generic_csv.build_manifest(
        str(csv_file), columns=columns, dataset="local", label_from=label_from
    )
    assert manifest["label"].tolist() == expected


def test_same_named_columns_need_no_mapping_and_explicit_delimiter(tmp_path: Path) -> None:
    path = tmp_path / "m.tsv"
    path.write_text("uri\tpatient_id\timage_id\tbirads\nx/1.png\tp1\timg-1\t3\nx/2.png\tp2\timg-2\t4c\n")
    manifest = generic_csv.build_manifest(
        str(path), columns={}, dataset="d", delimiter="\t", label_from="birads"
    )
    assert manifest["image_id"].tolist() == ["d/img-1", "d/img-2"]
    assert manifest["label"].tolist() == [0, 1]


def test_patient_defaults_to_the_image(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("file\nimages/one.png\nimages/two.png\n")
    manifest = generic_csv.build_manifest(str(path), columns={"uri": "file"}, dataset="d")
    assert manifest["patient_id"].tolist() == ["d/one", "d/two"]
    assert manifest["label"].isna().all()


def test_unknown_keys_and_absent_columns_are_named(csv_file: Path) -> None:
    with pytest.raises(ManifestError) as caught:
        generic_csv.build_manifest(
            str(csv_file),
            columns={"uri": "path", "diagnosis": "diagnosis", "patient_id": "patient", "dataset": "x"},
            dataset="local",
        )
    assert caught.value.source == str(csv_file)
    problems = caught.value.problems
    assert len(problems) == 3
    assert any("'diagnosis'" in p and "unknown mapping key" in p for p in problems)
    assert any("'patient'" in p and "no column" in p for p in problems)
    assert any("'dataset'" in p for p in problems)


def test_missing_uri_and_label_source(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ManifestError, match="uri"):
        generic_csv.build_manifest(str(path), columns={}, dataset="d")
    with pytest.raises(ManifestError, match="birads"):
        generic_csv.build_manifest(str(path), columns={"uri": "a"}, dataset="d", label_from="birads")


def test_bad_values_are_all_listed_in_one_error(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("uri,birads,label,side\n1.png,4d,1,L\n2.png,3,2,L\n3.png,x,0,up\n,3,0,L\n")
    with pytest.raises(ManifestError) as caught:
        generic_csv.build_manifest(str(path), columns={"laterality": "side"}, dataset="d")
    problems = caught.value.problems
    # Data rows are numbered from 0, as validate_manifest numbers them.
    assert any(p.startswith("row 0 ") and "BI-RADS" in p for p in problems)
    assert any(p.startswith("row 1 ") and "label '2'" in p for p in problems)
    assert any(p.startswith("row 2 ") and "BI-RADS" in p for p in problems)
    assert any(p.startswith("row 2 ") and "laterality" in p for p in problems)
    assert any(p.startswith("row 3:") and "empty uri" in p for p in problems)
    assert [int(p.split(" ")[1].rstrip(":")) for p in problems] == sorted(
        int(p.split(" ")[1].rstrip(":")) for p in problems
    )

    path.write_text("uri,birads\n1.png,4d\n2.png,3\n3.png,x\n")
    with pytest.raises(ManifestError) as caught:
        generic_csv.build_manifest(str(path), columns={}, dataset="d", label_from="birads")
    assert [p.split(" ")[1] for p in caught.value.problems] == ["0", "2"]


def test_duplicate_stems_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("uri\na/scan.png\nb/scan.png\n")
    with pytest.raises(ManifestError, match="duplicate image_id 'd/scan'"):
        generic_csv.build_manifest(str(path), columns={}, dataset="d")


def test_adapter_registry() -> None:
    from mammo_ray.datasets import adapters, cbis_ddsm, cmmd, dicom_folder, inbreast, mias, rsna, vindr
    from mammo_ray.errors import ConfigError

    assert {
        "inbreast": inbreast.build_manifest,
        "mias": mias.build_manifest,
        "cbis_ddsm": cbis_ddsm.build_manifest,
        "csv": generic_csv.build_manifest,
        "rsna": rsna.build_manifest,
        "vindr": vindr.build_manifest,
        "cmmd": cmmd.build_manifest,
        "dicom_folder": dicom_folder.build_manifest,
    } == adapters.ADAPTERS
    assert adapters.get_adapter("csv") is generic_csv.build_manifest
    with pytest.raises(ConfigError, match="unknown adapter 'ddsm'.*cbis_ddsm"):
        adapters.get_adapter("ddsm")
