"""EfficientNets saved in the efficientnet_pytorch key layout (docs/design.md, "Extractors by architecture"), the
layout of Mammo-CLIP's `-detect` image encoders: `_conv_stem`, `_bn0`, `_blocks.N._expand_conv` ... `_conv_head`,
`_bn1`, `_fc`.

The network is timm's `tf_efficientnet_bN` (the same TensorFlow port: blocks, widths, BN eps 1e-3, SiLU), with two
changes that make its features equal efficientnet_pytorch's on any input size:
- its TensorFlow "same" padding is fixed, as efficientnet_pytorch fixes it, at the variant's nominal image size
  (b5: 456), instead of recomputed per input: on a 1520 x 912 mammogram the two differ by a pixel at some
  stride-2 layers;
- the checkpoint's keys are renamed to timm's, block by block in order (`_blocks.N` is the N-th block of timm's
  stages), so one strict load still names every missing, unexpected or misshapen key.

torch and timm are imported lazily: the driver only asks for dimensions.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn  # torch: imported when a network is built

#: efficientnet_pytorch's variants and their nominal image sizes (the EfficientNet paper's resolutions), at
#: which it fixes the padding.
NOMINAL_SIZE: dict[str, int] = {
    "efficientnet-b0": 224, "efficientnet-b1": 240, "efficientnet-b2": 260, "efficientnet-b3": 300,
    "efficientnet-b4": 380, "efficientnet-b5": 456, "efficientnet-b6": 528, "efficientnet-b7": 600,
}

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
#: Per block kind: efficientnet_pytorch's module name -> timm's (a depthwise-separable block has no expansion).
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
                      "_bn2": "bn3"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                        "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
#: The classifier efficientnet_pytorch keeps beside the features (Mammo-CLIP's encoders drop it).
HEAD = "_fc"


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow "same" padding of one spatial axis of `size`: (before, after), the odd pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def build(variant: str, channels: int) -> nn.Module:
    """timm's `tf_efficientnet_bN` for efficientnet_pytorch's `efficientnet-bN`, pooled features out (no
    classifier), its stride-2 convolutions padded as at the nominal size."""
    import timm  # torch and timm: imported when a network is built, not by the driver
    import torch

    if variant not in NOMINAL_SIZE:
        raise ValueError(f"architecture efficientnet_pytorch:{variant}: one of {sorted(NOMINAL_SIZE)}")
    timm_name = f"tf_{variant.replace('-', '_')}"
    nominal = NOMINAL_SIZE[variant]
    sizes: dict[str, tuple[int, int]] = {}
    with torch.device("meta"):  # shapes only: the input size of each padded convolution at the nominal size
        probe = timm.create_model(timm_name, pretrained=False, num_classes=0, in_chans=channels)
        for name, module in probe.named_modules():
            if type(module).__name__ == "Conv2dSame":
                module.register_forward_pre_hook(
                    lambda _module, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:])))
        probe(torch.zeros(1, channels, nominal, nominal))
    model = timm.create_model(timm_name, pretrained=False, num_classes=0, in_chans=channels)
    for name, size in sizes.items():
        parent, _, attribute = name.rpartition(".")
        conv = model.get_submodule(name)
        setattr(model.get_submodule(parent) if parent else model, attribute, _static(conv, size))
    return model


def _static(conv: nn.Conv2d, size: tuple[int, int]) -> nn.Module:
    pads = [same_padding(size[axis], conv.kernel_size[axis], conv.stride[axis], conv.dilation[axis]) for axis in (1, 0)]
    fixed = _static_conv_class()(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding=0,
                                 dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                                 device=conv.weight.device, dtype=conv.weight.dtype)
    fixed.pads = (*pads[0], *pads[1])  # (left, right, top, bottom), torch's order
    fixed.load_state_dict(conv.state_dict())
    return fixed


@functools.cache
def _static_conv_class() -> type:
    from torch import nn  # torch: imported when a network is built
    from torch.nn import functional

    class StaticSameConv2d(nn.Conv2d):
        """A convolution padded by fixed (left, right, top, bottom) amounts, as efficientnet_pytorch pads."""

        pads: tuple[int, int, int, int] = (0, 0, 0, 0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(functional.pad(x, self.pads))

    return StaticSameConv2d


def layout_names(model: nn.Module) -> dict[str, str]:
    """Each state-dict key of `model` (built by `build`) -> its name in the efficientnet_pytorch layout."""
    blocks = {f"blocks.{stage}.{index}": (position, type(block).__name__) for position, (stage, index, block) in
              enumerate((s, i, b) for s, stage_blocks in enumerate(model.blocks) for i, b in enumerate(stage_blocks))}
    top = {timm: layout for layout, timm in _TOP.items()}
    names = {}
    for key in model.state_dict():
        module, _, parameter = key.rpartition(".")
        if module in top:
            names[key] = f"{top[module]}.{parameter}"
            continue
        block = ".".join(module.split(".")[:3])
        position, kind = blocks[block]
        inner = {timm: layout for layout, timm in
                 (_DEPTHWISE_SEPARABLE if kind == "DepthwiseSeparableConv" else _INVERTED_RESIDUAL).items()}
        names[key] = f"_blocks.{position}.{inner[module[len(block) + 1:]]}.{parameter}"
    return names


def to_timm_keys(state: Mapping[str, torch.Tensor], names: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """An efficientnet_pytorch-layout state dict under timm's keys (`names`: `layout_names`), its classifier
    (`_fc.*`) dropped; a key the layout does not have kept as it is, so the strict load names it."""
    timm_key = {layout: timm for timm, layout in names.items()}
    return {timm_key.get(key, key): value for key, value in state.items() if key.split(".")[0] != HEAD}
