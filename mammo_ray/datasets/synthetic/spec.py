"""The constants every synthetic image shares, what a `SyntheticSource` (the config's, validated there, once)
means for its images (size, value range, pixel spacing), and the keyed random generators.

Determinism lives here: every random draw of the cohort comes from `keyed_rng(seed, purpose, *keys)`,
a generator keyed by (seed, purpose, patient, breast, view), so an image does not depend on which
other images are generated and the same spec writes byte-identical files.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from mammo_ray.config.sections import SyntheticSource

#: The four images of every exam, in manifest order.
VIEWS: tuple[tuple[str, str], ...] = (("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "MLO"))

Laterality = Literal["L", "R"]
View = Literal["CC", "MLO"]

# Purposes of the keyed random generators (never reorder: it would change every cohort).
RNG_COHORT, RNG_ANATOMY, RNG_FINDING, RNG_TEXTURE = 1, 2, 3, 4
LATERALITY_CODE = {"L": 0, "R": 1}
VIEW_CODE = {"CC": 0, "MLO": 1}
#: Physical height of a synthetic image: pixel spacing = SYNTHETIC_HEIGHT_MM / rows.
SYNTHETIC_HEIGHT_MM = 300.0


def image_shape(source: SyntheticSource) -> tuple[int, int]:
    """(rows, columns) of every image: `columns`, else round(0.8 * rows)."""
    return source.rows, (source.columns if source.columns is not None else round(0.8 * source.rows))


def max_value(source: SyntheticSource) -> int:
    """Largest representable pixel value, 2**bits_stored - 1 (never reached by tissue)."""
    return (1 << source.bits_stored) - 1


def pixel_spacing_mm(source: SyntheticSource) -> float:
    """Square pixel spacing in mm: the image is SYNTHETIC_HEIGHT_MM tall (a 24 x 30 cm detector)."""
    return SYNTHETIC_HEIGHT_MM / source.rows


def keyed_rng(seed: int, purpose: int, *keys: int) -> np.random.Generator:
    """The generator of one purpose (RNG_*) and key (patient, breast, view codes) under `seed`."""
    return np.random.default_rng(np.random.SeedSequence([seed, purpose, *keys]))
