"""A deterministic synthetic screening cohort: DICOM MG files plus their manifest.

This is the study's embedded default (it needs no network and no data) and the fixture of most
tests, so it is small and fast: the default cohort (24 patients x 4 views at 512 rows) is written in
a few seconds on two cores.

What it makes
-------------
Every patient has one screening exam with four images, L-CC, R-CC, L-MLO and R-MLO. Each breast
has one BI-RADS category shared by its two views. Negative breasts are BI-RADS 1, 2 or 3 (INbreast
proportions: 2 is the most common), suspicious ones 4a, 4b, 4c, 5 or 6. ``positive_fraction`` is
the share of *breasts* (hence of images, hence of positive labels) with a suspicious finding, 0.25
by default as in INbreast (100 of 410 images). Suspicious breasts go to distinct patients while
there are enough of them, so with the default half of the patients have one suspicious breast.

Images follow DESIGN.md §4's expectations of a "for presentation" mammogram: MONOCHROME2, zero
background (exactly 0 outside the breast, every breast pixel >= 1), the chest wall on the image
edge (column 0 for left breasts, the last column for right breasts, which are mirror images), a
half-elliptic outline in CC, a longer, tilted outline with a brighter pectoral muscle in the top
chest-wall corner in MLO, smooth fibroglandular texture converging on the nipple, a darker periphery
and a skin line. Findings follow the BI-RADS category:

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

The intensity of tissue is mapped through a soft (tanh) tone curve, so nothing saturates at the
maximum value: a classifier has to see the lesion, not a clipped artefact.

Determinism: every random draw comes from a generator keyed by (seed, purpose, patient, breast,
view), so an image does not depend on which other images are generated, the same spec writes
byte-identical files, and a breast's finding sits at the same place whatever its BI-RADS.

Public API: :class:`CohortSpec`, :func:`generate_cohort`, :func:`generate_image`,
:func:`synthetic_dicom_bytes`, :func:`cohort_plan`, :func:`image_name`.
"""

from __future__ import annotations

import io
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import pandas as pd
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_encoder
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid
from scipy import fft as sfft
from scipy import ndimage

from mammo_ray import storage
from mammo_ray.datasets.manifest import label_from_birads, normalise_birads, write_manifest
from mammo_ray.errors import ConfigError

__all__ = [
    "DATASET_NAME",
    "VIEWS",
    "CohortSpec",
    "cohort_plan",
    "generate_cohort",
    "generate_image",
    "image_name",
    "synthetic_dicom_bytes",
]

DATASET_NAME = "synthetic"
ID_PREFIX = "synth"
#: The four images of every exam, in manifest order.
VIEWS: tuple[tuple[str, str], ...] = (("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "MLO"))

Laterality = Literal["L", "R"]
View = Literal["CC", "MLO"]
TransferSyntax = Literal["explicit", "rle"]

DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
#: Physical height of the image (a 24 x 30 cm detector): pixel spacing = IMAGE_HEIGHT_MM / rows.
IMAGE_HEIGHT_MM = 300.0

# INbreast-like category mixes (negatives: 1 = 67, 2 = 220, 3 = 23 of 310; suspicious mostly 4c/5).
_NEGATIVE_BIRADS = ("1", "2", "3")
_NEGATIVE_WEIGHTS = (0.24, 0.66, 0.10)
_POSITIVE_BIRADS = ("4a", "4b", "4c", "5", "6")
_POSITIVE_WEIGHTS = (0.16, 0.14, 0.22, 0.40, 0.08)
_ALL_BIRADS = _NEGATIVE_BIRADS + _POSITIVE_BIRADS

# Purposes of the keyed random generators (never reorder: it would change every cohort).
_RNG_COHORT, _RNG_ANATOMY, _RNG_FINDING, _RNG_TEXTURE = 1, 2, 3, 4
_LATERALITY_CODE = {"L": 0, "R": 1}
_VIEW_CODE = {"CC": 0, "MLO": 1}
# SNOMED CT view codes (DICOM CID 4014).
_VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}


@dataclass(frozen=True)
class CohortSpec:
    """What to generate. Every field has a default; the same spec always gives the same bytes.

    Attributes:
        patients: number of patients (one exam of four images each).
        seed: non-negative seed of every random draw (anatomy, findings, texture, UIDs).
        rows: image height in pixels (at least 64).
        columns: image width in pixels; None means round(0.8 * rows), a mammogram's aspect.
        positive_fraction: share of breasts (= images = positive labels) with a suspicious
            finding, BI-RADS 4a..6; 0.25 is INbreast's share.
        bits_stored: DICOM Bits Stored (8..16); pixel values lie in [1, 2**bits_stored - 2]
            inside the breast (the maximum is never reached) and are 0 outside.
        transfer_syntax: "explicit" (Explicit VR Little Endian, uncompressed) or "rle"
            (RLE Lossless).
    """

    patients: int = 24
    seed: int = 0
    rows: int = 512
    columns: int | None = None
    positive_fraction: float = 0.25
    bits_stored: int = 14
    transfer_syntax: TransferSyntax = "explicit"

    def __post_init__(self) -> None:
        def fail(key: str, reason: str) -> None:
            raise ConfigError(f"synthetic.{key}", reason)

        if not isinstance(self.patients, int) or isinstance(self.patients, bool) or self.patients < 1:
            fail("patients", f"must be a positive integer, got {self.patients!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            fail("seed", f"must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.rows, int) or isinstance(self.rows, bool) or self.rows < 64:
            fail("rows", f"must be an integer >= 64, got {self.rows!r}")
        if self.columns is not None and (
            not isinstance(self.columns, int) or isinstance(self.columns, bool) or self.columns < 48
        ):
            fail("columns", f"must be None or an integer >= 48, got {self.columns!r}")
        if not isinstance(self.positive_fraction, (int, float)) or not 0.0 <= self.positive_fraction <= 1.0:
            fail("positive_fraction", f"must be between 0 and 1, got {self.positive_fraction!r}")
        if not isinstance(self.bits_stored, int) or not 8 <= self.bits_stored <= 16:
            fail("bits_stored", f"must be an integer from 8 to 16, got {self.bits_stored!r}")
        if self.transfer_syntax not in ("explicit", "rle"):
            fail("transfer_syntax", f"must be 'explicit' or 'rle', got {self.transfer_syntax!r}")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of every image."""
        return self.rows, (self.columns if self.columns is not None else round(0.8 * self.rows))

    @property
    def max_value(self) -> int:
        """Largest representable pixel value, 2**bits_stored - 1 (never reached by tissue)."""
        return (1 << self.bits_stored) - 1

    @property
    def pixel_spacing_mm(self) -> float:
        """Square pixel spacing in mm (the image is IMAGE_HEIGHT_MM tall)."""
        return IMAGE_HEIGHT_MM / self.rows


# --------------------------------------------------------------------------------------------
# Identifiers and the cohort plan
# --------------------------------------------------------------------------------------------


def _patient_code(patient_index: int) -> str:
    return f"P{patient_index:04d}"


def image_name(patient_index: int, laterality: str, view: str) -> str:
    """File stem of an image: 'P0007_L_CC'."""
    return f"{_patient_code(patient_index)}_{laterality}_{view}"


def _rng(seed: int, purpose: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, purpose, *keys]))


def cohort_plan(spec: CohortSpec = CohortSpec()) -> dict[tuple[int, str], str]:
    """BI-RADS of every breast: {(patient_index, 'L'|'R'): birads}.

    Exactly round(positive_fraction * 2 * patients) breasts are suspicious, spread over distinct
    patients first (a second suspicious breast per patient only once every patient has one).
    """
    rng = _rng(spec.seed, _RNG_COHORT)
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


# --------------------------------------------------------------------------------------------
# Anatomy and findings (random parameters, drawn in a fixed order)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Breast:
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


def _breast(seed: int, patient_index: int, laterality: str) -> _Breast:
    patient = _rng(seed, _RNG_ANATOMY, patient_index)
    depth = patient.uniform(0.58, 0.80)
    half_height = patient.uniform(0.33, 0.42)
    density = patient.choice([0.12, 0.30, 0.50, 0.72], p=[0.15, 0.40, 0.35, 0.10])
    tilt = patient.uniform(0.38, 0.58)
    pect_w = patient.uniform(0.28, 0.42)
    pect_h = patient.uniform(0.38, 0.58)
    exposure = patient.uniform(0.94, 1.06)
    # The two breasts of a woman are alike but not identical.
    side = _rng(seed, _RNG_ANATOMY, patient_index, _LATERALITY_CODE[laterality])
    jitter = side.uniform(0.96, 1.04, size=6)
    wobble = tuple(
        float(v) for _ in range(4) for v in (side.uniform(0.0, 0.035), side.uniform(0, 2 * math.pi))
    )
    return _Breast(
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
class _Finding:
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


def _finding(seed: int, patient_index: int, laterality: str, birads: str) -> _Finding:
    """The finding of a breast: location and shape draws do not depend on the BI-RADS."""
    rng = _rng(seed, _RNG_FINDING, patient_index, _LATERALITY_CODE[laterality])
    u, v_cc, v_mlo = rng.uniform(0.25, 0.72), rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5)
    size, shape, contrast, count = rng.uniform(size=4)
    benign_kind = rng.uniform()
    detail_seed = int(rng.integers(0, 2**31 - 1))
    common = {"u": float(u), "v_cc": float(v_cc), "v_mlo": float(v_mlo), "seed": detail_seed}
    lerp = lambda lo, hi, t: float(lo + (hi - lo) * t)  # noqa: E731
    if birads == "1":
        return _Finding(kind="none", **common)
    if birads == "2":
        if benign_kind < 0.5:
            return _Finding(
                kind="calcifications", coarse_calcifications=int(3 + 4 * count),
                contrast=lerp(0.16, 0.24, contrast), radius_mm=lerp(18, 30, size), **common,
            )
        return _Finding(
            kind="oval", radius_mm=lerp(3.0, 4.5, size), aspect=lerp(1.4, 1.8, shape), edge_mm=0.4,
            contrast=lerp(0.10, 0.15, contrast), **common,
        )
    if birads == "3":
        return _Finding(
            kind="round", radius_mm=lerp(4.0, 6.0, size), aspect=lerp(1.0, 1.2, shape), edge_mm=0.4,
            contrast=lerp(0.12, 0.17, contrast), **common,
        )
    if birads in ("4a", "4b", "4c", "4"):
        level = {"4": 0, "4a": 0, "4b": 1, "4c": 2}[birads]
        return _Finding(
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
        return _Finding(
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
        f"unsupported BI-RADS {birads!r} for a synthetic image (use one of {', '.join(_ALL_BIRADS)})"
    )


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 + 0.5 * np.tanh(0.5 * x)).astype(np.float32)


@lru_cache(maxsize=8)
def _noise_gains(grid: tuple[int, int], rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spectral gains of the coarse, medium and fine fields on an rfft2 grid (cycles per image height)."""
    fy = (sfft.fftfreq(grid[0]) * rows).astype(np.float32)[:, None]
    fx = (sfft.rfftfreq(grid[1]) * rows).astype(np.float32)[None, :]
    freq = np.sqrt(fy * fy + fx * fx)
    coarse = np.exp(-((freq / np.float32(4.0)) ** 2))
    medium = np.exp(-((freq / np.float32(14.0)) ** 2)) * (freq > 2.0)
    fine = np.maximum(freq, np.float32(1.5)) ** np.float32(-1.4) * (freq > 6.0)  # ~1/f^2.8 power spectrum
    for gain in (coarse, medium, fine):
        gain.setflags(write=False)
    return coarse, medium, fine


def _noise_fields(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Coarse, medium and fine (power-law) random fields from one white noise, each zero mean and unit
    std, and the white noise itself (for quantum noise).

    Frequencies are in cycles per image height, so the texture looks the same at every size.
    """
    rows, cols = shape
    grid = (sfft.next_fast_len(rows, real=True), sfft.next_fast_len(cols, real=True))
    white = rng.standard_normal(grid, dtype=np.float32)
    spectrum = sfft.rfft2(white)

    def field(gain: np.ndarray) -> np.ndarray:
        values = sfft.irfft2(spectrum * gain, s=grid)[:rows, :cols]
        values = values - values.mean()
        std = float(values.std())
        return (values / std if std > 0 else values).astype(np.float32, copy=False)

    coarse, medium, fine = (field(gain) for gain in _noise_gains(grid, rows))
    return coarse, medium, fine, white[:rows, :cols]


def _angle_noise(rng: np.random.Generator, samples: int, smooth: float) -> np.ndarray:
    """A smooth periodic random function sampled on [0, 2 pi) (zero mean, unit std)."""
    values = ndimage.gaussian_filter1d(rng.standard_normal(samples), smooth, mode="wrap")
    return ((values - values.mean()) / values.std()).astype(np.float32)


def _periodic_lookup(angles: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values (a periodic function sampled on [0, 2 pi)) at `angles`, nearest sample."""
    index = np.rint(angles * np.float32(len(values) / (2 * math.pi))).astype(np.int64)
    return np.take(values, index, mode="wrap")


@dataclass(frozen=True)
class _Geometry:
    """Where a breast lies in a view (left-breast orientation), in pixels."""

    origin_x: float  # the nipple axis starts on the chest wall here
    origin_y: float
    tilt: float  # radians, the axis points down-right
    along: float  # semi-axis along the nipple axis
    across_lower: float  # semi-axis across it, below the axis (w > 0)
    across_upper: float  # ... above it (w < 0), towards the axilla in MLO

    def across(self, w: np.ndarray | float) -> np.ndarray | float:
        return np.where(w < 0, self.across_upper, self.across_lower) if isinstance(w, np.ndarray) else (
            self.across_upper if w < 0 else self.across_lower)


def _view_geometry(breast: _Breast, view: str, shape: tuple[int, int]) -> _Geometry:
    rows, cols = shape
    if view == "CC":
        half = breast.half_height * rows
        return _Geometry(0.0, breast.centre * rows, 0.0, breast.depth * cols, half, half)
    # MLO: more tissue is imaged, the axis is tilted, the outline reaches the axilla (top edge)
    # and the inframammary fold (bottom).
    along, lower = breast.depth * cols * 1.06, (breast.half_height + 0.12) * rows
    upper = 0.85 * lower
    sin_t, cos_t = math.sin(breast.mlo_tilt), math.cos(breast.mlo_tilt)
    # Extent of the outline along the chest wall (column 0), above and below the axis origin.
    reach_up = 1.0 / math.hypot(sin_t / along, cos_t / upper)
    reach_down = 1.0 / math.hypot(sin_t / along, cos_t / lower)
    # The tissue reaches the top edge (axilla, pectoral corner) but stops above the bottom edge.
    origin_y = min(breast.mlo_top * rows, 0.85 * reach_up, 0.97 * rows - reach_down)
    return _Geometry(0.0, origin_y, breast.mlo_tilt, along, lower, upper)


def _render_left(
    breast: _Breast, finding: _Finding, view: str, spec: CohortSpec, rng: np.random.Generator
) -> np.ndarray:
    """The image of a left breast (chest wall at column 0), as uint16."""
    rows, cols = shape = spec.shape
    mm = 1.0 / spec.pixel_spacing_mm  # pixels per millimetre
    yy = np.arange(rows, dtype=np.float32)[:, None]
    xx = np.arange(cols, dtype=np.float32)[None, :]
    geometry = _view_geometry(breast, view, shape)
    ox, oy, a_len = geometry.origin_x, geometry.origin_y, geometry.along
    cos_t, sin_t = math.cos(geometry.tilt), math.sin(geometry.tilt)
    s = (xx - ox) * cos_t + (yy - oy) * sin_t  # along the nipple axis
    w = -(xx - ox) * sin_t + (yy - oy) * cos_t  # across it
    b_len = geometry.across(w).astype(np.float32)

    # Outline: an ellipse anchored at the chest wall, perturbed by a few low harmonics.
    theta = np.arctan2(w / b_len, np.maximum(s, 0.0) / a_len)
    table_angles = np.arange(2048) * (2 * math.pi / 2048)
    table = 1.0 + sum(
        breast.wobble[2 * k] * np.cos((k + 2) * table_angles + breast.wobble[2 * k + 1]) for k in range(4)
    )
    scale = _periodic_lookup(theta, table.astype(np.float32))
    ellipse = np.sqrt((s / a_len) ** 2 + (w / b_len) ** 2)
    radius = ellipse / scale
    mask = radius <= 1.0

    # Distance to the skin in mm, to first order: (1 - radius) / |grad radius|. The image edges
    # (chest wall, axilla) are no skin, and only the first ~15 mm matter.
    gradient = np.sqrt((s / (a_len * a_len)) ** 2 + (w / (b_len * b_len)) ** 2)
    gradient /= np.maximum(ellipse * scale, 1e-6)
    distance = (1.0 - radius) / np.maximum(gradient, 1e-6) / mm
    falloff_mm = 14.0
    rim = np.clip(distance / falloff_mm, 0.0, 1.0)
    thickness = 0.42 + 0.58 * np.sqrt(1.0 - (1.0 - rim) ** 2)  # compressed breast: flat, rounded rim
    skin = np.exp(-((distance - 0.9) / 0.7) ** 2) * 0.05

    # Random fields from one white-noise spectrum, filtered at several scales.
    coarse, medium, fine, white = _noise_fields(rng, shape)

    # Fibroglandular tissue: concentrated behind the nipple, streaks converging on it.
    nipple_x, nipple_y = ox + a_len * cos_t, oy + a_len * sin_t
    axis_pos = s / a_len
    envelope = np.exp(-(((axis_pos - 0.38) / 0.38) ** 2) - (w / (0.75 * b_len)) ** 2)
    envelope *= np.clip(distance / 6.0, 0.0, 1.0)  # the subcutaneous fat is not glandular
    # Ducts and ligaments: a random function of the angle seen from the nipple, gently warped.
    streak_values = _angle_noise(rng, 4096, 10.0)
    angle = np.arctan2(yy - nipple_y, nipple_x - xx) + 0.012 * medium
    from_nipple = np.clip(np.hypot(xx - nipple_x, yy - nipple_y) / (0.35 * a_len), 0.0, 1.0)
    streaks = _periodic_lookup(angle, streak_values) * from_nipple * (0.6 + 0.4 * np.tanh(coarse))
    glandular_score = 1.0 * coarse + 0.45 * medium + 0.35 * streaks + 2.4 * envelope
    inside = glandular_score[mask]
    threshold = float(np.quantile(inside, 1.0 - breast.glandular_fraction)) if inside.size else 0.0
    glandular = _sigmoid((glandular_score - threshold) * 1.1)

    tissue = 0.22 + 0.34 * glandular + (0.012 + 0.03 * glandular) * fine + 0.012 * medium

    if view == "MLO":
        weight, level = _pectoral(breast, shape, xx, yy, rng, mm)
        tissue = tissue * (1.0 - weight) + level * weight

    tissue = tissue + _lesion(finding, view, breast, shape, mm)
    intensity = tissue * thickness + skin
    intensity += white * np.float32(0.006)  # quantum noise

    # Presentation curve: soft, monotonic, never reaching the maximum value.
    top = spec.max_value - 1
    values = 1.0 + top * np.tanh(np.maximum(intensity, 0.0) * 1.25 * breast.exposure)
    pixels = np.clip(np.rint(values), 1, spec.max_value - 1).astype(np.uint16)
    pixels[~mask] = 0
    return pixels


def _pectoral(breast: _Breast, shape: tuple[int, int], xx: np.ndarray, yy: np.ndarray,
              rng: np.random.Generator, mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The pectoral muscle of an MLO, a bright slightly convex triangle in the top chest-wall corner.

    Returns (weight, level): the share of muscle in each pixel (0..1) and the muscle's attenuation.
    """
    rows, cols = shape
    width, height = breast.pectoral_width * cols, breast.pectoral_height * rows
    fx, fy = xx / width, yy / height
    edge = (fx ** 1.15 + fy ** 1.15) - 1.0  # < 0 inside the muscle
    depth_px = -edge * min(width, height) / math.hypot(1.0, min(width, height) / max(width, height))
    weight = _sigmoid(depth_px / (1.2 * mm))
    # Fibres run along the front edge: faint striations vary across it.
    fibre_values = _angle_noise(rng, 1024, 12.0)
    striation = _periodic_lookup((fx - fy) * np.float32(0.8 * math.pi), fibre_values)
    level = 0.64 + 0.06 * np.clip(-edge, 0.0, 1.0) + 0.015 * striation
    return weight, level.astype(np.float32)


def _lesion_centre(
    finding: _Finding, view: str, breast: _Breast, shape: tuple[int, int]
) -> tuple[float, float]:
    g = _view_geometry(breast, view, shape)
    v = finding.v_cc if view == "CC" else finding.v_mlo
    s = finding.u * g.along
    w = v * float(g.across(v)) * math.sqrt(max(1.0 - finding.u ** 2, 0.0))
    cos_t, sin_t = math.cos(g.tilt), math.sin(g.tilt)
    return g.origin_x + s * cos_t - w * sin_t, g.origin_y + s * sin_t + w * cos_t


def _lesion(finding: _Finding, view: str, breast: _Breast, shape: tuple[int, int], mm: float) -> np.ndarray:
    """Added attenuation of the breast's finding in this view (0 where there is none)."""
    rows, cols = shape
    out = np.zeros(shape, dtype=np.float32)
    if finding.kind == "none":
        return out
    cx, cy = _lesion_centre(finding, view, breast, shape)
    detail = np.random.default_rng(np.random.SeedSequence([finding.seed, _VIEW_CODE[view]]))
    shape_rng = np.random.default_rng(np.random.SeedSequence([finding.seed]))  # same in both views
    radius = finding.radius_mm * mm
    reach = radius * (3.2 if finding.kind == "spiculated" else 1.6) + 3.0 * mm + 3.0
    if finding.kind == "calcifications":
        reach = radius + 3.0
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, rows)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, cols)
    if y0 >= y1 or x0 >= x1:
        return out
    ly, lx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = ly - cy, lx - cx
    patch = out[y0:y1, x0:x1]

    if finding.kind == "calcifications":
        patch += _calcifications(dx, dy, detail, finding.coarse_calcifications, radius,
                                 size_mm=(1.0, 2.2), contrast=finding.contrast, mm=mm)
        return out

    # Mass body: an ellipse whose outline is modulated by a few harmonics (fixed per breast).
    orientation = shape_rng.uniform(0, math.pi) + (0.3 if view == "MLO" else 0.0)
    cos_o, sin_o = math.cos(orientation), math.sin(orientation)
    major = dx * cos_o + dy * sin_o
    minor = (-dx * sin_o + dy * cos_o) * finding.aspect
    rho = np.sqrt(major ** 2 + minor ** 2) + 1e-6
    phi = np.arctan2(minor, major)
    outline = np.ones_like(rho)
    if finding.irregularity > 0:
        harmonics = shape_rng.uniform(0.4, 1.0, size=5) * finding.irregularity / 2.0
        phases = shape_rng.uniform(0, 2 * math.pi, size=5)
        for k, (amp, phase) in enumerate(zip(harmonics, phases), start=2):
            outline += amp * np.cos(k * phi + phase)
    r_norm = rho / (radius * np.maximum(outline, 0.3))
    edge = max(finding.edge_mm * mm, 0.35)
    body = _sigmoid((1.0 - r_norm) * radius / edge)
    dome = np.sqrt(np.clip(1.0 - 0.55 * r_norm ** 2, 0.0, 1.0))
    mass = finding.contrast * body * (0.55 + 0.45 * dome)

    if finding.kind == "spiculated":
        count = finding.spicules
        angles = shape_rng.uniform(0, 2 * math.pi, size=count)
        lengths = radius * shape_rng.uniform(2.0, 3.4, size=count)
        bends = shape_rng.uniform(-0.25, 0.25, size=count)  # radians of drift per mass radius
        width = max(0.6 * mm, 0.5)
        spic = np.zeros_like(rho)
        angle_pix = np.arctan2(dy, dx)
        rho_pix = np.sqrt(dx ** 2 + dy ** 2)
        start = 0.6 * radius
        for angle, length, bend in zip(angles, lengths, bends):
            course = angle + bend * (rho_pix - start) / radius
            delta = np.mod(angle_pix - course + math.pi, 2 * math.pi) - math.pi
            across = np.abs(delta) * rho_pix
            progress = np.clip((rho_pix - start) / (length - start), 0.0, 1.0)
            taper = width * (1.3 - 0.9 * progress)
            line = np.exp(-((across / taper) ** 2)) * (1.0 - progress) * (rho_pix > start)
            spic = np.maximum(spic, line)
        mass = np.maximum(mass, finding.contrast * 0.55 * spic)

    patch += mass
    if finding.micro_calcifications:
        patch += _calcifications(dx, dy, detail, finding.micro_calcifications, radius * 0.9,
                                 size_mm=(0.35, 0.7), contrast=0.16, mm=mm)
    return out


def _calcifications(dx: np.ndarray, dy: np.ndarray, rng: np.random.Generator, count: int, spread: float,
                    size_mm: tuple[float, float], contrast: float, mm: float) -> np.ndarray:
    """Small bright round spots (gaussian blobs, at least about a pixel wide)."""
    spots = np.zeros_like(dx)
    for _ in range(count):
        r = spread * math.sqrt(rng.uniform())
        a = rng.uniform(0, 2 * math.pi)
        true_sigma = rng.uniform(*size_mm) * mm / 2.0
        sigma = max(true_sigma, 0.6)
        # Sub-pixel spots are spread over about a pixel, dimmer but still distinct.
        peak = contrast * min(1.0, (true_sigma / sigma) ** 2 + 0.4)
        spots = np.maximum(spots, peak * np.exp(-((dx - r * math.cos(a)) ** 2 + (dy - r * math.sin(a)) ** 2)
                                               / (2 * sigma * sigma)))
    return spots


def generate_image(patient_index: int, laterality: Laterality, view: View, birads: str,
                   spec: CohortSpec = CohortSpec()) -> np.ndarray:
    """One synthetic mammogram, a uint16 array of shape spec.shape; the same arguments give the same array.

    Zero outside the breast, within [1, 2**bits_stored - 2] inside it. Left breasts have the chest
    wall at column 0, right breasts are mirrored (chest wall at the last column). The texture and the
    finding's location depend on (spec.seed, patient_index, laterality, view) only, so the same
    breast with another BI-RADS differs only by its finding.
    """
    if laterality not in _LATERALITY_CODE:
        raise ValueError(f"laterality must be 'L' or 'R', got {laterality!r}")
    if view not in _VIEW_CODE:
        raise ValueError(f"view must be 'CC' or 'MLO', got {view!r}")
    if not isinstance(patient_index, (int, np.integer)) or patient_index < 0:
        raise ValueError(f"patient_index must be a non-negative integer, got {patient_index!r}")
    patient_index = int(patient_index)
    category = normalise_birads(birads)
    if category is None or category == "0":
        raise ValueError(f"a synthetic image needs a BI-RADS from 1 to 6, got {birads!r}")
    breast = _breast(spec.seed, patient_index, laterality)
    finding = _finding(spec.seed, patient_index, laterality, category)
    rng = _rng(spec.seed, _RNG_TEXTURE, patient_index, _LATERALITY_CODE[laterality], _VIEW_CODE[view])
    pixels = _render_left(breast, finding, view, spec, rng)
    if laterality == "R":
        pixels = np.ascontiguousarray(pixels[:, ::-1])
    return pixels


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def _uid(spec: CohortSpec, *parts: str) -> str:
    return generate_uid(entropy_srcs=["mammo-ray-synthetic", str(spec.seed), *parts])


def _patient_orientation(laterality: str, view: str) -> list[str]:
    # Row direction: towards the nipple (A) for left breasts (chest wall at column 0), P for right.
    # Column direction: CC images have the lateral side up, MLO images run towards the feet.
    row = "A" if laterality == "L" else "P"
    if view == "CC":
        return [row, "R" if laterality == "L" else "L"]
    return [row, "F"]


def _window(pixels: np.ndarray) -> tuple[str, str]:
    """(WindowCenter, WindowWidth) of a linear window spanning the whole tissue range.

    Its lower edge sits just below the darkest breast pixel, so that a viewer (or a decoder applying
    the VOI LUT before cropping, DESIGN.md §4) keeps the background at 0 and every breast pixel
    above it; its upper edge is the brightest pixel, so no finding is clipped.
    """
    inside = pixels[pixels > 0]
    low = int(inside.min()) - 1 if inside.size else 0
    high = int(inside.max()) if inside.size else 1
    # DICOM linear window: x <= c - 0.5 - (w - 1) / 2 -> minimum, x > c - 0.5 + (w - 1) / 2 -> maximum.
    width = high - low + 1
    center = (low + high + 1) / 2.0
    return f"{center:g}", str(width)


def _encode_rle(pixels: np.ndarray) -> bytes:
    """RLE Lossless encapsulated pixel data (one frame of 16-bit words).

    pylibjpeg-rle (fast) is used when installed, pydicom's own encoder otherwise; both write the
    same PackBits segments, so the bytes do not depend on which one ran (tested). The encoders are
    told Bits Stored = 16: the segments only depend on Bits Allocated, and both encoders mis-size
    16-bit frames whose Bits Stored is 8 or less.
    """
    encoder = get_encoder(RLELossless)
    options = {
        "rows": pixels.shape[0], "columns": pixels.shape[1], "samples_per_pixel": 1, "bits_allocated": 16,
        "bits_stored": 16, "pixel_representation": 0, "photometric_interpretation": "MONOCHROME2",
        "number_of_frames": 1,
    }
    try:
        return encapsulate([encoder.encode(pixels, encoding_plugin="pylibjpeg", **options)])
    except (RuntimeError, ValueError, ImportError):
        pass  # not installed: the reference encoder below writes the same bytes
    return encapsulate([encoder.encode(pixels, encoding_plugin="pydicom", **options)])


def synthetic_dicom_bytes(
    pixels: np.ndarray,
    *,
    patient_id: str,
    exam_id: str,
    laterality: Laterality,
    view: View,
    spec: CohortSpec = CohortSpec(),
) -> bytes:
    """A complete DICOM Part-10 file (MG, For Presentation) holding `pixels`.

    UIDs are derived from (spec.seed, patient_id, exam_id, laterality, view): the same inputs give
    the same bytes. The dataset carries no private tags and no PHI-like tags (no birth date,
    accession number or institution); PatientName is 'SYNTHETIC^<patient_id>'.
    The transfer syntax is spec.transfer_syntax (Explicit VR Little Endian or RLE Lossless).
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype != np.uint16:
        raise ValueError(f"pixels must be a 2-D uint16 array, got {pixels.dtype} with shape {pixels.shape}")
    if pixels.size and int(pixels.max()) > spec.max_value:
        raise ValueError(f"pixel values exceed bits_stored={spec.bits_stored} (max {int(pixels.max())})")
    if laterality not in _LATERALITY_CODE or view not in _VIEW_CODE:
        raise ValueError(f"laterality/view must be L|R and CC|MLO, got {laterality!r}/{view!r}")
    rows, cols = pixels.shape
    study_uid = _uid(spec, patient_id, exam_id, "study")
    series_uid = _uid(spec, patient_id, exam_id, "series", view)
    sop_uid = _uid(spec, patient_id, exam_id, "image", laterality, view)
    spacing = IMAGE_HEIGHT_MM / rows
    center, width = _window(pixels)
    image_number = 1 + VIEWS.index((laterality, view))

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "mammo-ray synthetic"
    ds.BurnedInAnnotation = "NO"
    ds.PatientName = f"SYNTHETIC^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientSex = "F"
    ds.PatientIdentityRemoved = "YES"
    ds.StudyInstanceUID = study_uid
    ds.StudyID = exam_id[-16:]
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1 + _VIEW_CODE[view]
    ds.InstanceNumber = image_number
    ds.BodyPartExamined = "BREAST"
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    view_code = Dataset()
    view_code.CodeValue, view_code.CodeMeaning = _VIEW_CODES[view]
    view_code.CodingSchemeDesignator = "SCT"
    ds.ViewCodeSequence = Sequence([view_code])
    ds.PatientOrientation = _patient_orientation(laterality, view)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [f"{spacing:.6f}", f"{spacing:.6f}"]
    ds.ImagerPixelSpacing = [f"{spacing:.6f}", f"{spacing:.6f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = spec.bits_stored
    ds.HighBit = spec.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = center
    ds.WindowWidth = width
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.LossyImageCompression = "00"
    little_endian = pixels.astype("<u2", copy=False)
    if spec.transfer_syntax == "rle":
        ds.PixelData = _encode_rle(little_endian)
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = RLELossless
    else:
        ds.PixelData = little_endian.tobytes()
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# The cohort
# --------------------------------------------------------------------------------------------


def _write_image(out_images: str, spec: CohortSpec, plan: dict[tuple[int, str], str],
                 task: tuple[int, str, str]) -> dict[str, object]:
    """Render, encode and write one image; returns its manifest record."""
    patient_index, laterality, view = task
    patient_id = f"{ID_PREFIX}/{_patient_code(patient_index)}"
    exam_id = f"{patient_id}_E1"
    birads = plan[(patient_index, laterality)]
    pixels = generate_image(patient_index, laterality, view, birads, spec)  # type: ignore[arg-type]
    data = synthetic_dicom_bytes(
        pixels, patient_id=patient_id, exam_id=exam_id, laterality=laterality,  # type: ignore[arg-type]
        view=view, spec=spec,  # type: ignore[arg-type]
    )
    name = image_name(patient_index, laterality, view)
    uri = storage.join(out_images, f"{name}.dcm")
    storage.write_bytes(uri, data)
    return {
        "image_id": f"{ID_PREFIX}/{name}",
        "uri": uri,
        "dataset": DATASET_NAME,
        "patient_id": patient_id,
        "exam_id": exam_id,
        "laterality": laterality,
        "view": view,
        "birads": birads,
        "label": label_from_birads(birads),
        "pathology": None,
    }


def generate_cohort(
    out_uri: str, spec: CohortSpec = CohortSpec(), workers: int | None = None
) -> pd.DataFrame:
    """Write the cohort under `out_uri` (a local folder or s3:// prefix) and return its manifest.

    Files: ``<out>/images/P0007_L_CC.dcm`` ... (4 per patient) and ``<out>/manifest.parquet``
    (the validated manifest of DESIGN.md §2, rows in patient order then L-CC, R-CC, L-MLO, R-MLO).
    Identifiers: patient_id 'synth/P0007', exam_id 'synth/P0007_E1', image_id 'synth/P0007_L_CC',
    dataset 'synthetic', uri the full URI of the written file; label from the BI-RADS, pathology null.

    `workers` threads render and write images (numpy, the FFT and I/O release the GIL); None uses
    up to 2 (the core count if smaller). The output does not depend on it: every image has its own
    keyed random generator. Existing files of the same names are overwritten atomically.
    """
    if workers is None:
        workers = max(1, min(2, os.cpu_count() or 1))
    plan = cohort_plan(spec)
    out_images = storage.join(out_uri, "images")
    tasks = [(patient, laterality, view) for patient in range(spec.patients) for laterality, view in VIEWS]
    if workers <= 1:
        records = [_write_image(out_images, spec, plan, task) for task in tasks]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mammo-ray-synth") as pool:
            records = list(pool.map(lambda task: _write_image(out_images, spec, plan, task), tasks))
    frame = pd.DataFrame.from_records(records)
    return write_manifest(frame, storage.join(out_uri, "manifest.parquet"))
