"""PNG (via Pillow) and PGM (own parser) -> float32 grey pixels with their stored values.

Raster formats carry no photometric tags: 0 is black by definition, so values are returned as stored
(no rescaling to 8 bits, no min shift). The dimensions are read from the header and checked against
`max_pixels` before any pixel data is decompressed or parsed.

PGM is parsed here rather than by Pillow because Pillow rescales samples whose maxval is not 255 or
65535 to the full range; we keep the stored values and only check them against maxval.
"""

from __future__ import annotations

import re
import struct
import warnings
from io import BytesIO

import numpy as np
from PIL import Image

from mammo_ray.errors import DecodeError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PGM_MAGICS = (b"P2", b"P5")

# IHDR colour types (PNG spec 11.2.2) and the bit depths each allows.
_PNG_COLOUR_TYPES = {
    0: ("greyscale", (1, 2, 4, 8, 16)),
    2: ("RGB", (8, 16)),
    3: ("palette", (1, 2, 4, 8)),
    4: ("greyscale+alpha", (8, 16)),
    6: ("RGBA", (8, 16)),
}
_PNM_WHITESPACE = b" \t\r\n\v\f"
_PNM_TOKEN = re.compile(rb"\d{1,12}")  # 12 digits bound the int parse on hostile headers
_COMMENT = re.compile(rb"#[^\r\n]*")


def _check_size(width: int, height: int, max_pixels: int, uri: str) -> None:
    if width <= 0 or height <= 0:
        raise DecodeError(uri, f"empty image: {width} x {height} pixels")
    if width * height > max_pixels:
        raise DecodeError(
            uri,
            f"image too large: {height} x {width} = {width * height} pixels exceeds the limit {max_pixels}",
        )


# ---------------------------------------------------------------------------------------------- PNG


def png_header(data: bytes, uri: str) -> tuple[int, int, int, int]:
    """(width, height, bit_depth, colour_type) from the IHDR chunk, validated against the PNG spec."""
    if not data.startswith(PNG_SIGNATURE):
        raise DecodeError(uri, "not a PNG file: the 8-byte PNG signature is missing")
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise DecodeError(uri, "corrupt PNG: the IHDR header chunk is missing or truncated")
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", data[16:26])
    allowed = _PNG_COLOUR_TYPES.get(colour_type)
    if allowed is None or bit_depth not in allowed[1]:
        raise DecodeError(uri, f"corrupt PNG: invalid colour type {colour_type} with bit depth {bit_depth}")
    return width, height, bit_depth, colour_type


def read_png(data: bytes, uri: str, *, max_pixels: int = 120_000_000) -> tuple[np.ndarray, dict[str, str]]:
    """Decode a greyscale PNG (1-16 bit; RGB/palette only when all channels are equal)."""
    width, height, bit_depth, colour_type = png_header(data, uri)
    _check_size(width, height, max_pixels, uri)
    if bit_depth == 16 and colour_type in (2, 4, 6):
        # Pillow reduces 16-bit colour and grey+alpha PNGs to 8 bits: refuse rather than lose precision.
        raise DecodeError(
            uri, f"16-bit {_PNG_COLOUR_TYPES[colour_type][0]} PNG is not supported (store greyscale)"
        )
    try:
        with warnings.catch_warnings():
            # Our own limit was checked above; Pillow's bomb warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data), formats=["PNG"]) as image:
                image.load()
                pixels = _grey_array(image, uri)
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(uri, f"image too large for Pillow's decompression-bomb limit: {exc}") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, zlib.error...
        raise DecodeError(uri, f"corrupt PNG data: {type(exc).__name__}: {exc}") from exc
    if pixels.shape != (height, width):
        raise DecodeError(uri, f"decoded PNG has shape {pixels.shape}, header says {(height, width)}")
    metadata = {"width": str(width), "height": str(height), "bit_depth": str(bit_depth)}
    return pixels.astype(np.float32), metadata


def _grey_array(image: Image.Image, uri: str) -> np.ndarray:
    """One grey channel from a loaded Pillow image; alpha is ignored, differing colours refused."""
    mode = image.mode
    if mode in ("1", "L", "I", "I;16", "I;16B", "I;16L"):
        return np.asarray(image)
    if mode == "LA":
        return np.asarray(image.getchannel("L"))
    if mode in ("P", "PA"):
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(image)[..., :3]
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
            raise DecodeError(uri, "colour PNG: the red, green and blue channels differ (expected greyscale)")
        return rgb[..., 0]
    raise DecodeError(uri, f"unsupported PNG pixel mode {mode!r}")


# ---------------------------------------------------------------------------------------------- PGM


def _skip_separators(data: bytes, position: int) -> int:
    """Skip whitespace and '#' comments (which run to the end of the line) between header fields."""
    while position < len(data):
        if data[position] in _PNM_WHITESPACE:
            position += 1
        elif data[position] == ord("#"):
            position = _COMMENT.match(data, position).end()  # type: ignore[union-attr]
        else:
            break
    return position


def pgm_header(data: bytes, uri: str) -> tuple[bytes, int, int, int, int]:
    """(magic, width, height, maxval, raster offset) of a P2/P5 PGM; comments ('#...') are allowed."""
    magic = data[:2]
    if magic not in PGM_MAGICS:
        shown = magic.decode("latin-1") if magic[:1] == b"P" else "missing"
        raise DecodeError(uri, f"not a greyscale PGM: magic {shown!r} (expected P2 or P5)")
    position = 2
    values: list[int] = []
    for field in ("width", "height", "maxval"):
        start = position
        position = _skip_separators(data, position)
        token = _PNM_TOKEN.match(data, position)
        if position == start or token is None:
            raise DecodeError(uri, f"corrupt PGM header: {field} is missing or not a decimal integer")
        position = token.end()
        values.append(int(token.group()))
    width, height, maxval = values
    if not 1 <= maxval <= 65535:
        raise DecodeError(uri, f"corrupt PGM header: maxval {maxval} outside 1..65535")
    # Exactly one whitespace byte separates maxval from the raster (which may itself start with '\n').
    if position >= len(data) or data[position] not in _PNM_WHITESPACE:
        raise DecodeError(uri, "corrupt PGM header: no whitespace after maxval (truncated header?)")
    return magic, width, height, maxval, position + 1


def read_pgm(data: bytes, uri: str, *, max_pixels: int = 120_000_000) -> tuple[np.ndarray, dict[str, str]]:
    """Decode a binary (P5, 8/16-bit big-endian) or plain (P2) PGM, keeping the stored values."""
    magic, width, height, maxval, offset = pgm_header(data, uri)
    _check_size(width, height, max_pixels, uri)
    count = width * height
    if magic == b"P5":
        dtype = np.dtype(">u2") if maxval > 255 else np.dtype("u1")
        needed = count * dtype.itemsize
        raster = data[offset : offset + needed]
        if len(raster) < needed:
            raise DecodeError(
                uri, f"truncated PGM: {len(raster)} bytes of pixel data, {width} x {height} need {needed}"
            )
        samples = np.frombuffer(raster, dtype=dtype)
    else:
        samples = _plain_samples(data[offset:], count, uri)
    if samples.size and int(samples.max()) > maxval:
        raise DecodeError(uri, f"corrupt PGM: pixel value {int(samples.max())} exceeds maxval {maxval}")
    metadata = {
        "width": str(width),
        "height": str(height),
        "bit_depth": "16" if maxval > 255 else "8",
        "maxval": str(maxval),
    }
    return samples.reshape(height, width).astype(np.float32), metadata


def _plain_samples(body: bytes, count: int, uri: str) -> np.ndarray:
    tokens = _COMMENT.sub(b" ", body).split()
    if len(tokens) < count:
        raise DecodeError(uri, f"truncated PGM: {len(tokens)} plain (P2) samples, expected {count}")
    try:
        samples = np.array(tokens[:count]).astype(np.int64)
    except (ValueError, OverflowError) as exc:
        raise DecodeError(uri, "corrupt PGM: plain (P2) samples must be decimal integers") from exc
    if samples.size and int(samples.min()) < 0:
        raise DecodeError(uri, "corrupt PGM: negative plain (P2) sample")
    return samples
