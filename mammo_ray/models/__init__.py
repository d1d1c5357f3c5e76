"""Models: the NYU ResNet-22 image-wise model, torchvision backbones, weight resolution and fetching.

Submodules:
    nyu        NYUTrunk, NYUImageModel, load_nyu_checkpoint, build_nyu_model
    backbones  build_feature_extractor, build_classifier (resnet50, resnet18, squeezenet1_1)
    weights    WeightsSpec, resolve_weights, check_weights_available, WeightsError
    fetch      fetch_weights (copies the published files to a folder or bucket)

Names are re-exported lazily: importing `mammo_ray.models.weights` (to check a config) does not import
torch until a function needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # nyu
    "NYUTrunk": "nyu",
    "NYUImageModel": "nyu",
    "NYULoadReport": "nyu",
    "load_nyu_checkpoint": "nyu",
    "build_nyu_model": "nyu",
    "published_state_dict": "nyu",
    "pool_features": "nyu",
    "view_key": "nyu",
    "CC_WINDOW": "nyu",
    "MLO_WINDOW": "nyu",
    "POOL_DIMS": "nyu",
    "EXTRACTORS": "nyu",
    "VIEWS": "nyu",
    # backbones
    "BACKBONE_DIMS": "backbones",
    "FeatureExtractor": "backbones",
    "build_feature_extractor": "backbones",
    "build_classifier": "backbones",
    # weights
    "WeightsError": "weights",
    "WeightsSpec": "weights",
    "ResolvedWeights": "weights",
    "KnownWeightsFile": "weights",
    "resolve_weights": "weights",
    "check_weights_available": "weights",
    "known_weights_file": "weights",
    "seeded_init": "weights",
    "DEFAULT_FETCH_NAMES": "weights",
    "NYU_IMAGE_WISE_URL": "weights",
    "NYU_VIEW_WISE_URL": "weights",
    # fetch
    "fetch_weights": "fetch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
