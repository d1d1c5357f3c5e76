"""ImageNet preprocessing: shape, normalisation of zero and full intensity, determinism, ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mammo_ray.imaging.crop import NoBreastFoundError
from mammo_ray.imaging.decode import decode_image
from mammo_ray.imaging.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageNetPreprocess,
    fit_square,
    resize_grey,
)


def _tall_breast() -> np.ndarray:
    """A 700 x 900 image holding a 500 x 250 textured block: tall once cropped, so padded left and right."""
    pixels = np.zeros((700, 900), np.float32)
    r, c = np.ogrid[:500, :250]
    pixels[100:600, 0:250] = 200.0 + 50.0 * np.sin(r / 9.0) * np.cos(c / 7.0)
    return pixels


@pytest.mark.parametrize("size", [224, 64])
@pytest.mark.parametrize("crop", [True, False])
def test_output_shape_and_type(size: int, crop: bool) -> None:
    out = ImageNetPreprocess(size=size, crop_to_breast=crop)(_tall_breast())
    assert out.shape == (3, size, size)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()


def test_zero_maps_to_minus_mean_over_std_and_full_to_one() -> None:
    out = ImageNetPreprocess(size=128)(_tall_breast())
    black = -IMAGENET_MEAN / IMAGENET_STD
    white = (1.0 - IMAGENET_MEAN) / IMAGENET_STD
    # The cropped breast is taller than wide: the padding at the left and right edges is zero.
    np.testing.assert_allclose(out[:, :, 0], np.broadcast_to(black[:, None], (3, 128)), rtol=1e-6)
    np.testing.assert_allclose(out[:, :, -1], np.broadcast_to(black[:, None], (3, 128)), rtol=1e-6)
    np.testing.assert_allclose(out.max(axis=(1, 2)), white, rtol=1e-6)  # clipped at the robust maximum
    np.testing.assert_allclose(out.min(axis=(1, 2)), black, rtol=1e-6)
    for channel in range(3):  # grey replicated: the channels differ only by their affine normalisation
        np.testing.assert_allclose(
            out[channel] * IMAGENET_STD[channel] + IMAGENET_MEAN[channel],
            out[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0],
            atol=1e-5,
        )


def test_deterministic_and_named() -> None:
    image = _tall_breast()
    assert np.array_equal(ImageNetPreprocess()(image), ImageNetPreprocess()(image))
    configs = [
        ImageNetPreprocess(),
        ImageNetPreprocess(size=299),
        ImageNetPreprocess(crop_to_breast=False),
        ImageNetPreprocess(source_resolution=0.25),
    ]
    assert len({config.id for config in configs}) == len(configs)
    assert ImageNetPreprocess().id == ImageNetPreprocess(224, True).id


def test_aspect_ratio_kept() -> None:
    square = fit_square(np.ones((400, 100), np.float32), 64)
    cols = np.flatnonzero(square.any(axis=0))
    assert (cols.min(), cols.max()) == (24, 39)  # 16 columns centred: 64 * 100 / 400
    assert resize_grey(np.zeros((10, 10), np.float32), (5, 5)).max() == 0.0  # zero stays zero


@pytest.mark.parametrize("crop", [True, False])
def test_black_image_raises(crop: bool) -> None:
    with pytest.raises(NoBreastFoundError):
        ImageNetPreprocess(crop_to_breast=crop)(np.zeros((300, 200), np.float32))


def test_real_mammogram(mini_mias_dir: Path) -> None:
    path = mini_mias_dir / "mdb001.png"
    out = ImageNetPreprocess()(decode_image(path.read_bytes(), str(path)).pixels)
    assert out.shape == (3, 224, 224)
    assert np.isfinite(out).all()
    assert out.std() > 0.5
