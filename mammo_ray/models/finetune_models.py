"""The models fine-tuning trains, resolved from the config: each one's weights checked before any work, and
the key under which the result tables record its weights (`weights_by_model`). No torch, no Ray: the
preflight and the current inputs read it too.
"""

from __future__ import annotations

from dataclasses import dataclass

from mammo_ray.config.finetune import DEFAULT_WEIGHTS, FinetuneConfig
from mammo_ray.errors import ConfigError
from mammo_ray.models.weights import WeightsError, WeightsSpec
from mammo_ray.models.weights_catalogue import FETCH_HINT
from mammo_ray.models.weights_resolver import check_weights_available


@dataclass(frozen=True)
class FinetuneModel:
    """A model to fine-tune: its name, its checked weights, what they were pretrained on, its view head."""


    name: str
    spec: WeightsSpec
    pretrained_on: str
    variant: str  # FinetuneModelConfig.variant: the NYU view head, '' for other models


def resolve_models(config: FinetuneConfig) -> list[FinetuneModel]:
    """Every model with its weights checked (WeightsError at start, before any work), keys unique."""
    models = []
    for entry in config.models:
        source = entry.weights or DEFAULT_WEIGHTS[entry.name]
        if source is None:
            raise WeightsError(
                "nyu", "the NYU model needs its published weights; none were given",
                hint=f"run `{FETCH_HINT}` (fetch name nyu-image-wise) and set the model's weights to the "
                "copy of ImageOnly__ModeImage_weights.p, or write random-init:<seed> for a random-init run",
            )
        spec = WeightsSpec(source, entry.sha256)
        check_weights_available(spec)
        pretrained = "none" if spec.kind == "random-init" else ("nyu" if entry.name == "nyu" else "imagenet")
        models.append(FinetuneModel(entry.name, spec, pretrained, entry.variant))
    keys = [(m.name, m.variant, m.pretrained_on) for m in models]
    if len(set(keys)) != len(keys):
        raise ConfigError("finetune.models", f"two entries share (model, view, pretrained_on): {keys}")
    return models


def weights_key(model: FinetuneModel) -> str:
    """The key of a model's weights in the tables' provenance (`weights_by_model`)."""
    return ":".join(part for part in (model.name, model.variant, model.pretrained_on) if part)
