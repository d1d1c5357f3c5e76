"""The study's feature extractors as models: an extractor's config section -> its network with its weights.

What an extractor is (family, member, identity, preprocessing) is `mammo_ray.models.catalogue`; this
module builds the network the inference actors run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mammo_ray.models.catalogue import GENERIC, NYU_CHANNELS, family, input_convention, member, weights_spec
from mammo_ray.models.weights_resolver import resolve_weights

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from mammo_ray.config.sections import ExtractorConfig  # types only: models never import the config

__all__ = ["LoadedExtractor"]


class LoadedExtractor:
    """The model of an extractor with its weights, ready for inference: (B, C, H, W) -> (B, dim)."""

    def __init__(self, spec: ExtractorConfig) -> None:
        resolved = resolve_weights(weights_spec(spec))
        self.spec = spec
        self.family, self.member = family(spec), member(spec)
        self.weights_id = resolved.weights_id
        if self.family == "imagenet":
            from mammo_ray.models.backbones import build_feature_extractor  # torchvision: ImageNet families only

            self.module, _ = build_feature_extractor(
                self.member, resolved.state_dict, seed=resolved.seed, source=resolved.source
            )
        elif self.family == GENERIC:
            from mammo_ray.models.generic import build_generic_extractor  # torchvision or timm: when asked for

            self.module = build_generic_extractor(
                self.member, resolved.state_dict, seed=resolved.seed, source=resolved.source,
                channels=input_convention(spec).channels, key_prefix=spec.key_prefix)
        else:
            from mammo_ray.models.nyu import build_nyu_model  # torch: built in the actors that run it only

            self.module = build_nyu_model(resolved.state_dict, seed=resolved.seed, source=resolved.source,
                                          in_channels=NYU_CHANNELS[self.family])

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.family in ("imagenet", GENERIC):
            return self.module(inputs)
        return self.module.extract(inputs, self.member, self.spec.pool)
