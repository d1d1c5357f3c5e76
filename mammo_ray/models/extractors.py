"""The study's feature extractors as models: an extractor's config section -> its network with its weights.

What an extractor is (its name, family, settings, identity and preprocessing) is its config section,
`mammo_ray.config.ExtractorConfig`; this module builds the network the inference actors run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mammo_ray.config.sections import EXTRACTORS, ExtractorConfig
from mammo_ray.models.weights import resolve_weights

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["EXTRACTORS", "LoadedExtractor"]


class LoadedExtractor:
    """The model of an extractor with its weights, ready for inference: (B, C, H, W) -> (B, dim)."""

    def __init__(self, spec: ExtractorConfig) -> None:
        resolved = resolve_weights(spec.weights_spec)
        self.spec = spec
        self.weights_id = resolved.weights_id
        if spec.family == "imagenet":
            from mammo_ray.models.backbones import build_feature_extractor

            self.module, _ = build_feature_extractor(
                spec.member, resolved.state_dict, seed=resolved.seed, source=resolved.source
            )
        else:
            from mammo_ray.models.nyu import build_nyu_model

            self.module = build_nyu_model(resolved.state_dict, seed=resolved.seed, source=resolved.source)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.spec.family == "imagenet":
            return self.module(inputs)
        return self.module.extract(inputs, self.spec.member, self.spec.pool)
