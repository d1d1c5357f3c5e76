"""Embedding stage: manifest -> decoded images (CPU tasks) -> preprocessed inputs (CPU tasks) ->
features (an actor pool, one GPU per actor where there are GPUs) -> the feature store under
embeddings/<extractor>/ (tables, feature_store).

The pipeline itself (the feature store, atomic part files, the index, error rows, the actor pool) is the
shared one of `mammo_ray.stages.inference`; this module says what is particular to embedding: the
extractor's preprocessing and model, and its vectors. Read them with `read_embeddings`: the vectors of
the current manifest's images under the current extractor settings and weights, joined to the manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from mammo_ray import feature_store, preflight, schemas, tables
from mammo_ray.config.sections import EmbedConfig, ExtractorConfig, IngestConfig
from mammo_ray.imaging.transforms import ImageTransform
from mammo_ray.models import catalogue
from mammo_ray.models.extractors import LoadedExtractor
from mammo_ray.stages.inference import PassResult, run_inference
from mammo_ray.stages.inference_task import InferenceRun, InferenceTask
from mammo_ray.stages.stage import Counts, ImageOutputs, Stage, model_output_missing

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from mammo_ray.current import CurrentInputs  # types only: CurrentInputs reads this module's model keys

log = logging.getLogger("mammo_ray.embed")

@dataclass(frozen=True)
class EmbedResult:
    extractor: str
    embedded: int
    skipped: int
    errors: int
    uri: str
    errors_uri: str = ""


def embeddings_uri(output_uri: str, extractor: str) -> str:
    return tables.embeddings_uri(output_uri, extractor)


def stage_name(extractor: str) -> str:
    """The `stage` of an extractor's errors rows (its errors table: errors/embed-<extractor>.parquet)."""
    return f"embed:{extractor}"


def errors_uri(output_uri: str, extractor: str) -> str:
    return tables.errors_uri(output_uri, stage_name(extractor))


@dataclass(frozen=True)
class EmbedTask(InferenceTask):
    """One extractor as an inference task: its preprocessing, its model's features, its feature store."""

    spec: ExtractorConfig
    #: An image+heatmaps extractor's heatmaps (their model key), which its inputs read.
    heatmaps: feature_store.ModelKey | None = None

    @property
    def orientation(self) -> bool:  # type: ignore[override]
        return self.transform.uses_orientation

    @property
    def after(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("heatmaps",) if self.transform.needs_heatmaps else ()

    @property
    def model_id(self) -> str:
        return catalogue.model_id(self.spec)

    @property
    def preprocess_id(self) -> str:
        return catalogue.preprocess_id(self.spec, self.heatmaps)

    @property
    def transform(self) -> ImageTransform:
        return catalogue.transform(self.spec, self.heatmaps)

    @property
    def stage(self) -> str:  # type: ignore[override]
        return stage_name(self.spec.name)

    @property
    def schema(self) -> pa.Schema:
        return schemas.embeddings_schema(catalogue.dim(self.spec))

    def table_uri(self, output_uri: str) -> str:
        return embeddings_uri(output_uri, self.spec.name)

    def load(self) -> LoadedExtractor:
        return LoadedExtractor(self.spec)  # has .module and .weights_id, as the actor needs

    def forward(self, model: LoadedExtractor, inputs: torch.Tensor, group: str) -> torch.Tensor:
        return model(inputs)

    def shared_trunks(self, group: str) -> tuple[str, ...]:
        # torch: only where the model runs (the Ray tasks that unpickle this task decode without it)
        from mammo_ray.models.nyu import trunks_of

        return trunks_of(catalogue.member(self.spec)) if catalogue.family(self.spec) in catalogue.NYU_CHANNELS else ()

    def from_trunks(self, model: LoadedExtractor, maps: dict[str, torch.Tensor], group: str) -> torch.Tensor:
        from mammo_ray.models.nyu import features_from_maps  # torch: in the actors only (see shared_trunks)

        return features_from_maps(maps, catalogue.member(self.spec), self.spec.pool)

    def output_columns(self, outputs: Sequence[np.ndarray | None]) -> dict[str, list]:
        # Rows without an output carry an empty vector: Arrow tensor columns cannot mix arrays and nulls.
        empty = np.zeros(0, dtype=np.float32)
        return {"embedding": [empty if o is None else o.astype(np.float32) for o in outputs]}

    def to_frame(self, rows: pd.DataFrame) -> pd.DataFrame:
        frame = super().to_frame(rows)
        return frame.assign(embedding=[np.asarray(e, dtype=np.float32) for e in frame["embedding"]])


def embedding_key(spec: ExtractorConfig, read: IngestConfig = IngestConfig(),
                  heatmaps: feature_store.ModelKey | None = None) -> feature_store.ModelKey:
    """The model key of an extractor's vectors (identity, weights_id, preprocessing with decode settings; an
    image+heatmaps extractor's with the key of the heatmaps it reads)."""
    return catalogue.embedding_key(spec, read, heatmaps)


def read_embeddings(output_uri: str, manifest: pd.DataFrame, spec: ExtractorConfig,
                    read: IngestConfig = IngestConfig(), key: feature_store.ModelKey | None = None,
                    columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The vectors of `manifest`'s images under `spec` (settings and weights), one row per embedded image,
    with the manifest's labels, patients and ids (`columns`: only these stored columns, e.g. breast_share);
    StaleTableError when the stage has not run for them."""
    return feature_store.read_view(embeddings_uri(output_uri, spec.name), manifest, key or embedding_key(spec, read),
                                   "embed", columns)


def run_embed(
    manifest: pd.DataFrame, output_uri: str, spec: ExtractorConfig, options: EmbedConfig = EmbedConfig(),
    read: IngestConfig = IngestConfig(),
) -> EmbedResult:
    """Embed every image of `manifest` whose vector under `spec` (same weights, same preprocessing) is not
    stored yet, and index the manifest."""
    return embed_result(spec, run_inference(manifest, output_uri, EmbedTask(spec), options, read))


def embed_result(spec: ExtractorConfig, run: InferenceRun) -> EmbedResult:
    """What one extractor's run (alone or in the image pass) did."""
    log.info("embed %s: %d embedded, %d already stored (skipped), %d errors",
             spec.name, run.written, run.skipped, run.errors)
    return EmbedResult(spec.name, run.written, run.skipped, run.errors, run.uri, run.errors_uri)


__all__ = [
    "EmbedResult", "EmbedTask", "embed_result", "embedding_key", "embeddings_uri", "errors_uri", "read_embeddings",
    "run_embed", "stage_name",
]


def _tasks(current: CurrentInputs) -> list[EmbedTask]:
    return [EmbedTask(spec, current.heatmaps_input(spec)) for spec in current.config.embed.extractors]


def _counts(current: CurrentInputs, done: PassResult) -> Counts:
    counts: Counts = {}
    for spec in current.config.embed.extractors:
        embedded = embed_result(spec, done.runs[stage_name(spec.name)])
        counts.update({f"embedded:{spec.name}": embedded.embedded, f"skipped:{spec.name}": embedded.skipped,
                       f"embed_errors:{spec.name}": embedded.errors})
    return counts


def _outputs_missing(current: CurrentInputs) -> str | None:
    output = current.config.output
    problems = (model_output_missing(current, embeddings_uri(output, spec.name), errors_uri(output, spec.name),
                                     current.embedding_key(spec))
                for spec in current.config.embed.extractors)
    return next((problem for problem in problems if problem is not None), None)


def _depends_on(current: CurrentInputs) -> object:
    return current.digest("images"), [current.embedding_key(spec).as_dict() for spec in current.config.embed.extractors]


STAGE = Stage("embed", _depends_on, sections=("ingest",), needs_ray=True, check=preflight.extractors,
              image_outputs=ImageOutputs(tasks=_tasks, counts=_counts),
              reads=(tables.MANIFEST, tables.COHORT, tables.HEATMAPS),
              writes=(tables.EMBEDDINGS, tables.EMBED_ERRORS),
              outputs_missing=_outputs_missing)
