"""The NYU patch classifier: TensorFlow SAME padding, the published state-dict layout, and heatmaps of patch
models whose answers are known."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from mammo_ray.models.patch_classifier import (
    SameConv2d,
    SameMaxPool2d,
    build_patch_classifier,
    patch_heatmaps,
    same_padding,
)
from mammo_ray.models.weight_loading import load_state_dict_bytes
from mammo_ray.models.weights import WeightsError


@pytest.mark.parametrize("size", range(1, 40))
@pytest.mark.parametrize(("kernel", "stride"), [(7, 2), (3, 2), (3, 1), (1, 1), (2, 2), (5, 3)])
def test_same_padding_follows_the_tensorflow_rule(size, kernel, stride):
    # TensorFlow's definition: the output has ceil(size / stride) positions; the padding needed for that, the
    # larger half after.
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    assert same_padding(size, kernel, stride) == (total // 2, total - total // 2)


@pytest.mark.parametrize("size", [255, 256, 257, 31, 32])
def test_same_padded_layers_keep_ceil_of_size_over_stride(size):
    conv = SameConv2d(1, 1, kernel_size=7, stride=2, bias=False)
    pool = SameMaxPool2d(kernel_size=3, stride=2)
    x = torch.rand(1, 1, size, size + 1)
    assert conv(x).shape[-2:] == (math.ceil(size / 2), math.ceil((size + 1) / 2))
    assert pool(x).shape[-2:] == (math.ceil(size / 2), math.ceil((size + 1) / 2))


def test_every_conv_and_max_pool_of_the_classifier_pads_as_same_and_keeps_torchvision_names():
    from torchvision.models import densenet121

    model = build_patch_classifier(seed=0)
    kinds = {type(layer) for layer in model.modules()}
    assert nn.Conv2d not in kinds and nn.MaxPool2d not in kinds and SameConv2d in kinds and SameMaxPool2d in kinds
    assert model.state_dict().keys() == densenet121(weights=None, num_classes=4).state_dict().keys()
    assert model(torch.zeros(2, 3, 256, 256)).shape == (2, 4)


def _saved(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_the_classifier_loads_a_checkpoint_in_the_published_layout():
    from torchvision.models import densenet121

    published = densenet121(weights=None, num_classes=4)  # sample_patch_model.p: a bare DenseNet-121 state dict
    assert "features.denseblock1.denselayer1.norm1.weight" in published.state_dict()
    state = load_state_dict_bytes(_saved(published.state_dict()), "sample_patch_model.p")
    model = build_patch_classifier(state, source="sample_patch_model.p")
    assert torch.equal(model.features.conv0.weight, published.features.conv0.weight)
    assert torch.equal(model.classifier.bias, published.classifier.bias)


def test_a_checkpoint_of_another_shape_is_refused_naming_its_keys():
    from torchvision.models import densenet121

    imagenet = densenet121(weights=None).state_dict()  # 1000 classes
    with pytest.raises(WeightsError, match=r"classifier\.weight: checkpoint \(1000, 1024\) vs model \(4, 1024\)"):
        build_patch_classifier(imagenet, source="densenet121-imagenet.pth")


class _Constant(nn.Module):
    """Every patch: the same class probabilities."""

    def __init__(self, probabilities: list[float]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.log(torch.tensor(probabilities)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


class _Brightness(nn.Module):
    """Malignant in proportion to how much of the patch is bright; the three channels are the same image."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(20.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (3, 256, 256) and torch.equal(x[:, 0], x[:, 2])
        bright = (x[:, 0] > 1).float().mean(dim=(1, 2))
        zeros = torch.zeros_like(bright)
        return torch.stack([self.gain * bright, zeros, zeros, zeros], dim=1)


def test_a_constant_patch_model_gives_heatmaps_equal_to_the_constant():
    crop = np.random.default_rng(1).standard_normal((431, 377)).astype(np.float32)
    grid, probabilities = patch_heatmaps(_Constant([0.1, 0.6, 0.2, 0.1]), crop, stride=70, batch_size=5)
    np.testing.assert_allclose(grid.render(probabilities[:, 0]), 0.1, atol=1e-6)
    np.testing.assert_allclose(grid.render(probabilities[:, 1]), 0.6, atol=1e-6)


def test_a_model_that_sees_one_bright_square_puts_the_malignant_maximum_on_it():
    crop = np.zeros((700, 500), dtype=np.float32)
    crop[400:460, 120:180] = 5.0
    grid, probabilities = patch_heatmaps(_Brightness(), crop, stride=70, batch_size=16)
    malignant = grid.render(probabilities[:, 0])
    square = malignant[400:460, 120:180]
    assert square.max() == malignant.max()  # the maximum sits on the square
    # A pixel is the mean of the patches covering it, so the top value spreads along patch edges, never further
    # than a patch from the square; beyond that nothing sees it.
    rows, cols = np.nonzero(malignant == malignant.max())
    assert rows.min() > 400 - 256 and rows.max() < 460 + 256 and cols.min() > 120 - 256 and cols.max() < 180 + 256
    assert square.min() > malignant[:144].max()  # rows no patch over the square reaches: the floor


class _Recorder(nn.Module):
    """Keeps every patch it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x[:, 0].clone())
        return torch.zeros(x.shape[0], 4) + self.weight


def test_patches_are_cut_at_the_grid_corners_and_a_small_crop_is_padded_with_its_background():
    crop = np.arange(300 * 100, dtype=np.float32).reshape(300, 100) + 7
    recorder = _Recorder()
    grid, probabilities = patch_heatmaps(recorder, crop, stride=70, batch_size=1)
    assert grid.corners == [(0, 0), (44, 0)] and probabilities.shape == (2, 2)  # the second flush at 300 - 256
    first, second = (patches[0].numpy() for patches in recorder.seen)
    np.testing.assert_array_equal(second[:, :100], crop[44:300])
    assert (first[:, 100:] == 7).all()  # padded at the far edge with the crop's minimum, its background
