"""Rendering: the pixels of one synthetic mammogram (`generate_image`).

A "for presentation" mammogram as docs/design.md, "Input images", expects it: zero background, the chest wall on the
image edge, a half-elliptic outline in CC, a tilted one with a brighter pectoral muscle in MLO, smooth
fibroglandular texture converging on the nipple, a darker periphery, a skin line, and the breast's
finding; a soft (tanh) tone curve, so nothing saturates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from mammo_ray.config.sections import SyntheticSource
from mammo_ray.datasets.manifest import normalise_birads
from mammo_ray.datasets.synthetic.anatomy import Breast, Finding, draw_breast, draw_finding
from mammo_ray.datasets.synthetic.spec import (
    LATERALITY_CODE,
    RNG_TEXTURE,
    VIEW_CODE,
    Laterality,
    View,
    image_shape,
    keyed_rng,
    max_value,
    pixel_spacing_mm,
)


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


def _view_geometry(breast: Breast, view: str, shape: tuple[int, int]) -> _Geometry:
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
    breast: Breast, finding: Finding, view: str, spec: SyntheticSource, rng: np.random.Generator
) -> np.ndarray:
    """The image of a left breast (chest wall at column 0), as uint16."""
    rows, cols = shape = image_shape(spec)
    mm = 1.0 / pixel_spacing_mm(spec)  # pixels per millimetre
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
    top = max_value(spec) - 1
    values = 1.0 + top * np.tanh(np.maximum(intensity, 0.0) * 1.25 * breast.exposure)
    pixels = np.clip(np.rint(values), 1, max_value(spec) - 1).astype(np.uint16)
    pixels[~mask] = 0
    return pixels


def _pectoral(breast: Breast, shape: tuple[int, int], xx: np.ndarray, yy: np.ndarray,
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
    finding: Finding, view: str, breast: Breast, shape: tuple[int, int]
) -> tuple[float, float]:
    g = _view_geometry(breast, view, shape)
    v = finding.v_cc if view == "CC" else finding.v_mlo
    s = finding.u * g.along
    w = v * float(g.across(v)) * math.sqrt(max(1.0 - finding.u ** 2, 0.0))
    cos_t, sin_t = math.cos(g.tilt), math.sin(g.tilt)
    return g.origin_x + s * cos_t - w * sin_t, g.origin_y + s * sin_t + w * cos_t


def _lesion(finding: Finding, view: str, breast: Breast, shape: tuple[int, int], mm: float) -> np.ndarray:
    """Added attenuation of the breast's finding in this view (0 where there is none)."""
    rows, cols = shape
    out = np.zeros(shape, dtype=np.float32)
    if finding.kind == "none":
        return out
    cx, cy = _lesion_centre(finding, view, breast, shape)
    detail = np.random.default_rng(np.random.SeedSequence([finding.seed, VIEW_CODE[view]]))
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
        for k, (amp, phase) in enumerate(zip(harmonics, phases, strict=True), start=2):
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
        for angle, length, bend in zip(angles, lengths, bends, strict=True):
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
                   spec: SyntheticSource = SyntheticSource()) -> np.ndarray:
    """One synthetic mammogram, a uint16 array of shape image_shape(spec); the same arguments give the same array.

    Zero outside the breast, within [1, 2**bits_stored - 2] inside it. Left breasts have the chest
    wall at column 0, right breasts are mirrored (chest wall at the last column). The texture and the
    finding's location depend on (spec.seed, patient_index, laterality, view) only, so the same
    breast with another BI-RADS differs only by its finding.
    """
    if laterality not in LATERALITY_CODE:
        raise ValueError(f"laterality must be 'L' or 'R', got {laterality!r}")
    if view not in VIEW_CODE:
        raise ValueError(f"view must be 'CC' or 'MLO', got {view!r}")
    if not isinstance(patient_index, (int, np.integer)) or patient_index < 0:
        raise ValueError(f"patient_index must be a non-negative integer, got {patient_index!r}")
    patient_index = int(patient_index)
    category = normalise_birads(birads)
    if category is None or category == "0":
        raise ValueError(f"a synthetic image needs a BI-RADS from 1 to 6, got {birads!r}")
    breast = draw_breast(spec.seed, patient_index, laterality)
    finding = draw_finding(spec.seed, patient_index, laterality, category)
    rng = keyed_rng(spec.seed, RNG_TEXTURE, patient_index, LATERALITY_CODE[laterality], VIEW_CODE[view])
    pixels = _render_left(breast, finding, view, spec, rng)
    if spec.contrast != 1.0 or spec.noise > 0.0:
        site = keyed_rng(spec.seed, RNG_TEXTURE, patient_index, LATERALITY_CODE[laterality], VIEW_CODE[view], 1)
        pixels = _as_another_site(pixels, spec, site)
    if laterality == "R":
        pixels = np.ascontiguousarray(pixels[:, ::-1])
    return pixels


def _as_another_site(pixels: np.ndarray, spec: SyntheticSource, rng: np.random.Generator) -> np.ndarray:
    """The breast as another vendor's system shows it: its presentation curve (a power of the value) and its
    detector's noise; the background stays 0 and tissue stays within [1, max - 1]."""
    top = float(max_value(spec))
    inside = pixels > 0
    values = top * (pixels[inside] / top) ** spec.contrast
    values += rng.normal(0.0, spec.noise * top, size=values.shape)
    out = np.zeros_like(pixels)
    out[inside] = np.clip(np.rint(values), 1, top - 1).astype(pixels.dtype)
    return out
