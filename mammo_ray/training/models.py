"""The networks fine-tuned in the paper's Table 1, each with a `num_classes` head.

- ``resnet50``, ``resnet18``, ``squeezenet1_1``: torchvision models (`models.backbones.build_classifier`),
  ImageNet-normalised 3-channel input; head = ``fc`` (ResNets) or ``classifier`` (SqueezeNet).
- ``nyu``: the NYU image-wise model's trunk (CC trunk by default, as the "NYU L-CC" extractor) and
  its pretrained ``fc1`` layer, then a new Linear(256, num_classes) head; 1-channel standardised NYU
  windows as input. Built from a published-format checkpoint (`models.nyu.build_nyu_model`).
- ``small_cnn``: a small network trained from scratch (the baseline the paper cites): four
  conv3x3-BN-ReLU-maxpool blocks (16, 32, 64, 128 channels), global average pooling, dropout and a
  linear head, on the same 3-channel input as the ImageNet models. About 100 k parameters.

`set_trainable(model, name, "head")` freezes everything outside the head (and keeps the frozen
BatchNorm statistics fixed, see `freeze_batchnorm`); ``"all"`` unfreezes the whole network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mammo_ray.models.nyu import FEATURE_CHANNELS, VIEW_TRUNK, NYUTrunk, build_nyu_model, normalise_view
from mammo_ray.models.weight_loading import load_state_dict_strict, seeded_init

IMAGENET_MODELS: tuple[str, ...] = ("resnet50", "resnet18", "squeezenet1_1")
MODEL_NAMES: tuple[str, ...] = (*IMAGENET_MODELS, "nyu", "small_cnn")
_HEADS: dict[str, tuple[str, ...]] = {
    "resnet50": ("fc",),
    "resnet18": ("fc",),
    "squeezenet1_1": ("classifier",),
    "nyu": ("head",),
    "small_cnn": ("classifier",),
}


def check_model_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r} (use one of {', '.join(MODEL_NAMES)})")


def input_family(name: str) -> str:
    """'nyu' (1-channel NYU windows) or 'imagenet' (3-channel ImageNet-normalised squares)."""
    check_model_name(name)
    return "nyu" if name == "nyu" else "imagenet"


class SmallCNN(nn.Module):
    """(B, C, H, W) -> (B, num_classes) logits; see the module doc."""

    def __init__(self, num_classes: int, in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 64, 128),
                 dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class NYUClassifier(nn.Module):
    """A NYU trunk + its pretrained fc1 (256 -> 256, ReLU) + a new head: (B, 1, H, W) -> (B, num_classes)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.trunk = NYUTrunk()
        self.fc1 = nn.Linear(FEATURE_CHANNELS, FEATURE_CHANNELS)
        self.head = nn.Linear(FEATURE_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.trunk(x).mean(dim=(2, 3))
        return self.head(F.relu(self.fc1(features)))

    @classmethod
    def from_image_model(cls, image_model: nn.Module, num_classes: int, view: str = "l_cc") -> NYUClassifier:
        """Take view head `view` of a NYUImageModel: its trunk (CC or MLO) and its fc1 (fc1_lcc ... fc1_rmlo)."""
        key = normalise_view(view)
        model = cls(num_classes)
        model.trunk.load_state_dict(image_model.trunk(VIEW_TRUNK[key]).state_dict())
        model.fc1.load_state_dict(getattr(image_model, f"fc1_{key}").state_dict())
        return model


def build_model(
    name: str,
    num_classes: int,
    state_dict: Mapping[str, Any] | None = None,
    *,
    seed: int | None = 0,
    source: str = "<state dict>",
    nyu_view: str = "l_cc",
) -> nn.Module:
    """A model with a `num_classes` head: seeded random init, then the body from `state_dict`.

    `state_dict` is pretrained weights in their published format (torchvision, NYU), or a state dict
    of this very model (a fine-tuning checkpoint), which is loaded whole. A mismatch raises
    WeightsError naming the keys. `nyu_view`: the NYU view head a published NYU file gives its trunk and
    fc1 from (l_cc, r_cc, l_mlo, r_mlo).
    """
    check_model_name(name)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if name in IMAGENET_MODELS:
        # Here, not at the top: torchvision (as long to import as torch) only for the ImageNet models.
        from mammo_ray.models.backbones import build_classifier

        return build_classifier(name, num_classes, state_dict, seed=seed, source=source)
    with seeded_init(seed):
        model: nn.Module = NYUClassifier(num_classes) if name == "nyu" else SmallCNN(num_classes)
    if state_dict is None:
        return model
    own_keys = set(model.state_dict())
    if name == "nyu" and not own_keys & set(state_dict):
        # The image-wise file has the fc1 heads; another NYU checkpoint (view-wise) gives its trunks only.
        has_heads = any(str(key).startswith("fc1_") for key in state_dict)
        image_model = build_nyu_model(state_dict, seed=seed, source=source, trunks_only=not has_heads)
        with seeded_init(seed):
            model = NYUClassifier.from_image_model(image_model, num_classes, nyu_view)
        return model
    load_state_dict_strict(model, state_dict, source, f"state dict does not match the {type(model).__name__}")
    return model


def head_names(name: str) -> tuple[str, ...]:
    check_model_name(name)
    return _HEADS[name]


def _is_head(parameter_name: str, heads: tuple[str, ...]) -> bool:
    return any(parameter_name == h or parameter_name.startswith(h + ".") for h in heads)


def set_trainable(model: nn.Module, name: str, which: str) -> list[nn.Parameter]:
    """Freeze all but the head (`which="head"`) or nothing (`"all"`); returns the trainable parameters."""
    if which not in ("head", "all"):
        raise ValueError(f"which must be 'head' or 'all', got {which!r}")
    heads = head_names(name)
    trainable = []
    for parameter_name, parameter in model.named_parameters():
        parameter.requires_grad_(which == "all" or _is_head(parameter_name, heads))
        if parameter.requires_grad:
            trainable.append(parameter)
    return trainable


def freeze_batchnorm(model: nn.Module, name: str, which: str) -> None:
    """After `model.train()`: with a frozen body, put its BatchNorm / Dropout layers back in eval mode.

    A frozen body is a fixed feature extractor, so its running statistics must not drift either.
    """
    if which == "all":
        return
    heads = head_names(name)
    for module_name, module in model.named_modules():
        if module_name and not _is_head(module_name, heads) and not any(True for _ in module.children()):
            module.eval()


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
