"""The manifest contract (mammo_ray/datasets/manifest.py): normalisation, labels and validation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mammo_ray.datasets.manifest import (
    MANIFEST_COLUMNS,
    label_from_birads,
    label_from_pathology,
    manifest_from_records,
    normalise_birads,
    normalise_pathology,
    read_manifest,
    validate_manifest,
    write_manifest,
)
from mammo_ray.errors import ManifestError
from mammo_ray.vocabulary import normalise_laterality, normalise_view


@pytest.mark.parametrize(
    "value, expected",
    [
        ("4A", "4a"),
        ("4a", "4a"),
        ("BI-RADS 4b", "4b"),
        ("birads 4C", "4c"),
        ("BIRADS5", "5"),
        (4, "4"),
        (4.0, "4"),
        ("4.0", "4"),
        (" 3 ", "3"),
        (0, "0"),
        ("6", "6"),
        (None, None),
        (float("nan"), None),
        ("", None),
        ("nan", None),
    ],
)
def test_normalise_birads(value: object, expected: str | None) -> None:
    assert normalise_birads(value) == expected


@pytest.mark.parametrize("value", ["7", "4d", "x", "5a", 4.5, "BI-RADS", "-1", 7])
def test_unknown_birads_is_an_error(value: object) -> None:
    with pytest.raises(ValueError, match="BI-RADS"):
        normalise_birads(value)


@pytest.mark.parametrize(
    "birads, label",
    [
        ("1", 0),
        ("2", 0),
        ("3", 0),
        ("4", 1),
        ("4a", 1),
        ("4b", 1),
        ("4c", 1),
        ("5", 1),
        ("6", 1),
        ("0", None),
        (None, None),
    ],
)
def test_label_from_birads(birads: str | None, label: int | None) -> None:
    assert label_from_birads(birads) == label


def test_label_from_pathology() -> None:
    assert [label_from_pathology(p) for p in ("normal", "benign", "malignant", None)] == [0, 0, 1, None]
    assert [label_from_pathology(p, "abnormal") for p in ("normal", "benign", "malignant")] == [0, 1, 1]
    with pytest.raises(ValueError, match="positive"):
        label_from_pathology("benign", "suspicious")


def test_normalise_pathology_laterality_view() -> None:
    assert normalise_pathology("BENIGN_WITHOUT_CALLBACK") == "benign"
    assert normalise_pathology("M") == "malignant"
    assert normalise_pathology("NORM") == "normal"
    assert normalise_pathology("") is None
    with pytest.raises(ValueError):
        normalise_pathology("unsure")
    assert [normalise_laterality(v) for v in ("L", "left", "RIGHT", " r ", None)] == [
        "L",
        "L",
        "R",
        "R",
        None,
    ]
    with pytest.raises(ValueError):
        normalise_laterality("both")
    assert [normalise_view(v) for v in ("CC", "mlo", "ML", "FB", "XCCL", None)] == [
        "CC",
        "MLO",
        "MLO",
        "other",
        "other",
        None,
    ]


def _frame(**overrides: list) -> pd.DataFrame:
    data = {
        "image_id": ["a", "b", "c"],
        "uri": ["/x/a.dcm", "/x/b.dcm", "/x/c.dcm"],
        "dataset": ["t", "t", "t"],
        "patient_id": ["p1", "p1", "p2"],
        "birads": ["4A", 2, None],
        "label": [1, 0, None],
    }
    data.update(overrides)
    return pd.DataFrame(data)


def test_validate_normalises_and_orders_columns() -> None:
    manifest = validate_manifest(_frame(laterality=["left", "R", None], view=["ML", "CC", "FB"]), source="m")
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert manifest["birads"].tolist() == ["4a", "2", None]
    assert manifest["laterality"].tolist() == ["L", "R", None]
    assert manifest["view"].tolist() == ["MLO", "CC", "other"]
    assert str(manifest["label"].dtype) == "Int8"
    assert manifest["exam_id"].isna().all() and manifest["pathology"].isna().all()


def test_duplicate_ids_are_listed_with_their_rows() -> None:
    with pytest.raises(ManifestError) as caught:
        validate_manifest(_frame(image_id=["a", "b", "a"]), source="dup.csv")
    assert caught.value.source == "dup.csv"
    assert caught.value.problems == ["duplicate image_id 'a' in rows 0, 2"]


def test_every_bad_value_is_listed_at_once() -> None:
    frame = _frame(birads=["7", "4d", "x"], label=[2, 0, None], patient_id=["p1", "", "p2"])
    with pytest.raises(ManifestError) as caught:
        validate_manifest(frame, source="m")
    problems = caught.value.problems
    assert len(problems) == 5
    assert "row 1: empty patient_id" in problems
    for row, value in ((0, "7"), (1, "4d"), (2, "x")):
        assert any(p.startswith(f"row {row} ") and f"BI-RADS value '{value}'" in p for p in problems)
    assert any(p.startswith("row 0 (a): label 2") for p in problems)


def test_missing_files_are_listed_with_check_files(tmp_path: Path) -> None:
    present = tmp_path / "a.dcm"
    present.write_bytes(b"x")
    frame = _frame(uri=[str(present), str(tmp_path / "b.dcm"), str(tmp_path / "c.dcm")])
    assert len(validate_manifest(frame, source="m")) == 3  # not checked unless asked
    with pytest.raises(ManifestError) as caught:
        validate_manifest(frame, source="m", check_files=True)
    assert caught.value.problems == [
        f"row 1 (b): file not found: {tmp_path / 'b.dcm'}",
        f"row 2 (c): file not found: {tmp_path / 'c.dcm'}",
    ]


def test_missing_required_column() -> None:
    with pytest.raises(ManifestError) as caught:
        validate_manifest(_frame().drop(columns=["patient_id", "uri"]), source="m")
    assert caught.value.problems == ["missing required column(s): uri, patient_id"]


def test_write_and_read_round_trip(tmp_path: Path) -> None:
    written = write_manifest(_frame(), str(tmp_path / "manifest.parquet"))
    again = read_manifest(str(tmp_path / "manifest.parquet"))
    pd.testing.assert_frame_equal(again, written)

    written.to_csv(tmp_path / "manifest.csv", index=False)
    from_csv = read_manifest(str(tmp_path / "manifest.csv"))
    assert from_csv["birads"].tolist() == ["4a", "2", None]
    assert from_csv["label"].tolist() == [1, 0, pd.NA]


def test_manifest_from_records() -> None:
    manifest = manifest_from_records(
        [{"image_id": "x", "uri": "/x.png", "dataset": "d", "patient_id": "p", "birads": "5", "label": 1}],
        source="records",
    )
    assert manifest.iloc[0]["birads"] == "5" and list(manifest.columns) == MANIFEST_COLUMNS
