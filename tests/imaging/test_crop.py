"""The fast breast box against the published algorithm, on real mammograms and on shapes with known boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi

from mammo_ray.benchmarks.morphology import scipy_breast_box
from mammo_ray.errors import MammoRayError
from mammo_ray.imaging.crop import (
    Box,
    NoBreastFoundError,
    _open_packed,
    _pack,
    _unpack,
    breast_box,
    reference_breast_box,
    scaled_crop_params,
)
from mammo_ray.imaging.decode import decode_image
from tests.random_data import blob_mask

TOLERANCE_PX = 3  # the contract; the implementation is exact, which the diff report shows
MIAS_SAMPLE = [int(i) for i in np.linspace(1, 322, 12).round()]
DICOMS = [f"sfm-benign-0/1-{n}.dcm" for n in range(130, 134)] + [
    f"sfm-malign-0/1-{n}.dcm" for n in range(280, 284)
]


def _load(path: Path) -> np.ndarray:
    return decode_image(path.read_bytes(), str(path)).pixels


def _compare(pixels: np.ndarray, iterations: int, margin: int) -> int:
    expected = reference_breast_box(pixels, iterations=iterations, margin=margin)
    actual = breast_box(pixels, iterations=iterations, margin=margin)
    diff = actual.max_abs_diff(expected)
    print(
        f"shape={pixels.shape} iterations={iterations} reference={expected} fast={actual} max_diff={diff}px"
    )
    assert diff <= TOLERANCE_PX, f"fast {actual} vs reference {expected}: {diff} px"
    return diff


def test_matches_reference_on_mini_mias(mini_mias_dir: Path) -> None:
    diffs = [_compare(_load(mini_mias_dir / f"mdb{i:03d}.png"), 100, 50) for i in MIAS_SAMPLE]
    print(f"mini-MIAS: max box difference {max(diffs)} px over {len(diffs)} images")
    assert max(diffs) == 0  # exact, as documented


@pytest.mark.parametrize("name", DICOMS)
def test_matches_reference_on_full_size_dicoms(mammograms_cases_dir: Path, name: str) -> None:
    # The reference takes well under a second per ~4500 x 2800 image, so all 8 run at full size.
    assert _compare(_load(mammograms_cases_dir / name), 100, 50) == 0


def test_matches_reference_on_half_size_dicoms(mammograms_cases_dir: Path) -> None:
    iterations, margin = scaled_crop_params(0.5)
    diffs = [_compare(_load(mammograms_cases_dir / name)[::2, ::2], iterations, margin) for name in DICOMS]
    assert max(diffs) == 0


def _ellipse_with_speck() -> np.ndarray:
    """A half ellipse cut by the left edge (rows 50..250, cols 0..180) and a 3x3 speck far from it."""
    rows, cols = np.ogrid[:300, :400]
    breast = ((rows - 150) / 100.0) ** 2 + ((cols - 60) / 120.0) ** 2 <= 1.0
    pixels = np.where(breast, 1.0 + 0.001 * cols, 0.0).astype(np.float32)
    pixels[20:23, 350:353] = 255.0
    return pixels


@pytest.mark.parametrize("algorithm", [breast_box, reference_breast_box])
def test_synthetic_box_is_known(algorithm) -> None:
    # Every extreme pixel of the ellipse is the tip of a radius-10 diamond inside it, so the opening
    # keeps the ellipse's exact extent; the speck is removed; the margin is clipped at the left edge.
    assert algorithm(_ellipse_with_speck(), iterations=10, margin=5) == Box(45, 256, 0, 186)


@pytest.mark.parametrize("algorithm", [breast_box, reference_breast_box])
def test_largest_component_wins(algorithm) -> None:
    pixels = np.zeros((200, 300), np.float32)
    pixels[10:60, 10:60] = 1.0  # 2500 px
    pixels[100:190, 150:290] = 1.0  # 12600 px
    assert algorithm(pixels, iterations=20, margin=0) == Box(100, 190, 150, 290)


@pytest.mark.parametrize("algorithm", [breast_box, reference_breast_box])
def test_components_3px_apart_stay_apart(algorithm) -> None:
    # Closer than the fast path's 8 px blocks: its certificate fails and it labels at full resolution.
    pixels = np.zeros((200, 300), np.float32)
    pixels[10:100, 10:100] = 1.0
    pixels[10:150, 103:240] = 1.0
    assert algorithm(pixels, iterations=20, margin=0) == Box(10, 150, 103, 240)


@pytest.mark.parametrize("algorithm", [breast_box, reference_breast_box])
def test_all_black_image_raises(algorithm) -> None:
    with pytest.raises(NoBreastFoundError, match="no breast pixels were found") as caught:
        algorithm(np.zeros((64, 48), np.float32), iterations=5, margin=2)
    assert isinstance(caught.value, MammoRayError)


@pytest.mark.parametrize("algorithm", [breast_box, reference_breast_box])
def test_nothing_survives_opening_raises(algorithm) -> None:
    pixels = np.zeros((64, 64), np.float32)
    pixels[:, 30:35] = 1.0  # 5 px wide: gone after 3 iterations of erosion
    with pytest.raises(NoBreastFoundError, match="no breast pixels were found"):
        algorithm(pixels, iterations=3, margin=0)


@pytest.mark.parametrize("algorithm", [breast_box, scipy_breast_box], ids=["packed", "scipy-cdt"])
def test_random_shapes_match_reference_exactly(algorithm) -> None:
    """Blobs, near-touching components and image-edge contact, at radii using both component paths; the
    bit-packed box the crop uses and the scipy.ndimage candidate it was measured against alike."""
    rng = np.random.default_rng(7)
    for trial in range(24):
        # a 3 px gap every third trial: components closer than a block
        mask = blob_mask(rng, (180, 250), (20, 90), (40, 200, 3) if trial % 3 == 0 else None)
        iterations = int(rng.integers(3, 40))
        pixels = mask.astype(np.float32)
        try:
            expected = reference_breast_box(pixels, iterations=iterations, margin=4)
        except NoBreastFoundError:
            with pytest.raises(NoBreastFoundError):
                algorithm(pixels, iterations=iterations, margin=4)
            continue
        assert algorithm(pixels, iterations=iterations, margin=4) == expected


def _packed_opening(mask: np.ndarray, iterations: int) -> np.ndarray:
    height, width = mask.shape
    return _unpack(_open_packed(_pack(mask), height, width, iterations), width)


def test_packed_opening_is_scipys_pixel_for_pixel(mini_mias_dir: Path) -> None:
    """Not just the box: the bit-packed opening is scipy's iterated erosion then dilation, every pixel
    (real images at the published radius, odd widths and radii around the word and block sizes)."""
    for i in MIAS_SAMPLE[::3]:
        mask = _load(mini_mias_dir / f"mdb{i:03d}.png") > 0
        expected = ndi.binary_dilation(ndi.binary_erosion(mask, iterations=100), iterations=100)
        assert np.array_equal(_packed_opening(mask, 100), expected), i
    rng = np.random.default_rng(3)
    for width, iterations in [(63, 5), (64, 13), (65, 14), (127, 31), (130, 24), (200, 45)]:
        rows, cols = np.ogrid[:150, :width]
        mask = np.zeros((150, width), bool)
        for _ in range(3):
            r, c, a, b = rng.integers(0, 150), rng.integers(0, width), *rng.integers(10, 90, size=2)
            mask |= ((rows - r) / a) ** 2 + ((cols - c) / b) ** 2 <= 1.0
        expected = ndi.binary_dilation(ndi.binary_erosion(mask, iterations=iterations), iterations=iterations)
        assert np.array_equal(_packed_opening(mask, iterations), expected), (width, iterations)


def test_box_geometry_and_scaled_params() -> None:
    box = Box(top=2, bottom=10, left=3, right=7)
    assert (box.height, box.width) == (8, 4)
    assert np.zeros((12, 12))[box.slices()].shape == (8, 4)
    assert box.max_abs_diff(Box(3, 10, 0, 7)) == 3
    assert scaled_crop_params(1.0) == (100, 50)
    assert scaled_crop_params(0.25) == (25, 12)
    with pytest.raises(ValueError):
        breast_box(np.ones((8, 8), np.float32), iterations=0)
