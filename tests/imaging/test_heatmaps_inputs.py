"""The image+heatmaps model's inputs: the image's NYU window, and the same window cut from its stored heatmaps,
which are not standardised (docs/design.md, "Heatmaps")."""

from __future__ import annotations

import numpy as np
import pytest

from mammo_ray.imaging.heatmaps import PatchGrid, StoredHeatmaps
from mammo_ray.imaging.nyu import oriented_crop
from mammo_ray.imaging.transforms import MissingHeatmapsError, NYUHeatmapsTransform, NYUTransform


def _breast(height: int = 1200, width: int = 1000, side: str = "L") -> np.ndarray:
    """A half ellipse against the chest wall (left for L, right for R), brighter toward the chest."""
    r, c = np.ogrid[:height, :width]
    radius = ((r - height * 0.5) / (height * 0.4)) ** 2 + (c / (width * 0.6)) ** 2
    pixels = np.where(radius <= 1.0, 1000.0 * (1.2 - radius), 0.0).astype(np.float32)
    return pixels if side == "L" else pixels[:, ::-1].copy()


def _heatmaps(crop: np.ndarray, benign, malignant) -> StoredHeatmaps:
    """Heatmaps over `crop` at stride 70 with per-patch values from functions of the patch's (top, left)."""
    grid = PatchGrid.over(*crop.shape, stride=70)
    corners = grid.corners
    return StoredHeatmaps(crop.shape[0], crop.shape[1], 70,
                          np.array([benign(r, c) for r, c in corners], np.float32),
                          np.array([malignant(r, c) for r, c in corners], np.float32))


WINDOW = NYUTransform(scale=0.2, source_resolution=1.0)


@pytest.mark.parametrize("side", ["L", "R"])
def test_channels_are_the_window_then_the_unstandardised_heatmaps_cut_with_it(side):
    pixels = _breast(side=side)
    # The heatmaps were drawn on the crop at another scale than the window's: resampled to the window's crop.
    crop = oriented_crop(pixels, laterality=side, scale=0.5, source_resolution=1.0)
    stored = _heatmaps(crop, lambda r, c: 0.25, lambda r, c: c / crop.shape[1])
    inputs, share = NYUHeatmapsTransform(WINDOW, "heatmaps-key").prepare(pixels, "CC", side, heatmaps=stored)
    window, window_share = WINDOW.prepare(pixels, "CC", side)
    assert inputs.shape == (1, 3, *window.shape[2:]) and share == window_share
    np.testing.assert_array_equal(inputs[:, :1], window)  # channel 0: the image-only model's input
    breast = window[0, 0] > window[0, 0].min()
    np.testing.assert_allclose(inputs[0, 1][breast], 0.25, atol=1e-5)  # not standardised
    # The malignant heatmap grows from the chest wall to the nipple in the crop's orientation, and so it does in
    # the window whichever side the breast is: the heatmaps meet the image the way round it was drawn.
    malignant = inputs[0, 2]
    columns = [malignant[:, j][breast[:, j]].mean() for j in range(malignant.shape[1]) if breast[:, j].sum() > 10]
    assert columns[-1] > columns[0] + 0.2 and np.all(np.diff(columns) > -0.02)


def test_augmented_windows_cut_the_heatmaps_at_their_own_shifts():
    pixels = _breast()
    crop = oriented_crop(pixels, laterality="L", scale=1.0, source_resolution=1.0)
    stored = _heatmaps(crop, lambda r, c: 0.5, lambda r, c: r / crop.shape[0])
    augmented = NYUTransform(scale=0.2, source_resolution=1.0, n_augment=3)
    inputs, _ = NYUHeatmapsTransform(augmented, "heatmaps-key").prepare(pixels, "CC", "L", heatmaps=stored)
    windows, _ = augmented.prepare(pixels, "CC", "L")
    assert inputs.shape == (3, 3, *windows.shape[2:])
    np.testing.assert_array_equal(inputs[:, :1], windows)
    assert len({inputs[i, 2].tobytes() for i in range(3)}) == 3  # each window its own cut of the heatmap


def test_an_image_without_heatmaps_has_no_inputs_and_the_id_names_the_heatmaps():
    transform = NYUHeatmapsTransform(WINDOW, "nyu_patch:stride=70@random-init:0")
    with pytest.raises(MissingHeatmapsError, match="no heatmaps are stored for this image"):
        transform.prepare(_breast(), "CC", "L", heatmaps=None)
    assert transform.id.startswith(WINDOW.id) and "nyu_patch:stride=70@random-init:0" in transform.id
    assert NYUHeatmapsTransform(WINDOW, "nyu_patch:stride=35@random-init:0").id != transform.id
