"""Bytes of test images, good and deliberately broken, shared by the decoder and the job-level tests.

No mocks: every DICOM is written by pydicom, every PNG by Pillow (or by hand where Pillow would refuse
to write the lie), so a test exercises the same readers a real file does.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation, generate_uid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_UNDEFINED_LENGTH = 0xFFFFFFFF


def make_dicom(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    syntax: str | None = None,
    **tags: object,
) -> bytes:
    """A Part 10 MG file holding `pixels`; `tags` are set (None deletes) after the pixel module,
    so a test can break the header on purpose."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "MG"
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    if syntax is not None:
        ds.compress(syntax, pixels)
    for keyword, value in tags.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims `width` x `height` 8-bit grey pixels and that holds no pixel data:
    a decoder that trusts the header allocates width * height bytes before finding out."""
    ihdr = b"IHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return PNG_SIGNATURE + (13).to_bytes(4, "big") + ihdr + zlib.crc32(ihdr).to_bytes(4, "big")


def split_meta(data: bytes) -> tuple[bytes, bytes]:
    """A Part 10 file (explicit VR little endian) -> (preamble + 'DICM' + meta group, data set)."""
    position = 132
    while struct.unpack("<H", data[position : position + 2])[0] == 0x0002:
        vr = data[position + 4 : position + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            position += 12 + struct.unpack("<I", data[position + 8 : position + 12])[0]
        else:
            position += 8 + struct.unpack("<H", data[position + 6 : position + 8])[0]
    return data[:position], data[position:]


def nested_sequence_dicom(valid: bytes, depth: int) -> bytes:
    """`valid` with `depth` sequences nested inside one another before its data set: a hostile file
    whose parse recurses once per level (pydicom reads sequences recursively)."""
    meta, body = split_meta(valid)
    opening = struct.pack("<HH2sHI", 0x0008, 0x1115, b"SQ", 0, _UNDEFINED_LENGTH)  # undefined-length SQ
    opening += struct.pack("<HHI", 0xFFFE, 0xE000, _UNDEFINED_LENGTH)  # undefined-length item
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return meta + opening * depth + closing * depth + body


def huge_element_dicom(valid: bytes, length: int) -> bytes:
    """`valid` (native, explicit VR) with a private OB element before its PixelData that declares
    `length` bytes and holds none: a reader that allocates what the header says asks for `length`
    bytes, and one that reads what is there swallows the pixel data into it."""
    meta, body = split_meta(valid)
    at = body.rindex(struct.pack("<HH", 0x7FE0, 0x0010))
    element = struct.pack("<HH2sHI", 0x7FDF, 0x0010, b"OB", 0, length)
    return meta + body[:at] + element + body[at:]


#: Header tags of what is not a mammogram, set on a mammogram's bytes by `retagged`.
CT_CHEST = {"Modality": "CT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "BodyPartExamined": "CHEST"}
MR_BRAIN = {"Modality": "MR", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.4", "BodyPartExamined": "BRAIN"}


def retagged(data: bytes, **tags: object) -> bytes:
    """A DICOM's bytes with `tags` set (None deletes); the meta group's SOP class follows SOPClassUID."""
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in tags.items():
        if value is None:
            if keyword in ds:
                del ds[keyword]
        else:
            setattr(ds, keyword, value)
    if "SOPClassUID" in ds:
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
