"""Training-time augmentation on the training worker: random flips and a small affine, batched torch ops.

Every sample gets its own transform: a horizontal and/or vertical flip (each with probability 0.5
when enabled), a rotation in [-degrees, degrees], an isotropic zoom in [1 - scale, 1 + scale] and a
shift of up to `translate` of the image size on each axis, composed into one affine matrix and
applied with a single bilinear `grid_sample`. Pixels that come from outside the image take the
sample's own background value (its per-channel minimum: the zero padding of ImageNet inputs after
normalisation, or the standardised background of NYU windows), not a grey that never occurs.

Random draws come from a `torch.Generator` the caller seeds (per seed, epoch and worker rank), so a
run is reproducible. The validation split is never augmented. The settings are the config's
`AugmentConfig` (validated there, once).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mammo_ray.config.finetune import AugmentConfig


def random_affine_matrices(n: int, spec: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) matrices for `F.affine_grid`, mapping output coordinates to input coordinates."""

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)

    def flips(enabled: bool) -> torch.Tensor:
        if not enabled:
            return torch.ones(n, dtype=torch.float64)
        return torch.where(torch.rand(n, generator=generator, dtype=torch.float64) < 0.5, -1.0, 1.0)

    angle = uniform(-spec.degrees, spec.degrees) * (math.pi / 180.0)
    zoom = uniform(1.0 - spec.scale, 1.0 + spec.scale)
    shift_x = uniform(-spec.translate, spec.translate) * 2.0  # grid coordinates span [-1, 1]
    shift_y = uniform(-spec.translate, spec.translate) * 2.0
    flip_x, flip_y = flips(spec.hflip), flips(spec.vflip)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    # input = R(angle) / zoom @ diag(flip) @ output + shift
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip_x, -sin * flip_y
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip_x, cos * flip_y
    theta[:, 0, 2], theta[:, 1, 2] = shift_x, shift_y
    return theta


def augment_batch(images: torch.Tensor, spec: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Randomly transformed copies of a (B, C, H, W) float batch (same device and dtype)."""
    if images.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    if spec.is_identity or images.shape[0] == 0:
        return images
    theta = random_affine_matrices(images.shape[0], spec, generator).to(images.device, torch.float32)
    data = images.float()
    fill = data.amin(dim=(2, 3), keepdim=True)
    grid = F.affine_grid(theta, list(data.shape), align_corners=False)
    moved = F.grid_sample(data - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (moved + fill).to(images.dtype)
