"""Preprocessing for ImageNet-pretrained CNNs: breast crop, square resize, ImageNet normalisation.

Choices, each fixed by `ImageNetPreprocess.id`:
- Crop to the breast box (the published crop, `crop.breast_box`) so the network sees tissue, not the
  detector's empty background; optional.
- Resize keeping the aspect ratio (the long side becomes `size`) and zero-pad to a centred square: a
  breast crop is about twice as tall as wide, and a plain resize would squash the anatomy.
  Resampling is PIL's antialiased bilinear filter on float32 data: deterministic, no 8-bit rounding.
- Intensities are divided by the image's own robust maximum (the 99.9th percentile of its breast
  pixels, i.e. pixels > 0) and clipped to [0, 1], so a few saturated pixels (clips, labels) do not set
  the scale, and images from 8-bit PNGs and 16-bit DICOMs land on the same range.
- Grey is replicated to 3 channels, then normalised with the ImageNet mean and std; the zero padding
  therefore becomes -mean/std per channel, what a black ImageNet pixel becomes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from mammo_ray.imaging.crop import NoBreastFoundError, breast_box, scaled_crop_params

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
#: The ImageNet normalisation as config values (one per channel).
IMAGENET_MEAN_STD: tuple[tuple[float, ...], tuple[float, ...]] = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
ROBUST_MAX_PERCENTILE = 99.9
_VERSION = "v2"  # bump whenever the output for a given configuration changes (v2: records breast_share)


def resize_grey(pixels: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Resample a float (H, W) image to `out_hw` with antialiased bilinear filtering, float32 throughout.

    The filter's weights are non-negative, so a zero background stays exactly zero and no value
    leaves the input's range.
    """
    out_h, out_w = out_hw
    if out_h < 1 or out_w < 1:
        raise ValueError(f"output size must be positive, got {out_hw}")
    data = np.ascontiguousarray(pixels, dtype=np.float32)
    if data.shape == (out_h, out_w):
        return data.copy()
    resized = Image.fromarray(data).resize((out_w, out_h), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def fit_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize so the long side is `size` (aspect ratio kept), centred on a zero (size, size) canvas."""
    return fit_canvas(pixels, size, size)


def fit_canvas(pixels: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Resize to the largest size that fits (rows, cols) with the aspect ratio kept, centred on a zero canvas."""
    height, width = pixels.shape
    scale = min(rows / height, cols / width)
    out_h, out_w = min(rows, max(1, round(height * scale))), min(cols, max(1, round(width * scale)))
    canvas = np.zeros((rows, cols), dtype=np.float32)
    top, left = (rows - out_h) // 2, (cols - out_w) // 2
    canvas[top : top + out_h, left : left + out_w] = resize_grey(pixels, (out_h, out_w))
    return canvas


def scale_to_unit(pixels: np.ndarray) -> np.ndarray:
    """Divide by the 99.9th percentile of the pixels > 0 and clip to [0, 1]."""
    breast = pixels[pixels > 0]
    if breast.size == 0:
        raise NoBreastFoundError("no breast pixels were found: every pixel is <= 0")
    robust_max = float(np.percentile(breast, ROBUST_MAX_PERCENTILE))
    return np.clip(pixels / robust_max, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class ImageNetPreprocess:
    """Grey mammogram (H, W) -> float32 (channels, size, width or size) normalised for a pretrained CNN.

    crop_to_breast: crop to the published breast box first. source_resolution: the inputs'
    resolution relative to a full-field mammogram, where the crop's 100 iterations and 50 px margin
    are defined (0.25 for an image downsampled 4x: the crop then uses 25 and 12).
    Raises NoBreastFoundError for an image without breast pixels.
    """

    size: int = 224
    crop_to_breast: bool = True
    source_resolution: float = 1.0
    #: Columns of the input when it is not square (e.g. Mammo-CLIP's 1520 x 912); None: `size`.
    width: int | None = None
    #: The network's input convention: channels (the grey image replicated), and the mean and std subtracted
    #: and divided per channel from the [0, 1] intensities (ImageNet's by default).
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN_STD[0]
    std: tuple[float, ...] = IMAGENET_MEAN_STD[1]

    def __post_init__(self) -> None:
        if self.size < 1 or (self.width is not None and self.width < 1):
            raise ValueError(f"size and width must be positive, got {self.size} and {self.width}")
        if not self.source_resolution > 0:
            raise ValueError(f"source_resolution must be positive, got {self.source_resolution}")
        if self.channels < 1 or len(self.mean) not in (1, self.channels) or len(self.std) not in (1, self.channels):
            raise ValueError(f"mean and std need 1 or {self.channels} values, got {self.mean} and {self.std}")
        if not all(value > 0 for value in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    @property
    def id(self) -> str:
        crop = "breast" if self.crop_to_breast else "none"
        if self.crop_to_breast and self.source_resolution != 1.0:
            crop += f":source={float(self.source_resolution)!r}"
        convention = "" if (self.channels, self.mean, self.std) == (3, *IMAGENET_MEAN_STD) else (
            f":channels={self.channels}:mean={','.join(map(repr, self.mean))}:std={','.join(map(repr, self.std))}")
        shape = f"size={self.size}:crop={crop}:fit=pad-square" if self.width is None else (
            f"size={self.size}x{self.width}:crop={crop}:fit=pad")
        return (
            f"imagenet:{_VERSION}:{shape}:max=p{ROBUST_MAX_PERCENTILE:g}"
            + convention
        )

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.prepare(pixels)[0]

    def prepare(self, pixels: np.ndarray) -> tuple[np.ndarray, float]:
        """The input as __call__ gives it, and the share of the canvas the breast (non-zero pixels) covers."""
        if pixels.ndim != 2:
            raise ValueError(f"expected a 2-D grey image, got shape {pixels.shape}")
        image = np.asarray(pixels, dtype=np.float32)
        if self.crop_to_breast:
            iterations, margin = scaled_crop_params(self.source_resolution)
            image = image[breast_box(image, iterations=iterations, margin=margin).slices()]
        # Scale after resizing: the percentile is then taken over ~size^2 pixels, not millions.
        grey = scale_to_unit(fit_canvas(image, self.size, self.width or self.size))
        channels = np.repeat(grey[None], self.channels, axis=0)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        normalised = ((channels - mean) / std).astype(np.float32)
        return normalised, float(np.count_nonzero(grey > 0)) / grey.size
