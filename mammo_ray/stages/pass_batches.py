"""The image pass's steps on a batch (Ray tasks and actors): decoded pixels -> each output's model inputs
(`prepare_batch`), inputs -> each output's model outputs (`InferenceActor`), outputs -> each output's part file
and the batch's per-image results (`write_batch`). Each output's state in a batch is a set of columns named by
its position in the pass (`OutputColumns`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mammo_ray import content_keys, feature_store, storage, tables
from mammo_ray.config.sections import EmbedConfig, IngestConfig
from mammo_ray.errors import describe
from mammo_ray.faults import crash_point
from mammo_ray.feature_store import ModelKey
from mammo_ray.image_stream import CachedContent, decode_batch, input_columns
from mammo_ray.imaging.transforms import heatmaps_of
from mammo_ray.stages.inference_task import InferenceTask, WeightsChangedError
from mammo_ray.stages.pass_plan import actor_torch_threads

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from mammo_ray.imaging.transforms import ImageTransform

_EMPTY_INPUTS = np.zeros((0, 0, 0, 0), dtype=np.float32)


@dataclass(frozen=True)
class OutputColumns:
    """Where one output's state travels in a batch of the pass: its model inputs and group (prepared, then
    dropped once run), the breast's share of its inputs, whether its output is already stored (`cached`), its
    error, its model output, and whether it was computed now (the per-image results)."""

    position: int  # the output's place among the pass's tasks

    @classmethod
    def of(cls, tasks: Sequence[InferenceTask]) -> list[OutputColumns]:
        return [cls(position) for position in range(len(tasks))]

    def _named(self, what: str) -> str:
        return f"{what}_{self.position}"

    inputs = property(lambda self: self._named("inputs"))
    group = property(lambda self: self._named("inference_group"))
    breast_share = property(lambda self: self._named("breast_share"))
    cached = property(lambda self: self._named("cached"))
    error_type = property(lambda self: self._named("error_type"))
    error_message = property(lambda self: self._named("error_message"))
    output = property(lambda self: self._named("output"))
    computed = property(lambda self: self._named("computed"))


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
    out = batch.drop(columns=["pixels", *input_columns(batch)])  # inputs reach the transforms, and no further
    pixels_of = [np.asarray(p, dtype=np.float32) for p in batch["pixels"]]
    out["decoded"] = [p.size > 0 for p in pixels_of]
    if ingest:
        out["intensity_max"] = [float(p.max()) if p.size else 0.0 for p in pixels_of]
        out["breast_fraction"] = [float(np.count_nonzero(p)) / p.size if p.size else 0.0 for p in pixels_of]
    prepared_once: dict[tuple[int, str], tuple[np.ndarray, float] | Exception] = {}  # (image, transform id) ->
    for columns, task, stored in zip(OutputColumns.of(tasks), tasks, cached, strict=True):
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
        out[columns.inputs] = inputs
        out[columns.group] = groups
        out[columns.breast_share] = shares
        out[columns.cached] = skip
        out[columns.error_type] = error_types
        out[columns.error_message] = messages
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
        inputs = {"heatmaps": heatmaps_of(row)} if transform.needs_heatmaps else {}
        prepared, share = transform.prepare(pixels, row.view, row.laterality, **inputs)
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
    hand-over converts the batch to an Arrow block and back; docs/benchmarks.md, "Image pass"). A GPU actor
    takes prepared inputs from CPU tasks and leaves writing to CPU tasks, so no GPU waits on decoding or on the
    store.
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
            torch.set_num_threads(actor_torch_threads(options))
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
        for columns, task, model in zip(OutputColumns.of(self.tasks), self.tasks, self.models, strict=True):
            good = (batch[columns.error_type].isna() & ~batch[columns.cached].astype(bool))
            inputs, groups = batch[columns.inputs], batch[columns.group]
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
            out = out.drop(columns=[columns.inputs, columns.group])
            out[columns.output] = outputs
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
    result: dict[str, list] = {name: _text(batch, name) for name in RESULT_TEXT}
    result["decoded"] = batch["decoded"].astype(bool).tolist()
    result["forwards"] = (batch["forwards"] if "forwards" in batch else pd.Series(0, index=batch.index)).tolist()
    for name in INGEST_NUMBERS if ingest else ():
        result[name] = batch[name].tolist()
    for columns, task, key in zip(OutputColumns.of(tasks), tasks, keys, strict=True):
        failed = batch[columns.error_type].notna()
        computed = ~failed & ~batch[columns.cached].astype(bool)
        if computed.any():
            rows = batch[computed]
            values = [None if len(o) == 0 else o for o in rows[columns.output]]
            rows = rows.assign(**task.output_columns(values),
                               breast_share=rows[columns.breast_share].astype(np.float32))
            keyed = feature_store.feature_rows(rows, key)
            table = pa.Table.from_pandas(task.to_frame(keyed), schema=task.schema, preserve_index=False)
            table = tables.with_provenance(table, task.stage, weights_ids=[key.weights_id], key=key.as_dict())
            contents = content_keys.content_keys(keyed["content_sha256"], keyed["laterality"], keyed["view"],
                                           key.orientation)
            storage.write_table(table, storage.join(feature_store.key_uri(task.table_uri(output_uri), key),
                                                    feature_store.part_name(contents.tolist())))
        result[columns.computed] = computed.tolist()
        result[columns.error_type] = _text(batch, columns.error_type)
        result[columns.error_message] = _text(batch, columns.error_message)
    return pa.table(result, schema=result_schema(len(tasks), ingest))


def _text(batch: pd.DataFrame, column: str) -> list[str | None]:
    return [None if pd.isna(value) else str(value) for value in batch[column]]


RESULT_TEXT = ("image_id", "uri", "laterality", "view", "content_sha256", "error_type", "error_message")
INGEST_NUMBERS = ("height", "width", "intensity_max", "breast_fraction")


def result_schema(outputs: int, ingest: bool) -> pa.Schema:
    """What write_batch hands back per image; typed, so a batch whose text columns are all null still has
    strings."""
    fields = [pa.field(name, pa.string()) for name in RESULT_TEXT]
    fields += [pa.field("decoded", pa.bool_()), pa.field("forwards", pa.int64())]
    if ingest:
        fields += [pa.field(name, pa.float64()) for name in INGEST_NUMBERS]
    for columns in map(OutputColumns, range(outputs)):
        fields += [pa.field(columns.computed, pa.bool_()), pa.field(columns.error_type, pa.string()),
                   pa.field(columns.error_message, pa.string())]
    return pa.schema(fields)
