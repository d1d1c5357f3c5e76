"""Embedding stage: manifest -> decoded images (CPU tasks) -> preprocessed inputs (CPU tasks) ->
features (an actor pool, one GPU per actor where there are GPUs) -> Parquet under embeddings/<name>/.

Incremental: rows already present for the same (content_sha256, extractor, weights_id, preprocess_id)
are not decoded again, so a rerun after a crash, or after adding images, does only the missing work.
Each output file is written atomically with a name derived from its rows, so a retried task
overwrites its own file instead of adding a duplicate.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
import ray.data

from mammo_ray import storage
from mammo_ray.datasets.manifest import MANIFEST_COLUMNS, MANIFEST_SCHEMA
from mammo_ray.errors import StorageError, describe
from mammo_ray.image_stream import ERRORS_SCHEMA, ReadOptions, error_records, read_images
from mammo_ray.models.extractors import ExtractorSpec, LoadedExtractor

log = logging.getLogger("mammo_ray.embed")

KEY_COLUMNS = ("content_sha256", "extractor", "weights_id", "preprocess_id")


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
class EmbedOptions:
    """How the stage runs. `num_gpus` per actor: None = one each when the cluster has GPUs, else 0."""

    batch_size: int = 8
    max_actors: int = 1
    num_gpus: float | None = None
    read: ReadOptions = ReadOptions()


@dataclass(frozen=True)
class EmbedResult:
    extractor: str
    embedded: int
    skipped: int
    errors: int
    uri: str


def embeddings_uri(output_uri: str, extractor: str) -> str:
    return storage.join(output_uri, "embeddings", extractor)


def errors_uri(output_uri: str, extractor: str) -> str:
    return storage.join(output_uri, "errors", f"embed-{extractor}")


def read_embeddings(output_uri: str, extractor: str) -> pd.DataFrame:
    """Every committed row of embeddings/<extractor>/, one per key (a safety net against duplicates)."""
    uri = embeddings_uri(output_uri, extractor)
    if not storage.exists(uri) or not storage.list_files(uri, extensions=[".parquet"]):
        return pd.DataFrame(columns=[*MANIFEST_COLUMNS, "extractor", "embedding", *KEY_COLUMNS[2:], "content_sha256"])
    frame = storage.read_table(uri).to_pandas()
    return frame.drop_duplicates(subset=["image_id", *KEY_COLUMNS]).reset_index(drop=True)


def done_content(output_uri: str, spec: ExtractorSpec, weights_id: str) -> frozenset[str]:
    """Content hashes already embedded by this extractor with these weights and this preprocessing."""
    existing = read_embeddings(output_uri, spec.name)
    if existing.empty:
        return frozenset()
    same = (existing["weights_id"] == weights_id) & (existing["preprocess_id"] == spec.preprocess_id)
    return frozenset(existing.loc[same, "content_sha256"])


def preprocess_batch(batch: pd.DataFrame, spec: ExtractorSpec) -> pd.DataFrame:
    """Decoded pixels -> model inputs (n_augment, C, h, w); an image that cannot be prepared becomes an error row."""
    failed = batch["error_type"].notna().tolist()
    inputs, error_types, messages = [], list(batch["error_type"]), list(batch["error_message"])
    for index, row in enumerate(batch.itertuples(index=False)):
        empty = np.zeros((0, 0, 0, 0), dtype=np.float32)
        if failed[index]:
            inputs.append(empty)
            continue
        try:
            pixels = np.asarray(row.pixels, dtype=np.float32)
            preprocessor = spec.preprocessor(spec.resolution_for(pixels.shape[0]))
            if spec.family == "imagenet":
                prepared = preprocessor(pixels)[None]  # (1, 3, s, s)
            else:
                prepared = preprocessor(pixels, row.view, row.laterality)  # (n, h, w)
                prepared = prepared[:, None] if prepared.ndim == 3 else prepared[None, None]
            inputs.append(np.ascontiguousarray(prepared, dtype=np.float32))
        except Exception as error:  # noqa: BLE001 - e.g. no breast found: an errors row, not a crash
            inputs.append(empty)
            error_types[index] = type(error).__name__
            messages[index] = describe(error, row.uri)
    out = batch.drop(columns=["pixels"])
    out["inputs"] = inputs
    out["error_type"] = error_types
    out["error_message"] = messages
    return out


class EmbedActor:
    """Holds one extractor's model; runs each batch on its device in inference mode."""

    def __init__(self, spec: ExtractorSpec, use_gpu: bool) -> None:
        import torch

        self.torch = torch
        self.spec = spec
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.extractor = LoadedExtractor(spec)
        self.extractor.module.to(self.device)
        if self.device.type == "cuda":
            self.extractor.module.to(memory_format=torch.channels_last)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        torch = self.torch
        # Error rows carry an empty vector: Arrow tensor columns cannot mix arrays and nulls.
        embeddings = [np.zeros(0, dtype=np.float32)] * len(batch)
        good = np.flatnonzero(batch["error_type"].isna().to_numpy()).tolist()
        # Windows of different views differ in shape: run each shape as its own sub-batch.
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index in good:
            by_shape.setdefault(np.asarray(batch["inputs"].iloc[index]).shape, []).append(index)
        for shape, indices in by_shape.items():
            stacked = np.concatenate([np.asarray(batch["inputs"].iloc[i]) for i in indices])  # (k*n, C, h, w)
            features = self._run(torch.from_numpy(stacked)).reshape(len(indices), shape[0], -1).mean(axis=1)
            for position, index in enumerate(indices):
                embeddings[index] = features[position]
        out = batch.drop(columns=["inputs"])
        out["embedding"] = embeddings
        out["extractor"] = self.spec.name
        out["weights_id"] = self.extractor.weights_id
        out["preprocess_id"] = self.spec.preprocess_id
        return out

    def _run(self, inputs) -> np.ndarray:
        torch = self.torch
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            if self.device.type == "cuda":
                inputs = inputs.to(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    features = self.extractor(inputs)
            else:
                features = self.extractor(inputs)
        return features.float().cpu().numpy()


def write_batch(batch: pd.DataFrame, spec: ExtractorSpec, output_uri: str) -> pd.DataFrame:
    """Write a batch's embeddings and errors, each as one atomically written Parquet file."""
    failed = batch["error_type"].notna()
    good = batch[~failed]
    written = 0
    if len(good):
        frame = good[[*MANIFEST_COLUMNS, "extractor", "embedding", "weights_id", "preprocess_id", "content_sha256"]]
        frame = frame.assign(
            label=frame["label"].astype("Int8"),
            embedding=[np.asarray(e, dtype=np.float32) for e in frame["embedding"]],
        )
        table = pa.Table.from_pandas(frame, schema=embeddings_schema(spec.dim), preserve_index=False)
        storage.write_table(table, storage.join(embeddings_uri(output_uri, spec.name), _part_name(good)))
        written = table.num_rows
    if failed.any():
        errors = error_records(batch[failed], f"embed:{spec.name}")
        table = pa.Table.from_pandas(errors, schema=ERRORS_SCHEMA, preserve_index=False)
        storage.write_table(table, storage.join(errors_uri(output_uri, spec.name), _part_name(batch[failed])))
    return pd.DataFrame({"written": [written], "errors": [int(failed.sum())]})


def _part_name(rows: pd.DataFrame) -> str:
    """A file name fixed by the rows it holds: rewriting the same rows replaces the same file."""
    keys = sorted(f"{i}|{c}" for i, c in zip(rows["image_id"], rows["content_sha256"].fillna("")))
    return f"part-{hashlib.sha256(chr(10).join(keys).encode()).hexdigest()[:24]}.parquet"


def gpus_per_actor(options: EmbedOptions) -> float:
    if options.num_gpus is not None:
        return options.num_gpus
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def run_embed(
    manifest: pd.DataFrame, output_uri: str, spec: ExtractorSpec, options: EmbedOptions = EmbedOptions()
) -> EmbedResult:
    """Embed every image of `manifest` not yet embedded by `spec` (same weights and preprocessing)."""
    from mammo_ray.models.weights import check_weights_available, resolve_weights

    check_weights_available(spec.weights_spec)  # fail before any work, naming the file
    weights_id = resolve_weights(spec.weights_spec).weights_id
    skip = done_content(output_uri, spec, weights_id)
    try:  # every still-failing image is retried and re-reported below, so old error rows go
        storage.remove(errors_uri(output_uri, spec.name), recursive=True)
    except StorageError as error:
        log.warning("could not clear old error rows: %s", error)
    num_gpus = gpus_per_actor(options)
    stats = (
        read_images(manifest, options.read, skip_content=skip)
        .map_batches(preprocess_batch, batch_format="pandas", batch_size=options.read.batch_size,
                     fn_kwargs={"spec": spec})
        .map_batches(
            EmbedActor,
            fn_constructor_kwargs={"spec": spec, "use_gpu": num_gpus > 0},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, options.max_actors)),
            num_gpus=num_gpus,
            batch_size=options.batch_size,
            batch_format="pandas",
        )
        .map_batches(write_batch, batch_format="pandas", batch_size=None, fn_kwargs={"spec": spec, "output_uri": output_uri})
    )
    embedded = errors = 0
    for batch in stats.iter_batches(batch_format="pandas"):
        embedded += int(batch["written"].sum())
        errors += int(batch["errors"].sum())
    skipped = len(manifest) - embedded - errors
    log.info("embed %s: %d embedded, %d already done (skipped), %d errors", spec.name, embedded, skipped, errors)
    return EmbedResult(spec.name, embedded, skipped, errors, embeddings_uri(output_uri, spec.name))
