"""What an image model output is to the pass: an `InferenceTask` (plain, picklable data naming its model key,
schema, preprocessing, network and columns), the model an actor loads for it, and what one run of it did.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mammo_ray import tables
from mammo_ray.config.sections import IngestConfig
from mammo_ray.errors import MammoRayError
from mammo_ray.feature_store import ModelKey
from mammo_ray.models import catalogue
from mammo_ray.models.weights import WeightsSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from mammo_ray.imaging.transforms import ImageTransform


@dataclass(frozen=True)
class InferenceRun:
    """What one run did: outputs computed, images whose output was already stored, error rows; the key."""

    written: int
    skipped: int
    errors: int
    uri: str
    errors_uri: str
    key: ModelKey
    part_files: int = 0  # the key folder's part files after the run

    @property
    def weights_id(self) -> str:
        return self.key.weights_id


class LoadedModel:
    """A model ready for inference in an actor: `module` (an nn.Module the actor moves to its device) and
    `weights_id`. `InferenceTask.load` may return any object with these two attributes."""

    def __init__(self, module: Any, weights_id: str) -> None:
        self.module = module
        self.weights_id = weights_id


class WeightsChangedError(MammoRayError):
    """The weights an actor loaded are not the ones the run was keyed by (the file changed meanwhile)."""


class InferenceTask(ABC):
    """What a model stage does per image. Plain, picklable data: it travels to Ray tasks and actors,
    which build the heavy parts (preprocessor, model, weights) themselves.

    `spec` is the stage's own settings, with its weights; the task names its `model_id` and `transform`."""

    spec: Any
    #: Whether the preprocessing uses each image's laterality and view (flips, windows, heads).
    orientation: bool = True
    #: Whether one image costs seconds of compute (the patch classifier's hundreds of patches): then even a single
    #: batch is worth an actor's start (stages.pass_plan.actor_count).
    heavy: bool = False
    #: The image stages whose stored outputs this output reads as inputs (ImageOutputs.inputs_for_later): it runs
    #: in a pass after theirs.
    after: tuple[str, ...] = ()

    @property
    @abstractmethod
    def stage(self) -> str:
        """The `stage` value of its errors rows."""

    @property
    def weights_spec(self) -> WeightsSpec:
        return catalogue.weights_spec(self.spec)

    def key(self, read: IngestConfig) -> ModelKey:
        """What the outputs depend on besides the images; the weights are hashed, never unpickled, here."""
        return catalogue.model_key(self.model_id, self.weights_spec, self.preprocess_id, read, self.orientation)

    @property
    @abstractmethod
    def model_id(self) -> str:
        """The model's identity: its name and every setting that changes its outputs (models.catalogue)."""

    @property
    def preprocess_id(self) -> str:
        """Names the preprocessing: the transform's id."""
        return self.transform.id

    @property
    @abstractmethod
    def schema(self) -> pa.Schema:
        """The feature store's schema: FEATURE_KEY_COLUMNS and the task's output columns."""

    @abstractmethod
    def table_uri(self, output_uri: str) -> str:
        """The model output folder (feature store + index)."""

    def errors_uri(self, output_uri: str) -> str:
        return tables.errors_uri(output_uri, self.stage)

    def group(self, row: Any) -> str:
        """Rows with the same group (a model head, say) and input shape run through `forward` together.
        Raise to make the image an errors row (the message should say what is wrong; the file name is added)."""
        return ""

    @property
    @abstractmethod
    def transform(self) -> ImageTransform:
        """CPU side: decoded pixels (H, W) and the image's row -> inputs (n, C, h, w); the section's one
        transform (mammo_ray.imaging.transforms), whose id names what it does."""

    @abstractmethod
    def load(self) -> LoadedModel:
        """Actor side: build the model with its weights (on CPU, in eval mode); anything with `.module`
        and `.weights_id` will do."""

    @abstractmethod
    def forward(self, model: LoadedModel, inputs: torch.Tensor, group: str) -> torch.Tensor:
        """(B, C, h, w) inputs of one group -> (B, d) outputs. Called in inference mode (and autocast)."""

    def shared_trunks(self, group: str) -> tuple[str, ...]:
        """The NYU trunks whose final feature maps give this output for inputs of `group`, or () when it runs
        its own network (`forward`). Outputs with the same weights and preprocessing read one forward of
        each trunk per image (`from_trunks`)."""
        return ()

    def from_trunks(self, model: LoadedModel, maps: dict[str, torch.Tensor], group: str) -> torch.Tensor:
        """(B, d) outputs from the `shared_trunks(group)` maps (B, 256, h, w) of the inputs."""
        raise NotImplementedError(f"{type(self).__name__} shares no trunks")

    @abstractmethod
    def output_columns(self, outputs: Sequence[np.ndarray | None]) -> dict[str, list]:
        """Per-row averaged outputs (d,) (None for rows without one) -> the task's own output columns.

        Rows without an output need placeholder values of the right type: they are dropped before writing.
        """

    def to_frame(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Keyed output rows -> a frame Arrow converts to `schema` exactly (override to convert columns)."""
        return rows[self.schema.names]
