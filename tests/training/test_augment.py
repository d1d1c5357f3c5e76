"""Training augmentation: exact flips, background-filled affine, reproducible draws."""

from __future__ import annotations

import torch

from mammo_ray.config import AugmentConfig
from mammo_ray.training.augment import augment_batch, random_affine_matrices


def _batch(n: int = 6, c: int = 3, h: int = 32, w: int = 24) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.full((n, c, h, w), -2.0)  # background, e.g. normalised zero padding
    x[:, :, 4:28, 2:14] = torch.rand(n, c, 24, 12)
    return x


def test_pure_flips_are_exact():
    x = _batch()
    spec = AugmentConfig(hflip=True, vflip=False, degrees=0, translate=0, scale=0)
    out = augment_batch(x, spec, torch.Generator().manual_seed(1))
    theta = random_affine_matrices(x.shape[0], spec, torch.Generator().manual_seed(1))
    flipped = theta[:, 0, 0] < 0
    assert flipped.any() and (~flipped).any()
    torch.testing.assert_close(out[flipped], torch.flip(x[flipped], dims=[3]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[~flipped], x[~flipped], atol=1e-5, rtol=0)


def test_affine_fills_with_the_background_and_stays_in_range():
    x = _batch()
    spec = AugmentConfig(degrees=15, translate=0.1, scale=0.2)
    out = augment_batch(x, spec, torch.Generator().manual_seed(2))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= -2.0 - 1e-5 and out.max() <= x.max() + 1e-5
    assert torch.allclose(out[:, :, 0, 0], torch.full_like(out[:, :, 0, 0], -2.0))  # corner: background
    assert not torch.allclose(out, x)


def test_same_seed_same_transform_and_identity_spec_is_a_no_op():
    x = _batch()
    spec = AugmentConfig()
    a = augment_batch(x, spec, torch.Generator().manual_seed(3))
    b = augment_batch(x, spec, torch.Generator().manual_seed(3))
    c = augment_batch(x, spec, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    identity = AugmentConfig(hflip=False, vflip=False, degrees=0, translate=0, scale=0)
    assert augment_batch(x, identity, torch.Generator()) is x
    assert augment_batch(x, AugmentConfig(enabled=False), torch.Generator()) is x
