"""Patch heatmaps (docs/design.md, "Heatmaps"): the grid of patches over a breast crop, and the heatmaps
rendered from the patches' probabilities.

A heatmap pixel is the mean of the probabilities of every patch covering it, so a heatmap is fully described by
the grid and one probability per patch: that is what a store keeps (a few kilobytes per image instead of the
crop-sized float maps), and `render` draws it at whatever resolution a stage needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PATCH_SIZE = 256
DEFAULT_STRIDE = 70  # the published stride, native pixels


def patch_starts(length: int, patch: int = PATCH_SIZE, stride: int = DEFAULT_STRIDE) -> tuple[int, ...]:
    """Where patches start along an axis of `length` pixels: every `stride` from 0, then one flush with the
    far edge when the strides do not reach it, so every pixel is covered and no step exceeds `stride`.
    An axis shorter than a patch gets one patch at 0 (the crop is padded to a patch at its far edge)."""
    if stride < 1 or patch < 1:
        raise ValueError(f"patch and stride must be positive, got patch={patch}, stride={stride}")
    if length <= patch:
        return (0,)
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return tuple(starts)


@dataclass(frozen=True)
class PatchGrid:
    """The patches over a crop of `height` x `width` pixels: their row and column starts, `patch` wide."""

    height: int
    width: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    patch: int = PATCH_SIZE

    @classmethod
    def over(cls, height: int, width: int, stride: int = DEFAULT_STRIDE, patch: int = PATCH_SIZE) -> PatchGrid:
        return cls(height, width, patch_starts(height, patch, stride), patch_starts(width, patch, stride), patch)

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def corners(self) -> list[tuple[int, int]]:
        """Each patch's (top, left), row-major: the order of the values `render` takes."""
        return [(r, c) for r in self.rows for c in self.cols]

    def render(self, values: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """The heatmap of one value per patch (row-major, as `corners`): float32 (round(height * scale),
        round(width * scale)), each pixel the mean value of the patches covering it. At scale != 1 the patch
        edges move to the nearest pixel of the scaled grid."""
        values = np.asarray(values, dtype=np.float64).reshape(len(self.rows), len(self.cols))
        height, width = max(1, round(self.height * scale)), max(1, round(self.width * scale))
        sums = np.zeros((height + 1, width + 1))
        counts = np.zeros((height + 1, width + 1))
        r0, r1 = self._edges(self.rows, height, scale)
        c0, c1 = self._edges(self.cols, width, scale)
        # Each patch adds its value to a rectangle: four corner updates of a difference array, then two
        # cumulative sums, so drawing costs O(pixels + patches) whatever the overlap.
        for corner_rows, corner_cols, sign in ((r0, c0, 1), (r0, c1, -1), (r1, c0, -1), (r1, c1, 1)):
            rows, cols = np.meshgrid(corner_rows, corner_cols, indexing="ij")
            np.add.at(sums, (rows, cols), sign * values)
            np.add.at(counts, (rows, cols), sign)
        sums = sums.cumsum(0).cumsum(1)[:height, :width]
        counts = counts.cumsum(0).cumsum(1)[:height, :width]
        return (sums / np.maximum(np.rint(counts), 1)).astype(np.float32)

    def _edges(self, starts: tuple[int, ...], length: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
        first = np.minimum(np.rint(np.asarray(starts) * scale).astype(np.int64), length - 1)
        last = np.clip(np.rint((np.asarray(starts) + self.patch) * scale).astype(np.int64), first + 1, length)
        return first, last



@dataclass(frozen=True)
class StoredHeatmaps:
    """One image's heatmaps as a store keeps them: its crop's size, the stride and one benign and one malignant
    probability per patch (row-major, as `PatchGrid.corners`)."""

    crop_height: int
    crop_width: int
    stride: int
    benign: np.ndarray
    malignant: np.ndarray

    def images(self, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(benign, malignant) heatmaps, float32 in [0, 1], the crop's size times `scale`, in the crop's
        orientation (chest wall on the left)."""
        grid = PatchGrid.over(self.crop_height, self.crop_width, stride=self.stride)
        return grid.render(self.benign, scale), grid.render(self.malignant, scale)
