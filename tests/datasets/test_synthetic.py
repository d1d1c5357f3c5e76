"""The synthetic cohort: images that look like mammograms, a correct manifest, valid DICOMs, determinism."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.pixels import apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from scipy import ndimage

from mammo_ray.config import parse_config
from mammo_ray.config.base import checked
from mammo_ray.datasets.manifest import MANIFEST_COLUMNS, label_from_birads, read_manifest
from mammo_ray.datasets.synthetic import (
    DATASET_NAME,
    VIEWS,
    SyntheticSource,
    cohort_plan,
    generate_cohort,
    generate_image,
    synthetic_dicom_bytes,
)
from mammo_ray.datasets.synthetic.spec import image_shape, max_value, pixel_spacing_mm
from mammo_ray.errors import ConfigError

SMALL = SyntheticSource(patients=6, rows=128, seed=3)
POSITIVE = ("4a", "4b", "4c", "5", "6")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("synthetic") / "cohort"
    return out, generate_cohort(str(out), SMALL)


# ------------------------------------------------------------------------------------ the spec


def test_spec_defaults_and_shape() -> None:
    spec = SyntheticSource()
    assert (spec.patients, spec.seed, spec.rows) == (24, 0, 512)
    assert (spec.bits_stored, spec.transfer_syntax, spec.positive_fraction) == (14, "explicit", 0.25)
    assert image_shape(spec) == (512, 410)
    assert max_value(spec) == 2**14 - 1
    assert image_shape(SyntheticSource(rows=100, columns=90)) == (100, 90)
    assert generate_image(0, "L", "CC", "1", SyntheticSource(rows=100, columns=90)).shape == (100, 90)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"patients": 0}, "synthetic.patients"),
        ({"seed": -1}, "synthetic.seed"),
        ({"rows": 32}, "synthetic.rows"),
        ({"columns": 10}, "synthetic.columns"),
        ({"positive_fraction": 1.5}, "synthetic.positive_fraction"),
        ({"bits_stored": 17}, "synthetic.bits_stored"),
        ({"transfer_syntax": "jpeg"}, "synthetic.transfer_syntax"),
    ],
)
def test_spec_rejects_bad_values(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"data": {"synthetic": kwargs}})
    assert caught.value.key_path == f"data.{key}"
    with pytest.raises(ConfigError) as caught:
        checked(SyntheticSource, "synthetic", **kwargs)
    assert caught.value.key_path == key


def test_generate_image_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="laterality"):
        generate_image(0, "X", "CC", "1", SMALL)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="view"):
        generate_image(0, "L", "ML", "1", SMALL)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="BI-RADS"):
        generate_image(0, "L", "CC", "0", SMALL)
    with pytest.raises(ValueError):
        generate_image(0, "L", "CC", "7", SMALL)


# ------------------------------------------------------------------------------------ images


@pytest.mark.parametrize("laterality, view", VIEWS)
def test_image_shape_background_and_range(laterality: str, view: str) -> None:
    for patient in range(4):
        image = generate_image(patient, laterality, view, "2", SMALL)  # type: ignore[arg-type]
        assert image.dtype == np.uint16 and image.shape == image_shape(SMALL)
        breast = image > 0
        # Exactly zero background, a sensible breast share, one connected breast (NYU cropping).
        assert 0.25 < 1.0 - breast.mean() < 0.75
        assert ndimage.label(breast)[1] == 1
        assert image.max() < max_value(SMALL)  # the tone curve never saturates
        chest, far = (0, -1) if laterality == "L" else (-1, 0)
        assert image[0, far] == 0 and image[-1, far] == 0 and image[-1, chest] == 0
        if view == "CC":
            assert image[0, chest] == 0
        else:
            assert image[0, chest] > 0  # the pectoral muscle sits in the top chest-wall corner
        # The chest wall is on the image edge: a long run of breast pixels in that column.
        assert breast[:, chest].mean() > 0.4
        assert not breast[:, far].any()


def test_generate_image_is_deterministic_and_seed_dependent() -> None:
    first = generate_image(2, "R", "MLO", "5", SMALL)
    assert np.array_equal(first, generate_image(2, "R", "MLO", "5", SMALL))
    other_seed = generate_image(2, "R", "MLO", "5", SyntheticSource(patients=6, rows=128, seed=4))
    assert not np.array_equal(first, other_seed)
    assert not np.array_equal(first, generate_image(3, "R", "MLO", "5", SMALL))


def test_laterality_puts_the_breast_against_its_chest_wall() -> None:
    for patient in range(4):
        for view in ("CC", "MLO"):
            for laterality, expected_side in (("L", "left"), ("R", "right")):
                image = generate_image(patient, laterality, view, "1", SMALL)  # type: ignore[arg-type]
                columns = np.nonzero(image)[1]
                centre = columns.mean() / image.shape[1]
                on_its_side = (centre < 0.5) if expected_side == "left" else (centre > 0.5)
                assert on_its_side, (patient, view, laterality)


def test_mlo_has_a_brighter_pectoral_muscle() -> None:
    for patient in range(4):
        for laterality in ("L", "R"):
            mlo = generate_image(patient, laterality, "MLO", "1", SMALL)  # type: ignore[arg-type]
            mlo = mlo.astype(float)
            rows, cols = mlo.shape
            band = mlo[: rows // 10]
            corner = band[:, : cols // 10] if laterality == "L" else band[:, -(cols // 10) :]
            assert (corner > 0).all()
            tissue = mlo[mlo > 0]
            assert corner.mean() > np.percentile(tissue, 75)


def test_finding_is_local_visible_in_both_views_and_grows_with_birads() -> None:
    order = ["2", "3", "4a", "4b", "4c", "5", "6"]
    strength = {birads: [] for birads in order}
    for patient in range(6):
        for view in ("CC", "MLO"):
            normal = generate_image(patient, "L", view, "1", SMALL).astype(np.int64)
            # The other breast's finding never leaks into this one.
            assert np.array_equal(normal > 0, generate_image(patient, "L", view, "5", SMALL) > 0)
            for birads in order:
                difference = generate_image(patient, "L", view, birads, SMALL).astype(np.int64) - normal
                assert difference.min() >= 0  # findings only add density
                assert difference.max() > 0, (patient, view, birads)  # visible in both views
                assert (difference > 0).mean() < 0.1  # a local finding, not a global change
                strength[birads].append(difference.sum())
    mean = {birads: np.mean(values) for birads, values in strength.items()}
    assert mean["3"] < mean["4a"] < mean["4b"] < mean["4c"] < mean["5"] < mean["6"]
    assert mean["2"] < mean["4a"]


def test_bright_area_separates_birads_1_from_5() -> None:
    """A crude feature (share of very bright breast pixels) is higher with a BI-RADS 5 mass."""

    def bright(image: np.ndarray) -> float:
        tissue = image[image > 0].astype(float)
        return float(np.percentile(tissue, 99.8))

    normal = [bright(generate_image(p, "L", v, "1", SMALL)) for p in range(6) for v in ("CC", "MLO")]
    malignant = [bright(generate_image(p, "L", v, "5", SMALL)) for p in range(6) for v in ("CC", "MLO")]
    assert np.mean(malignant) > np.mean(normal) + 0.03 * max_value(SMALL)
    assert max(malignant) < max_value(SMALL)


# ------------------------------------------------------------------------------------ the plan


@pytest.mark.parametrize("patients, fraction", [(40, 0.25), (7, 0.25), (10, 0.0), (10, 1.0), (12, 0.75)])
def test_plan_label_share_matches_positive_fraction(patients: int, fraction: float) -> None:
    plan = cohort_plan(SyntheticSource(patients=patients, positive_fraction=fraction, seed=1))
    assert set(plan) == {(p, side) for p in range(patients) for side in "LR"}
    positives = [key for key, birads in plan.items() if label_from_birads(birads) == 1]
    assert len(positives) == round(fraction * 2 * patients)
    per_patient = pd.Series([p for p, _ in positives]).value_counts()
    if len(positives) <= patients:
        assert (per_patient <= 1).all()  # spread over distinct patients first
    assert all(birads in {"1", "2", "3", *POSITIVE} for birads in plan.values())


def test_plan_category_mix_is_inbreast_like() -> None:
    plan = cohort_plan(SyntheticSource(patients=400, seed=0))
    counts = pd.Series(list(plan.values())).value_counts(normalize=True)
    assert counts.get("2", 0) > counts.get("1", 0) > counts.get("3", 0) > 0
    assert {"4a", "4b", "4c", "5", "6"} <= set(counts.index)
    assert counts.get("5", 0) > counts.get("6", 0)


# ------------------------------------------------------------------------------------ the cohort


def test_manifest_contract(cohort: tuple[Path, pd.DataFrame]) -> None:
    out, manifest = cohort
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == 4 * SMALL.patients
    assert manifest["image_id"].is_unique
    assert (manifest["dataset"] == DATASET_NAME).all()
    assert manifest["pathology"].isna().all()
    for patient_id, rows in manifest.groupby("patient_id"):
        assert patient_id.startswith("synth/P") and len(rows) == 4
        assert set(zip(rows["laterality"], rows["view"], strict=True)) == set(VIEWS)
        assert rows["exam_id"].nunique() == 1 and rows["exam_id"].iloc[0] == f"{patient_id}_E1"
        for _, breast in rows.groupby("laterality"):
            assert breast["birads"].nunique() == 1  # both views of a breast share the BI-RADS
    first = manifest.iloc[0]
    assert (first["image_id"], first["patient_id"], first["laterality"], first["view"]) == (
        "synth/P0000_L_CC", "synth/P0000", "L", "CC"
    )
    assert first["uri"] == str(out / "images" / "P0000_L_CC.dcm")
    assert [label_from_birads(b) for b in manifest["birads"]] == list(manifest["label"])
    expected_positive = round(SMALL.positive_fraction * 2 * SMALL.patients) * 2  # two views per breast
    assert int(manifest["label"].sum()) == expected_positive
    assert all(Path(uri).is_file() for uri in manifest["uri"])
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(Path(u).name for u in manifest["uri"])
    stored = read_manifest(str(out / "manifest.parquet"), check_files=True)
    pd.testing.assert_frame_equal(stored, manifest)


def test_dicom_tags_and_pixels(cohort: tuple[Path, pd.DataFrame]) -> None:
    _, manifest = cohort
    plan = cohort_plan(SMALL)
    studies: dict[str, str] = {}
    instances = set()
    for row in manifest.itertuples():
        ds = pydicom.dcmread(row.uri)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "MG"
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert ds.ImageLaterality == row.laterality
        assert ds.ViewPosition == row.view
        assert ds.PatientID == row.patient_id
        assert str(ds.PatientName) == f"SYNTHETIC^{row.patient_id}"
        assert ds.BodyPartExamined == "BREAST"
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert (ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (
            1, 16, SMALL.bits_stored, SMALL.bits_stored - 1, 0
        )
        assert (ds.Rows, ds.Columns) == image_shape(SMALL)
        assert float(ds.PixelSpacing[0]) == pytest.approx(pixel_spacing_mm(SMALL), rel=1e-4)
        assert len(ds.PatientOrientation) == 2
        assert ds.PatientOrientation[0] == ("A" if row.laterality == "L" else "P")
        assert 0 < float(ds.WindowCenter) < max_value(SMALL) and float(ds.WindowWidth) > 0
        for absent in ("PatientBirthDate", "AccessionNumber", "InstitutionName", "InstitutionAddress",
                       "ReferringPhysicianName", "OtherPatientIDs"):
            assert absent not in ds, absent
        assert not any(element.tag.is_private for element in ds.iterall())
        assert studies.setdefault(row.patient_id, ds.StudyInstanceUID) == ds.StudyInstanceUID
        instances.add(ds.SOPInstanceUID)
        patient_index = int(row.patient_id.split("P")[-1])
        birads = plan[(patient_index, row.laterality)]
        expected = generate_image(patient_index, row.laterality, row.view, birads, SMALL)
        assert ds.pixel_array.dtype == np.uint16
        assert np.array_equal(ds.pixel_array, expected)
    assert len(set(studies.values())) == SMALL.patients
    assert len(instances) == len(manifest)


def test_rle_round_trip(tmp_path: Path) -> None:
    spec = SyntheticSource(patients=1, rows=96, seed=5, transfer_syntax="rle", bits_stored=12)
    image = generate_image(0, "R", "MLO", "4c", spec)
    assert image.max() < 2**12 - 1
    data = synthetic_dicom_bytes(image, patient_id="synth/P0000", exam_id="synth/P0000_E1",
                                 laterality="R", view="MLO", spec=spec)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(ds.pixel_array, image)
    explicit = synthetic_dicom_bytes(image, patient_id="synth/P0000", exam_id="synth/P0000_E1",
                                     laterality="R", view="MLO", spec=SyntheticSource(patients=1, rows=96, seed=5,
                                                                                  bits_stored=12))
    assert pydicom.dcmread(io.BytesIO(explicit)).SOPInstanceUID == ds.SOPInstanceUID
    assert len(data) < len(explicit)
    manifest = generate_cohort(str(tmp_path / "rle"), spec)
    for row in manifest.itertuples():
        decoded = pydicom.dcmread(row.uri)
        assert decoded.file_meta.TransferSyntaxUID == RLELossless
        expected = generate_image(0, row.laterality, row.view, row.birads, spec)
        assert np.array_equal(decoded.pixel_array, expected)


@pytest.mark.parametrize("transfer_syntax", ["explicit", "rle", "jpeg2000"])
@pytest.mark.parametrize("bits_stored", [8, 12, 16])
def test_pixels_round_trip_and_window_keeps_the_background(transfer_syntax: str, bits_stored: int) -> None:
    spec = SyntheticSource(patients=1, rows=80, seed=6, bits_stored=bits_stored, transfer_syntax=transfer_syntax)
    image = generate_image(0, "L", "MLO", "6", spec)
    assert 0 < image.max() < 2**bits_stored - 1
    data = synthetic_dicom_bytes(image, patient_id="synth/P0000", exam_id="synth/P0000_E1",
                                 laterality="L", view="MLO", spec=spec)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.BitsStored == bits_stored
    assert np.array_equal(ds.pixel_array, image)
    # A decoder applying the window first (docs/design.md, "Input images") still sees 0 exactly outside the breast and
    # > 0 inside, and the brightest finding is not clipped below the maximum of another pixel.
    windowed = apply_voi_lut(ds.pixel_array, ds)
    assert np.array_equal(windowed > 0, image > 0)
    assert np.argmax(windowed) == np.argmax(image)


def test_rle_bytes_do_not_depend_on_the_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("rle", reason="pylibjpeg-rle is not installed: only pydicom's encoder is available")
    from mammo_ray.datasets.synthetic import dicom as synthetic_dicom  # the module that encodes

    spec = SyntheticSource(patients=1, rows=128, seed=2, transfer_syntax="rle")
    image = generate_image(0, "L", "CC", "5", spec)
    arguments = {"patient_id": "synth/P0000", "exam_id": "synth/P0000_E1", "laterality": "L", "view": "CC",
                 "spec": spec}
    fast = synthetic_dicom_bytes(image, **arguments)

    real_get_encoder = synthetic_dicom.get_encoder

    class PydicomOnly:
        def __init__(self, uid: str) -> None:
            self._encoder = real_get_encoder(uid)

        def encode(self, arr: np.ndarray, encoding_plugin: str = "", **kwargs: object) -> bytes:
            if encoding_plugin != "pydicom":
                raise RuntimeError("plugin unavailable")
            return self._encoder.encode(arr, encoding_plugin=encoding_plugin, **kwargs)

    monkeypatch.setattr(synthetic_dicom, "get_encoder", PydicomOnly)
    assert synthetic_dicom_bytes(image, **arguments) == fast


def test_dicom_bytes_rejects_bad_pixels() -> None:
    with pytest.raises(ValueError, match="uint16"):
        synthetic_dicom_bytes(np.zeros((8, 8), np.float32), patient_id="p", exam_id="e", laterality="L",
                              view="CC", spec=SMALL)
    with pytest.raises(ValueError, match="bits_stored"):
        synthetic_dicom_bytes(np.full((8, 8), 2**15, np.uint16), patient_id="p", exam_id="e", laterality="L",
                              view="CC", spec=SMALL)


def test_same_spec_writes_identical_bytes(tmp_path: Path) -> None:
    spec = SyntheticSource(patients=3, rows=96, seed=11)
    first = generate_cohort(str(tmp_path / "a"), spec, workers=1)
    second = generate_cohort(str(tmp_path / "b"), spec, workers=2)
    for name in sorted(p.name for p in (tmp_path / "a" / "images").iterdir()):
        first_bytes = (tmp_path / "a" / "images" / name).read_bytes()
        assert first_bytes == (tmp_path / "b" / "images" / name).read_bytes()
    assert len(list((tmp_path / "a" / "images").iterdir())) == 12
    pd.testing.assert_frame_equal(first.drop(columns="uri"), second.drop(columns="uri"))
    assert [Path(u).name for u in first["uri"]] == [Path(u).name for u in second["uri"]]

    other = generate_cohort(str(tmp_path / "c"), SyntheticSource(patients=3, rows=96, seed=12))
    differing = [
        name for name in (Path(u).name for u in other["uri"])
        if (tmp_path / "a" / "images" / name).read_bytes() != (tmp_path / "c" / "images" / name).read_bytes()
    ]
    assert len(differing) == 12


# ------------------------------------------------------------------------------------ learnability


def _intensity_features(image: np.ndarray, spec: SyntheticSource) -> list[float]:
    """Simple statistics of the breast: intensity percentiles and a blob (local contrast) response."""
    x = image.astype(np.float32) / max_value(spec)
    mask = (image > 0).astype(np.float32)
    px_per_mm = 1.0 / pixel_spacing_mm(spec)

    def local_mean(sigma: float) -> np.ndarray:  # normalised convolution: the background does not count
        weight = np.maximum(ndimage.gaussian_filter(mask, sigma), 1e-3)
        return ndimage.gaussian_filter(x * mask, sigma) / weight

    inner = ndimage.binary_erosion(mask > 0, iterations=max(1, int(5 * px_per_mm)))
    blob = (local_mean(3 * px_per_mm) - local_mean(10 * px_per_mm))[inner]
    tissue = x[mask > 0]
    return [tissue.mean(), tissue.std(), *np.percentile(tissue, [50, 90, 99, 99.9]), blob.max(),
            *np.percentile(blob, [99, 99.9])]


def test_binary_task_is_learnable_but_not_trivial() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    spec = SyntheticSource(patients=32, rows=128, seed=0)
    plan = cohort_plan(spec)
    features, labels, groups = [], [], []
    for patient in range(spec.patients):
        for laterality, view in VIEWS:
            birads = plan[(patient, laterality)]
            image = generate_image(patient, laterality, view, birads, spec)  # type: ignore[arg-type]
            assert image.max() < max_value(spec)  # no saturated lesion pixels to key on
            features.append(_intensity_features(image, spec))
            labels.append(label_from_birads(birads))
            groups.append(patient)
    labels_array = np.asarray(labels)
    assert labels_array.mean() == pytest.approx(0.25)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
    scores = cross_val_score(model, np.asarray(features), labels_array, groups=groups, cv=folds,
                             scoring="balanced_accuracy")
    assert 0.65 < scores.mean() < 0.98, scores
