"""Streaming read of the images a manifest names: bytes from storage, decoded in parallel Ray tasks.

Every row that comes out carries the manifest columns. A good row has `pixels` (float32, H x W, zero
background); a bad one has an empty `pixels`, and `error_type` / `error_message` saying why. Nothing
is dropped silently and nothing raises: the errors table is built from those rows.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import ray.data

from mammo_ray import storage
from mammo_ray.datasets.manifest import MANIFEST_COLUMNS
from mammo_ray.errors import MammoRayError
from mammo_ray.imaging.decode import decode_image

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
    ]
)

DECODED_COLUMNS: list[str] = [
    *MANIFEST_COLUMNS,
    "pixels",
    "height",
    "width",
    "content_sha256",
    "error_type",
    "error_message",
]

_EMPTY_PIXELS = np.zeros((0, 0), dtype=np.float32)


@dataclass(frozen=True)
class ReadOptions:
    """How images are read and decoded. Storage settings come from the environment (see storage)."""

    apply_voi_lut: bool = True
    max_pixels: int = 120_000_000
    batch_size: int = 4
    rows_per_block: int = 16


def manifest_dataset(manifest: pd.DataFrame, rows_per_block: int = 16) -> ray.data.Dataset:
    """The manifest as a Ray Dataset in small blocks, so decoding spreads over every CPU."""
    frame = manifest[MANIFEST_COLUMNS].reset_index(drop=True)
    blocks = max(1, math.ceil(len(frame) / max(1, rows_per_block)))
    parts = [frame.iloc[index::blocks].reset_index(drop=True) for index in range(blocks)] if len(frame) else [frame]
    # pandas nullable ints do not cross into Arrow cleanly as object; make the label a plain float.
    return ray.data.from_pandas([_plain(part) for part in parts])


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["label"] = frame["label"].astype("float64")
    return frame


def read_images(manifest: pd.DataFrame, options: ReadOptions = ReadOptions()) -> ray.data.Dataset:
    """Lazily read and decode every image of `manifest`; one output row per manifest row."""
    return manifest_dataset(manifest, options.rows_per_block).map_batches(
        decode_batch,
        batch_size=options.batch_size,
        batch_format="pandas",
        fn_kwargs={"options": options},
    )


def decode_batch(batch: pd.DataFrame, options: ReadOptions) -> pd.DataFrame:
    """Read and decode each row of a manifest batch; failures become error rows, never exceptions."""
    pixels, heights, widths, digests, error_types, messages = [], [], [], [], [], []
    laterality = batch["laterality"].astype(object).tolist()
    view = batch["view"].astype(object).tolist()
    for index, uri in enumerate(batch["uri"].tolist()):
        try:
            data = storage.read_bytes(uri)
            digests.append(hashlib.sha256(data).hexdigest())
            image = decode_image(data, uri, apply_voi_lut=options.apply_voi_lut, max_pixels=options.max_pixels)
        except Exception as error:  # noqa: BLE001 - a bad image is a row in the errors table, never a crash
            if len(digests) == index:
                digests.append(None)
            pixels.append(_EMPTY_PIXELS)
            heights.append(0)
            widths.append(0)
            error_types.append(type(error).__name__)
            messages.append(str(error) if isinstance(error, MammoRayError) else f"{uri}: {error}")
            continue
        pixels.append(image.pixels)
        heights.append(image.pixels.shape[0])
        widths.append(image.pixels.shape[1])
        error_types.append(None)
        messages.append(None)
        # The manifest is the override; the file's own tags fill what the manifest leaves open.
        laterality[index] = _present(laterality[index]) or image.laterality
        view[index] = _present(view[index]) or image.view
    out = batch.copy()
    out["laterality"] = laterality
    out["view"] = view
    out["pixels"] = pixels
    out["height"] = np.asarray(heights, dtype=np.int32)
    out["width"] = np.asarray(widths, dtype=np.int32)
    out["content_sha256"] = digests
    out["error_type"] = error_types
    out["error_message"] = messages
    return out


def _present(value: object) -> object:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def error_records(batch: pd.DataFrame, stage: str) -> pd.DataFrame:
    """The errors-table rows (DESIGN §2) of a decoded batch."""
    failed = batch[batch["error_type"].notna()]
    return pd.DataFrame(
        {
            "image_id": failed["image_id"].astype(object),
            "uri": failed["uri"].astype(object),
            "stage": stage,
            "error_type": failed["error_type"].astype(object),
            "message": failed["error_message"].astype(object),
        }
    ).reset_index(drop=True)


def errors_table(frames: list[pd.DataFrame]) -> pa.Table:
    """Concatenate error-record frames into one table with the errors schema."""
    if not frames:
        return ERRORS_SCHEMA.empty_table()
    frame = pd.concat(frames, ignore_index=True)
    return pa.Table.from_pandas(frame, schema=ERRORS_SCHEMA, preserve_index=False)
