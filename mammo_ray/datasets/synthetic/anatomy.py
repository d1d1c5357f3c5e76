"""The random parameters of one breast: its shape and composition (`Breast`) and its finding (`Finding`).

Drawn in a fixed order from generators keyed by (seed, patient, breast), so both views of a breast
share them, and a breast's finding sits at the same place whatever its BI-RADS:

==========  ==============================================================================
BI-RADS     finding (visible in both views of the breast, at consistent depth)
==========  ==============================================================================
1           none
2           a few coarse round benign calcifications, or a small circumscribed oval mass
3           a small circumscribed round mass
4a/4b/4c    an irregular mass of increasing size and irregularity (+ microcalcifications
            for 4b/4c)
5/6         a larger spiculated dense mass (sometimes with microcalcifications)
==========  ==============================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mammo_ray.datasets.synthetic.plan import ALL_BIRADS
from mammo_ray.datasets.synthetic.spec import (
    LATERALITY_CODE,
    RNG_ANATOMY,
    RNG_FINDING,
    keyed_rng,
)


@dataclass(frozen=True)
class Breast:
    """Shape and composition of one breast (shared by its CC and MLO views)."""

    depth: float  # CC nipple distance from the chest wall, fraction of the width
    half_height: float  # CC half extent along the chest wall, fraction of the rows
    centre: float  # CC row of the nipple axis, fraction of the rows
    wobble: tuple[float, ...]  # outline perturbation: (amplitude, phase) pairs for k = 2..5
    glandular_fraction: float  # share of the breast that is fibroglandular (BI-RADS density)
    mlo_tilt: float  # radians, nipple axis pointing down-right in MLO
    mlo_top: float  # MLO row of the axis origin on the chest wall, fraction of the rows
    pectoral_width: float  # MLO pectoral triangle along the top edge, fraction of the width
    pectoral_height: float  # along the chest wall, fraction of the rows
    exposure: float  # overall gain of the presentation curve


#: Upper bounds of the glandular fraction of BI-RADS density A, B and C (above the last: D); the patient-level
#: draws 0.12 / 0.30 / 0.50 / 0.72 fall one in each band.
DENSITY_BOUNDS: tuple[float, float, float] = (0.21, 0.40, 0.61)


def density_category(breast: Breast) -> str:
    """The breast's BI-RADS density A-D, from its glandular fraction."""
    return "ABCD"[sum(breast.glandular_fraction > bound for bound in DENSITY_BOUNDS)]


def draw_breast(seed: int, patient_index: int, laterality: str) -> Breast:
    patient = keyed_rng(seed, RNG_ANATOMY, patient_index)
    depth = patient.uniform(0.58, 0.80)
    half_height = patient.uniform(0.33, 0.42)
    density = patient.choice([0.12, 0.30, 0.50, 0.72], p=[0.15, 0.40, 0.35, 0.10])
    tilt = patient.uniform(0.38, 0.58)
    pect_w = patient.uniform(0.28, 0.42)
    pect_h = patient.uniform(0.38, 0.58)
    exposure = patient.uniform(0.94, 1.06)
    # The two breasts of a woman are alike but not identical.
    side = keyed_rng(seed, RNG_ANATOMY, patient_index, LATERALITY_CODE[laterality])
    jitter = side.uniform(0.96, 1.04, size=6)
    wobble = tuple(
        float(v) for _ in range(4) for v in (side.uniform(0.0, 0.035), side.uniform(0, 2 * math.pi))
    )
    return Breast(
        depth=float(min(depth * jitter[0], 0.85)),
        half_height=float(half_height * jitter[1]),
        centre=float(side.uniform(0.47, 0.53)),
        wobble=wobble,
        glandular_fraction=float(np.clip(density * jitter[2] + side.uniform(-0.04, 0.04), 0.05, 0.85)),
        mlo_tilt=float(tilt * jitter[3]),
        mlo_top=float(side.uniform(0.36, 0.42)),
        pectoral_width=float(pect_w * jitter[4]),
        pectoral_height=float(pect_h * jitter[5]),
        exposure=float(exposure * side.uniform(0.98, 1.02)),
    )


@dataclass(frozen=True)
class Finding:
    """The finding of one breast, in millimetres and breast coordinates."""

    kind: Literal["none", "calcifications", "oval", "round", "irregular", "spiculated"]
    radius_mm: float = 0.0
    aspect: float = 1.0  # long / short axis
    irregularity: float = 0.0  # amplitude of the angular modulation of the outline
    edge_mm: float = 0.5  # width of the margin (sharp = circumscribed)
    contrast: float = 0.0  # added attenuation at the centre
    spicules: int = 0
    micro_calcifications: int = 0
    coarse_calcifications: int = 0
    u: float = 0.5  # depth along the chest-wall -> nipple axis, 0..1 (same in both views)
    v_cc: float = 0.0  # offset across the axis in CC, -1..1 of the local half width
    v_mlo: float = 0.0  # offset across the axis in MLO
    seed: int = 0  # fine shape details (outline harmonics, spicule angles, calcification spots)


def draw_finding(seed: int, patient_index: int, laterality: str, birads: str) -> Finding:
    """The finding of a breast: location and shape draws do not depend on the BI-RADS."""
    rng = keyed_rng(seed, RNG_FINDING, patient_index, LATERALITY_CODE[laterality])
    u, v_cc, v_mlo = rng.uniform(0.25, 0.72), rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5)
    size, shape, contrast, count = rng.uniform(size=4)
    benign_kind = rng.uniform()
    detail_seed = int(rng.integers(0, 2**31 - 1))
    common = {"u": float(u), "v_cc": float(v_cc), "v_mlo": float(v_mlo), "seed": detail_seed}

    def lerp(lo: float, hi: float, t: float) -> float:
        return float(lo + (hi - lo) * t)

    if birads == "1":
        return Finding(kind="none", **common)
    if birads == "2":
        if benign_kind < 0.5:
            return Finding(
                kind="calcifications", coarse_calcifications=int(3 + 4 * count),
                contrast=lerp(0.16, 0.24, contrast), radius_mm=lerp(18, 30, size), **common,
            )
        return Finding(
            kind="oval", radius_mm=lerp(3.0, 4.5, size), aspect=lerp(1.4, 1.8, shape), edge_mm=0.4,
            contrast=lerp(0.10, 0.15, contrast), **common,
        )
    if birads == "3":
        return Finding(
            kind="round", radius_mm=lerp(4.0, 6.0, size), aspect=lerp(1.0, 1.2, shape), edge_mm=0.4,
            contrast=lerp(0.12, 0.17, contrast), **common,
        )
    if birads in ("4a", "4b", "4c", "4"):
        level = {"4": 0, "4a": 0, "4b": 1, "4c": 2}[birads]
        return Finding(
            kind="irregular",
            radius_mm=lerp(6.5, 9.0, size) + 2.0 * level,
            aspect=lerp(1.0, 1.4, shape),
            irregularity=0.14 + 0.07 * level,
            edge_mm=1.2 + 0.4 * level,
            contrast=lerp(0.24, 0.30, contrast) + 0.03 * level,
            micro_calcifications=0 if level == 0 else int(4 + 4 * level + 4 * count),
            **common,
        )
    if birads in ("5", "6"):
        return Finding(
            kind="spiculated",
            radius_mm=lerp(10.0, 14.0, size) + (2.5 if birads == "6" else 0.0),
            aspect=lerp(1.0, 1.3, shape),
            irregularity=0.18,
            edge_mm=1.5,
            contrast=lerp(0.36, 0.44, contrast),
            spicules=int(9 + 8 * shape),
            micro_calcifications=int(12 * count) if count > 0.5 else 0,
            **common,
        )
    raise ValueError(
        f"unsupported BI-RADS {birads!r} for a synthetic image (use one of {', '.join(ALL_BIRADS)})"
    )
