"""One preprocessing transform per image family, used by embedding, zero-shot and fine-tuning alike.

A transform takes the decoded pixels (H, W) and the image's view and laterality, returns the model's
inputs (n, C, h, w) (n > 1 for test-time augmented NYU windows; `prepare` also gives the share of them the
breast covers, which every image output records) and carries its versioned `id`, which every stored output
records. It is plain picklable data, built from a config section by `mammo_ray.models.catalogue`
(`transform`, `nyu_transform`, `finetune_transform`), and estimates each image's resolution from its height
unless the section fixes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mammo_ray.errors import MammoRayError
from mammo_ray.imaging.heatmaps import StoredHeatmaps
from mammo_ray.imaging.imagenet import IMAGENET_MEAN_STD, ImageNetPreprocess, resize_grey
from mammo_ray.imaging.nyu import NYUPreprocess, extract_window, oriented_crop, standardise, window_size

#: Rows of a full-field digital mammogram (~4000 at 70-100 um): the resolution the published crop and NYU
#: windows are defined at. An input's resolution is estimated from its height against it.
FULL_FIELD_ROWS = 4000


def source_resolution_for(height: int, configured: float | None) -> float:
    """The configured source resolution, or one estimated from the image height (full field = 1.0)."""
    if configured is not None:
        return configured
    return min(1.0, max(height, 1) / FULL_FIELD_ROWS)


def _auto(configured: float | None) -> str:
    return ":source=auto" if configured is None else ""


@dataclass(frozen=True)
class ImageNetTransform:
    """Breast crop, fitted into (size, width or size) with its aspect ratio, zero-padded, normalised with the
    network's mean and std: (1, channels, size, width or size)."""

    family: ClassVar[str] = "imagenet"
    #: Whether the output depends on the image's laterality and view (it does not: no flip, no window).
    uses_orientation: ClassVar[bool] = False
    #: Whether `prepare` takes the image's stored heatmaps (only the image+heatmaps model's inputs do).
    needs_heatmaps: ClassVar[bool] = False
    size: int = 224
    crop_to_breast: bool = True
    source_resolution: float | None = None  # None: estimated per image from its height
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN_STD[0]
    std: tuple[float, ...] = IMAGENET_MEAN_STD[1]
    width: int | None = None  # None: a square input

    def preprocess(self, height: int) -> ImageNetPreprocess:
        resolution = source_resolution_for(height, self.source_resolution)
        return ImageNetPreprocess(size=self.size, crop_to_breast=self.crop_to_breast, source_resolution=resolution,
                                  channels=self.channels, mean=self.mean, std=self.std, width=self.width)

    @property
    def id(self) -> str:
        return self.preprocess(FULL_FIELD_ROWS).id + _auto(self.source_resolution)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.size, self.width or self.size

    def __call__(self, pixels: np.ndarray, view: object = None, laterality: object = None) -> np.ndarray:
        return self.prepare(pixels, view, laterality)[0]

    def prepare(self, pixels: np.ndarray, view: object = None, laterality: object = None) -> tuple[np.ndarray, float]:
        """The inputs and the share of the square the breast covers."""
        square, share = self.preprocess(pixels.shape[0]).prepare(pixels)
        return square[None], share


@dataclass(frozen=True)
class NYUTransform:
    """The NYU window (flip to one side, breast crop, the window covering most breast, standardised):
    (n, 1, h, w), n = max(1, n_augment). `view` fixes one window for every image ('CC'), None takes each
    image's own."""

    family: ClassVar[str] = "nyu"
    #: Right breasts are flipped and the window follows the view: the output depends on both.
    uses_orientation: ClassVar[bool] = True
    needs_heatmaps: ClassVar[bool] = False
    scale: float = 0.25
    source_resolution: float | None = None  # None: estimated per image from its height
    n_augment: int = 0
    view: str | None = None

    def preprocess(self, height: int) -> NYUPreprocess:
        resolution = source_resolution_for(height, self.source_resolution)
        return NYUPreprocess(scale=self.scale, source_resolution=resolution, n_augment=self.n_augment, view=self.view)

    @property
    def id(self) -> str:
        return self.preprocess(FULL_FIELD_ROWS).id + _auto(self.source_resolution)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(1, h, w) of a fixed window; each image's own view may give another size when `view` is None."""
        return (1, *window_size(self.view, self.scale))

    def __call__(self, pixels: np.ndarray, view: object = None, laterality: object = None) -> np.ndarray:
        return self.prepare(pixels, view, laterality)[0]

    def prepare(self, pixels: np.ndarray, view: object = None, laterality: object = None) -> tuple[np.ndarray, float]:
        """The inputs and the share of the window(s) the breast covers (~0.66 on a well-resolved full-field
        mammogram; a misstated source_resolution shrinks the breast inside the window)."""
        windows, share = self.preprocess(pixels.shape[0]).prepare(pixels, view, laterality)  # (h, w) or (n, h, w)
        return (windows[:, None] if windows.ndim == 3 else windows[None, None]), share


@dataclass(frozen=True)
class HeatmapCropTransform:
    """What the patch classifier reads (docs/design.md, "Heatmaps"): the oriented breast crop at `scale` (1.0:
    NYU's native resolution), standardised on its own: (1, 1, H, W), a size of its own per image."""

    family: ClassVar[str] = "nyu-crop"
    #: Right breasts are flipped (laterality breaks near-ties of the side the image shows).
    uses_orientation: ClassVar[bool] = True
    needs_heatmaps: ClassVar[bool] = False
    scale: float = 1.0
    source_resolution: float | None = None  # None: estimated per image from its height

    @property
    def id(self) -> str:
        source = "auto" if self.source_resolution is None else repr(float(self.source_resolution))
        return f"nyu-crop:{_CROP_VERSION}:scale={float(self.scale)!r}:source={source}"

    def __call__(self, pixels: np.ndarray, view: object = None, laterality: object = None) -> np.ndarray:
        return self.prepare(pixels, view, laterality)[0]

    def prepare(self, pixels: np.ndarray, view: object = None, laterality: object = None) -> tuple[np.ndarray, float]:
        """The standardised crop (1, 1, H, W) and the share of it the breast covers."""
        resolution = source_resolution_for(pixels.shape[0], self.source_resolution)
        side = laterality if laterality in ("L", "R") else None
        crop = oriented_crop(pixels, laterality=side, scale=self.scale, source_resolution=resolution)
        share = float(np.count_nonzero(crop > 0)) / max(crop.size, 1)
        return standardise(crop)[None, None], share


_CROP_VERSION = "v1"  # bump whenever the crop for a given configuration changes


#: Manifest columns named with this prefix travel with each image through the pass to its transforms (and no
#: further): what one output of the pass stored, given to another as an input.
INPUT_PREFIX = "input_"
#: The stored heatmaps' columns (schemas.HEATMAPS_SCHEMA) as inputs of the image+heatmaps model.
HEATMAPS_INPUTS: dict[str, str] = {name: f"{INPUT_PREFIX}heatmaps_{name}"
                                   for name in ("crop_height", "crop_width", "stride", "benign", "malignant")}


def heatmaps_of(row: object) -> StoredHeatmaps | None:
    """The stored heatmaps a pass row carries (`HEATMAPS_INPUTS`), or None when the image has none."""
    values = {name: getattr(row, column, None) for name, column in HEATMAPS_INPUTS.items()}
    if any(value is None or (isinstance(value, float) and np.isnan(value)) for value in values.values()):
        return None
    return StoredHeatmaps(int(values["crop_height"]), int(values["crop_width"]), int(values["stride"]),
                          np.asarray(values["benign"], dtype=np.float32),
                          np.asarray(values["malignant"], dtype=np.float32))


class MissingHeatmapsError(MammoRayError):
    """The image has no stored heatmaps (the heatmaps stage made it an errors row), so the image+heatmaps model
    has no input for it."""


@dataclass(frozen=True)
class NYUHeatmapsTransform:
    """The image+heatmaps model's inputs (docs/design.md, "Heatmaps"): channel 0 the standardised NYU window of
    `window`, channels 1 and 2 the same window cut from the image's benign and malignant heatmaps, which are not
    standardised: (n, 3, h, w). The heatmaps (drawn on the heatmaps' own crop, `heatmaps.scale`) are resampled to
    the window's crop first; both crops cover the same breast box, so one window placement fits both.
    `heatmaps_id` names the heatmaps it reads (their model key): other heatmaps make other inputs."""

    family: ClassVar[str] = "nyu-heatmaps"
    uses_orientation: ClassVar[bool] = True
    needs_heatmaps: ClassVar[bool] = True
    window: NYUTransform
    heatmaps_id: str

    @property
    def id(self) -> str:
        return f"{self.window.id}+heatmaps:{_HEATMAPS_INPUT_VERSION}[{self.heatmaps_id}]"

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, *self.window.shape[1:])

    def prepare(self, pixels: np.ndarray, view: object = None, laterality: object = None,
                heatmaps: StoredHeatmaps | None = None) -> tuple[np.ndarray, float]:
        """(n, 3, h, w) inputs from the image and its stored heatmaps, and the share of the image windows the
        breast covers. MissingHeatmapsError without heatmaps."""
        if heatmaps is None:
            raise MissingHeatmapsError("no heatmaps are stored for this image (see errors/heatmaps.parquet): the "
                                       "image+heatmaps model has no input for it")
        preprocess = self.window.preprocess(pixels.shape[0])
        placed = preprocess.place(pixels, view, laterality)  # type: ignore[arg-type]
        benign, malignant = (resize_grey(heatmap, placed.crop.shape) for heatmap in heatmaps.images())
        shifts = preprocess.shifts()
        inputs = np.stack([
            np.stack([placed.window(dy, dx),
                      extract_window(benign, placed.top + dy, placed.left + dx, placed.window_hw),
                      extract_window(malignant, placed.top + dy, placed.left + dx, placed.window_hw)])
            for dy, dx in shifts])
        return inputs.astype(np.float32), float(np.mean([placed.breast_share(dy, dx) for dy, dx in shifts]))


_HEATMAPS_INPUT_VERSION = "v1"  # bump whenever the heatmap channels for a given configuration change

ImageTransform = ImageNetTransform | NYUTransform | HeatmapCropTransform | NYUHeatmapsTransform
