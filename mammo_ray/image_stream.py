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
from mammo_ray.datasets.manifest import MANIFEST_COLUMNS, to_table, validate_manifest
from mammo_ray.errors import describe
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
    """The manifest as a Ray Dataset of typed Arrow blocks, small enough that decoding spreads over every CPU."""
    table = to_table(validate_manifest(manifest, source="<manifest>"))
    blocks = max(1, math.ceil(table.num_rows / max(1, rows_per_block)))
    size = max(1, math.ceil(table.num_rows / blocks))
    return ray.data.from_arrow([table.slice(start, size) for start in range(0, max(table.num_rows, 1), size)])


def read_images(
    manifest: pd.DataFrame, options: ReadOptions = ReadOptions(), skip_content: frozenset[str] = frozenset()
) -> ray.data.Dataset:
    """Lazily read and decode every image of `manifest`; one output row per manifest row.

    Images whose content sha256 is in `skip_content` (work already done) are read and hashed but not
    decoded, and produce no row.
    """
    return manifest_dataset(manifest, options.rows_per_block).map_batches(
        decode_batch,
        batch_size=options.batch_size,
        batch_format="pandas",
        fn_kwargs={"options": options, "skip_content": skip_content},
    )


def decode_batch(
    batch: pd.DataFrame, options: ReadOptions, skip_content: frozenset[str] = frozenset()
) -> pd.DataFrame:
    """Read and decode each row of a manifest batch; failures become error rows, never exceptions."""
    rows = []
    for record in batch.to_dict("records"):
        decoded = _read_and_decode(record["uri"], options, skip_content)
        if decoded is None:
            continue
        tag_laterality, tag_view = decoded.pop("tag_laterality"), decoded.pop("tag_view")
        # The manifest is the override; the file's own tags fill what the manifest leaves open.
        decoded["laterality"] = _present(record["laterality"]) or tag_laterality
        decoded["view"] = _present(record["view"]) or tag_view
        rows.append({**record, **decoded})
    if not rows:
        return pd.DataFrame(columns=DECODED_COLUMNS)
    out = pd.DataFrame.from_records(rows)
    out["height"] = out["height"].astype(np.int32)
    out["width"] = out["width"].astype(np.int32)
    return out[DECODED_COLUMNS]


def _read_and_decode(uri: str, options: ReadOptions, skip_content: frozenset[str]) -> dict | None:
    """One image's decoded columns; None when its content is in `skip_content`."""
    digest = None
    try:
        data = storage.read_bytes(uri)
        digest = hashlib.sha256(data).hexdigest()
        if digest in skip_content:
            return None
        image = decode_image(data, uri, apply_voi_lut=options.apply_voi_lut, max_pixels=options.max_pixels)
    except Exception as error:  # noqa: BLE001 - a bad image is a row in the errors table, never a crash
        message = describe(error, uri)
        return {
            "pixels": _EMPTY_PIXELS, "height": 0, "width": 0, "content_sha256": digest,
            "tag_laterality": None, "tag_view": None,
            "error_type": type(error).__name__, "error_message": message,
        }
    return {
        "pixels": image.pixels, "height": image.pixels.shape[0], "width": image.pixels.shape[1],
        "content_sha256": digest, "tag_laterality": image.laterality, "tag_view": image.view,
        "error_type": None, "error_message": None,
    }


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
