"""The image pass: one streaming Ray Data pipeline for every image stage of a study (ingest, each
extractor, zero-shot), each image read, hashed and decoded once.

    manifest -> read + hash + decode -> ingest summary; each distinct preprocessing once -> every output's
    network in one actor pool (one GPU per actor where there are GPUs) -> each output's feature store part
    files -> per output: index + errors table; ingest's tables

(on GPUs, CPU tasks read, decode and prepare, and write; on CPUs, each actor does the whole chain per batch)

An output describes what differs in a small, picklable `InferenceTask`: its model key (identity,
weights, preprocessing), the output schema, how one decoded image becomes model inputs, how the model
is loaded and called, and how model outputs become columns. Everything else lives here, once:

- a feature store per output (mammo_ray.feature_store): outputs are keyed by content and model key,
  never by image id or label. An image is decoded when some output (or ingest) still needs it; each
  output skips the content it already has, so a rerun after a crash, after adding images or after
  switching back to earlier weights does only the missing work, output by output; identical bytes
  under two image ids are computed once and read by both;
- ingest likewise: an image whose content ingest/images.parquet records under the same decode settings
  keeps that record (size, statistics; `IngestedContent`), so a grown collection decodes only its new
  images; bad images are never recorded, so they are read again and their errors rows stay true;
- outputs whose preprocessing is the same (the same transform id: `nyu_lcc` and `nyu_avg` at one
  nyu_scale) share one prepared input per image;
- every part file is written atomically with a name fixed by its content keys, so a retried Ray task
  overwrites its own file instead of adding a duplicate;
- at the end, each output's small part files are merged into files of about `embed.part_bytes`
  (`feature_store.compact`): object stores and readers get few large files, not one per batch;
- at the end, each output's index (each manifest image -> its content, or an error) and errors table
  are each written once, atomically: a reader never sees a half-written errors table, and a run that
  fails half-way leaves the previous index, which readers then refuse as not current;
- a bad image is an errors row of every output (ERRORS_SCHEMA); an image one output cannot prepare (no
  head for an unknown side) is an errors row of that output only; a failure of the store or of the
  cluster fails the run;
- the models run in inference mode, with bf16 autocast and channels_last on CUDA, in fixed-size
  batches; inputs of different shapes (e.g. NYU CC and MLO windows) or different model heads run as
  separate sub-batches. A prepared input holds n >= 1 windows (test-time augmentation); the model
  outputs of the n windows are averaged.

The actor pool holds every output's network in each actor (one CPU, or one GPU, per actor): the
paper's networks together are small (ResNet-50 and two ResNet-22 trunks, ~40 M parameters), and one
actor per device keeps a GPU busy with every network instead of leaving it to whichever pool has work.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
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
from mammo_ray.image_stream import (
    CachedContent,
    decode_batch,
    error_records,
    errors_table,
    manifest_dataset,
    read_images,
)
from mammo_ray.models.weights import WeightsSpec
from mammo_ray.placement import ANYWHERE, NODE_TYPES, Placement
from mammo_ray.tables import IMAGES_SCHEMA

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from mammo_ray.imaging.transforms import ImageTransform

log = logging.getLogger("mammo_ray.inference")

_INPUTS = "inputs"
_GROUP = "inference_group"
_SHARE = "breast_share"  # the share of the model input the breast covers (tables: every image output's column)
INGEST_STAGE = "ingest"
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

    @property
    def transform(self) -> ImageTransform:
        """CPU side: decoded pixels (H, W) and the image's row -> inputs (n, C, h, w); the section's one
        transform (mammo_ray.imaging.transforms), whose id names what it does."""
        return self.spec.transform

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


# --- the pass's steps (Ray tasks and actors) ---------------------------------------------------------


def _column(name: str, output: int) -> str:
    return f"{name}_{output}"


@dataclass(frozen=True)
class IngestedContent(CachedContent):
    """Content ingest/images.parquet already summarises under the current decode settings: its record is reused
    (size, statistics), the image is not decoded again for ingest. `keys`: those contents' sha256.

    A record's laterality and view are the manifest's, else the file's tags. Where the manifest gives them the
    tags do not matter; where it leaves them open the tags are needed, and a record knows them only when they
    are null (a null record value means the tag was null too; a value may have been an earlier manifest's).
    `open_laterality` / `open_view`: contents with such a null record."""

    open_laterality: frozenset[str] = frozenset()
    open_view: frozenset[str] = frozenset()

    @classmethod
    def of(cls, records: pd.DataFrame | None) -> IngestedContent:
        if records is None:
            return cls()
        sha = records["content_sha256"]
        return cls(keys=frozenset(sha), open_laterality=frozenset(sha[records["laterality"].isna()]),
                   open_view=frozenset(sha[records["view"].isna()]))

    def __contains__(self, row: tuple[str, object, object]) -> bool:
        sha, laterality, view = row
        return sha in self.keys and (tables.orientation_hint(laterality) != "" or sha in self.open_laterality) \
            and (tables.orientation_hint(view) != "" or sha in self.open_view)


def _decode_settings(read: IngestConfig) -> dict[str, Any]:
    """The read settings that decide what decoding accepts and produces (pixel values, size and modality
    limits): an ingest record is reused only under the same. Batching is left out; `max_bytes` too (the file is
    read, and refused from its size, whatever is reused)."""
    return read.model_dump(mode="json", exclude={"batch_size", "rows_per_block", "max_bytes"})


def _stored_ingest(output_uri: str, read: IngestConfig) -> pd.DataFrame | None:
    """The records of this output's ingest/images.parquet when written under the same decode settings."""
    uri = tables.ingest_uri(output_uri)
    provenance = tables.read_provenance(uri)
    if provenance is None or provenance.get("decode_settings") != _decode_settings(read):
        return None
    return storage.read_table(uri).to_pandas()


def _cached_for(row: Any, cached: CachedContent) -> bool:
    return row.content_sha256 is not None and (row.content_sha256, row.manifest_laterality,
                                               row.manifest_view) in cached


def prepare_batch(batch: pd.DataFrame, tasks: Sequence[InferenceTask], cached: Sequence[CachedContent],
                  ingest: bool) -> pd.DataFrame:
    """Decoded pixels -> each output's model inputs (n, C, h, w) and group, each distinct preprocessing once
    per image; an image an output cannot prepare becomes that output's error row. With `ingest`, the
    image's summary statistics too."""
    decode_failed = batch["error_type"].notna().tolist()
    # Ray hands string nulls over as pd.NA, whose truth value raises: tasks see None instead.
    rows = batch.drop(columns=["pixels"]).astype(object)
    rows = rows.where(rows.notna(), None)
    out = batch.drop(columns=["pixels"])
    pixels_of = [np.asarray(p, dtype=np.float32) for p in batch["pixels"]]
    out["decoded"] = [p.size > 0 for p in pixels_of]
    if ingest:
        out["intensity_max"] = [float(p.max()) if p.size else 0.0 for p in pixels_of]
        out["breast_fraction"] = [float(np.count_nonzero(p)) / p.size if p.size else 0.0 for p in pixels_of]
    prepared_once: dict[tuple[int, str], tuple[np.ndarray, float] | Exception] = {}  # (image, transform id) ->
    for output, (task, stored) in enumerate(zip(tasks, cached, strict=True)):
        transform = task.transform
        inputs, groups, skip, shares = [], [], [], []
        error_types = [None if pd.isna(v) else v for v in batch["error_type"]]  # pd.NA would defeat Arrow
        messages = [None if pd.isna(v) else v for v in batch["error_message"]]
        for index, row in enumerate(rows.itertuples(index=False)):
            done = not decode_failed[index] and _cached_for(row, stored)
            skip.append(done)
            if decode_failed[index] or done:
                inputs.append(_EMPTY_INPUTS)
                groups.append("")
                shares.append(float("nan"))
                continue
            try:
                group = str(task.group(row))  # first: a row no head fits fails before the work
                once = (index, transform.id)
                if once not in prepared_once:
                    prepared_once[once] = _prepare(transform, pixels_of[index], row)
                prepared = prepared_once[once]
                if isinstance(prepared, Exception):
                    raise prepared
                inputs.append(prepared[0])
                shares.append(prepared[1])
                groups.append(group)
            except Exception as error:  # noqa: BLE001 - e.g. no breast found: an errors row, not a crash
                inputs.append(_EMPTY_INPUTS)
                shares.append(float("nan"))
                groups.append("")
                error_types[index] = type(error).__name__
                messages[index] = describe(error, row.uri)
        out[_column(_INPUTS, output)] = inputs
        out[_column(_GROUP, output)] = groups
        out[_column(_SHARE, output)] = shares
        out[_column("cached", output)] = skip
        out[_column("error_type", output)] = error_types
        out[_column("error_message", output)] = messages
    return out


@dataclass(frozen=True)
class ImageReading:
    """How manifest rows become `prepare_batch`'s rows where the inference actor reads its own images: the
    read settings, the content whose decoding no output needs (`skip_decode`) and each output's stored
    content (`cached`)."""

    read: IngestConfig
    skip_decode: tuple[CachedContent, ...]
    cached: tuple[CachedContent, ...]

    def prepared(self, batch: pd.DataFrame, tasks: Sequence[InferenceTask], ingest: bool) -> pd.DataFrame:
        """Read and decode (`decode_batch`), then each output's inputs, `read.batch_size` images at a time,
        so that only that many decoded images are held at once."""
        size = self.read.batch_size
        chunks = [batch.iloc[start:start + size].reset_index(drop=True) for start in range(0, len(batch), size)]
        return pd.concat([prepare_batch(decode_batch(chunk, self.read, self.skip_decode), tasks, self.cached, ingest)
                          for chunk in chunks or [batch]], ignore_index=True)


def _prepare(transform: ImageTransform, pixels: np.ndarray, row: Any) -> tuple[np.ndarray, float] | Exception:
    """The transform's inputs for one image and the share of them the breast covers, or the error it raised
    (shared by the outputs that use it)."""
    try:
        prepared, share = transform.prepare(pixels, row.view, row.laterality)
        if prepared.ndim != 4 or prepared.shape[0] < 1:
            raise ValueError(f"prepared inputs must be (n>=1, C, h, w), got shape {prepared.shape}")
        return np.ascontiguousarray(prepared, dtype=np.float32), float(share)
    except Exception as error:  # noqa: BLE001 - re-raised by each output that uses it, as its errors row
        return error


class InferenceActor:
    """Holds every output's model on its device; runs each batch through each of them in inference mode.

    Given `output_uri`, it also writes each batch's rows (`write_batch`) and returns its results; given
    `reading`, it takes manifest rows and reads, decodes and prepares them itself. A CPU
    actor does both: read, decode, prepare, forward and write are one function call per batch, with no task
    that would wait for a CPU the actors hold and no decoded image handed between Ray Data stages (each
    hand-over converts the batch to an Arrow block and back: 8% of a CPU actor's time on PNG mammograms,
    measured with py-spy). A GPU actor takes prepared inputs from CPU tasks and leaves writing to CPU
    tasks, so no GPU waits on decoding or on the store.
    """

    def __init__(self, tasks: Sequence[InferenceTask], keys: Sequence[ModelKey], use_gpu: bool,
                 options: EmbedConfig, output_uri: str | None = None, ingest: bool = False,
                 reading: ImageReading | None = None) -> None:
        import torch

        self.torch = torch
        self.tasks, self.keys = list(tasks), list(keys)
        self.output_uri, self.ingest = output_uri, ingest
        self.reading = reading
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(options.actor_torch_threads())
        self.models = []
        for task, key in zip(self.tasks, self.keys, strict=True):
            model = task.load()
            if model.weights_id != key.weights_id:
                raise WeightsChangedError(f"{task.stage}: the weights loaded are {model.weights_id}, the run was "
                                          f"started for {key.weights_id}: the weight file changed; run again")
            model.module.to(self.device)
            if self.device.type == "cuda":
                model.module.to(memory_format=torch.channels_last)
            self.models.append(model)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame | pa.Table:
        if self.reading is not None:
            batch = self.reading.prepared(batch, self.tasks, self.ingest)
        out = self.embed(batch)
        if self.output_uri is None:
            return out
        return write_batch(out, self.tasks, self.keys, self.output_uri, self.ingest)

    def embed(self, batch: pd.DataFrame) -> pd.DataFrame:
        """The batch with each output's vectors (`output_<i>`) and the forwards run per image."""
        crash_point("inference.actor_batch")
        # Trunk feature maps of this batch, shared by outputs with the same weights and preprocessing:
        # (weights_id, transform id, trunk, row) -> the row's (n, C, h, w) maps.
        maps: dict[tuple[str, str, str, int], torch.Tensor] = {}
        forwards = np.zeros(len(batch), dtype=np.int64)  # network (or trunk) forwards run per image
        out = batch
        for output, (task, model) in enumerate(zip(self.tasks, self.models, strict=True)):
            good = (batch[_column("error_type", output)].isna() & ~batch[_column("cached", output)].astype(bool))
            inputs, groups = batch[_column(_INPUTS, output)], batch[_column(_GROUP, output)]
            outputs: list[np.ndarray] = [_EMPTY_OUTPUT] * len(batch)
            # Inputs of different shapes or groups (view windows, model heads) run as their own sub-batches.
            by_key: dict[tuple[str, tuple[int, ...]], list[int]] = {}
            for index in np.flatnonzero(good.to_numpy()).tolist():
                by_key.setdefault((str(groups.iloc[index]), np.asarray(inputs.iloc[index]).shape), []).append(index)
            for (group, shape), indices in by_key.items():
                trunks = task.shared_trunks(group)
                if trunks:
                    share = (model.weights_id, task.transform.id)
                    for trunk in trunks:
                        missing = [i for i in indices if (*share, trunk, i) not in maps]
                        if missing:
                            computed = self._infer(model.module.trunk(trunk), _stacked(inputs, missing))
                            for position, index in enumerate(missing):
                                maps[(*share, trunk, index)] = computed[position * shape[0]:(position + 1) * shape[0]]
                            forwards[missing] += 1
                    gathered = {t: self.torch.cat([maps[(*share, t, i)] for i in indices]) for t in trunks}
                    result = self._infer(functools.partial(task.from_trunks, model, gathered, group))
                else:
                    result = self._infer(functools.partial(task.forward, model, group=group), _stacked(inputs, indices))
                    forwards[indices] += 1
                result = result.float().cpu().numpy()
                averaged = result.reshape(len(indices), shape[0], -1).mean(axis=1)  # average the n windows
                for position, index in enumerate(indices):
                    outputs[index] = averaged[position].astype(np.float32)
            out = out.drop(columns=[_column(_INPUTS, output), _column(_GROUP, output)])
            out[_column("output", output)] = outputs
        out["forwards"] = forwards
        return out

    def _infer(self, network: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        """`network(*inputs)` on the actor's device, in inference mode (bf16 autocast, channels_last on CUDA)."""
        torch = self.torch
        cuda = self.device.type == "cuda"
        moved = [x.to(self.device, memory_format=torch.channels_last if cuda else torch.preserve_format)
                 for x in inputs]
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            return network(*moved)


def _stacked(inputs: pd.Series, rows: list[int]) -> torch.Tensor:
    """The rows' (n, C, h, w) inputs as one (k*n, C, h, w) tensor."""
    import torch

    return torch.from_numpy(np.concatenate([np.asarray(inputs.iloc[i]) for i in rows]))


_EMPTY_OUTPUT = np.zeros(0, dtype=np.float32)  # a row without an output: Arrow cannot mix arrays and nulls


def write_batch(batch: pd.DataFrame, tasks: Sequence[InferenceTask], keys: Sequence[ModelKey],
                output_uri: str, ingest: bool) -> pa.Table:
    """Store each output's new rows of a batch as one atomically written part file; return the batch's
    per-image results (what the driver needs for the indexes, the errors tables and ingest)."""
    result: dict[str, list] = {name: _text(batch, name) for name in _RESULT_TEXT}
    result["decoded"] = batch["decoded"].astype(bool).tolist()
    result["forwards"] = (batch["forwards"] if "forwards" in batch else pd.Series(0, index=batch.index)).tolist()
    for name in _INGEST_NUMBERS if ingest else ():
        result[name] = batch[name].tolist()
    for output, (task, key) in enumerate(zip(tasks, keys, strict=True)):
        failed = batch[_column("error_type", output)].notna()
        computed = ~failed & ~batch[_column("cached", output)].astype(bool)
        if computed.any():
            rows = batch[computed]
            values = [None if len(o) == 0 else o for o in rows[_column("output", output)]]
            rows = rows.assign(**task.output_columns(values),
                               breast_share=rows[_column(_SHARE, output)].astype(np.float32))
            keyed = feature_store.feature_rows(rows, key)
            table = pa.Table.from_pandas(task.to_frame(keyed), schema=task.schema, preserve_index=False)
            table = tables.with_provenance(table, task.stage, weights_ids=[key.weights_id], key=key.as_dict())
            contents = tables.content_keys(keyed["content_sha256"], keyed["laterality"], keyed["view"],
                                           key.orientation)
            storage.write_table(table, storage.join(feature_store.key_uri(task.table_uri(output_uri), key),
                                                    feature_store.part_name(contents.tolist())))
        result[_column("computed", output)] = computed.tolist()
        result[_column("error_type", output)] = _text(batch, _column("error_type", output))
        result[_column("error_message", output)] = _text(batch, _column("error_message", output))
    return pa.table(result, schema=_result_schema(len(tasks), ingest))


def _text(batch: pd.DataFrame, column: str) -> list[str | None]:
    return [None if pd.isna(value) else str(value) for value in batch[column]]


_RESULT_TEXT = ("image_id", "uri", "laterality", "view", "content_sha256", "error_type", "error_message")
_INGEST_NUMBERS = ("height", "width", "intensity_max", "breast_fraction")


def _result_schema(outputs: int, ingest: bool) -> pa.Schema:
    """What write_batch hands back per image; typed, so a batch whose text columns are all null still has
    strings."""
    fields = [pa.field(name, pa.string()) for name in _RESULT_TEXT]
    fields += [pa.field("decoded", pa.bool_()), pa.field("forwards", pa.int64())]
    if ingest:
        fields += [pa.field(name, pa.float64()) for name in _INGEST_NUMBERS]
    for output in range(outputs):
        fields += [pa.field(_column("computed", output), pa.bool_()),
                   pa.field(_column("error_type", output), pa.string()),
                   pa.field(_column("error_message", output), pa.string())]
    return pa.schema(fields)


def gpus_per_actor(options: EmbedConfig, placement: Placement = ANYWHERE) -> float:
    """`embed.num_gpus`, else 1 when the cluster has GPUs now or the networks are placed on a node type
    that has them (an autoscaling cluster may have no GPU node yet: the demand starts one)."""
    if options.num_gpus is not None:
        return options.num_gpus
    gpu_type = any(node_type.gpus for node_type in NODE_TYPES.values()
                   if node_type.marker and node_type.marker in placement.resources("inference"))
    return 1.0 if gpu_type or ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _inference_node_cpus(placement: Placement) -> list[float]:
    """CPUs of each alive node the inference actors may use (those carrying its marker, if placed)."""
    markers = placement.resources("inference")
    return [node["Resources"].get("CPU", 0.0) for node in ray.nodes()
            if node.get("Alive") and all(node["Resources"].get(marker, 0) > 0 for marker in markers)]


@dataclass(frozen=True)
class IngestRun:
    """What ingest found: images decoded, error rows, and its two tables."""

    images: int
    errors: int
    images_uri: str
    errors_uri: str


@dataclass(frozen=True)
class PassResult:
    """One pass: each output's run (in the order of its tasks), ingest's when asked, how many images were
    decoded (each at most once) and how many network forwards ran (a shared NYU trunk counts once)."""

    runs: list[InferenceRun]
    ingest: IngestRun | None
    images: int
    decoded: int
    forwards: int


def run_pass(
    manifest: pd.DataFrame,
    output_uri: str,
    tasks: Sequence[InferenceTask],
    options: EmbedConfig = EmbedConfig(),
    read: IngestConfig = IngestConfig(),
    ingest: bool = False,
    placement: Placement = ANYWHERE,
) -> PassResult:
    """One pass over `manifest`'s images for every output in `tasks` (and ingest when asked): each image
    is read and decoded once, and only when some output still needs it; each output computes the content it
    has not stored under its key. Then each output's index and errors table, and ingest's tables, are written."""
    keys = [task.key(read) for task in tasks]
    cached = [CachedContent(feature_store.stored_content(task.table_uri(output_uri), key), key.orientation)
              for task, key in zip(tasks, keys, strict=True)]
    # An image ingest has a record of (or is not asked for) and every output already holds is hashed, not decoded.
    ingested = _stored_ingest(output_uri, read) if ingest else None
    skip_decode = (IngestedContent.of(ingested), *cached) if ingest else tuple(cached)
    num_gpus = gpus_per_actor(options, placement) if tasks else 0.0
    # A CPU actor writes its own batches, and reads them where decoding is placed on its nodes too (see
    # InferenceActor); a GPU actor's reads and writes, and ingest's alone, go to tasks.
    actor_writes = bool(tasks) and num_gpus == 0
    actor_reads = actor_writes and placement.resources("decode") == placement.resources("inference")
    if actor_reads:
        rows_per_block = read.block_rows(len(manifest), ray.cluster_resources().get("CPU", 1.0))
        stream = manifest_dataset(manifest, rows_per_block)
    else:
        stream = read_images(manifest, read, skip_decode, placement).map_batches(
            prepare_batch, batch_format="pandas", batch_size=read.batch_size,
            fn_kwargs={"tasks": list(tasks), "cached": cached, "ingest": ingest},
            resources=placement.resources("decode"))
    if tasks:
        actors = options.actor_count(ray.cluster_resources().get("GPU", 0.0), _inference_node_cpus(placement),
                                     batches=-(-len(manifest) // options.batch_size))
        stream = stream.map_batches(
            InferenceActor,
            fn_constructor_kwargs={"tasks": list(tasks), "keys": keys, "use_gpu": num_gpus > 0, "options": options,
                                   "output_uri": output_uri if actor_writes else None, "ingest": ingest,
                                   "reading": (ImageReading(read, skip_decode, tuple(cached))
                                               if actor_reads else None)},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors),
            num_gpus=num_gpus,
            resources=placement.resources("inference"),
            # Ray Data replaces a dead actor and retries the batches it held (its default for actor pools; an
            # actor that dies while starting counts against DataContext.max_consecutive_actor_init_deaths).
            # Part files are named by their content, so a redone batch overwrites instead of duplicating.
            batch_size=options.batch_size,
            batch_format="pandas",
        )
    if not actor_writes:
        stream = stream.map_batches(write_batch, batch_format="pandas", batch_size=None,
                                    fn_kwargs={"tasks": list(tasks), "keys": keys, "output_uri": output_uri,
                                               "ingest": ingest},
                                    resources=placement.resources("decode"))
    parts = [batch for batch in stream.iter_batches(batch_format="pyarrow", batch_size=None) if batch.num_rows]
    schema = _result_schema(len(tasks), ingest)
    results = (pa.concat_tables(parts) if parts else schema.empty_table()).to_pandas()
    runs = [_finish_output(manifest, output_uri, task, key, results, output, options.part_bytes)
            for output, (task, key) in enumerate(zip(tasks, keys, strict=True))]
    summary = _finish_ingest(manifest, output_uri, read, results, ingested) if ingest else None
    return PassResult(runs, summary, images=len(results), decoded=int(results["decoded"].sum()),
                      forwards=int(results["forwards"].sum()))


def _finish_output(manifest: pd.DataFrame, output_uri: str, task: InferenceTask, key: ModelKey,
                   results: pd.DataFrame, output: int, part_bytes: int) -> InferenceRun:
    """One output's part files merged to about `part_bytes` each, its errors table and its index (written
    last: the run of this output is complete)."""
    error_type = results[_column("error_type", output)]
    index = pd.DataFrame({
        "image_id": results["image_id"], "uri": results["uri"], "content_sha256": results["content_sha256"],
        "status": np.where(error_type.notna(), "error", "ok"), "computed": results[_column("computed", output)],
        "error_type": error_type, "error_message": results[_column("error_message", output)],
    })
    errors = errors_table([error_records(index, task.stage)])
    errors = tables.with_provenance(errors, task.stage, weights_ids=[key.weights_id], key=key.as_dict(),
                                    inputs={"images": tables.image_digest(manifest)})
    table_uri, errors_uri = task.table_uri(output_uri), task.errors_uri(output_uri)
    compacted = feature_store.compact(table_uri, key, part_bytes)
    storage.write_table(errors, errors_uri)
    feature_store.write_index(table_uri, task.stage, index, manifest, key)
    written = int(index["computed"].astype(bool).sum())
    failed = int((index["status"] == "error").sum())
    skipped = len(index) - written - failed
    log.info("%s: %d computed, %d already stored (skipped), %d errors; %d part files (%d merged)", task.stage,
             written, skipped, failed, compacted.files_after, compacted.merged)
    return InferenceRun(written, skipped, failed, table_uri, errors_uri, key, compacted.files_after)


def _finish_ingest(manifest: pd.DataFrame, output_uri: str, read: IngestConfig, results: pd.DataFrame,
                   stored: pd.DataFrame | None) -> IngestRun:
    """ingest/images.parquet (one row per readable image: decoded now, or its `stored` record reused) and
    errors/ingest.parquet."""
    failed = results["error_type"].notna()
    images = _with_stored_summaries(results[~failed].sort_values("image_id").reset_index(drop=True), stored)
    images = images.assign(height=images["height"].astype(np.int32), width=images["width"].astype(np.int32))
    inputs = {"images": tables.image_digest(manifest)}
    table = pa.Table.from_pandas(images[IMAGES_SCHEMA.names], schema=IMAGES_SCHEMA, preserve_index=False)
    table = tables.with_provenance(table, INGEST_STAGE, inputs=inputs, decode_id=read.decode_id,
                                   decode_settings=_decode_settings(read))
    failures = tables.with_provenance(errors_table([error_records(results, INGEST_STAGE)]), INGEST_STAGE,
                                      inputs=inputs)
    images_uri, errors_uri = tables.ingest_uri(output_uri), tables.errors_uri(output_uri, INGEST_STAGE)
    storage.write_table(failures, errors_uri)
    storage.write_table(table, images_uri)
    return IngestRun(images=table.num_rows, errors=failures.num_rows, images_uri=images_uri, errors_uri=errors_uri)


def _with_stored_summaries(images: pd.DataFrame, stored: pd.DataFrame | None) -> pd.DataFrame:
    """Images not decoded in this pass (their content has a record: IngestedContent) take the record's size and
    statistics; their id, uri and orientation are this manifest's."""
    reused = ~images["decoded"].astype(bool)
    if not reused.any():
        return images
    assert stored is not None  # a readable image is left undecoded only when ingest has its record
    records = stored.drop_duplicates("content_sha256").set_index("content_sha256")
    images = images.copy()
    images.loc[reused, list(_INGEST_NUMBERS)] = records.loc[images.loc[reused, "content_sha256"],
                                                            list(_INGEST_NUMBERS)].to_numpy(dtype=np.float64)
    return images


def run_inference(
    manifest: pd.DataFrame,
    output_uri: str,
    task: InferenceTask,
    options: EmbedConfig = EmbedConfig(),
    read: IngestConfig = IngestConfig(),
) -> InferenceRun:
    """A pass with one output: `task` on every image of `manifest` whose output is not yet stored."""
    return run_pass(manifest, output_uri, [task], options, read).runs[0]
