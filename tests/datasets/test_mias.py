"""mini-MIAS adapter on the real Info.txt and the real 322 images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mammo_ray.datasets import mias
from mammo_ray.datasets.manifest import MANIFEST_COLUMNS
from mammo_ray.errors import ManifestError


@pytest.fixture(scope="module")
def info_text(mini_mias_dir: Path) -> str:
    return (mini_mias_dir / "Info.txt").read_bytes().decode("latin-1")


@pytest.fixture(scope="module")
def manifest(mini_mias_dir: Path):
    return mias.build_manifest(str(mini_mias_dir / "Info.txt"), str(mini_mias_dir))


def test_real_folder_gives_322_images_of_161_women(manifest) -> None:
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == 322
    assert manifest["pathology"].value_counts().to_dict() == {"normal": 207, "benign": 63, "malignant": 52}
    assert manifest["patient_id"].nunique() == 161
    sides = manifest.groupby("patient_id")["laterality"].agg(lambda values: "".join(sorted(values)))
    assert (sides == "LR").all()
    assert (manifest["label"] == 1).sum() == 52
    assert set(manifest["view"]) == {"MLO"}
    assert manifest["birads"].isna().all()
    assert manifest["uri"].str.endswith(".png").all()


def test_pairs_and_sides(manifest) -> None:
    rows = manifest.set_index("image_id")
    assert rows.loc["mias/mdb001", "patient_id"] == rows.loc["mias/mdb002", "patient_id"] == "mias/p001"
    assert rows.loc["mias/mdb321", "patient_id"] == rows.loc["mias/mdb322", "patient_id"] == "mias/p161"
    assert rows.loc["mias/mdb001", "laterality"] == "R"  # odd = right, see the evidence below
    assert rows.loc["mias/mdb002", "laterality"] == "L"


def test_laterality_matches_where_the_breast_lies(mini_mias_dir: Path, manifest) -> None:
    """Tissue centroid on the image's right half <=> right breast (chest wall on the right), for a
    sample of pairs. Over all 322 films this holds for 320; the pair mdb151/mdb152 fills the width."""
    sample = manifest[manifest["image_id"].isin([f"mias/mdb{n:03d}" for n in range(1, 41)])]
    for row in sample.itertuples():
        pixels = np.asarray(Image.open(row.uri))
        centroid = np.nonzero(pixels > 40)[1].mean() / pixels.shape[1]
        assert (centroid > 0.5) == (row.laterality == "R"), (row.image_id, centroid)


def test_positive_abnormal(mini_mias_dir: Path) -> None:
    manifest = mias.build_manifest(str(mini_mias_dir / "Info.txt"), str(mini_mias_dir), positive="abnormal")
    assert (manifest["label"] == 1).sum() == 63 + 52
    assert (manifest.loc[manifest["pathology"] == "normal", "label"] == 0).all()


def test_parse_info_one_row_per_abnormality(info_text: str) -> None:
    info = mias.parse_info(info_text)
    assert len(info) == 330  # 207 NORM + 69 B + 54 M rows
    assert info["severity"].value_counts().to_dict() == {"B": 69, "M": 54}
    assert info["ref"].nunique() == 322
    counts = info["ref"].value_counts()
    assert counts["mdb226"] == 3
    assert set(counts[counts > 1].index) == {
        "mdb005",
        "mdb132",
        "mdb144",
        "mdb223",
        "mdb226",
        "mdb239",
        "mdb249",
    }


def test_multi_row_images(info_text: str, manifest) -> None:
    info = mias.parse_info(info_text)
    rows = manifest.set_index("image_id")
    # mdb144 has one benign and one malignant MISC mass: the image is malignant.
    assert sorted(info.loc[info["ref"] == "mdb144", "severity"]) == ["B", "M"]
    assert rows.loc["mias/mdb144", "pathology"] == "malignant"
    assert rows.loc["mias/mdb144", "label"] == 1
    # mdb226 has three benign calcification clusters: one benign image.
    assert rows.loc["mias/mdb226", "pathology"] == "benign"
    assert (manifest["image_id"] == "mias/mdb226").sum() == 1


def test_rows_with_fewer_columns(info_text: str) -> None:
    info = mias.parse_info(info_text).set_index("ref")
    norm = info.loc["mdb003"]
    assert (norm["abnormality"], norm["severity"]) == ("NORM", None)
    assert norm["x"] is pd.NA and norm["radius"] is pd.NA
    no_coordinates = info.loc["mdb059"]  # 'mdb059 F CIRC B': no centre given
    assert no_coordinates["severity"] == "B" and no_coordinates["x"] is pd.NA
    widespread = info.loc["mdb233"]  # 'mdb233 G CALC M *NOTE 3*'
    assert (widespread["abnormality"], widespread["severity"]) == ("CALC", "M")
    assert widespread["y"] is pd.NA


def test_coordinates_are_converted_to_a_top_left_origin() -> None:
    text = "header line\r\n\r\nmdb001 G CIRC B 535 425 197\r\nmdb002 G CIRC B 10 1000 5\r\n=====\r\n"
    info = mias.parse_info(text)
    assert info[["x", "y", "radius"]].astype(int).values.tolist() == [[535, 1024 - 425, 197], [10, 24, 5]]


def test_converted_centres_lie_on_the_lesion_side(mini_mias_dir: Path, info_text: str) -> None:
    """On the real images the converted centres fall on breast tissue far more often than unconverted."""
    info = mias.parse_info(info_text).dropna(subset=["x"]).drop_duplicates("ref").head(40)
    on_tissue_converted = on_tissue_raw = 0
    for row in info.itertuples():
        pixels = np.asarray(Image.open(mini_mias_dir / f"{row.ref}.png"), dtype=float)
        x, y = int(row.x), int(row.y)
        on_tissue_converted += pixels[max(y - 5, 0) : y + 6, max(x - 5, 0) : x + 6].mean() > 40
        raw = 1024 - y
        on_tissue_raw += pixels[max(raw - 5, 0) : raw + 6, max(x - 5, 0) : x + 6].mean() > 40
    assert on_tissue_converted >= len(info) - 2
    assert on_tissue_converted > on_tissue_raw


def test_bad_data_lines_are_all_listed() -> None:
    text = (
        "MIAS info\r\n"
        "mdb001 G CIRC B 535 425 197\r\n"
        "mdb002 Q NORM\r\n"  # unknown background tissue
        "mdb003 D BLOB B 1 2 3\r\n"  # unknown class
        "mdb004 D CIRC\r\n"  # no severity
        "mdb005 F CIRC B 477 133\r\n"  # no radius
    )
    with pytest.raises(ManifestError) as caught:
        mias.parse_info(text, source="Info.txt")
    assert caught.value.source == "Info.txt"
    assert [p.split(" ", 2)[1] for p in caught.value.problems] == ["3", "4", "5", "6"]


def test_missing_images_listed_and_pgm_used(
    tmp_path: Path, mini_mias_dir: Path, mini_mias_pgm_dir: Path
) -> None:
    info = tmp_path / "Info.txt"
    info.write_bytes(
        b"header\r\nmdb005 F CIRC B 477 133 30\r\nmdb005 F CIRC B 500 168 26\r\n"
        b"mdb006 F NORM \r\nmdb010 F CIRC B 525 425 33\r\n"
    )
    images = tmp_path / "images"
    images.mkdir()
    for name in ("mdb005.pgm", "mdb010.pgm"):
        (images / name).write_bytes((mini_mias_pgm_dir / name).read_bytes())

    with pytest.raises(ManifestError) as caught:
        mias.build_manifest(str(info), str(images))
    assert caught.value.source == str(info)
    assert len(caught.value.problems) == 1 and caught.value.problems[0].startswith("mdb006")

    manifest = mias.build_manifest(str(info), str(images), missing="skip")
    assert manifest["image_id"].tolist() == ["mias/mdb005", "mias/mdb010"]
    assert manifest["uri"].str.endswith(".pgm").all()
    assert manifest["patient_id"].tolist() == ["mias/p003", "mias/p005"]

    (images / "mdb005.png").write_bytes((mini_mias_dir / "mdb005.png").read_bytes())
    manifest = mias.build_manifest(str(info), str(images), missing="skip")
    assert manifest.set_index("image_id").loc["mias/mdb005", "uri"].endswith("mdb005.png")
