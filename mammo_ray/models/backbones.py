"""ImageNet CNNs from torchvision as feature extractors and as classifiers to fine-tune.

Inputs are (B, 3, H, W) ImageNet-normalised tensors. Names: "resnet50" (2048-d), "resnet18" (512-d),
"squeezenet1_1" (512-d: global average pool of its `features`).

State dicts are torchvision's own (what ``torchvision:<ARCH>:<WEIGHTS>`` or a copied .pth resolves to).
Loading is strict on the body; the classification head (``fc.*`` for ResNets, ``classifier.1.*`` for
SqueezeNet) is ignored by a feature extractor, and by a classifier whose class count differs (the new
head keeps its seeded random init). A classifier state dict with a matching head (e.g. a fine-tuned
checkpoint) is loaded whole. Mismatches raise WeightsError listing the keys.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torchvision
from torch import nn

from mammo_ray.models.weight_loading import load_state_dict_strict, seeded_init

#: Backbone name -> feature dimension.
BACKBONE_DIMS: dict[str, int] = {"resnet50": 2048, "resnet18": 512, "squeezenet1_1": 512}
#: Backbone name -> state-dict keys of its classification head.
_HEAD_KEYS: dict[str, tuple[str, ...]] = {
    "resnet50": ("fc.weight", "fc.bias"),
    "resnet18": ("fc.weight", "fc.bias"),
    "squeezenet1_1": ("classifier.1.weight", "classifier.1.bias"),
}


class FeatureExtractor(nn.Module):
    """(B, 3, H, W) -> (B, dim): a torchvision body followed by global average pooling."""

    def __init__(self, name: str, body: nn.Module, dim: int) -> None:
        super().__init__()
        self.name = name
        self.dim = dim
        self.body = body
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(x)).flatten(1)


def _check_name(name: str) -> None:
    if name not in BACKBONE_DIMS:
        raise ValueError(f"unknown backbone {name!r} (use one of {sorted(BACKBONE_DIMS)})")


def _load(model: nn.Module, state_dict: Mapping[str, torch.Tensor], name: str, *, with_head: bool,
          source: str) -> None:
    """Strict load; head keys are required when `with_head`, else ignored (and not loaded)."""
    head = set(_HEAD_KEYS[name])
    load_state_dict_strict(model, state_dict, source, f"state dict does not match torchvision {name}",
                           keep=None if with_head else (lambda key: key not in head))


def _torchvision_model(name: str, num_classes: int = 1000) -> nn.Module:
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def build_feature_extractor(
    name: str,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    *,
    seed: int | None = None,
    source: str = "<state dict>",
) -> tuple[FeatureExtractor, int]:
    """(module returning (B, dim), dim). Random init from `seed` unless a state dict is given. Eval mode."""
    _check_name(name)
    with seeded_init(seed):
        model = _torchvision_model(name)
    if state_dict is not None:
        _load(model, state_dict, name, with_head=False, source=source)
    if name.startswith("resnet"):
        body: nn.Module = nn.Sequential(
            model.conv1, model.bn1, model.relu, model.maxpool,
            model.layer1, model.layer2, model.layer3, model.layer4,
        )
    else:
        body = model.features
    dim = BACKBONE_DIMS[name]
    return FeatureExtractor(name, body, dim).eval(), dim


def build_classifier(
    name: str,
    num_classes: int,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    *,
    seed: int | None = None,
    source: str = "<state dict>",
) -> nn.Module:
    """The torchvision model with a `num_classes` head (seeded random init), body from `state_dict`.

    If `state_dict`'s head already has `num_classes` outputs it is loaded too (resuming a fine-tune).
    """
    _check_name(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    with seeded_init(seed):
        model = _torchvision_model(name, num_classes)
    if state_dict is not None:
        head_key = _HEAD_KEYS[name][0]
        with_head = head_key in state_dict and state_dict[head_key].shape[0] == num_classes
        _load(model, state_dict, name, with_head=with_head, source=source)
    return model
