"""DICOM -> float32 grey pixels, laterality, view and a PHI-free metadata subset (pydicom 3).

Pixel pipeline (PS3.3 C.11 / PS3.4 N.2): stored values -> Modality LUT (rescale or LUT) -> VOI LUT or
window (optional) -> MONOCHROME1 inversion -> shift so the darkest value is 0. Everything stays in
floating point: the NYU preprocessing needs a zero background but no 8-bit quantisation.

The header is parsed and checked before any pixel is decoded, so an absurd or unsupported file costs
a header read, never a multi-gigabyte allocation.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from io import BytesIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.pixels.processing import apply_modality_lut
from pydicom.pixels.processing import apply_voi_lut as _pydicom_apply_voi_lut
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from mammo_ray.errors import DecodeError
from mammo_ray.imaging.modality import MAMMOGRAPHY_MODALITY, MODALITY_TAGS, check_mammogram
from mammo_ray.vocabulary import normalise_laterality, normalise_view

#: The only DICOM attributes copied into DecodedImage.metadata. Technical, never identifying: no
#: names, dates, IDs, accession numbers, institutions, operators, stations or serial numbers.
#: TransferSyntaxUID comes from the file meta group and is added separately.
SAFE_DICOM_TAGS: tuple[str, ...] = (
    "Modality",
    "SOPClassUID",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "Manufacturer",
    "BodyPartExamined",
    "PresentationIntentType",
    "ViewPosition",
    "ImageLaterality",
    "Laterality",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
)

DICM_OFFSET = 128
DICM_MAGIC = b"DICM"

_GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
_NATIVE_SYNTAXES = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian)

# View codes of the DICOM mammography context group (CID 4014): SNOMED-RT and SNOMED CT spellings.
_VIEW_CODES = {
    "R-10242": "CC",
    "399162004": "CC",
    "R-10226": "MLO",
    "399368009": "MLO",
    "R-10224": "MLO",  # medio-lateral: normalise_view treats ML as MLO
    "399260004": "MLO",
}
_VIEW_MEANINGS = {"craniocaudal": "CC", "mediolateraloblique": "MLO", "mediolateral": "MLO"}

# Tokens of free-text identifiers such as CBIS-DDSM's PatientID 'Mass-Test_P_00173_LEFT_CC'.
_TOKEN_SPLIT = re.compile(r"[^A-Z0-9]+")
_LATERALITY_TOKENS = {"LEFT": "L", "RIGHT": "R"}
_VIEW_TOKENS = {"CC": "CC", "MLO": "MLO", "ML": "MLO"}
_FUSED_TOKEN = re.compile(r"^([LR])(CC|MLO|ML)$")  # 'LCC', 'RMLO'


def is_plugin_panic(exc: BaseException) -> bool:
    """True for a Rust decoder's panic (pylibjpeg-rle via pyo3) on a corrupt stream.

    pyo3 raises PanicException, which derives from BaseException so that `except Exception` cannot
    swallow it; for us it is just another undecodable file.
    """
    return type(exc).__name__ == "PanicException"


def has_dicm_marker(data: bytes) -> bool:
    """True when `data` carries the Part 10 preamble and 'DICM' prefix."""
    return data[DICM_OFFSET : DICM_OFFSET + 4] == DICM_MAGIC


def looks_like_bare_dataset(data: bytes) -> bool:
    """A preamble-less DICOM starts with a little-endian group 0x0002 (meta) or 0x0008 element."""
    return len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00")


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence Python warnings from pydicom (its logger still records them).

    catch_warnings is process-wide: a concurrent thread may briefly see warnings filtered too.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def read_dicom(
    data: bytes, uri: str, *, apply_voi_lut: bool = True, max_pixels: int = 120_000_000,
    allowed_modalities: Collection[str] = (MAMMOGRAPHY_MODALITY,),
) -> tuple[np.ndarray, str | None, str | None, dict[str, str]]:
    """Decode one single-frame greyscale DICOM mammogram into (pixels, laterality, view, metadata).

    Raises DecodeError naming `uri` and the reason for every unreadable or unsupported file, and for a
    header that says it is no mammogram (mammo_ray.imaging.modality; `allowed_modalities`: Modality values
    accepted).
    """
    # pydicom converts values lazily and warns on every oddity of a damaged file, so the whole read
    # runs quietly: the DecodeError says what matters.
    with _quiet():
        return _read_dicom(data, uri, apply_voi_lut, max_pixels, allowed_modalities)


def check_dicom_modality(
    data: bytes, uri: str, allowed_modalities: Collection[str] = (MAMMOGRAPHY_MODALITY,)
) -> None:
    """`read_dicom`'s mammogram check alone, for bytes that are not decoded: a header parse of three tags."""
    with _quiet():
        header = _parse(data, uri, stop_before_pixels=True, specific_tags=list(MODALITY_TAGS))
        check_mammogram(header, uri, allowed_modalities)


def _read_dicom(
    data: bytes, uri: str, apply_voi_lut: bool, max_pixels: int, allowed_modalities: Collection[str]
) -> tuple[np.ndarray, str | None, str | None, dict[str, str]]:
    header = _parse(data, uri, stop_before_pixels=True)
    if not has_dicm_marker(data) and not ("Rows" in header and "Columns" in header):
        # Forced parsing turns almost any bytes into some data set: without the marker and without
        # image tags the honest answer is that this is not DICOM at all.
        raise DecodeError(uri, "not a DICOM file: no 'DICM' marker at byte 128 and no image header found")
    check_mammogram(header, uri, allowed_modalities)  # before the other checks: the most telling reason
    transfer_syntax = _check_header(header, uri, max_pixels)
    full = _parse(data, uri, stop_before_pixels=False)
    _ensure_transfer_syntax(full, transfer_syntax)
    _check_pixel_element(full, header, transfer_syntax, uri)
    stored = _decode_stored_values(full, transfer_syntax, uri)
    pixels = _to_presentation_values(stored, full, apply_voi_lut, uri)
    return pixels, laterality_from_tags(header), view_from_tags(header), safe_metadata(header)


def _parse(data: bytes, uri: str, *, stop_before_pixels: bool, specific_tags: list[str] | None = None) -> Dataset:
    # Without the 'DICM' marker pydicom refuses unless forced; the caller only routes such bytes here
    # when they look like a bare data set or carry a DICOM file extension.
    marker = has_dicm_marker(data)
    try:
        return pydicom.dcmread(BytesIO(data), stop_before_pixels=stop_before_pixels, force=not marker,
                               specific_tags=specific_tags)
    except Exception as exc:  # pydicom raises many types for damaged input
        what = "unreadable DICOM header" if marker else "not a DICOM file (no 'DICM' marker at byte 128)"
        raise DecodeError(uri, f"{what}: {type(exc).__name__}: {exc}") from exc


def _int_tag(ds: Dataset, keyword: str, uri: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is not None:
            return default
        raise DecodeError(uri, f"DICOM header has no {keyword}: not an image (or not a DICOM file)")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise DecodeError(uri, f"DICOM {keyword} is not an integer: {value!r}") from exc


def _check_header(ds: Dataset, uri: str, max_pixels: int) -> UID:
    """Refuse what we cannot or should not decode, from header tags alone; return the transfer syntax."""
    if len(ds) == 0:
        raise DecodeError(uri, "not a DICOM file: no DICOM data elements could be read")
    rows = _int_tag(ds, "Rows", uri)
    columns = _int_tag(ds, "Columns", uri)
    if rows <= 0 or columns <= 0:
        raise DecodeError(uri, f"empty image: {rows} rows x {columns} columns")
    frames = _int_tag(ds, "NumberOfFrames", uri, default=1)
    if frames != 1:
        raise DecodeError(uri, f"multi-frame DICOM ({frames} frames) is not supported: expected one 2D image")
    samples = _int_tag(ds, "SamplesPerPixel", uri, default=1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if samples != 1 or photometric not in _GREYSCALE:
        raise DecodeError(
            uri,
            f"not a greyscale image: PhotometricInterpretation {photometric or 'missing'!r}, "
            f"{samples} samples per pixel (expected MONOCHROME1/MONOCHROME2, 1 sample)",
        )
    if rows * columns > max_pixels:
        raise DecodeError(
            uri,
            f"image too large: {rows} x {columns} = {rows * columns} pixels exceeds the limit {max_pixels}",
        )
    bits_allocated = _int_tag(ds, "BitsAllocated", uri)
    bits_stored = _int_tag(ds, "BitsStored", uri, default=bits_allocated)
    if bits_allocated not in (8, 16):
        raise DecodeError(uri, f"unsupported BitsAllocated {bits_allocated} (expected 8 or 16)")
    if not 1 <= bits_stored <= min(bits_allocated, 16):
        raise DecodeError(uri, f"unsupported BitsStored {bits_stored} with BitsAllocated {bits_allocated}")
    representation = _int_tag(ds, "PixelRepresentation", uri, default=0)
    if representation not in (0, 1):
        raise DecodeError(uri, f"invalid PixelRepresentation {representation} (expected 0 or 1)")
    return _check_transfer_syntax(ds, uri)


def _check_transfer_syntax(ds: Dataset, uri: str) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:
        # A bare data set has no meta group: the encoding pydicom detected is the transfer syntax.
        implicit, little = ds.original_encoding
        uid = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    uid = UID(str(uid).strip())
    try:
        decoder = get_decoder(uid)
    except Exception as exc:
        raise DecodeError(uri, f"unsupported transfer syntax {uid.name} ({uid})") from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        raise DecodeError(
            uri, f"no decoder installed for transfer syntax {uid.name} ({uid}): needs {missing}"
        )
    return uid


def _ensure_transfer_syntax(ds: Dataset, uid: UID) -> None:
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = uid


def _check_pixel_element(full: Dataset, header: Dataset, uid: UID, uri: str) -> None:
    if "PixelData" not in full:
        if "FloatPixelData" in full or "DoubleFloatPixelData" in full:
            raise DecodeError(uri, "float pixel data is not supported (expected integer PixelData)")
        if len(full) < len(header):
            # pydicom gives up on the whole data set when encapsulated pixel data ends early.
            raise DecodeError(uri, "truncated file: the data set ends inside the pixel data")
        raise DecodeError(uri, "DICOM has no pixel data (7FE0,0010)")
    if uid in _NATIVE_SYNTAXES:
        expected = get_expected_length(full)
        found = len(full.PixelData)
        if found < expected:
            raise DecodeError(
                uri, f"truncated pixel data: {found} bytes, Rows x Columns x BitsAllocated need {expected}"
            )


def _decode_stored_values(ds: Dataset, uid: UID, uri: str) -> np.ndarray:
    try:
        stored = ds.pixel_array
    except BaseException as exc:  # decoder plugins raise their own types on corrupt streams
        if not (isinstance(exc, Exception) or is_plugin_panic(exc)):
            raise
        raise DecodeError(
            uri, f"pixel data could not be decoded ({uid.name}): {type(exc).__name__}: {exc}"
        ) from exc
    expected_shape = (int(ds.Rows), int(ds.Columns))
    if stored.shape != expected_shape:
        raise DecodeError(uri, f"decoded pixel array has shape {stored.shape}, header says {expected_shape}")
    return stored


def _to_presentation_values(stored: np.ndarray, ds: Dataset, apply_voi: bool, uri: str) -> np.ndarray:
    """Modality LUT, optional VOI, MONOCHROME1 inversion and zero background, as float32."""
    try:
        values = apply_modality_lut(stored, ds)
        if apply_voi:
            values = _pydicom_apply_voi_lut(values, ds)
    except Exception as exc:  # bad LUT descriptors, window width < 1, unknown VOI function...
        raise DecodeError(uri, f"invalid modality or VOI LUT: {type(exc).__name__}: {exc}") from exc
    monochrome1 = str(ds.PhotometricInterpretation).strip().upper() == "MONOCHROME1"  # the lowest value is white
    if values.dtype.kind in "ui":
        # Stored integers (no rescale, no window) are finite: one pass to the shifted float32 image, the same
        # float32 arithmetic as below (integers up to 16 bits are exact in float32).
        if monochrome1:
            return np.subtract(values.max(), values, dtype=np.float32)
        return np.subtract(values, values.min(), dtype=np.float32)
    # Float64 results (rescale, window) keep float64 until the background shift so that large intercepts do
    # not cost precision.
    values = np.asarray(values, dtype=np.float64 if values.dtype == np.float64 else np.float32)
    if not np.isfinite(values).all():
        raise DecodeError(uri, "pixel values are not finite after the modality/VOI LUT (check RescaleSlope)")
    if monochrome1:
        np.negative(values, out=values)
    values -= values.min()
    return values.astype(np.float32, copy=False)


def _text(value: object) -> str:
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(item).strip() for item in value)
    return str(value).strip()


def safe_metadata(ds: Dataset) -> dict[str, str]:
    """The SAFE_DICOM_TAGS present in `ds` (plus TransferSyntaxUID), as strings; empty values dropped."""
    metadata: dict[str, str] = {}
    uid = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if uid:
        metadata["TransferSyntaxUID"] = str(uid)
    for keyword in SAFE_DICOM_TAGS:
        value = ds.get(keyword)
        if value is None or isinstance(value, (bytes, Dataset)):
            continue
        text = _text(value)
        if text:
            metadata[keyword] = text
    return metadata


def _normalised(normaliser: Callable[[object], str | None], value: object) -> str | None:
    """Normalise a tag value; values outside the vocabulary (e.g. laterality 'B') count as unknown."""
    try:
        return normaliser(_text(value) if value is not None else None)
    except ValueError:
        return None


def _tokens(value: object) -> list[str]:
    return [token for token in _TOKEN_SPLIT.split(_text(value).upper()) if token] if value else []


def _laterality_from_text(value: object) -> str | None:
    for token in _tokens(value):
        if token in _LATERALITY_TOKENS:
            return _LATERALITY_TOKENS[token]
        fused = _FUSED_TOKEN.match(token)
        if fused:
            return fused.group(1)
    return None


def _view_from_text(value: object) -> str | None:
    for token in _tokens(value):
        if token in _VIEW_TOKENS:
            return _VIEW_TOKENS[token]
        fused = _FUSED_TOKEN.match(token)
        if fused:
            return _VIEW_TOKENS[fused.group(2)]
    return None


def laterality_from_tags(ds: Dataset) -> str | None:
    """ImageLaterality, else Laterality, else LEFT/RIGHT in a CBIS-style PatientID or SeriesDescription."""
    for keyword in ("ImageLaterality", "Laterality"):
        found = _normalised(normalise_laterality, ds.get(keyword))
        if found:
            return found
    for keyword in ("PatientID", "SeriesDescription"):
        found = _laterality_from_text(ds.get(keyword))
        if found:
            return found
    return None


def _view_from_code_sequence(ds: Dataset) -> str | None:
    sequence = ds.get("ViewCodeSequence")
    if not sequence:
        return None
    item = sequence[0]
    code = str(item.get("CodeValue", "")).strip()
    if code in _VIEW_CODES:
        return _VIEW_CODES[code]
    meaning = re.sub(r"[^a-z]", "", str(item.get("CodeMeaning", "")).lower())
    if meaning:
        return _VIEW_MEANINGS.get(meaning, "other")
    return None


def view_from_tags(ds: Dataset) -> str | None:
    """ViewPosition, else ViewCodeSequence, else PatientOrientation 'CC'/'MLO' (CBIS), else ID tokens."""
    found = _normalised(normalise_view, ds.get("ViewPosition"))
    if found:
        return found
    found = _view_from_code_sequence(ds)
    if found:
        return found
    # PatientOrientation normally holds direction letters ('A\\FR'); CBIS-DDSM stores the view there.
    orientation = ds.get("PatientOrientation")
    if isinstance(orientation, str) and orientation.strip().upper() in ("CC", "MLO"):
        return orientation.strip().upper()
    for keyword in ("PatientID", "SeriesDescription"):
        found = _view_from_text(ds.get(keyword))
        if found:
            return found
    return None
