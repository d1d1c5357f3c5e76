"""The batch-inference pipeline shared by the model stages (embed, zero_shot).

    manifest -> read + hash (CPU tasks) -> decode, task.prepare (CPU tasks) -> task.forward in an actor
    pool (one GPU per actor where there are GPUs) -> feature store part files -> index + errors table

A stage describes what differs in a small, picklable `InferenceTask`: its model key (identity,
weights, preprocessing), the output schema, how one decoded image becomes model inputs, how the model
is loaded and called, and how model outputs become columns. Everything else lives here, once:

- a feature store (mammo_ray.feature_store): outputs are keyed by content and model key, never by
  image id or label. Content already stored under the run's key is hashed but not decoded again, so a
  rerun after a crash, after adding images or after switching back to earlier weights does only the
  missing work; identical bytes under two image ids are computed once and read by both;
- every part file is written atomically with a name fixed by its content keys, so a retried Ray task
  overwrites its own file instead of adding a duplicate;
- at the end, the index (each manifest image -> its content, or an error) and the stage's errors table
  are each written once, atomically: a reader never sees a half-written errors table, and a run that
  fails half-way leaves the previous index, which readers then refuse as not current;
- a bad image is an errors row (ERRORS_SCHEMA); a failure of the store or of the cluster fails the run;
- the model runs in inference mode, with bf16 autocast and channels_last on CUDA, in fixed-size
  batches; inputs of different shapes (e.g. NYU CC and MLO windows) or different model heads run as
  separate sub-batches. A prepared input holds n >= 1 windows (test-time augmentation); the model
  outputs of the n windows are averaged.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
import ray.data

from mammo_ray import feature_store, storage, tables
from mammo_ray.config.sections import EmbedConfig, IngestConfig
from mammo_ray.errors import MammoRayError, describe
from mammo_ray.faults import crash_point
from mammo_ray.feature_store import ModelKey
from mammo_ray.image_stream import CachedContent, error_records, errors_table, read_images
from mammo_ray.models.weights import WeightsSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("mammo_ray.inference")

_INPUTS = "inputs"
_GROUP = "inference_group"
_EMPTY_INPUTS = np.zeros((0, 0, 0, 0), dtype=np.float32)


@dataclass(frozen=True)
class InferenceRun:
    """What one run did: outputs computed, images whose output was already stored, error rows; the key."""

    written: int
    skipped: int
    errors: int
    uri: str
    errors_uri: str
    key: ModelKey

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

    `spec` is the stage's own settings; it provides `weights_spec`, `preprocess_id` and `model_id`."""

    spec: Any
    #: Whether the preprocessing uses each image's laterality and view (flips, windows, heads).
    orientation: bool = True

    @property
    @abstractmethod
    def stage(self) -> str:
        """The `stage` value of its errors rows."""

    @property
    def weights_spec(self) -> WeightsSpec:
        return self.spec.weights_spec

    def key(self, read: IngestConfig) -> ModelKey:
        """What the outputs depend on besides the images; the weights are hashed, never unpickled, here."""
        from mammo_ray.models.weights import weights_id

        return ModelKey(model_id=self.spec.model_id, weights_id=weights_id(self.weights_spec),
                        preprocess_id=f"{self.spec.preprocess_id}|{read.decode_id}", orientation=self.orientation)

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

    def prepare(self, pixels: np.ndarray, row: Any) -> tuple[np.ndarray, str]:
        """CPU side: decoded pixels (H, W) and the image's row -> (inputs (n, C, h, w), group), through the
        section's one transform (mammo_ray.imaging.transforms)."""
        group = self.group(row)  # first: a row no head fits fails before the work
        return self.spec.transform(pixels, row.view, row.laterality), group

    @abstractmethod
    def load(self) -> LoadedModel:
        """Actor side: build the model with its weights (on CPU, in eval mode); anything with `.module`
        and `.weights_id` will do."""

    @abstractmethod
    def forward(self, model: LoadedModel, inputs: torch.Tensor, group: str) -> torch.Tensor:
        """(B, C, h, w) inputs of one group -> (B, d) outputs. Called in inference mode (and autocast)."""

    @abstractmethod
    def output_columns(self, outputs: Sequence[np.ndarray | None]) -> dict[str, list]:
        """Per-row averaged outputs (d,) (None for rows without one) -> the task's own output columns.

        Rows without an output need placeholder values of the right type: they are dropped before writing.
        """

    def to_frame(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Keyed output rows -> a frame Arrow converts to `schema` exactly (override to convert columns)."""
        return rows[self.schema.names]


# --- the pipeline's steps (Ray tasks and actors) -----------------------------------------------------


def prepare_batch(batch: pd.DataFrame, task: InferenceTask) -> pd.DataFrame:
    """Decoded pixels -> model inputs (n, C, h, w) and group; an image that cannot be prepared becomes
    an error row."""
    failed = (batch["error_type"].notna() | batch["cached"]).tolist()  # nothing to prepare
    inputs, groups = [], []
    error_types = [None if pd.isna(v) else v for v in batch["error_type"]]  # pd.NA would defeat Arrow
    messages = [None if pd.isna(v) else v for v in batch["error_message"]]
    # Ray hands string nulls over as pd.NA, whose truth value raises: tasks see None instead.
    rows = batch.drop(columns=["pixels"]).astype(object)
    rows = rows.where(rows.notna(), None)
    for index, (row, pixels) in enumerate(zip(rows.itertuples(index=False), batch["pixels"], strict=True)):
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

    def __init__(self, task: InferenceTask, key: ModelKey, use_gpu: bool, torch_threads: int) -> None:
        import torch

        self.torch = torch
        self.task = task
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(torch_threads)
        self.model = task.load()
        if self.model.weights_id != key.weights_id:
            raise WeightsChangedError(f"{task.stage}: the weights loaded are {self.model.weights_id}, the run was "
                                      f"started for {key.weights_id}: the weight file changed; run again")
        self.model.module.to(self.device)
        if self.device.type == "cuda":
            self.model.module.to(memory_format=torch.channels_last)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        crash_point("inference.actor_batch")
        outputs: list[np.ndarray | None] = [None] * len(batch)
        good = np.flatnonzero((batch["error_type"].isna() & ~batch["cached"]).to_numpy()).tolist()
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


def write_batch(batch: pd.DataFrame, task: InferenceTask, output_uri: str, key: ModelKey) -> pa.Table:
    """Store a batch's new outputs as one atomically written part file; return its index and error rows."""
    failed = batch["error_type"].notna()
    computed = batch[~failed & ~batch["cached"]]
    if len(computed):
        keyed = feature_store.feature_rows(computed, key)
        table = pa.Table.from_pandas(task.to_frame(keyed), schema=task.schema, preserve_index=False)
        table = tables.with_provenance(table, task.stage, weights_ids=[key.weights_id], key=key.as_dict())
        contents = tables.content_keys(keyed["content_sha256"], keyed["laterality"], keyed["view"], key.orientation)
        storage.write_table(table, storage.join(feature_store.key_uri(task.table_uri(output_uri), key),
                                                feature_store.part_name(contents.tolist())))
    def text(column: str) -> list[str | None]:
        return [None if pd.isna(value) else str(value) for value in batch[column]]

    return pa.table({
        "image_id": text("image_id"), "uri": text("uri"), "content_sha256": text("content_sha256"),
        "status": np.where(failed, "error", "ok").tolist(), "computed": (~failed & ~batch["cached"]).tolist(),
        "error_type": text("error_type"), "error_message": text("error_message"),
    }, schema=_BATCH_RESULT_SCHEMA)  # typed: a batch whose text columns are all null still has strings


#: What write_batch hands back to the driver per image: its index row and, for a failure, its errors row.
_BATCH_RESULT_SCHEMA = pa.schema([
    pa.field("image_id", pa.string()), pa.field("uri", pa.string()), pa.field("content_sha256", pa.string()),
    pa.field("status", pa.string()), pa.field("computed", pa.bool_()), pa.field("error_type", pa.string()),
    pa.field("error_message", pa.string()),
])


def _node_cpus() -> int:
    """CPUs of the largest node of the cluster (the actors' node is not known before they start)."""
    cpus = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
    return max(1, int(max(cpus, default=1)))


def gpus_per_actor(options: EmbedConfig) -> float:
    if options.num_gpus is not None:
        return options.num_gpus
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def run_inference(
    manifest: pd.DataFrame,
    output_uri: str,
    task: InferenceTask,
    options: EmbedConfig = EmbedConfig(),
    read: IngestConfig = IngestConfig(),
) -> InferenceRun:
    """Run `task` on every image of `manifest` whose output is not yet stored under the run's key; then
    write the index of the manifest and the stage's errors table."""
    key = task.key(read)
    table_uri = task.table_uri(output_uri)
    cached = CachedContent(feature_store.stored_content(table_uri, key), key.orientation)
    num_gpus = gpus_per_actor(options)
    stats = (
        read_images(manifest, read, cached)
        .map_batches(prepare_batch, batch_format="pandas", batch_size=read.batch_size,
                     fn_kwargs={"task": task})
        .map_batches(
            InferenceActor,
            fn_constructor_kwargs={"task": task, "key": key, "use_gpu": num_gpus > 0,
                                   "torch_threads": options.actor_torch_threads(_node_cpus())},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, options.max_actors)),
            num_gpus=num_gpus,
            # A replaced actor redoes the batches its predecessor held; their part files are named by
            # their content, so a redone batch overwrites instead of duplicating.
            max_restarts=options.max_restarts,
            max_task_retries=options.max_restarts,
            batch_size=options.batch_size,
            batch_format="pandas",
        )
        .map_batches(write_batch, batch_format="pandas", batch_size=None,
                     fn_kwargs={"task": task, "output_uri": output_uri, "key": key})
    )
    rows = [batch for batch in stats.iter_batches(batch_format="pandas", batch_size=None) if len(batch)]
    index = pd.concat(rows, ignore_index=True) if rows else _BATCH_RESULT_SCHEMA.empty_table().to_pandas()
    errors = errors_table([error_records(index, task.stage)])
    errors = tables.with_provenance(errors, task.stage, weights_ids=[key.weights_id], key=key.as_dict(),
                                    inputs={"images": tables.image_digest(manifest)})
    errors_uri = task.errors_uri(output_uri)
    storage.write_table(errors, errors_uri)
    feature_store.write_index(table_uri, task.stage, index, manifest, key)  # last: the run is complete
    written = int(index["computed"].astype(bool).sum())
    failed = int((index["status"] == "error").sum())
    skipped = len(index) - written - failed
    log.info("%s: %d computed, %d already stored (skipped), %d errors", task.stage, written, skipped, failed)
    return InferenceRun(written, skipped, failed, table_uri, errors_uri, key)
