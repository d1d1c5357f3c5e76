"""The breast bounding box: the published crop (docs/design.md, "Breast crop") and an exact fast version of it.

The published algorithm, written once and plainly in `reference_breast_box`:
mask = pixels > 0; binary erosion then binary dilation, 100 iterations each of scipy's default cross;
keep the largest 4-connected component; its bounding box plus a 50 px margin, clipped to the image.

`breast_box` returns the same box, pixel for pixel, from a bit-packed opening (why, measured against
scipy.ndimage's ways: docs/benchmarks.md, "Breast crop opening"; the method: docs/design.md, "Breast crop").
tests/imaging/test_crop.py and tests/test_benchmarks.py check it against scipy pixel for pixel.

Reduced-resolution inputs: `iterations` and `margin` are in pixels of the image you pass. The caller
scales them (`scaled_crop_params(scale)` gives the published values times `scale`); nothing here guesses
the resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

from mammo_ray.errors import MammoRayError

PUBLISHED_ITERATIONS = 100
PUBLISHED_MARGIN = 50


class NoBreastFoundError(MammoRayError):
    """The image holds no breast: no pixel > 0, or nothing survives the morphological opening."""


@dataclass(frozen=True)
class Box:
    """A half-open pixel box: rows [top, bottom), columns [left, right)."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    def slices(self) -> tuple[slice, slice]:
        """Index an (H, W) array with `pixels[box.slices()]`."""
        return slice(self.top, self.bottom), slice(self.left, self.right)

    def max_abs_diff(self, other: Box) -> int:
        """Largest per-side difference in pixels, for comparing two algorithms."""
        return max(
            abs(self.top - other.top),
            abs(self.bottom - other.bottom),
            abs(self.left - other.left),
            abs(self.right - other.right),
        )


def scaled_crop_params(scale: float) -> tuple[int, int]:
    """(iterations, margin) of the published crop for an image resampled by `scale` (1.0 = native)."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return max(1, round(PUBLISHED_ITERATIONS * scale)), max(0, round(PUBLISHED_MARGIN * scale))


def _check_args(pixels: np.ndarray, iterations: int, margin: int) -> None:
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {pixels.shape}")
    # scipy treats iterations < 1 as "repeat until nothing changes": never what the crop means.
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")


def _no_breast(mask_is_empty: bool, iterations: int) -> NoBreastFoundError:
    if mask_is_empty:
        return NoBreastFoundError("no breast pixels were found: every pixel is <= 0")
    return NoBreastFoundError(
        f"no breast pixels were found after the morphological opening ({iterations} iterations): "
        f"every non-zero region is narrower than {2 * iterations + 1} px"
    )


def _with_margin(top: int, bottom: int, left: int, right: int, shape: tuple[int, ...], margin: int) -> Box:
    height, width = shape
    return Box(
        max(0, top - margin), min(height, bottom + margin), max(0, left - margin), min(width, right + margin)
    )


def reference_breast_box(
    pixels: np.ndarray, *, iterations: int = PUBLISHED_ITERATIONS, margin: int = PUBLISHED_MARGIN
) -> Box:
    """The published crop, step by step with scipy.ndimage. Slow on full-size mammograms; the oracle."""
    _check_args(pixels, iterations, margin)
    mask = pixels > 0
    if not mask.any():
        raise _no_breast(True, iterations)
    opened = ndi.binary_dilation(ndi.binary_erosion(mask, iterations=iterations), iterations=iterations)
    labels, count = ndi.label(opened)
    if count == 0:
        raise _no_breast(False, iterations)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = int(sizes.argmax())  # ties: the lowest label, i.e. the first component in raster order
    rows, cols = ndi.find_objects(labels, max_label=largest)[largest - 1]
    return _with_margin(rows.start, rows.stop, cols.start, cols.stop, pixels.shape, margin)


def breast_box(
    pixels: np.ndarray, *, iterations: int = PUBLISHED_ITERATIONS, margin: int = PUBLISHED_MARGIN
) -> Box:
    """The same box as `reference_breast_box`, exactly, computed on a bit-packed mask.

    iterations, margin: in pixels of `pixels` (scale them for reduced-resolution inputs, see
    `scaled_crop_params`). Raises NoBreastFoundError when no pixel is > 0 or the opening is empty.
    """
    _check_args(pixels, iterations, margin)
    mask = pixels > 0
    height, width = mask.shape
    packed = _pack(mask)
    if not packed.any():
        raise _no_breast(True, iterations)
    opened = _open_packed(packed, height, width, iterations)
    if not opened.any():
        raise _no_breast(False, iterations)
    found = _largest_component_box_blocks(opened, iterations)
    if found is None:  # certificate failed or n too small for blocks: label at full resolution
        found = _largest_component_box_full(_unpack(opened, width))
    return _with_margin(*found, mask.shape, margin)


# --- bit-packed morphology ----------------------------------------------------------------------------
# Column c of a row lives in bit (c % 64) of word c // 64 (little bit order, little-endian words).

_WORD = 64
_POPCOUNT8 = np.array([value.bit_count() for value in range(256)], dtype=np.uint8)


def _popcount_bytes(data: np.ndarray) -> np.ndarray:
    """Set bits per uint8 element (numpy >= 2 has a ufunc for it; older numpy uses a table)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(data)
    return _POPCOUNT8[data]


def _pack(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, ceil(W / 64)) uint64; bits past W are zero."""
    packed8 = np.packbits(mask, axis=1, bitorder="little")
    pad = (-packed8.shape[1]) % 8
    if pad:
        packed8 = np.pad(packed8, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed8).view("<u8").astype(np.uint64, copy=False)


def _bytes_view(packed: np.ndarray) -> np.ndarray:
    """(H, n_words) uint64 -> (H, 8 * n_words) uint8, byte b holding columns 8b..8b+7."""
    return np.ascontiguousarray(packed.astype("<u8", copy=False)).view(np.uint8)


def _unpack(packed: np.ndarray, width: int) -> np.ndarray:
    return np.unpackbits(_bytes_view(packed), axis=1, count=width, bitorder="little").astype(bool)


def _diamond_steps(radius: int) -> list[int]:
    """Arm lengths j of the sparse crosses S_j whose Minkowski sum is the diamond D_radius."""
    steps, reached = [], 0
    while reached < radius:
        step = max(1, min(reached, radius - reached))  # D_{m+j} = D_m (+) S_j needs j <= m
        steps.append(step)
        reached += step
    return steps


def _combine_shifted(out: np.ndarray, words: np.ndarray, shift: int, erode: bool) -> None:
    """out[:, c] (&= if erode else |=) words[:, c - shift], in place; columns outside count as zero."""
    combine = np.bitwise_and if erode else np.bitwise_or
    n_words = words.shape[1]
    whole, bits = divmod(abs(shift), _WORD)
    if whole >= n_words:
        if erode:
            out[:] = 0
        return
    low, high = np.uint64(bits), np.uint64(_WORD - bits)
    if shift > 0:  # out word w takes bits from source words w - whole and w - whole - 1
        source = words[:, : n_words - whole]
        moved = source << low
        if bits:
            moved[:, 1:] |= source[:, :-1] >> high
        combine(out[:, whole:], moved, out=out[:, whole:])
        if erode:
            out[:, :whole] = 0
    else:  # out word w takes bits from source words w + whole and w + whole + 1
        source = words[:, whole:]
        moved = source >> low
        if bits:
            moved[:, :-1] |= source[:, 1:] << high
        combine(out[:, : n_words - whole], moved, out=out[:, : n_words - whole])
        if erode:
            out[:, n_words - whole :] = 0


def _cross_step(words: np.ndarray, arm: int, erode: bool) -> np.ndarray:
    """Erode (AND) or dilate (OR) by S_arm; whatever lies outside the array counts as zero."""
    combine = np.bitwise_and if erode else np.bitwise_or
    out = words.copy()
    rows = words.shape[0]
    if arm < rows:
        combine(out[arm:], words[:-arm], out=out[arm:])
        combine(out[:-arm], words[arm:], out=out[:-arm])
    if erode:  # a row shift that reaches outside brings in zeros
        out[: min(arm, rows)] = 0
        out[max(rows - arm, 0) :] = 0
    _combine_shifted(out, words, arm, erode)
    _combine_shifted(out, words, -arm, erode)
    return out


def _open_packed(packed: np.ndarray, height: int, width: int, radius: int) -> np.ndarray:
    """Opening by D_radius, equal to scipy's erosion then dilation with `radius` iterations."""
    eroded = packed
    for arm in _diamond_steps(radius):
        eroded = _cross_step(eroded, arm, erode=True)
    # Dilation in a frame wide enough that nothing falls off: a decomposed step may pass outside the
    # image on its way to a pixel inside it, which scipy's one-pixel iterations never need to.
    pad_words = -(-radius // _WORD)
    framed = np.pad(eroded, ((radius, radius), (pad_words, pad_words)))
    for arm in _diamond_steps(radius):
        framed = _cross_step(framed, arm, erode=False)
    opened = framed[radius : radius + height, pad_words : pad_words + packed.shape[1]].copy()
    tail = width % _WORD
    if tail:  # clear the spill into the columns past the image's right edge
        opened[:, -1] &= np.uint64((1 << tail) - 1)
    return opened


# --- largest component ----------------------------------------------------------------------------------

Found = tuple[int, int, int, int]  # top, bottom, left, right (half-open), before the margin


def _largest_component_box_full(opened: np.ndarray) -> Found:
    """Full-resolution labelling: the reference's own rule, used when the block certificate fails."""
    labels, _ = ndi.label(opened)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = int(sizes.argmax())
    rows, cols = ndi.find_objects(labels, max_label=largest)[largest - 1]
    return rows.start, rows.stop, cols.start, cols.stop


_BLOCK = 8  # block side: 8 rows x 8 columns, i.e. one byte of the packed mask per block row


def _largest_component_box_blocks(opened: np.ndarray, radius: int) -> Found | None:
    """Largest component's box from an 8 x 8 block grid; None when the grid cannot prove the answer.

    Every component of the opening contains a whole block (it is a union of D_radius diamonds, and
    any diamond with radius >= 14 holds an aligned 8 x 8 block), every "all pixels set" block component
    lies in one opening component, and every opening component lies in one "any pixel set" block
    component. So if each "any" component holds exactly one "all" component, "any" components and
    opening components correspond one to one, and no block holds pixels of two components.
    """
    if radius < 2 * (_BLOCK - 1):
        return None
    counts8 = _popcount_bytes(_bytes_view(opened))  # (H, n_bytes): set pixels per 8 columns
    ragged = (-counts8.shape[0]) % _BLOCK
    rows = np.pad(counts8, ((0, ragged), (0, 0))) if ragged else counts8
    counts = rows.reshape(-1, _BLOCK, rows.shape[1]).sum(axis=1, dtype=np.int32)
    any_labels, n_any = ndi.label(counts > 0)
    all_labels, n_all = ndi.label(counts == _BLOCK * _BLOCK)
    full = all_labels > 0
    any_of_all = np.zeros(n_all + 1, dtype=np.int64)
    any_of_all[all_labels[full]] = any_labels[full]  # constant per "all" component, so any write wins
    alls_per_any = np.bincount(any_of_all[1:], minlength=n_any + 1)[1:]
    if not np.all(alls_per_any == 1):
        return None  # some "any" component holds several "all" components (or, impossibly, none)
    sizes = np.bincount(any_labels.ravel(), weights=counts.ravel())
    sizes[0] = 0
    largest = int(sizes.argmax())
    if np.count_nonzero(sizes == sizes[largest]) > 1:
        return None  # equal sizes: let full-resolution labelling apply the reference's raster order
    return _fine_box(opened, counts8, any_labels == largest)


def _fine_box(opened: np.ndarray, counts8: np.ndarray, blocks: np.ndarray) -> Found:
    """Exact pixel box of the set pixels inside `blocks` (all of one component), from its edge blocks."""
    height = opened.shape[0]
    block_rows = np.flatnonzero(blocks.any(axis=1))
    block_cols = np.flatnonzero(blocks.any(axis=0))

    def rows_with_pixels(block_row: int) -> np.ndarray:
        band = counts8[block_row * _BLOCK : (block_row + 1) * _BLOCK, blocks[block_row]]
        return block_row * _BLOCK + np.flatnonzero(band.any(axis=1))

    def set_columns(block_col: int) -> np.ndarray:
        rows = np.repeat(blocks[:, block_col], _BLOCK)[:height]
        column_byte = np.bitwise_or.reduce(_bytes_view(opened)[rows, block_col])
        return _BLOCK * block_col + np.flatnonzero(np.unpackbits(column_byte[None], bitorder="little"))

    top = int(rows_with_pixels(block_rows[0])[0])
    bottom = int(rows_with_pixels(block_rows[-1])[-1]) + 1
    left = int(set_columns(block_cols[0])[0])
    right = int(set_columns(block_cols[-1])[-1]) + 1
    return top, bottom, left, right
