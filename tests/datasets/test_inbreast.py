"""INbreast adapter on the real INbreast.csv / INbreast.xls with placeholder image files.

The real metadata has no images, so each test builds a folder of empty files named as the
distribution names them: `<File Name>_<patient hash>_MG_<L|R>_<CC|ML>_ANON.dcm`. The hashes are made
up: every four consecutive metadata rows form one patient.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from mammo_ray.datasets import inbreast
from mammo_ray.datasets.manifest import MANIFEST_COLUMNS
from mammo_ray.errors import ManifestError

ROWS_PER_PATIENT = 4
_VIEW_TOKEN = {"CC": "CC", "MLO": "ML", "FB": "FB"}


def _fake_hash(patient: int) -> str:
    return hashlib.sha256(f"patient-{patient}".encode()).hexdigest()[:16]


def _distribution_names(metadata_csv: Path, extension: str = "dcm") -> list[tuple[str, str]]:
    """(file name, patient hash) for every metadata row, in row order."""
    table = pd.read_csv(metadata_csv, sep=";", dtype=str)
    names = []
    for index, row in enumerate(table.itertuples(index=False)):
        patient_hash = _fake_hash(index // ROWS_PER_PATIENT)
        name = f"{row[5]}_{patient_hash}_MG_{row[2]}_{_VIEW_TOKEN[row[3]]}_ANON.{extension}"
        names.append((name, patient_hash))
    return names


def _make_images(folder: Path, names: list[tuple[str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, _ in names:
        (folder / name).write_bytes(b"placeholder")
    return folder


@pytest.fixture(scope="module")
def inbreast_csv(inbreast_metadata_dir: Path) -> Path:
    return inbreast_metadata_dir / "INbreast.csv"


@pytest.fixture(scope="module")
def names(inbreast_csv: Path) -> list[tuple[str, str]]:
    return _distribution_names(inbreast_csv)


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory: pytest.TempPathFactory, names: list[tuple[str, str]]) -> Path:
    return _make_images(tmp_path_factory.mktemp("inbreast") / "AllDICOMs", names)


def test_real_csv_gives_410_images_with_the_papers_label_split(inbreast_csv: Path, images_dir: Path) -> None:
    manifest = inbreast.build_manifest(str(inbreast_csv), str(images_dir))

    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == 410
    assert manifest["birads"].value_counts().to_dict() == {
        "1": 67,
        "2": 220,
        "3": 23,
        "4a": 13,
        "4b": 8,
        "4c": 22,
        "5": 49,
        "6": 8,
    }
    assert (manifest["label"] == 1).sum() == 100
    assert (manifest["label"] == 0).sum() == 310
    assert manifest["laterality"].value_counts().to_dict() == {"L": 209, "R": 201}
    assert manifest["view"].value_counts().to_dict() == {"MLO": 206, "CC": 203, "other": 1}  # FB -> other
    assert set(manifest["dataset"]) == {"inbreast"}
    assert manifest["pathology"].isna().all()
    assert manifest["image_id"].is_unique


def test_patient_and_exam_come_from_the_file_name_hash(
    inbreast_csv: Path, images_dir: Path, names: list[tuple[str, str]]
) -> None:
    manifest = inbreast.build_manifest(str(inbreast_csv), str(images_dir)).set_index("image_id")

    first = manifest.loc["inbreast/22678622"]  # first data row: R CC, 201001, BI-RADS 1
    assert first["patient_id"] == f"inbreast/{_fake_hash(0)}"
    assert first["exam_id"] == f"inbreast/{_fake_hash(0)}/201001"
    assert first["uri"] == str(images_dir / names[0][0])
    assert (first["laterality"], first["view"], first["birads"], first["label"]) == ("R", "CC", "1", 0)
    # The metadata's Patient ID is the literal 'removed': patients come only from the hashes.
    assert manifest["patient_id"].nunique() == -(-410 // ROWS_PER_PATIENT)
    assert not manifest["patient_id"].str.contains("removed").any()


def test_xls_sheet1_gives_the_same_rows_as_the_csv(
    inbreast_metadata_dir: Path, inbreast_csv: Path, images_dir: Path
) -> None:
    from_csv = inbreast.build_manifest(str(inbreast_csv), str(images_dir))
    from_xls = inbreast.build_manifest(str(inbreast_metadata_dir / "INbreast.xls"), str(images_dir))

    assert len(from_xls) == 410  # the blank row and the totals row of Sheet1 are dropped
    pd.testing.assert_frame_equal(from_xls, from_csv)


def test_read_metadata_drops_only_the_xls_trailer(inbreast_metadata_dir: Path) -> None:
    sheet = inbreast.read_metadata(str(inbreast_metadata_dir / "INbreast.xls"))
    table = inbreast.read_metadata(str(inbreast_metadata_dir / "INbreast.csv"))
    assert len(sheet) == len(table) == 410
    assert sheet["File Name"].tolist() == table["File Name"].tolist()
    assert sheet["File Name"].iloc[0] == "22678622"  # xls numbers come back as whole-number text
    assert sheet["Acquisition date"].iloc[0] == "201001"
    assert table["ACR"].isna().sum() == 1  # the one blank ACR


def test_comma_separated_csv_is_a_clear_error(tmp_path: Path, inbreast_csv: Path, images_dir: Path) -> None:
    wrong = tmp_path / "INbreast.csv"
    wrong.write_text(inbreast_csv.read_text().replace(";", ","))

    with pytest.raises(ManifestError) as caught:
        inbreast.build_manifest(str(wrong), str(images_dir))

    assert caught.value.source == str(wrong)
    message = str(caught.value)
    for column in ("Laterality", "View", "Acquisition date", "File Name", "Bi-Rads"):
        assert column in message
    assert "';'-separated" in message


def test_missing_image_files_are_listed_or_skipped(
    tmp_path: Path, inbreast_csv: Path, names: list[tuple[str, str]]
) -> None:
    missing = {names[3][0], names[100][0], names[409][0]}
    folder = _make_images(tmp_path / "images", [n for n in names if n[0] not in missing])

    with pytest.raises(ManifestError) as caught:
        inbreast.build_manifest(str(inbreast_csv), str(folder))
    problems = caught.value.problems
    assert len(problems) == 3
    for name in missing:
        file_name = name.split("_")[0]
        assert any(f"File Name {file_name}" in p and "no image file" in p for p in problems)

    skipped = inbreast.build_manifest(str(inbreast_csv), str(folder), missing="skip")
    assert len(skipped) == 407
    assert not {f"inbreast/{n.split('_')[0]}" for n in missing} & set(skipped["image_id"])


def test_unrelated_files_ignored_but_unparseable_names_listed(
    tmp_path: Path, inbreast_csv: Path, names: list[tuple[str, str]]
) -> None:
    folder = _make_images(tmp_path / "images", names)
    (folder / "99999999_abcdef0123456789_MG_L_CC_ANON.dcm").write_bytes(b"x")  # matches no row: ignored
    (folder / "notes.txt").write_text("not an image")  # other extensions are never looked at
    assert len(inbreast.build_manifest(str(inbreast_csv), str(folder))) == 410

    (folder / "scan 1.dcm").write_bytes(b"x")
    (folder / "22678622.png").write_bytes(b"x")
    with pytest.raises(ManifestError) as caught:
        inbreast.build_manifest(str(inbreast_csv), str(folder))
    assert len(caught.value.problems) == 2
    assert any("scan 1.dcm" in p for p in caught.value.problems)
    assert any("22678622.png" in p for p in caught.value.problems)


def test_png_images_and_dcm_preferred_over_png(
    tmp_path: Path, inbreast_csv: Path, names: list[tuple[str, str]]
) -> None:
    pngs = _make_images(tmp_path / "png", _distribution_names(inbreast_csv, "png"))
    manifest = inbreast.build_manifest(str(inbreast_csv), str(pngs))
    assert manifest["uri"].str.endswith(".png").all()

    both = _make_images(tmp_path / "png", names)  # the same folder now holds .dcm and .png
    manifest = inbreast.build_manifest(str(inbreast_csv), str(both))
    assert manifest["uri"].str.endswith(".dcm").all()


def test_images_in_subfolders_are_found(
    tmp_path: Path, inbreast_csv: Path, names: list[tuple[str, str]]
) -> None:
    _make_images(tmp_path / "root" / "a", names[:200])
    _make_images(tmp_path / "root" / "b" / "c", names[200:])
    assert len(inbreast.build_manifest(str(inbreast_csv), str(tmp_path / "root"))) == 410


def test_laterality_disagreeing_with_the_file_name_is_listed(
    tmp_path: Path, inbreast_csv: Path, names: list[tuple[str, str]]
) -> None:
    first = names[0][0]  # ..._MG_R_CC_ANON.dcm
    swapped = first.replace("_MG_R_", "_MG_L_")
    folder = _make_images(tmp_path / "images", [(swapped, "")] + names[1:])

    with pytest.raises(ManifestError) as caught:
        inbreast.build_manifest(str(inbreast_csv), str(folder))
    assert len(caught.value.problems) == 1
    assert "File Name 22678622" in caught.value.problems[0] and "Laterality" in caught.value.problems[0]


def test_bad_metadata_rows_are_all_listed(tmp_path: Path, inbreast_csv: Path, images_dir: Path) -> None:
    lines = inbreast_csv.read_text().splitlines()
    lines[1] = lines[1].replace(";4;1", ";4;7")  # BI-RADS 7 does not exist
    lines[2] = lines[2].replace(";L;", ";X;")  # no such laterality
    lines[4] = lines[3]  # File Name repeated
    bad = tmp_path / "INbreast.csv"
    bad.write_text("\r\n".join(lines) + "\r\n")

    with pytest.raises(ManifestError) as caught:
        inbreast.build_manifest(str(bad), str(images_dir))
    problems = caught.value.problems
    assert len(problems) == 3
    assert any(p.startswith("row 2 ") and "BI-RADS" in p for p in problems)
    assert any(p.startswith("row 3 ") and "laterality" in p for p in problems)
    assert any(p.startswith("row 5 ") and "repeats row 4" in p for p in problems)
