"""Fine-tuning inputs: task targets, and the Ray Data pipeline that decodes and preprocesses images.

Decoding and preprocessing (crop, resize to the stage's size, normalisation) run in Ray Data CPU
tasks, one fused task per batch of manifest rows, so full-resolution pixels never enter the object
store: only model-ready (C, H, W) float32 inputs do, and the training workers stream them through
`get_dataset_shard(...).iter_torch_batches(...)`.

A row that cannot be read or prepared (corrupt file, no breast found) is written to the errors table
(`<output>/errors/<stage>/part-*.parquet`, DESIGN §2) and dropped from the stream; it never crashes
the job. Error file names derive from their rows, so every epoch's re-execution rewrites the same files.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import ray.data

from mammo_ray import storage, tables
from mammo_ray.datasets.manifest import BIRADS_VALUES, MANIFEST_COLUMNS, to_table, validate_manifest
from mammo_ray.errors import describe
from mammo_ray.image_stream import ReadOptions, decode_batch, raise_original_errors
from mammo_ray.tables import ERRORS_SCHEMA
from mammo_ray.models.extractors import FULL_FIELD_ROWS

TASKS: tuple[str, ...] = ("binary", "birads")
#: The NYU CC window height (DESIGN §4): a NYU input of size s is the CC window scaled by s / 2677.
NYU_CC_ROWS = 2677
NYU_CC_COLUMNS = 1942


def task_frame(manifest: pd.DataFrame, task: str) -> tuple[pd.DataFrame, list[str]]:
    """The images usable for `task`, with an int64 `target` (index into the class list) and `row`.

    binary: the manifest `label` (classes '0', '1'; rows without a label are left out).
    birads: the BI-RADS category itself; the classes are the categories present, in BI-RADS order.
    `row` numbers the returned rows 0..n-1 (predictions refer to it).
    """
    frame = validate_manifest(manifest, source="<manifest>")
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


@dataclass(frozen=True)
class InputSpec:
    """How one stage's inputs are made: the model family's preprocessing at `size`.

    imagenet: `ImageNetPreprocess` (breast crop, long side = size, zero-padded square, ImageNet
    normalisation), 3 x size x size. nyu: the NYU window of the CC view scaled so its height is
    `size` (`NYUPreprocess`, standardised), 1 x size x round(1942 * size / 2677).
    source_resolution: the inputs' resolution relative to a full-field mammogram; None estimates it
    per image from its height (rows / 4000, at most 1), as the embedding stage does.
    """

    family: str
    size: int
    crop_to_breast: bool = True
    source_resolution: float | None = None

    def __post_init__(self) -> None:
        if self.family not in ("imagenet", "nyu"):
            raise ValueError(f"unknown input family {self.family!r}")
        if self.size < 16:
            raise ValueError(f"size must be >= 16, got {self.size}")

    @property
    def shape(self) -> tuple[int, int, int]:
        if self.family == "imagenet":
            return 3, self.size, self.size
        return 1, self.size, max(1, round(NYU_CC_COLUMNS * self.size / NYU_CC_ROWS))

    def resolution_for(self, height: int) -> float:
        if self.source_resolution is not None:
            return self.source_resolution
        return min(1.0, max(height, 1) / FULL_FIELD_ROWS)

    def preprocessor(self, height: int):
        resolution = self.resolution_for(height)
        if self.family == "imagenet":
            from mammo_ray.imaging.imagenet import ImageNetPreprocess

            return ImageNetPreprocess(size=self.size, crop_to_breast=self.crop_to_breast,
                                      source_resolution=resolution)
        from mammo_ray.imaging.nyu import NYUPreprocess

        return NYUPreprocess(scale=self.size / NYU_CC_ROWS, source_resolution=resolution, view="CC")

    @property
    def id(self) -> str:
        source = "auto" if self.source_resolution is None else repr(float(self.source_resolution))
        return f"{self.preprocessor(FULL_FIELD_ROWS).id}:source={source}"

    def __call__(
        self, pixels: np.ndarray, view: str | None = None, laterality: str | None = None
    ) -> np.ndarray:
        prepare = self.preprocessor(pixels.shape[0])
        if self.family == "imagenet":
            out = prepare(pixels)
        else:
            out = prepare(pixels, view, laterality)[None]
        out = np.ascontiguousarray(out, dtype=np.float32)
        if out.shape != self.shape:
            raise ValueError(f"preprocessing gave shape {out.shape}, expected {self.shape}")
        return out


def prepare_batch(
    batch: pd.DataFrame, spec: InputSpec, read_options: ReadOptions, errors_uri: str, stage: str
) -> dict[str, np.ndarray]:
    """Manifest rows (+ target, row) -> {image (B, C, H, W), target, row}; failures go to the errors table."""
    decoded = decode_batch(batch[MANIFEST_COLUMNS].reset_index(drop=True), read_options)
    if len(decoded) != len(batch) or list(decoded["image_id"]) != list(batch["image_id"]):
        raise AssertionError("decode_batch must return one row per input row, in order")
    images, targets, rows, failures = [], [], [], []
    for position, record in enumerate(decoded.itertuples(index=False)):
        if pd.notna(record.error_type):
            failures.append((record.image_id, record.uri, record.error_type, record.error_message))
            continue
        try:
            images.append(spec(np.asarray(record.pixels, dtype=np.float32), record.view, record.laterality))
        except Exception as error:  # noqa: BLE001 - e.g. no breast found: an errors row, not a crash
            failures.append((record.image_id, record.uri, type(error).__name__, describe(error, record.uri)))
            continue
        targets.append(int(batch["target"].iloc[position]))
        rows.append(int(batch["row"].iloc[position]))
    if failures:
        _write_errors(failures, errors_uri, stage)
    image_array = np.stack(images) if images else np.zeros((0, *spec.shape), dtype=np.float32)
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
    spec: InputSpec,
    *,
    errors_uri: str,
    stage: str,
    read_options: ReadOptions = ReadOptions(),
    num_cpus: float = 1.0,
    shuffle: bool = False,
) -> ray.data.Dataset:
    """A lazy Ray Dataset of model inputs for the rows of a task frame (manifest columns + target + row).

    shuffle: visit the input blocks in a new random order on every execution (every epoch); the
    training loop adds a local shuffle buffer on top.
    """
    raise_original_errors()
    table = to_table(frame[MANIFEST_COLUMNS])
    table = table.append_column("target", pa.array(frame["target"].to_numpy(np.int64)))
    table = table.append_column("row", pa.array(frame["row"].to_numpy(np.int64)))
    rows_per_block = max(1, read_options.rows_per_block)
    blocks = max(1, math.ceil(table.num_rows / rows_per_block))
    size = max(1, math.ceil(table.num_rows / blocks))
    starts = range(0, max(table.num_rows, 1), size)
    dataset = ray.data.from_arrow([table.slice(start, size) for start in starts])
    if shuffle:
        dataset = dataset.randomize_block_order()
    return dataset.map_batches(
        prepare_batch,
        batch_format="pandas",
        batch_size=read_options.batch_size,
        num_cpus=num_cpus,
        fn_kwargs={"spec": spec, "read_options": read_options, "errors_uri": errors_uri, "stage": stage},
    )
