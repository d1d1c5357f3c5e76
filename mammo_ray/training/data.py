"""Fine-tuning inputs: task targets, and the Ray Data pipeline that decodes and preprocesses images.

Decoding and preprocessing (crop, resize to the stage's size, normalisation) run in Ray Data CPU
tasks, one fused task per batch of manifest rows, so full-resolution pixels never enter the object
store: only model-ready (C, H, W) float32 inputs do, and the training workers stream them through
`get_dataset_shard(...).iter_torch_batches(...)`.

A row that cannot be read or prepared (corrupt file, no breast found) is written to the errors table
(`<output>/errors/<stage>/part-*.parquet`, docs/design.md, "Errors table") and dropped from the stream; it never crashes
the job. Error file names derive from their rows, so every epoch's re-execution rewrites the same files.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa
import ray.data

from mammo_ray import storage, tables
from mammo_ray.config.sections import IngestConfig
from mammo_ray.datasets.manifest import BIRADS_VALUES, MANIFEST_COLUMNS, to_table, validate_manifest
from mammo_ray.errors import describe
from mammo_ray.image_stream import blocks_dataset, decode_batch
from mammo_ray.imaging.transforms import ImageTransform
from mammo_ray.placement import ANYWHERE, Placement
from mammo_ray.privacy import SOURCE_COLUMN
from mammo_ray.schemas import ERRORS_SCHEMA

TASKS: tuple[str, ...] = ("binary", "birads")
#: Manifest rows per Ray block of the training inputs unless `ingest.rows_per_block` says otherwise.
TRAINING_BLOCK_ROWS = 16


def task_frame(manifest: pd.DataFrame, task: str) -> tuple[pd.DataFrame, list[str]]:
    """The images usable for `task`, with an int64 `target` (index into the class list) and `row`.

    binary: the manifest `label` (classes '0', '1'; rows without a label are left out).
    birads: the BI-RADS category itself; the classes are the categories present, in BI-RADS order.
    `row` numbers the returned rows 0..n-1 (predictions refer to it).
    """
    frame = validate_manifest(manifest, source="<manifest>")
    if SOURCE_COLUMN in manifest:  # where pseudonymised images really are: to read them, never written
        frame[SOURCE_COLUMN] = manifest[SOURCE_COLUMN].to_numpy()
    if task == "binary":
        frame = frame[frame["label"].notna()].copy()
        classes = ["0", "1"]
        frame["target"] = frame["label"].astype("int64")
    elif task == "birads":
        frame = frame[frame["birads"].notna()].copy()
        present = set(frame["birads"])
        classes = [value for value in BIRADS_VALUES if value in present]
        frame["target"] = frame["birads"].map({c: i for i, c in enumerate(classes)}).astype("int64")
    else:
        raise ValueError(f"unknown task {task!r} (use one of {TASKS})")
    frame = frame.reset_index(drop=True)
    frame["row"] = np.arange(len(frame), dtype=np.int64)
    return frame, classes


def class_weights(targets: np.ndarray, num_classes: int) -> list[float]:
    """n / (k * count_c) per class (sklearn's "balanced"); a class absent from training gets 0."""
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.tolist()


def prepare_batch(
    batch: pd.DataFrame, transform: ImageTransform, read: IngestConfig, errors_uri: str, stage: str
) -> dict[str, np.ndarray]:
    """Manifest rows (+ target, row) -> {image (B, C, H, W), target, row}; failures go to the errors table."""
    columns = [*MANIFEST_COLUMNS, *([SOURCE_COLUMN] if SOURCE_COLUMN in batch else [])]
    decoded = decode_batch(batch[columns].reset_index(drop=True), read)
    if len(decoded) != len(batch) or list(decoded["image_id"]) != list(batch["image_id"]):
        raise AssertionError("decode_batch must return one row per input row, in order")
    images, targets, rows, failures = [], [], [], []
    for position, record in enumerate(decoded.itertuples(index=False)):
        if pd.notna(record.error_type):
            failures.append((record.image_id, record.uri, record.error_type, record.error_message))
            continue
        try:
            image = transform(np.asarray(record.pixels, dtype=np.float32), record.view, record.laterality)[0]
            if image.shape != transform.shape:
                raise ValueError(f"preprocessing gave shape {image.shape}, expected {transform.shape}")
            images.append(np.ascontiguousarray(image, dtype=np.float32))
        except Exception as error:  # noqa: BLE001 - e.g. no breast found: an errors row, not a crash
            failures.append((record.image_id, record.uri, type(error).__name__, describe(error, record.uri)))
            continue
        targets.append(int(batch["target"].iloc[position]))
        rows.append(int(batch["row"].iloc[position]))
    if failures:
        _write_errors(failures, errors_uri, stage)
    image_array = np.stack(images) if images else np.zeros((0, *transform.shape), dtype=np.float32)
    return {
        "image": image_array,
        "target": np.asarray(targets, dtype=np.int64),
        "row": np.asarray(rows, dtype=np.int64),
    }


def _write_errors(failures: list[tuple], errors_uri: str, stage: str) -> None:
    frame = pd.DataFrame(failures, columns=["image_id", "uri", "error_type", "message"])
    frame.insert(2, "stage", stage)
    table = tables.with_provenance(pa.Table.from_pandas(frame, schema=ERRORS_SCHEMA, preserve_index=False), stage)
    digest = hashlib.sha256("\n".join(sorted(frame["image_id"])).encode()).hexdigest()[:24]
    storage.write_table(table, storage.join(errors_uri, f"part-{digest}.parquet"))


def input_dataset(
    frame: pd.DataFrame,
    transform: ImageTransform,
    *,
    errors_uri: str,
    stage: str,
    read: IngestConfig = IngestConfig(),
    num_cpus: float = 1.0,
    shuffle_seed: int | None = None,
    placement: Placement = ANYWHERE,
) -> ray.data.Dataset:
    """A lazy Ray Dataset of model inputs for the rows of a task frame (manifest columns + target + row).

    shuffle_seed: visit the input blocks in an order drawn from this seed (the training loop adds a
    local shuffle buffer, seeded per epoch, on top). Blocks come out in order, so the same seed gives
    the same batches: a run is reproducible on one worker.
    """
    table = to_table(frame[MANIFEST_COLUMNS])
    if SOURCE_COLUMN in frame:
        table = table.append_column(SOURCE_COLUMN, pa.array(list(frame[SOURCE_COLUMN]), pa.string()))
    table = table.append_column("target", pa.array(frame["target"].to_numpy(np.int64)))
    table = table.append_column("row", pa.array(frame["row"].to_numpy(np.int64)))
    # Fixed, not from the cluster: the seeded block order and shuffle make fine-tuning reproducible on any
    # machine only if the blocks are the same everywhere.
    dataset = blocks_dataset(table, read.rows_per_block or TRAINING_BLOCK_ROWS)
    if shuffle_seed is not None:
        dataset = dataset.randomize_block_order(seed=shuffle_seed)
    dataset = dataset.map_batches(
        prepare_batch,
        batch_format="pandas",
        batch_size=read.batch_size,
        num_cpus=num_cpus,
        resources=placement.resources("decode"),
        fn_kwargs={"transform": transform, "read": read, "errors_uri": errors_uri, "stage": stage},
    )
    dataset.context.execution_options.preserve_order = True
    return dataset
