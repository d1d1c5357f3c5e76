"""Embedding stage: manifest -> decoded images (CPU tasks) -> preprocessed inputs (CPU tasks) ->
features (an actor pool, one GPU per actor where there are GPUs) -> Parquet under embeddings/<name>/.

The pipeline itself (incremental reruns, atomic part files, error rows, the actor pool) is the shared
one of `mammo_ray.stages.inference`; this module says what is particular to embedding: the
extractor's preprocessing and model, and the embeddings table (DESIGN §2).

Incremental: rows already present for the same (content_sha256, extractor, weights_id, preprocess_id)
are not decoded again, so a rerun after a crash, or after adding images, does only the missing work.
Each output file is written atomically with a name derived from its rows, so a retried task
overwrites its own file instead of adding a duplicate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from mammo_ray import layout, storage
from mammo_ray.datasets.manifest import MANIFEST_COLUMNS, MANIFEST_SCHEMA
from mammo_ray.models.extractors import ExtractorSpec, LoadedExtractor
from mammo_ray.stages import inference
from mammo_ray.stages.inference import InferenceOptions, InferenceTask, gpus_per_actor, read_rows

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("mammo_ray.embed")

KEY_COLUMNS = ("content_sha256", "extractor", "weights_id", "preprocess_id")

#: How the stage runs (batch size, actors, GPUs per actor, read options): the shared inference options.
EmbedOptions = InferenceOptions

__all__ = [
    "EmbedOptions", "EmbedResult", "EmbedTask", "KEY_COLUMNS", "done_content", "embeddings_schema",
    "embeddings_uri", "errors_uri", "gpus_per_actor", "read_embeddings", "run_embed",
]


def embeddings_schema(dim: int) -> pa.Schema:
    """DESIGN §2: manifest keys + extractor, embedding, weights_id, preprocess_id, content_sha256."""
    return pa.schema(
        [
            *MANIFEST_SCHEMA,
            pa.field("extractor", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("weights_id", pa.string(), nullable=False),
            pa.field("preprocess_id", pa.string(), nullable=False),
            pa.field("content_sha256", pa.string(), nullable=False),
        ]
    )


@dataclass(frozen=True)
class EmbedResult:
    extractor: str
    embedded: int
    skipped: int
    errors: int
    uri: str


def embeddings_uri(output_uri: str, extractor: str) -> str:
    return layout.embeddings_uri(output_uri, extractor)


def errors_uri(output_uri: str, extractor: str) -> str:
    return storage.join(output_uri, "errors", f"embed-{extractor}")


def read_embeddings(output_uri: str, extractor: str) -> pd.DataFrame:
    """Every committed row of embeddings/<extractor>/, one per key (a safety net against duplicates)."""
    frame = read_rows(embeddings_uri(output_uri, extractor))
    if frame is None:
        return pd.DataFrame(columns=embeddings_schema(1).names)
    return frame.drop_duplicates(subset=["image_id", *KEY_COLUMNS]).reset_index(drop=True)


def done_content(output_uri: str, spec: ExtractorSpec, weights_id: str) -> frozenset[str]:
    """Content hashes already embedded by this extractor with these weights and this preprocessing."""
    return inference.done_content(embeddings_uri(output_uri, spec.name), weights_id, spec.preprocess_id)


@dataclass(frozen=True)
class EmbedTask(InferenceTask):
    """One extractor as an inference task: its preprocessing, its model's features, the embeddings table."""

    spec: ExtractorSpec

    @property
    def stage(self) -> str:  # type: ignore[override]
        return f"embed:{self.spec.name}"

    @property
    def schema(self) -> pa.Schema:
        return embeddings_schema(self.spec.dim)

    def table_uri(self, output_uri: str) -> str:
        return embeddings_uri(output_uri, self.spec.name)

    def errors_uri(self, output_uri: str) -> str:
        return errors_uri(output_uri, self.spec.name)

    def prepare(self, pixels: np.ndarray, row) -> tuple[np.ndarray, str]:
        spec = self.spec
        preprocessor = spec.preprocessor(spec.resolution_for(pixels.shape[0]))
        if spec.family == "imagenet":
            return preprocessor(pixels)[None], ""  # (1, 3, s, s)
        prepared = preprocessor(pixels, row.view, row.laterality)  # (h, w) or (n, h, w)
        return (prepared[:, None] if prepared.ndim == 3 else prepared[None, None]), ""

    def load(self) -> LoadedExtractor:
        return LoadedExtractor(self.spec)  # has .module and .weights_id, as the actor needs

    def forward(self, model: LoadedExtractor, inputs: torch.Tensor, group: str) -> torch.Tensor:
        return model(inputs)

    def output_columns(self, outputs: Sequence[np.ndarray | None]) -> dict[str, list]:
        # Error rows carry an empty vector: Arrow tensor columns cannot mix arrays and nulls.
        empty = np.zeros(0, dtype=np.float32)
        return {"embedding": [empty if o is None else o.astype(np.float32) for o in outputs]}

    def constant_columns(self) -> dict[str, object]:
        return {"extractor": self.spec.name}

    def to_frame(self, rows: pd.DataFrame) -> pd.DataFrame:
        frame = super().to_frame(rows)
        return frame.assign(embedding=[np.asarray(e, dtype=np.float32) for e in frame["embedding"]])


def run_embed(
    manifest: pd.DataFrame, output_uri: str, spec: ExtractorSpec, options: EmbedOptions = EmbedOptions()
) -> EmbedResult:
    """Embed every image of `manifest` not yet embedded by `spec` (same weights and preprocessing)."""
    run = inference.run_inference(manifest, output_uri, EmbedTask(spec), options)
    log.info("embed %s: %d embedded, %d already done (skipped), %d errors",
             spec.name, run.written, run.skipped, run.errors)
    return EmbedResult(spec.name, run.written, run.skipped, run.errors, run.uri)
