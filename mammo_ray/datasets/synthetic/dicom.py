"""The DICOM writer: one image as a complete Part-10 file (MG, For Presentation), `synthetic_dicom_bytes`."""

from __future__ import annotations

import io

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_encoder
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from mammo_ray.config.sections import SyntheticSource
from mammo_ray.datasets.synthetic.spec import (
    LATERALITY_CODE,
    SYNTHETIC_HEIGHT_MM,
    VIEW_CODE,
    VIEWS,
    Laterality,
    View,
    max_value,
)

DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
#: The Manufacturer tag of every synthetic file, and so the manifest's device.
SYNTHETIC_DEVICE = "mammo-ray synthetic"
# SNOMED CT view codes (DICOM CID 4014).
_VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}


def _uid(spec: SyntheticSource, *parts: str) -> str:
    return generate_uid(entropy_srcs=["mammo-ray-synthetic", str(spec.seed), *parts])


def _patient_orientation(laterality: str, view: str) -> list[str]:
    # Row direction: towards the nipple (A) for left breasts (chest wall at column 0), P for right.
    # Column direction: CC images have the lateral side up, MLO images run towards the feet.
    row = "A" if laterality == "L" else "P"
    if view == "CC":
        return [row, "R" if laterality == "L" else "L"]
    return [row, "F"]


def _window(pixels: np.ndarray) -> tuple[str, str]:
    """(WindowCenter, WindowWidth) of a linear window spanning the whole tissue range.

    Its lower edge sits just below the darkest breast pixel, so that a viewer (or a decoder applying
    the VOI LUT before cropping, docs/design.md, "Input images") keeps the background at 0 and every breast pixel
    above it; its upper edge is the brightest pixel, so no finding is clipped.
    """
    inside = pixels[pixels > 0]
    low = int(inside.min()) - 1 if inside.size else 0
    high = int(inside.max()) if inside.size else 1
    # DICOM linear window: x <= c - 0.5 - (w - 1) / 2 -> minimum, x > c - 0.5 + (w - 1) / 2 -> maximum.
    width = high - low + 1
    center = (low + high + 1) / 2.0
    return f"{center:g}", str(width)


def _encode_rle(pixels: np.ndarray) -> bytes:
    """RLE Lossless encapsulated pixel data (one frame of 16-bit words).

    pylibjpeg-rle (fast) is used when installed, pydicom's own encoder otherwise; both write the
    same PackBits segments, so the bytes do not depend on which one ran (tested). The encoders are
    told Bits Stored = 16: the segments only depend on Bits Allocated, and both encoders mis-size
    16-bit frames whose Bits Stored is 8 or less.
    """
    encoder = get_encoder(RLELossless)
    options = {
        "rows": pixels.shape[0], "columns": pixels.shape[1], "samples_per_pixel": 1, "bits_allocated": 16,
        "bits_stored": 16, "pixel_representation": 0, "photometric_interpretation": "MONOCHROME2",
        "number_of_frames": 1,
    }
    try:
        return encapsulate([encoder.encode(pixels, encoding_plugin="pylibjpeg", **options)])
    except (RuntimeError, ValueError, ImportError):
        pass  # not installed: the reference encoder below writes the same bytes
    return encapsulate([encoder.encode(pixels, encoding_plugin="pydicom", **options)])


def _encode_jpeg2000(pixels: np.ndarray, bits_stored: int) -> bytes:
    """JPEG 2000 Lossless encapsulated pixel data (OpenJPEG through pylibjpeg), as full-field screening
    archives (RSNA, VinDr-Mammo) ship them: the costliest common format to decode."""
    encoder = get_encoder(JPEG2000Lossless)
    frame = encoder.encode(pixels, encoding_plugin="pylibjpeg", rows=pixels.shape[0], columns=pixels.shape[1],
                           samples_per_pixel=1, bits_allocated=16, bits_stored=bits_stored,
                           pixel_representation=0, photometric_interpretation="MONOCHROME2", number_of_frames=1)
    return encapsulate([frame])


def synthetic_dicom_bytes(
    pixels: np.ndarray,
    *,
    patient_id: str,
    exam_id: str,
    laterality: Laterality,
    view: View,
    spec: SyntheticSource = SyntheticSource(),
) -> bytes:
    """A complete DICOM Part-10 file (MG, For Presentation) holding `pixels`.

    UIDs are derived from (spec.seed, patient_id, exam_id, laterality, view): the same inputs give
    the same bytes. The dataset carries no private tags and no PHI-like tags (no birth date,
    accession number or institution); PatientName is 'SYNTHETIC^<patient_id>'.
    The transfer syntax is spec.transfer_syntax (Explicit VR Little Endian, RLE Lossless or JPEG 2000 Lossless).
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype != np.uint16:
        raise ValueError(f"pixels must be a 2-D uint16 array, got {pixels.dtype} with shape {pixels.shape}")
    if pixels.size and int(pixels.max()) > max_value(spec):
        raise ValueError(f"pixel values exceed bits_stored={spec.bits_stored} (max {int(pixels.max())})")
    if laterality not in LATERALITY_CODE or view not in VIEW_CODE:
        raise ValueError(f"laterality/view must be L|R and CC|MLO, got {laterality!r}/{view!r}")
    rows, cols = pixels.shape
    study_uid = _uid(spec, patient_id, exam_id, "study")
    series_uid = _uid(spec, patient_id, exam_id, "series", view)
    sop_uid = _uid(spec, patient_id, exam_id, "image", laterality, view)
    spacing = SYNTHETIC_HEIGHT_MM / rows
    center, width = _window(pixels)
    image_number = 1 + VIEWS.index((laterality, view))

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = SYNTHETIC_DEVICE
    ds.BurnedInAnnotation = "NO"
    ds.PatientName = f"SYNTHETIC^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientSex = "F"
    ds.PatientIdentityRemoved = "YES"
    ds.StudyInstanceUID = study_uid
    ds.StudyID = exam_id[-16:]
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1 + VIEW_CODE[view]
    ds.InstanceNumber = image_number
    ds.BodyPartExamined = "BREAST"
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    view_code = Dataset()
    view_code.CodeValue, view_code.CodeMeaning = _VIEW_CODES[view]
    view_code.CodingSchemeDesignator = "SCT"
    ds.ViewCodeSequence = Sequence([view_code])
    ds.PatientOrientation = _patient_orientation(laterality, view)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [f"{spacing:.6f}", f"{spacing:.6f}"]
    ds.ImagerPixelSpacing = [f"{spacing:.6f}", f"{spacing:.6f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = spec.bits_stored
    ds.HighBit = spec.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = center
    ds.WindowWidth = width
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.LossyImageCompression = "00"
    little_endian = pixels.astype("<u2", copy=False)
    if spec.transfer_syntax == "rle":
        ds.PixelData = _encode_rle(little_endian)
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = RLELossless
    elif spec.transfer_syntax == "jpeg2000":
        ds.PixelData = _encode_jpeg2000(little_endian, spec.bits_stored)
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    else:
        ds.PixelData = little_endian.tobytes()
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
