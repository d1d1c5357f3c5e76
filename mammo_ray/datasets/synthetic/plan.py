"""Who is in the cohort: identifiers and the BI-RADS category of every breast (`cohort_plan`).

Negative breasts are BI-RADS 1, 2 or 3 (INbreast proportions: 2 is the most common), suspicious ones
4a, 4b, 4c, 5 or 6. ``positive_fraction`` of the breasts are suspicious, spread over distinct patients
first.
"""

from __future__ import annotations

from mammo_ray.config.sections import SyntheticSource
from mammo_ray.datasets.synthetic.spec import RNG_COHORT, keyed_rng

DATASET_NAME = "synthetic"
ID_PREFIX = "synth"

# INbreast-like category mixes (negatives: 1 = 67, 2 = 220, 3 = 23 of 310; suspicious mostly 4c/5).
_NEGATIVE_BIRADS = ("1", "2", "3")
_NEGATIVE_WEIGHTS = (0.24, 0.66, 0.10)
_POSITIVE_BIRADS = ("4a", "4b", "4c", "5", "6")
_POSITIVE_WEIGHTS = (0.16, 0.14, 0.22, 0.40, 0.08)
ALL_BIRADS = _NEGATIVE_BIRADS + _POSITIVE_BIRADS


def patient_code(patient_index: int) -> str:
    """Patient part of every identifier: 'P0007'."""
    return f"P{patient_index:04d}"


def image_name(patient_index: int, laterality: str, view: str) -> str:
    """File stem of an image: 'P0007_L_CC'."""
    return f"{patient_code(patient_index)}_{laterality}_{view}"


def cohort_plan(spec: SyntheticSource = SyntheticSource()) -> dict[tuple[int, str], str]:
    """BI-RADS of every breast: {(patient_index, 'L'|'R'): birads}.

    Exactly round(positive_fraction * 2 * patients) breasts are suspicious, spread over distinct
    patients first (a second suspicious breast per patient only once every patient has one).
    """
    rng = keyed_rng(spec.seed, RNG_COHORT)
    n_breasts = 2 * spec.patients
    n_positive = int(round(spec.positive_fraction * n_breasts))
    order = rng.permutation(spec.patients)
    first_side = rng.integers(0, 2, size=spec.patients)
    positives: set[tuple[int, str]] = set()
    for rank in range(n_positive):
        patient = int(order[rank % spec.patients])
        side = ("L", "R")[(first_side[patient] + rank // spec.patients) % 2]
        positives.add((patient, side))
    negative_draws = rng.choice(len(_NEGATIVE_BIRADS), size=n_breasts, p=_NEGATIVE_WEIGHTS)
    positive_draws = rng.choice(len(_POSITIVE_BIRADS), size=n_breasts, p=_POSITIVE_WEIGHTS)
    plan: dict[tuple[int, str], str] = {}
    for patient in range(spec.patients):
        for offset, side in enumerate(("L", "R")):
            k = 2 * patient + offset
            if (patient, side) in positives:
                plan[(patient, side)] = _POSITIVE_BIRADS[positive_draws[k]]
            else:
                plan[(patient, side)] = _NEGATIVE_BIRADS[negative_draws[k]]
    return plan
