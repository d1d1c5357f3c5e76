"""The NYU patch classifier: a DenseNet-121 over 256 x 256 patches whose layers pad as TensorFlow's "SAME".

Clean-room implementation from docs/design.md, "Heatmaps". torchvision's DenseNet-121 with 4 classes, every
`Conv2d` and `MaxPool2d` replaced in place by a subclass that pads its input by the TensorFlow rule and keeps
its own padding at 0, so the parameter names stay torchvision's and the published file
(`sample_patch_model.p`, a bare state dict) loads as it is. Class order: 0 malignant, 1 benign, 2 and 3
outside the breast / negative.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mammo_ray.imaging.heatmaps import DEFAULT_STRIDE, PATCH_SIZE, PatchGrid
from mammo_ray.models.weight_loading import as_state_dict, load_state_dict_strict, seeded_init

CLASSES: tuple[str, ...] = ("malignant", "benign", "outside", "negative")
MALIGNANT, BENIGN = 0, 1


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding of one axis: (before, after), the smaller half before."""
    total = max(0, kernel - stride) if size % stride == 0 else max(0, kernel - size % stride)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    top, bottom = same_padding(x.shape[-2], kernel[0], stride[0])
    left, right = same_padding(x.shape[-1], kernel[1], stride[1])
    return F.pad(x, (left, right, top, bottom)) if top or bottom or left or right else x


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class SameConv2d(nn.Conv2d):
    """A Conv2d padded as TensorFlow's SAME (its own padding is 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_pad_same(x, _pair(self.kernel_size), _pair(self.stride)))


class SameMaxPool2d(nn.MaxPool2d):
    """A MaxPool2d padded as TensorFlow's SAME. Zero padding equals TensorFlow's (padding never wins a max)
    here because every pool of the network follows a ReLU: its inputs are >= 0 and each window holds one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_pad_same(x, _pair(self.kernel_size), _pair(self.stride)))


def _with_same_padding(model: nn.Module) -> None:
    """Turn every Conv2d / MaxPool2d of `model` into its SAME-padded twin in place: the subclasses add no
    state, so each keeps its parameters and its name in the state dict."""
    for layer in model.modules():
        if type(layer) is nn.Conv2d:
            layer.__class__ = SameConv2d
            layer.padding = (0, 0)
        elif type(layer) is nn.MaxPool2d:
            layer.__class__ = SameMaxPool2d
            layer.padding = 0


def build_patch_classifier(
    state: Mapping[str, Any] | None = None, *, seed: int | None = None, source: str = "<state dict>"
) -> nn.Module:
    """The patch classifier in eval mode: seeded random init, then the published state dict if given."""
    from torchvision.models import densenet121

    with seeded_init(seed):
        model = densenet121(weights=None, num_classes=len(CLASSES))
    _with_same_padding(model)
    if state is not None:
        load_state_dict_strict(
            model, as_state_dict(state, source), source, "checkpoint does not match the NYU patch classifier",
            optional=lambda key: key.endswith(".num_batches_tracked"),  # absent from files of old PyTorch
            given_as="checkpoint",
            hint="expected the published format (sample_patch_model.p): a torchvision DenseNet-121 state dict "
            "with a 4-class classifier",
        )
    return model.eval()


def patch_probabilities(model: nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """(N, 1, 256, 256) standardised patches -> (N, 4) class probabilities; the channel is replicated to the
    three the network reads."""
    return torch.softmax(model(patches.expand(-1, 3, -1, -1)).float(), dim=1)


def crop_probabilities(
    model: nn.Module, crop: torch.Tensor, stride: int = DEFAULT_STRIDE, batch_size: int = 32
) -> tuple[PatchGrid, torch.Tensor]:
    """The patch grid over a standardised breast crop (H, W), on the model's device, and its patches'
    (malignant, benign) probabilities, (count, 2) float32 in grid order: `grid.render(probabilities[:, k])`
    draws class k's heatmap. The patches are cut on the crop's device, `batch_size` per forward."""
    height, width = crop.shape
    grid = PatchGrid.over(height, width, stride=stride)
    if height < grid.patch or width < grid.patch:  # as pad_to_patch: the far edges, with the background
        crop = F.pad(crop, (0, max(0, grid.patch - width), 0, max(0, grid.patch - height)), value=float(crop.min()))
    corners = grid.corners
    out = []
    for start in range(0, len(corners), batch_size):
        batch = torch.stack([crop[r:r + grid.patch, c:c + grid.patch] for r, c in corners[start:start + batch_size]])
        out.append(patch_probabilities(model, batch.unsqueeze(1))[:, [MALIGNANT, BENIGN]])
    return grid, torch.cat(out)


def patch_heatmaps(
    model: nn.Module, crop: np.ndarray, stride: int = DEFAULT_STRIDE, batch_size: int = 32
) -> tuple[PatchGrid, np.ndarray]:
    """`crop_probabilities` of a numpy crop, on the model's device and dtype; the probabilities as numpy."""
    parameter = next(model.parameters())
    tensor = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32)).to(parameter.device, parameter.dtype)
    with torch.inference_mode():
        grid, probabilities = crop_probabilities(model, tensor, stride, batch_size)
    return grid, probabilities.cpu().numpy()


def seconds_per_patch(threads: int = 1, patches: int = 4) -> float:
    """Wall seconds per patch of the (randomly initialised: the cost does not depend on the values) classifier on
    this machine's CPU with `threads` torch threads: the best of two forwards of `patches` patches."""
    model = build_patch_classifier(seed=0)
    batch = torch.zeros(patches, 1, PATCH_SIZE, PATCH_SIZE)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        timings = []
        with torch.inference_mode():
            for _ in range(2):
                start = time.perf_counter()
                patch_probabilities(model, batch)
                timings.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return min(timings) / patches
