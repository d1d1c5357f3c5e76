"""The patch grid covers every pixel, and rendered heatmaps are the mean of the patches covering each pixel."""

from __future__ import annotations

import numpy as np
import pytest

from mammo_ray.imaging.heatmaps import PatchGrid, patch_starts


@pytest.mark.parametrize("length", [1, 100, 255, 256, 257, 326, 400, 1000, 3001])
@pytest.mark.parametrize("stride", [70, 256, 33])
def test_patches_cover_every_pixel_with_steps_no_longer_than_the_stride(length, stride):
    starts = patch_starts(length, 256, stride)
    covered = np.zeros(max(length, 256), dtype=bool)
    for start in starts:
        covered[start:start + 256] = True
    assert covered[:length].all()
    assert starts[0] == 0 and starts[-1] + 256 == max(length, 256)  # nothing reaches past the (padded) crop
    assert all(0 < step <= stride for step in np.diff(starts))


def _brute_force(grid: PatchGrid, values: np.ndarray) -> np.ndarray:
    sums = np.zeros((grid.height, grid.width))
    counts = np.zeros((grid.height, grid.width))
    for value, (r, c) in zip(values, [(r, c) for r in grid.rows for c in grid.cols], strict=True):
        sums[r:r + grid.patch, c:c + grid.patch] += value
        counts[r:r + grid.patch, c:c + grid.patch] += 1
    return sums / counts


@pytest.mark.parametrize("shape", [(300, 257), (700, 500), (120, 90), (256, 256)])
def test_rendered_heatmap_is_the_mean_over_covering_patches(shape):
    grid = PatchGrid.over(*shape, stride=70)
    values = np.random.default_rng(0).random(grid.count)
    np.testing.assert_allclose(grid.render(values), _brute_force(grid, values), atol=1e-6)


def test_a_constant_patch_value_gives_a_constant_heatmap_at_any_scale():
    grid = PatchGrid.over(913, 611, stride=70)
    for scale in (1.0, 0.25, 0.1):
        heatmap = grid.render(np.full(grid.count, 0.37), scale)
        assert heatmap.shape == (round(913 * scale), round(611 * scale))
        np.testing.assert_allclose(heatmap, 0.37, atol=1e-6)
