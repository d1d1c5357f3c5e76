"""Seeded random inputs several tests draw the same way: binary labels with both classes, blob masks."""

from __future__ import annotations

import numpy as np


def binary_labels(rng: np.random.Generator, low: int, high: int) -> np.ndarray:
    """Between `low` and `high` 0/1 labels, both classes present (the first two are 0 and 1)."""
    labels = rng.integers(0, 2, int(rng.integers(low, high)))
    labels[:2] = [0, 1]
    return labels


def blob_mask(rng: np.random.Generator, shape: tuple[int, int], axes: tuple[int, int],
              gap: tuple[int, int, int] | None = None) -> np.ndarray:
    """One to four elliptic blobs anywhere in `shape` (semi-axes drawn from `axes`), touching the edges or
    each other by chance; `gap` (lowest start, highest start, width) cuts a vertical gap through them."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for _ in range(rng.integers(1, 5)):
        r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        a, b = rng.integers(*axes, size=2)
        mask |= ((rows - r) / a) ** 2 + ((cols - c) / b) ** 2 <= 1.0
    if gap is not None:
        mask[:, rng.integers(gap[0], gap[1]):][:, : gap[2]] = False
    return mask
