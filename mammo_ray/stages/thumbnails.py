"""Thumbnails (docs/design.md, "Contact sheet"): each image's network inputs shrunk for the eye, an output of the
image pass, for the report's preprocessing contact sheet.

Per input family one output: the NYU window zero-shot reads, and the ImageNet square of the first ImageNet
extractor. The pass prepares each input once for its model and its thumbnail alike, so a thumbnail costs a
resize, no preprocessing of its own. Output: the feature store ``<output>/thumbnails/<family>/``
(schemas.THUMBNAILS_SCHEMA, keyed by content and the input's preprocessing), errors in
``<output>/errors/thumbnails-<family>.parquet``. Off when `report.contact_sheet` is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from mammo_ray import feature_store, schemas, tables
from mammo_ray.config.sections import IngestConfig
from mammo_ray.imaging.decode import decode_id
from mammo_ray.imaging.transforms import ImageTransform
from mammo_ray.models import catalogue
from mammo_ray.stages.inference import PassResult
from mammo_ray.stages.inference_task import InferenceTask, LoadedModel
from mammo_ray.stages.stage import Counts, ImageOutputs, Stage, model_output_missing

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from mammo_ray.current import CurrentInputs  # types only: CurrentInputs is built from the stages' keys

NAME = "thumbnails"
#: Rows of a thumbnail: enough to see a flip, a crop or a window on the label, small enough for a sheet of many.
ROWS = 96
_VERSION = "v1"  # bump whenever a thumbnail of the same input changes
_NO_WEIGHTS = "none"  # a thumbnail runs no network


@dataclass(frozen=True)
class Thumbnails:
    """One input family's thumbnails: its name and the transform whose inputs they show."""

    family: str
    transform: ImageTransform


@dataclass(frozen=True)
class ThumbnailTask(InferenceTask):
    """A family's network input shrunk to `ROWS` rows (its first channel, or an ImageNet input's mean over its
    three), grey levels 0-255 of the input's own range."""

    spec: Thumbnails

    @property
    def stage(self) -> str:  # type: ignore[override]
        return f"{NAME}:{self.spec.family}"

    @property
    def orientation(self) -> bool:  # type: ignore[override]
        return self.spec.transform.uses_orientation

    @property
    def model_id(self) -> str:
        return f"thumbnail:{_VERSION}:rows={ROWS}"

    @property
    def transform(self) -> ImageTransform:
        return self.spec.transform

    def key(self, read: IngestConfig) -> feature_store.ModelKey:
        preprocess_id = f"{self.preprocess_id}|{decode_id(read.apply_voi_lut)}"  # as catalogue.model_key's
        return feature_store.ModelKey(self.model_id, _NO_WEIGHTS, preprocess_id, self.orientation)

    @property
    def schema(self) -> pa.Schema:
        return schemas.THUMBNAILS_SCHEMA

    def table_uri(self, output_uri: str) -> str:
        return tables.thumbnails_uri(output_uri, self.spec.family)

    def load(self) -> LoadedModel:
        import torch

        return LoadedModel(torch.nn.Identity(), _NO_WEIGHTS)

    def forward(self, model: LoadedModel, inputs: torch.Tensor, group: str) -> torch.Tensor:
        import torch
        import torch.nn.functional as F  # noqa: N812 - torch's own convention

        grey = inputs.float().mean(dim=1, keepdim=True)
        height, width = grey.shape[-2:]
        size = (ROWS, max(1, round(ROWS * width / height)))
        small = F.interpolate(grey, size=size, mode="area")[:, 0].flatten(1)
        low, high = small.min(dim=1, keepdim=True).values, small.max(dim=1, keepdim=True).values
        levels = torch.round(255 * (small - low) / (high - low).clamp_min(1e-6))
        shape = torch.tensor(size, dtype=levels.dtype, device=levels.device).expand(len(levels), 2)
        return torch.cat([shape, levels], dim=1)

    def output_columns(self, outputs: Sequence[np.ndarray | None]) -> dict[str, list]:
        empty = np.zeros(0, dtype=np.uint8)  # error rows only: dropped before writing
        return {
            "thumb_height": [0 if o is None else int(round(o[0])) for o in outputs],
            "thumb_width": [0 if o is None else int(round(o[1])) for o in outputs],
            "pixels": [empty if o is None else np.clip(np.rint(o[2:]), 0, 255).astype(np.uint8) for o in outputs],
        }

    def to_frame(self, rows: pd.DataFrame) -> pd.DataFrame:
        frame = super().to_frame(rows)
        return frame.assign(thumb_height=frame["thumb_height"].astype(np.int32),
                            thumb_width=frame["thumb_width"].astype(np.int32))


def families(current: CurrentInputs) -> list[Thumbnails]:
    """The inputs the contact sheet shows: zero-shot's NYU window, and the first ImageNet extractor's square (when
    the study has one); none when `report.contact_sheet` is 0."""
    config = current.config
    if config.report.contact_sheet == 0:
        return []
    shown = [Thumbnails("nyu", catalogue.nyu_transform(config.zero_shot))]
    imagenet = [spec for spec in config.embed.extractors if catalogue.family(spec) == "imagenet"]
    if imagenet:
        shown.append(Thumbnails("imagenet", catalogue.transform(imagenet[0])))
    return shown


def read_thumbnails(current: CurrentInputs, family: Thumbnails) -> pd.DataFrame:
    """The thumbnails of the current manifest's images for one family (StaleTableError when not current)."""
    task = ThumbnailTask(family)
    return feature_store.read_view(task.table_uri(current.config.output), current.manifest(), task.key(current.read),
                                   NAME)


def thumbnail(row: object) -> np.ndarray:
    """One stored row's thumbnail as a (thumb_height, thumb_width) uint8 image."""
    return np.asarray(row.pixels, dtype=np.uint8).reshape(int(row.thumb_height), int(row.thumb_width))  # type: ignore[attr-defined]


def _tasks(current: CurrentInputs) -> list[InferenceTask]:
    return [ThumbnailTask(family) for family in families(current)]


def _counts(current: CurrentInputs, done: PassResult) -> Counts:
    counts: Counts = {}
    for family in families(current):
        run = done.runs[ThumbnailTask(family).stage]
        counts.update({f"thumbnails:{family.family}": run.written, f"thumbnails_skipped:{family.family}": run.skipped,
                       f"thumbnails_errors:{family.family}": run.errors})
    return counts


def _fingerprint(current: CurrentInputs) -> object:
    return current.digest("images"), [ThumbnailTask(family).key(current.read).as_dict() for family in
                                      families(current)]


def _outputs_missing(current: CurrentInputs) -> str | None:
    output = current.config.output
    for family in families(current):
        task = ThumbnailTask(family)
        problem = model_output_missing(current, task.table_uri(output), task.errors_uri(output), task.key(current.read))
        if problem is not None:
            return problem
    return None


STAGE = Stage(NAME, _fingerprint, sections=("ingest",), needs_ray=True,
              image_outputs=ImageOutputs(tasks=_tasks, counts=_counts),
              reads=(tables.MANIFEST, tables.COHORT), writes=(tables.THUMBNAILS, tables.THUMBNAILS_ERRORS),
              outputs_missing=_outputs_missing)
