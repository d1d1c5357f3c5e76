"""Extractors by architecture (docs/design.md, "Extractors by architecture"): any torchvision classification model
or timm model by name, or an EfficientNet in the efficientnet_pytorch key layout
(`efficientnet_pytorch:efficientnet-b5`, Mammo-CLIP's image encoders: `mammo_ray.models.efficientnet_layout`), as
a feature extractor of its pooled penultimate features.

torchvision: the model with its last `nn.Linear` (its classifier) replaced by the identity, so its output is the
pooled feature vector the classifier read. timm: `num_classes=0`, timm's own way to the pooled features, with
`in_chans` input channels. A weights file's classifier keys are ignored (the extractor has none); every other key
must fit exactly, else one WeightsError names each missing, unexpected or misshapen key.

torch, torchvision and timm are imported lazily: the driver only asks for dimensions and input conventions.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mammo_ray.models import efficientnet_layout
from mammo_ray.models.weight_loading import load_state_dict_strict, seeded_init
from mammo_ray.models.weights import WeightsError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

#: The ImageNet normalisation, torchvision's convention for every classification model.
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class InputConvention:
    """What an architecture's pretrained weights expect: input channels and the mean and std of the [0, 1]
    intensities, per channel."""

    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


#: Where an architecture's network comes from: its prefix in `architecture`.
LIBRARIES = ("torchvision", "timm", "efficientnet_pytorch")


def split(architecture: str) -> tuple[str, str]:
    """'timm:convnext_tiny' -> ('timm', 'convnext_tiny')."""
    library, _, name = architecture.partition(":")
    if library not in LIBRARIES or not name:
        expected = ", ".join(f"{known}:<model>" for known in LIBRARIES)
        raise ValueError(f"architecture {architecture!r}: expected one of {expected}")
    return library, name


@functools.lru_cache(maxsize=64)
def input_convention(architecture: str, channels: int | None = None) -> InputConvention:
    """The architecture's default input convention (timm: its pretrained config's mean and std; torchvision:
    ImageNet's), for `channels` inputs (None: 3): the mean and std of one channel are repeated."""
    library, name = split(architecture)
    mean, std = _IMAGENET
    if library == "timm":
        import timm

        config = timm.get_pretrained_cfg(name)
        if config is not None:
            mean, std = tuple(config.mean), tuple(config.std)
    count = channels or 3
    if count != len(mean):
        mean, std = (float(sum(mean) / len(mean)),) * count, (float(sum(std) / len(std)),) * count
    return InputConvention(count, tuple(map(float, mean)), tuple(map(float, std)))


def _build(architecture: str, channels: int) -> nn.Module:
    library, name = split(architecture)
    if library == "efficientnet_pytorch":
        return efficientnet_layout.build(name, channels)
    if library == "timm":
        import timm

        try:
            return timm.create_model(name, pretrained=False, num_classes=0, in_chans=channels)
        except RuntimeError as error:  # timm's "Unknown model"
            raise ValueError(f"architecture {architecture!r}: {error}") from None
    import torch
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None)
    except ValueError as error:
        raise ValueError(f"architecture {architecture!r}: {error}") from None
    last = [(path, module) for path, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    if not last:
        raise ValueError(f"architecture {architecture!r}: no linear classifier to take the features before")
    parent_path, _, attribute = last[-1][0].rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attribute, torch.nn.Identity())
    return model


@functools.lru_cache(maxsize=64)
def feature_dim(architecture: str, channels: int = 3) -> int:
    """The length of the architecture's feature vectors (built on the meta device: nothing is allocated)."""
    import torch

    with torch.device("meta"):
        model = _build(architecture, channels).eval()
        # A forward rather than an attribute: timm's `num_features` is the trunk's, some heads widen it
        # (MobileNetV3's conv_head), and torchvision names it differently per family.
        size = 299 if "inception" in architecture else 224
        return int(model(torch.zeros(1, channels, size, size)).shape[-1])


def build_generic_extractor(architecture: str, state_dict: Mapping[str, torch.Tensor] | None = None, *,
                            seed: int | None = None, source: str = "<state dict>", channels: int = 3,
                            key_prefix: str | None = None) -> nn.Module:
    """(B, channels, H, W) -> (B, feature_dim) in eval mode: random init from `seed`, then `state_dict` (its keys
    with `key_prefix` stripped; keys outside the prefix and the classifier's keys ignored)."""
    with seeded_init(seed):
        model = _build(architecture, channels)
    if state_dict is not None:
        state = dict(state_dict)
        if key_prefix is not None:
            state = {key[len(key_prefix):]: value for key, value in state.items() if key.startswith(key_prefix)}
            if not state:
                raise WeightsError(source, f"holds no key starting with key_prefix {key_prefix!r}")
        names = None
        if split(architecture)[0] == "efficientnet_pytorch":  # the file's names, here and in any error
            names = efficientnet_layout.layout_names(model)
            state = efficientnet_layout.to_timm_keys(state, names)
        expected = model.state_dict().keys()
        # The classifier the extractor dropped: its keys (e.g. fc.*, head.fc.*, classifier.*) are not features.
        head = {key for key in state if key not in expected and key.rsplit(".", 1)[-1] in ("weight", "bias")
                and _is_head(key, expected)}
        load_state_dict_strict(model, {k: v for k, v in state.items() if k not in head}, source,
                               f"state dict does not match {architecture}", names=names)
    return model.eval()


def _is_head(key: str, expected: Collection[str]) -> bool:
    """Whether `key` belongs to a classifier the extractor removed: a top-level head module's weight or bias."""
    module = key.rsplit(".", 1)[0]
    return module.split(".")[0] in ("fc", "classifier", "head", "heads", "last_linear") and not any(
        name.startswith(module + ".") for name in expected)
