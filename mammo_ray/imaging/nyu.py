"""NYU preprocessing (docs/design.md, "Preprocessing"): resample, crop to the breast, orient, choose the
window, standardise.

Conventions (each covered by a test):
- Resolutions are relative to NYU's native one (a full-field mammogram, where the published crop and
  windows are defined). `scale` is the working resolution: the window (CC 2677 x 1942, MLO
  2974 x 1748), the crop's 100 iterations / 50 px margin and the augmentation shifts are multiplied by
  it. `source_resolution` is the input's own resolution (1.0: full field; 0.25: already downsampled
  4x); the input is resampled by scale / source_resolution before anything else.
- Orientation: the chest wall goes on the LEFT image edge, the nipple points right. Datasets disagree
  on how they store left and right breasts, so the side is read from the breast crop itself: the
  chest wall is a straight edge of thick tissue, the nipple a thin tip, so the side whose outermost
  columns hold more tissue is the chest wall (`chest_wall_side`). Laterality only breaks near-ties
  (L: chest wall stored on the left, R: on the right).
- Window placement along the chest wall -> nipple axis: the window's right edge sits on the crop's
  nipple-side edge ("anchored at the nipple side"). When the breast is deeper than the window, the
  nipple and the front of the breast stay in view and only tissue at the chest wall is cut; when it
  is shallower, the zero padding goes behind the chest wall.
- Along the other axis the window covers the most breast pixels (summed-area table, all positions);
  ties go to the anchor: CC to the vertical centre (the nipple's level), MLO to the bottom.
  A crop smaller than the window is zero-padded, placed the same way.
- Views other than CC/MLO (or unknown) use the CC window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mammo_ray.imaging.crop import breast_box, scaled_crop_params
from mammo_ray.imaging.imagenet import resize_grey

NYU_WINDOWS: dict[str, tuple[int, int]] = {"CC": (2677, 1942), "MLO": (2974, 1748)}
DEFAULT_MAX_SHIFT = 100  # native pixels, for test-time augmentation
_VERSION = "v2"  # bump whenever the output for a given configuration changes (v2: records breast_share)
_STD_FLOOR = 1e-5
_AMBIGUOUS = 0.05  # chest-wall test: sides within 5% of each other defer to laterality
_BREAST_COLUMN = 0.1  # chest-wall test: columns below 10% of the fullest column are not breast


@dataclass(frozen=True)
class Anchor:
    """Where ties and padding put the window, as a fraction of the free room.

    0 = top / left, 1 = bottom / right, 0.5 = centred.
    """

    vertical: float
    horizontal: float


ANCHORS: dict[str, Anchor] = {
    "CC": Anchor(vertical=0.5, horizontal=1.0),
    "MLO": Anchor(vertical=1.0, horizontal=1.0),
}


def window_view(view: str | None) -> str:
    """'MLO' for MLO images, 'CC' for everything else (CC, 'other', unknown)."""
    return "MLO" if view == "MLO" else "CC"


def window_size(view: str | None, scale: float = 1.0) -> tuple[int, int]:
    """The NYU input window (H, W) for a view at a working scale, rounded to whole pixels."""
    _check_scale(scale)
    height, width = NYU_WINDOWS[window_view(view)]
    return max(1, round(height * scale)), max(1, round(width * scale))


def chest_wall_side(pixels: np.ndarray, laterality: str | None = None) -> str:
    """'left' or 'right': the edge of a (cropped) breast image where the chest wall is.

    The chest wall is a straight edge of thick, dense tissue (and pectoral muscle); the nipple side
    tapers to a thin tip. So compare the tissue (sum of intensities) per column in the outer 5% of
    the breast's extent on each side. Columns under 10% of the fullest column (margin, specks, faint
    painted-over labels) are not counted as breast. Laterality decides only when the two sides are
    within 5% of each other: then L means left, R right.
    """
    profile = np.maximum(pixels, 0).sum(axis=0, dtype=np.float64)
    if not profile.max() > 0:
        return "right" if laterality == "R" else "left"
    columns = np.flatnonzero(profile >= _BREAST_COLUMN * profile.max())
    first, last = int(columns[0]), int(columns[-1])
    band = max(1, (last - first + 1) // 20)
    left = float(profile[first : first + band].mean())
    right = float(profile[last - band + 1 : last + 1].mean())
    if abs(left - right) <= _AMBIGUOUS * max(left, right) and laterality in ("L", "R"):
        return "left" if laterality == "L" else "right"
    return "right" if right > left else "left"


def orient(pixels: np.ndarray, laterality: str | None = None) -> np.ndarray:
    """Mirror the image if needed so the chest wall is on the left edge.

    Best given the breast crop (as `nyu_window` does): on a whole image, labels or film edges on the
    far side add to the evidence.
    """
    if chest_wall_side(pixels, laterality) == "right":
        return pixels[:, ::-1]
    return pixels


def optimal_window(mask: np.ndarray, window_hw: tuple[int, int], anchor: Anchor) -> tuple[int, int]:
    """(top, left) of the window covering the most mask pixels; ties go toward `anchor`.

    Positions may be negative or overhang the mask: along an axis where the mask is shorter than the
    window, every position holds it whole, and the anchor alone places it. Coverage for every
    position comes from one summed-area table, so the search is O(mask size).
    """
    height, width = mask.shape
    win_h, win_w = window_hw
    target_top, target_left = anchor.vertical * (height - win_h), anchor.horizontal * (width - win_w)
    tops = _positions(height, win_h, target_top)
    lefts = _positions(width, win_w, target_left)

    table = np.zeros((height + 1, width + 1), dtype=np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=table[1:, 1:])
    r0, r1 = np.clip(tops, 0, height), np.clip(tops + win_h, 0, height)
    c0, c1 = np.clip(lefts, 0, width), np.clip(lefts + win_w, 0, width)
    covered = table[np.ix_(r1, c1)] - table[np.ix_(r0, c1)] - table[np.ix_(r1, c0)] + table[np.ix_(r0, c0)]

    distance = (tops[:, None] - target_top) ** 2 + (lefts[None, :] - target_left) ** 2
    distance = np.where(covered == covered.max(), distance, np.inf)
    row, col = np.unravel_index(int(np.argmin(distance)), distance.shape)
    return int(tops[row]), int(lefts[col])


def _positions(length: int, window: int, target: float) -> np.ndarray:
    if length <= window:  # all positions cover the same: take the anchored one
        return np.array([round(target)], dtype=np.int64)
    return np.arange(length - window + 1, dtype=np.int64)


def extract_window(image: np.ndarray, top: int, left: int, window_hw: tuple[int, int]) -> np.ndarray:
    """image[top:top+H, left:left+W] as float32, with zeros wherever the window leaves the image."""
    win_h, win_w = window_hw
    out = np.zeros((win_h, win_w), dtype=np.float32)
    r0, r1 = max(top, 0), min(top + win_h, image.shape[0])
    c0, c1 = max(left, 0), min(left + win_w, image.shape[1])
    if r0 < r1 and c0 < c1:
        out[r0 - top : r1 - top, c0 - left : c1 - left] = image[r0:r1, c0:c1]
    return out


def standardise(window: np.ndarray) -> np.ndarray:
    """(x - mean) / max(std, 1e-5) over the window alone, as float32."""
    mean = float(window.mean(dtype=np.float64))
    std = float(window.std(dtype=np.float64))
    return ((window - mean) / max(std, _STD_FLOOR)).astype(np.float32)


@dataclass(frozen=True)
class PlacedWindow:
    """An oriented breast crop and the chosen window on it."""

    crop: np.ndarray
    top: int
    left: int
    window_hw: tuple[int, int]

    def window(self, dy: int = 0, dx: int = 0) -> np.ndarray:
        """The standardised window, shifted by (dy, dx) pixels."""
        return standardise(extract_window(self.crop, self.top + dy, self.left + dx, self.window_hw))

    def breast_share(self, dy: int = 0, dx: int = 0) -> float:
        """The share of the (shifted) window's pixels that are breast (> 0 in the crop): ~0.6-0.7 on full-field
        mammograms at the right source resolution, far less when the input's resolution is misstated."""
        (win_h, win_w), top, left = self.window_hw, self.top + dy, self.left + dx
        inside = self.crop[max(top, 0):max(top + win_h, 0), max(left, 0):max(left + win_w, 0)]
        return float(np.count_nonzero(inside > 0)) / (win_h * win_w)


def oriented_crop(
    pixels: np.ndarray, *, laterality: str | None = None, scale: float = 1.0, source_resolution: float = 1.0
) -> np.ndarray:
    """The breast crop at working resolution `scale`, chest wall on the left, float32: what the window is cut
    from, and (at scale 1, standardised) what the patch classifier of the heatmaps reads."""
    _check_scale(scale)
    _check_scale(source_resolution, "source_resolution")
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {pixels.shape}")
    image = np.asarray(pixels, dtype=np.float32)
    factor = scale / source_resolution
    if abs(factor - 1.0) > 1e-9:
        image = resize_grey(
            image, (max(1, round(image.shape[0] * factor)), max(1, round(image.shape[1] * factor)))
        )
    iterations, margin = scaled_crop_params(scale)
    crop = image[breast_box(image, iterations=iterations, margin=margin).slices()]
    return crop[:, ::-1] if chest_wall_side(crop, laterality) == "right" else crop


def place_window(
    pixels: np.ndarray, view: str | None, laterality: str | None, scale: float, source_resolution: float
) -> PlacedWindow:
    crop = oriented_crop(pixels, laterality=laterality, scale=scale, source_resolution=source_resolution)
    mask = crop > 0
    win_h, win_w = window_size(view, scale)
    # Nipple-side anchor: a crop deeper than the window loses columns at the chest wall, never the nipple.
    keep_from = max(0, crop.shape[1] - win_w)
    top, left = optimal_window(mask[:, keep_from:], (win_h, win_w), ANCHORS[window_view(view)])
    return PlacedWindow(crop, top, left + keep_from, (win_h, win_w))


def nyu_window(
    pixels: np.ndarray,
    view: str | None,
    *,
    laterality: str | None = None,
    scale: float = 1.0,
    source_resolution: float = 1.0,
) -> np.ndarray:
    """One standardised NYU input window, float32 (H, W) = the view's window times `scale`.

    laterality ('L'/'R'/None) only breaks orientation near-ties; the image content decides.
    Raises NoBreastFoundError (from the crop) for an image without breast pixels.
    """
    return place_window(pixels, view, laterality, scale, source_resolution).window()


def nyu_augmented_windows(
    pixels: np.ndarray,
    view: str | None,
    *,
    n: int,
    seed: int,
    max_shift: int = DEFAULT_MAX_SHIFT,
    laterality: str | None = None,
    scale: float = 1.0,
    source_resolution: float = 1.0,
) -> np.ndarray:
    """Test-time augmentation: n windows, float32 (n, H, W), each at a distinct random shift.

    Shifts (dy, dx) are drawn without replacement from [-s, s]^2 with s = round(max_shift * scale)
    (max_shift in native pixels), from numpy's default generator seeded with `seed`, so the same seed
    gives the same windows. Each window is standardised on its own.
    """
    placed = place_window(pixels, view, laterality, scale, source_resolution)
    return np.stack([placed.window(dy, dx) for dy, dx in augment_shifts(n, seed, max_shift, scale)])


def augment_shifts(n: int, seed: int, max_shift: int, scale: float) -> list[tuple[int, int]]:
    """The n distinct (dy, dx) shifts of test-time augmentation (see nyu_augmented_windows)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    reach = max(0, round(max_shift * scale))
    side = 2 * reach + 1
    if n > side * side:
        raise ValueError(f"cannot draw {n} distinct shifts within +-{reach} px ({side * side} positions)")
    picks = np.random.default_rng(seed).choice(side * side, size=n, replace=False)
    return [(int(dy), int(dx)) for dy, dx in zip(picks // side - reach, picks % side - reach, strict=True)]


@dataclass(frozen=True)
class NYUPreprocess:
    """A configured NYU preprocessing: `id` names it, calling it runs it.

    scale: working resolution (window size) relative to NYU native; source_resolution: the inputs'
    resolution relative to NYU native (see the module notes). view: force one window for every image
    ('CC' for the "NYU L-CC" extractor), or None to use each image's own view. n_augment = 0 gives one
    window (H, W); n_augment > 0 gives (n_augment, H, W).
    """

    scale: float = 1.0
    source_resolution: float = 1.0
    n_augment: int = 0
    seed: int = 0
    max_shift: int = DEFAULT_MAX_SHIFT
    view: str | None = None

    def __post_init__(self) -> None:
        _check_scale(self.scale)
        _check_scale(self.source_resolution, "source_resolution")
        if self.n_augment < 0:
            raise ValueError(f"n_augment must be >= 0, got {self.n_augment}")
        if self.view is not None and self.view not in NYU_WINDOWS:
            raise ValueError(f"view must be one of {sorted(NYU_WINDOWS)} or None, got {self.view!r}")

    @property
    def id(self) -> str:
        window = self.view or "image-view"
        parts = [
            f"nyu:{_VERSION}",
            f"window={window}",
            f"scale={float(self.scale)!r}",
            f"tta={self.n_augment}",
        ]
        if self.source_resolution != 1.0:
            parts.append(f"source={float(self.source_resolution)!r}")
        if self.n_augment:
            parts += [f"seed={self.seed}", f"shift={self.max_shift}"]
        return ":".join(parts)

    def __call__(
        self, pixels: np.ndarray, view: str | None = None, laterality: str | None = None
    ) -> np.ndarray:
        return self.prepare(pixels, view, laterality)[0]

    def prepare(
        self, pixels: np.ndarray, view: str | None = None, laterality: str | None = None
    ) -> tuple[np.ndarray, float]:
        """The window(s) as __call__ gives them, and the share of them the breast covers (mean over windows)."""
        placed = self.place(pixels, view, laterality)
        if self.n_augment == 0:
            return placed.window(), placed.breast_share()
        shifts = self.shifts()
        windows = np.stack([placed.window(dy, dx) for dy, dx in shifts])
        return windows, float(np.mean([placed.breast_share(dy, dx) for dy, dx in shifts]))

    def place(self, pixels: np.ndarray, view: str | None = None, laterality: str | None = None) -> PlacedWindow:
        """The oriented crop and the window on it (the fixed `view`'s, else the image's own)."""
        return place_window(pixels, self.view or view, laterality, self.scale, self.source_resolution)

    def shifts(self) -> list[tuple[int, int]]:
        """The (dy, dx) of each window: (0, 0) alone, or the test-time augmentation's `n_augment` shifts."""
        if self.n_augment == 0:
            return [(0, 0)]
        return augment_shifts(self.n_augment, self.seed, self.max_shift, self.scale)


def _check_scale(value: float, name: str = "scale") -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")
