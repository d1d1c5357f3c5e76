"""The batch-inference pipeline shared by the model stages (embed, zero_shot).

    manifest -> read + decode (CPU tasks) -> task.prepare (CPU tasks) -> task.forward in an actor pool
    (one GPU per actor where there are GPUs) -> atomic Parquet part files -> counts

A stage describes what differs in a small, picklable `InferenceTask`: where its rows and errors go,
the output schema, how one decoded image becomes model inputs, how the model is loaded and called,
and how the model outputs become columns. Everything else lives here, once:

- incremental runs: content already processed with the same (weights_id, preprocess_id) is hashed
  but not decoded again (`done_content`), so a rerun after a crash or after adding images does only
  the missing work;
- every output file is written atomically with a name fixed by its rows and its key, so a retried
  Ray task overwrites its own file instead of adding a duplicate;
- a bad image is an errors row (ERRORS_SCHEMA), never a crash or a missing row; old error rows of the
  stage are cleared at the start of a run because every still-failing image is reported again;
- the model runs in inference mode, with bf16 autocast and channels_last on CUDA, in fixed-size
  batches; inputs of different shapes (e.g. NYU CC and MLO windows) or different model heads run as
  separate sub-batches. A prepared input holds n >= 1 windows (test-time augmentation); the model
  outputs of the n windows are averaged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data

from mammo_ray import storage
from mammo_ray.errors import StorageError, describe
from mammo_ray.faults import crash_point
from mammo_ray.image_stream import ERRORS_SCHEMA, ReadOptions, error_records, read_images
from mammo_ray.models.weights import WeightsSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("mammo_ray.inference")

#: Columns every task's output table carries besides its own: the incremental key.
KEY_COLUMNS: tuple[str, ...] = ("content_sha256", "weights_id", "preprocess_id")
_INPUTS = "inputs"
_GROUP = "inference_group"
_EMPTY_INPUTS = np.zeros((0, 0, 0, 0), dtype=np.float32)


@dataclass(frozen=True)
class InferenceOptions:
    """How a model stage runs. `num_gpus` per actor: None = one each when the cluster has GPUs, else 0.

    `batch_size` images go through the model per call (fixed); `max_actors` bounds the actor pool.
    `max_restarts`: how often a dead actor (a lost node, an OOM kill) is replaced, its batches retried,
    before the stage fails; bounded so that an input which kills every actor ends the run instead of
    looping forever.
    """

    batch_size: int = 8
    max_actors: int = 1
    num_gpus: float | None = None
    max_restarts: int = 3
    read: ReadOptions = ReadOptions()


@dataclass(frozen=True)
class InferenceRun:
    """What one run did: rows written, manifest rows skipped (already done), error rows, the weights_id."""

    written: int
    skipped: int
    errors: int
    uri: str
    errors_uri: str
    weights_id: str


class LoadedModel:
    """A model ready for inference in an actor: `module` (an nn.Module the actor moves to its device) and
    `weights_id`. `InferenceTask.load` may return any object with these two attributes."""

    def __init__(self, module: Any, weights_id: str) -> None:
        self.module = module
        self.weights_id = weights_id


class InferenceTask(ABC):
    """What a model stage does per image. Plain, picklable data: it travels to Ray tasks and actors,
    which build the heavy parts (preprocessor, model, weights) themselves.

    `spec` is the stage's own settings; it provides `weights_spec` and `preprocess_id`."""

    spec: Any

    @property
    @abstractmethod
    def stage(self) -> str:
        """The `stage` value of its errors rows."""

    @property
    def weights_spec(self) -> WeightsSpec:
        return self.spec.weights_spec

    @property
    def preprocess_id(self) -> str:
        """Names the preprocessing: any change to it gives new rows instead of mixing old and new."""
        return self.spec.preprocess_id

    @property
    @abstractmethod
    def schema(self) -> pa.Schema:
        """The output table's schema; it includes KEY_COLUMNS and the manifest columns it keeps."""

    @abstractmethod
    def table_uri(self, output_uri: str) -> str:
        """The folder of the output part files."""

    @abstractmethod
    def errors_uri(self, output_uri: str) -> str:
        """The folder of the errors part files (cleared at the start of every run)."""

    @abstractmethod
    def prepare(self, pixels: np.ndarray, row: Any) -> tuple[np.ndarray, str]:
        """CPU side: decoded pixels (H, W) and the image's row -> (inputs (n, C, h, w), group).

        Rows with the same group and input shape run through `forward` together. Raise to make the
        image an errors row (the message should say what is wrong; the file name is added).
        """

    @abstractmethod
    def load(self) -> LoadedModel:
        """Actor side: build the model with its weights (on CPU, in eval mode); anything with `.module`
        and `.weights_id` will do."""

    @abstractmethod
    def forward(self, model: LoadedModel, inputs: torch.Tensor, group: str) -> torch.Tensor:
        """(B, C, h, w) inputs of one group -> (B, d) outputs. Called in inference mode (and autocast)."""

    @abstractmethod
    def output_columns(self, outputs: Sequence[np.ndarray | None]) -> dict[str, list]:
        """Per-row averaged outputs (d,) (None for error rows) -> the task's own output columns.

        Error rows need placeholder values of the right type: they are dropped before writing.
        """

    def constant_columns(self) -> dict[str, object]:
        """Columns with the same value on every row (besides weights_id and preprocess_id)."""
        return {}

    def to_frame(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Good rows -> a frame Arrow converts to `schema` exactly (override to convert columns)."""
        frame = rows[self.schema.names]
        if "label" in frame.columns:
            frame = frame.assign(label=frame["label"].astype("Int8"))
        return frame


# --- reading what is there ---------------------------------------------------------------------------


def read_rows(uri: str, columns: Sequence[str] | None = None) -> pd.DataFrame | None:
    """Every committed row (or only `columns`) of a task's output folder; None when it has no file yet."""
    if not storage.exists(uri) or not storage.list_files(uri, extensions=[".parquet"]):
        return None
    if columns is None:
        return storage.read_table(uri).to_pandas()
    fs, path = storage.arrow_filesystem(uri)
    try:
        return pq.read_table(path, filesystem=fs, columns=list(columns)).to_pandas()
    except Exception as error:  # noqa: BLE001 - every backend failure becomes one declared type
        raise StorageError(uri, f"cannot read Parquet: {type(error).__name__}: {error}") from error


def done_content(table_uri: str, weights_id: str, preprocess_id: str) -> frozenset[str]:
    """Content hashes already in `table_uri` with these weights and this preprocessing."""
    existing = read_rows(table_uri, KEY_COLUMNS)
    if existing is None or existing.empty:
        return frozenset()
    same = (existing["weights_id"] == weights_id) & (existing["preprocess_id"] == preprocess_id)
    return frozenset(existing.loc[same, "content_sha256"])


def clear_errors(uri: str) -> None:
    """Remove a stage's old error rows (every still-failing image is reported again by the run)."""
    try:
        storage.remove(uri, recursive=True)
    except StorageError as error:
        log.warning("could not clear old error rows: %s", error)


# --- the pipeline's steps (Ray tasks and actors) -----------------------------------------------------


def prepare_batch(batch: pd.DataFrame, task: InferenceTask) -> pd.DataFrame:
    """Decoded pixels -> model inputs (n, C, h, w) and group; an image that cannot be prepared becomes
    an error row."""
    failed = batch["error_type"].notna().tolist()
    inputs, groups = [], []
    error_types, messages = list(batch["error_type"]), list(batch["error_message"])
    # Ray hands string nulls over as pd.NA, whose truth value raises: tasks see None instead.
    rows = batch.drop(columns=["pixels"]).astype(object)
    rows = rows.where(rows.notna(), None)
    for index, (row, pixels) in enumerate(zip(rows.itertuples(index=False), batch["pixels"])):
        if failed[index]:
            inputs.append(_EMPTY_INPUTS)
            groups.append("")
            continue
        try:
            prepared, group = task.prepare(np.asarray(pixels, dtype=np.float32), row)
            if prepared.ndim != 4 or prepared.shape[0] < 1:
                raise ValueError(f"prepared inputs must be (n>=1, C, h, w), got shape {prepared.shape}")
            inputs.append(np.ascontiguousarray(prepared, dtype=np.float32))
            groups.append(str(group))
        except Exception as error:  # noqa: BLE001 - e.g. no breast found: an errors row, not a crash
            inputs.append(_EMPTY_INPUTS)
            groups.append("")
            error_types[index] = type(error).__name__
            messages[index] = describe(error, row.uri)
    out = batch.drop(columns=["pixels"])
    out[_INPUTS] = inputs
    out[_GROUP] = groups
    out["error_type"] = error_types
    out["error_message"] = messages
    return out


class InferenceActor:
    """Holds one task's model on its device; runs each batch in inference mode."""

    def __init__(self, task: InferenceTask, use_gpu: bool) -> None:
        import torch

        self.torch = torch
        self.task = task
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = task.load()
        self.model.module.to(self.device)
        if self.device.type == "cuda":
            self.model.module.to(memory_format=torch.channels_last)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        crash_point("inference.actor_batch")
        outputs: list[np.ndarray | None] = [None] * len(batch)
        good = np.flatnonzero(batch["error_type"].isna().to_numpy()).tolist()
        # Inputs of different shapes or groups (view windows, model heads) run as their own sub-batches.
        by_key: dict[tuple[str, tuple[int, ...]], list[int]] = {}
        for index in good:
            key = (str(batch[_GROUP].iloc[index]), np.asarray(batch[_INPUTS].iloc[index]).shape)
            by_key.setdefault(key, []).append(index)
        for (group, shape), indices in by_key.items():
            stacked = np.concatenate([np.asarray(batch[_INPUTS].iloc[i]) for i in indices])  # (k*n, C, h, w)
            result = self._run(self.torch.from_numpy(stacked), group)
            averaged = result.reshape(len(indices), shape[0], -1).mean(axis=1)  # average the n windows
            for position, index in enumerate(indices):
                outputs[index] = averaged[position]
        out = batch.drop(columns=[_INPUTS, _GROUP])
        for name, values in self.task.output_columns(outputs).items():
            out[name] = values
        for name, value in self.task.constant_columns().items():
            out[name] = value
        out["weights_id"] = self.model.weights_id
        out["preprocess_id"] = self.task.preprocess_id
        return out

    def _run(self, inputs: torch.Tensor, group: str) -> np.ndarray:
        torch = self.torch
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            if self.device.type == "cuda":
                inputs = inputs.to(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    result = self.task.forward(self.model, inputs, group)
            else:
                result = self.task.forward(self.model, inputs, group)
        return result.float().cpu().numpy()


def write_batch(batch: pd.DataFrame, task: InferenceTask, output_uri: str) -> pd.DataFrame:
    """Write a batch's rows and errors, each as one atomically written Parquet file."""
    failed = batch["error_type"].notna()
    good = batch[~failed]
    written = 0
    if len(good):
        table = pa.Table.from_pandas(task.to_frame(good), schema=task.schema, preserve_index=False)
        # Provenance instead of pandas' metadata, whose dtypes (string[NA]) would come back on reading.
        table = table.replace_schema_metadata(_provenance(task, good))
        name = part_name(good, task.preprocess_id, *sorted(good["weights_id"].unique()))
        storage.write_table(table, storage.join(task.table_uri(output_uri), name))
        written = table.num_rows
    if failed.any():
        errors = error_records(batch[failed], task.stage)
        table = pa.Table.from_pandas(errors, schema=ERRORS_SCHEMA, preserve_index=False)
        storage.write_table(table, storage.join(task.errors_uri(output_uri), part_name(batch[failed])))
    return pd.DataFrame({"written": [written], "errors": [int(failed.sum())]})


def part_name(rows: pd.DataFrame, *key: str) -> str:
    """A file name fixed by the rows it holds (and the run's key: weights, preprocessing): rewriting the
    same rows replaces the same file, while the same images under other weights get a file of their own."""
    keys = sorted(f"{i}|{c}" for i, c in zip(rows["image_id"], rows["content_sha256"].fillna("")))
    text = "\n".join([*keys, *map(str, key)])
    return f"part-{hashlib.sha256(text.encode()).hexdigest()[:24]}.parquet"


def _provenance(task: InferenceTask, rows: pd.DataFrame) -> dict[bytes, bytes]:
    from mammo_ray import __version__

    info = {
        "package_version": __version__,
        "stage": task.stage,
        "weights_ids": sorted(map(str, rows["weights_id"].unique())),
        "preprocess_id": task.preprocess_id,
    }
    return {b"mammo_ray": json.dumps(info, sort_keys=True).encode()}


def gpus_per_actor(options: InferenceOptions) -> float:
    if options.num_gpus is not None:
        return options.num_gpus
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def weights_id_of(spec: WeightsSpec) -> str:
    """Fail before any work unless the weights are there (naming the file); return their weights_id."""
    from mammo_ray.models.weights import check_weights_available, resolve_weights

    check_weights_available(spec)
    return resolve_weights(spec).weights_id


def run_inference(
    manifest: pd.DataFrame,
    output_uri: str,
    task: InferenceTask,
    options: InferenceOptions = InferenceOptions(),
) -> InferenceRun:
    """Run `task` on every image of `manifest` not yet done with the same weights and preprocessing."""
    weights_id = weights_id_of(task.weights_spec)
    table_uri, errors_uri = task.table_uri(output_uri), task.errors_uri(output_uri)
    skip = done_content(table_uri, weights_id, task.preprocess_id)
    clear_errors(errors_uri)
    num_gpus = gpus_per_actor(options)
    stats = (
        read_images(manifest, options.read, skip_content=skip)
        .map_batches(prepare_batch, batch_format="pandas", batch_size=options.read.batch_size,
                     fn_kwargs={"task": task})
        .map_batches(
            InferenceActor,
            fn_constructor_kwargs={"task": task, "use_gpu": num_gpus > 0},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, options.max_actors)),
            num_gpus=num_gpus,
            # A replaced actor redoes the batches its predecessor held; their part files are named by
            # their rows, so a redone batch overwrites instead of duplicating.
            max_restarts=options.max_restarts,
            max_task_retries=options.max_restarts,
            batch_size=options.batch_size,
            batch_format="pandas",
        )
        .map_batches(write_batch, batch_format="pandas", batch_size=None,
                     fn_kwargs={"task": task, "output_uri": output_uri})
    )
    written = errors = 0
    for batch in stats.iter_batches(batch_format="pandas"):
        written += int(batch["written"].sum())
        errors += int(batch["errors"].sum())
    skipped = len(manifest) - written - errors
    log.info("%s: %d written, %d already done (skipped), %d errors", task.stage, written, skipped, errors)
    return InferenceRun(written, skipped, errors, table_uri, errors_uri, weights_id)
