"""A fine-tuned network of a model package as an output of the image pass (`mammo-ray score` with a network
package): the fine-tuning's own preprocessing at its final stage's size, the network from the package's
`network.safetensors`, each image's softmax probability of the positive class in a feature store of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from mammo_ray import storage
from mammo_ray.config.finetune import FinetuneConfig
from mammo_ray.models import catalogue
from mammo_ray.models.weights import WeightsSpec
from mammo_ray.package_schemas import NETWORK_OUTPUTS_SCHEMA
from mammo_ray.stages.inference_task import InferenceTask, LoadedModel

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from mammo_ray.imaging.transforms import ImageTransform


@dataclass(frozen=True)
class NetworkSpec:
    """What scoring needs of a fine-tuned network: its package name, architecture (training.models) and its input
    family, NYU view head, classes and the positive one, the final stage's input size and preprocessing settings,
    and its weights file (the package's network.safetensors) with that file's sha256. Plain data: the decode
    tasks that unpickle it import no torch."""

    name: str
    model: str
    input_family: str  # training.models.input_family: imagenet or nyu inputs
    variant: str
    num_classes: int
    positive: int
    size: int
    crop_to_breast: bool
    source_resolution: float | None
    weights: str
    sha256: str


@dataclass(frozen=True)
class NetworkTask(InferenceTask):
    spec: NetworkSpec

    @property
    def orientation(self) -> bool:  # type: ignore[override]
        return self.transform.uses_orientation

    @property
    def stage(self) -> str:
        return f"score-{self.spec.name}"

    @property
    def weights_spec(self) -> WeightsSpec:
        return WeightsSpec(self.spec.weights, self.spec.sha256)

    @property
    def model_id(self) -> str:
        return f"network:{self.spec.model}:variant={self.spec.variant}:classes={self.spec.num_classes}"

    @property
    def transform(self) -> ImageTransform:
        settings = FinetuneConfig(crop_to_breast=self.spec.crop_to_breast,
                                  source_resolution=self.spec.source_resolution)
        return catalogue.finetune_transform(settings, self.spec.input_family, self.spec.size, self.spec.variant)

    @property
    def schema(self) -> pa.Schema:
        return NETWORK_OUTPUTS_SCHEMA

    def table_uri(self, output_uri: str) -> str:
        return storage.join(output_uri, "networks", self.spec.name)

    def load(self) -> LoadedModel:
        # torch: only where the model runs (the Ray tasks that unpickle this task decode without it)
        from mammo_ray.models.weights_resolver import resolve_weights
        from mammo_ray.training.models import build_model  # as above

        weights = resolve_weights(self.weights_spec)  # the sha256 checked before the tensors are read
        model = build_model(self.spec.model, self.spec.num_classes, weights.state_dict, source=self.spec.weights)
        return LoadedModel(model.eval(), weights.weights_id)

    def forward(self, model: LoadedModel, inputs: torch.Tensor, group: str) -> torch.Tensor:
        import torch  # in the actors only (see load)

        probabilities = torch.softmax(model.module(inputs).float(), dim=1)
        return probabilities[:, self.spec.positive:self.spec.positive + 1]

    def output_columns(self, outputs: Sequence[np.ndarray | None]) -> dict[str, list]:
        return {"probability": [0.0 if o is None else float(o[0]) for o in outputs]}


__all__ = ["NetworkSpec", "NetworkTask"]
