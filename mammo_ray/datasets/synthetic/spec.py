"""The constants every synthetic image shares and the keyed random generators; what to generate is the
config's `SyntheticSource` (validated there, once).

Determinism lives here: every random draw of the cohort comes from `keyed_rng(seed, purpose, *keys)`,
a generator keyed by (seed, purpose, patient, breast, view), so an image does not depend on which
other images are generated and the same spec writes byte-identical files.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

#: The four images of every exam, in manifest order.
VIEWS: tuple[tuple[str, str], ...] = (("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "MLO"))

Laterality = Literal["L", "R"]
View = Literal["CC", "MLO"]

# Purposes of the keyed random generators (never reorder: it would change every cohort).
RNG_COHORT, RNG_ANATOMY, RNG_FINDING, RNG_TEXTURE = 1, 2, 3, 4
LATERALITY_CODE = {"L": 0, "R": 1}
VIEW_CODE = {"CC": 0, "MLO": 1}


def keyed_rng(seed: int, purpose: int, *keys: int) -> np.random.Generator:
    """The generator of one purpose (RNG_*) and key (patient, breast, view codes) under `seed`."""
    return np.random.default_rng(np.random.SeedSequence([seed, purpose, *keys]))
