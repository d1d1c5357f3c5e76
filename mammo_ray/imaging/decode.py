"""One entry point from file bytes to a grey float32 image: `decode_image`.

The format is taken from the content (DICOM 'DICM' marker or a bare data set, PNG signature, PGM
magic) and only then from the URI's extension, because object-store keys often lie or lack one.
Every failure is a DecodeError naming the URI and the reason, so the pipeline can record it as an
error row instead of crashing a worker.
"""

from __future__ import annotations

import posixpath
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from mammo_ray.errors import DecodeError
from mammo_ray.imaging import dicom, raster
from mammo_ray.imaging.modality import MAMMOGRAPHY_MODALITY

SOURCE_FORMATS: tuple[str, ...] = ("dicom", "png", "pgm")
_EXTENSIONS = {
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".dic": "dicom",
    ".png": "png",
    ".pgm": "pgm",
    ".pnm": "pgm",
}


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays elementwise has no single truth value
class DecodedImage:
    """A decoded mammogram: grey pixels plus what the file itself says about it.

    pixels: float32 (H, W), background 0, full precision (no 8-bit quantisation).
    laterality / view: from DICOM tags ('L'/'R', 'CC'/'MLO'/'other'); None when unknown or raster.
    metadata: technical, PHI-free strings (DICOM: SAFE_DICOM_TAGS; raster: width, height, bit_depth).
    source_format: 'dicom', 'png' or 'pgm'.
    """

    pixels: np.ndarray
    laterality: str | None
    view: str | None
    metadata: dict[str, str]
    source_format: str


def decode_id(apply_voi_lut: bool) -> str:
    """Names the decode settings that change pixel values (the size and modality limits only refuse files)."""
    return f"voi_lut={int(apply_voi_lut)}"


def detect_format(data: bytes, uri: str) -> str | None:
    """'dicom', 'png', 'pgm' from magic bytes, else from the URI's extension; None when neither says."""
    if dicom.has_dicm_marker(data):
        return "dicom"
    if data.startswith(raster.PNG_SIGNATURE):
        return "png"
    if data[:2] in raster.PGM_MAGICS and data[2:3].isspace():
        return "pgm"
    if dicom.looks_like_bare_dataset(data):
        return "dicom"
    path = urlsplit(uri).path if "://" in uri else uri
    return _EXTENSIONS.get(posixpath.splitext(path)[1].lower())


def decode_image(
    data: bytes, uri: str, *, apply_voi_lut: bool = True, max_pixels: int = 120_000_000,
    allowed_modalities: Collection[str] = (MAMMOGRAPHY_MODALITY,),
) -> DecodedImage:
    """Decode DICOM, PNG or PGM bytes into a DecodedImage.

    apply_voi_lut: apply a DICOM VOI LUT or window when the file has one (raster formats ignore it).
    max_pixels: refuse images whose header declares more pixels, before any pixel is decoded.
    allowed_modalities: DICOM Modality values accepted; a DICOM whose Modality, SOP class or body part
    says it is no mammogram is refused (mammo_ray.imaging.modality). Raster files have no such header.
    Raises DecodeError(uri, reason) for every input that cannot be decoded, and nothing else.
    """
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if not data:
        raise DecodeError(uri, "empty file (0 bytes)")
    data = bytes(data)
    source_format = detect_format(data, uri)
    if source_format is None:
        raise DecodeError(uri, "unrecognised format: not DICOM, PNG or PGM by content or file extension")
    try:
        laterality: str | None = None
        view: str | None = None
        if source_format == "dicom":
            pixels, laterality, view, metadata = dicom.read_dicom(
                data, uri, apply_voi_lut=apply_voi_lut, max_pixels=max_pixels, allowed_modalities=allowed_modalities
            )
        elif source_format == "png":
            pixels, metadata = raster.read_png(data, uri, max_pixels=max_pixels)
        else:
            pixels, metadata = raster.read_pgm(data, uri, max_pixels=max_pixels)
    except DecodeError:
        raise
    except BaseException as exc:  # a last guard: no library exception may reach the pipeline
        if not (isinstance(exc, Exception) or dicom.is_plugin_panic(exc)):
            raise  # KeyboardInterrupt, SystemExit and the like are not about the file
        reason = f"unexpected {type(exc).__name__} while decoding {source_format}: {exc}"
        raise DecodeError(uri, reason) from exc
    _check_pixels(pixels, uri)
    return DecodedImage(pixels, laterality, view, metadata, source_format)


def check_modality(
    data: bytes, uri: str, *, allowed_modalities: Collection[str] = (MAMMOGRAPHY_MODALITY,)
) -> None:
    """`decode_image`'s mammogram check alone (a DICOM header read of three tags; raster passes), for bytes
    that are not decoded, such as an image whose model outputs are stored already. Raises DecodeError."""
    if data and detect_format(bytes(data), uri) == "dicom":
        try:
            dicom.check_dicom_modality(bytes(data), uri, allowed_modalities)
        except DecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - as decode_image: no library exception reaches the pipeline
            raise DecodeError(uri, f"unexpected {type(exc).__name__} while reading the DICOM header: {exc}") from exc


def _check_pixels(pixels: np.ndarray, uri: str) -> None:
    if pixels.ndim != 2 or pixels.size == 0:
        raise DecodeError(uri, f"decoded image has shape {pixels.shape}, expected a non-empty 2D image")
    if pixels.dtype != np.float32:
        raise DecodeError(uri, f"decoded image has dtype {pixels.dtype}, expected float32")
    # NaN and infinities show in the extremes (NumPy's min and max propagate NaN): two reductions, no mask.
    if not (np.isfinite(pixels.min()) and np.isfinite(pixels.max())):
        raise DecodeError(uri, "decoded image contains non-finite values")
