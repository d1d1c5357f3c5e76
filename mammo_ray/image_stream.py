"""Streaming read of the images a manifest names: bytes from storage, decoded in parallel Ray tasks.

Every row that comes out carries the manifest columns (laterality and view completed from the file's
tags; the manifest's own values as `manifest_laterality` / `manifest_view`). A good row has `pixels`
(float32, H x W, zero background); a bad one has an empty `pixels`, and `error_type` / `error_message`
saying why; a row whose content needs no work (`cached`: its outputs are stored already) has empty pixels
and is not decoded.
Nothing is dropped silently. A problem of one file is an error row; a failure of the store itself
(StoreUnavailableError) is raised: it fails the stage instead of turning every image into an error.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray.data

from mammo_ray import storage
from mammo_ray.config.sections import IngestConfig
from mammo_ray.content_keys import content_key
from mammo_ray.datasets.manifest import to_table, validate_manifest
from mammo_ray.errors import StoreUnavailableError, describe
from mammo_ray.imaging.decode import DecodedImage, check_modality, decode_image
from mammo_ray.imaging.modality import allowed_modalities
from mammo_ray.imaging.transforms import INPUT_PREFIX
from mammo_ray.placement import ANYWHERE, Placement
from mammo_ray.privacy import SOURCE_COLUMN, shown
from mammo_ray.schemas import ERRORS_SCHEMA, MANIFEST_COLUMNS

DECODED_COLUMNS: list[str] = [
    *MANIFEST_COLUMNS,
    "pixels",
    "height",
    "width",
    "content_sha256",
    "manifest_laterality",
    "manifest_view",
    "cached",
    "error_type",
    "error_message",
]

_EMPTY_PIXELS = np.zeros((0, 0), dtype=np.float32)


@dataclass(frozen=True)
class CachedContent:
    """Content keys (`content_key`) whose outputs are already stored: read and hashed, not decoded."""

    keys: frozenset[str] = frozenset()
    orientation: bool = False

    def __contains__(self, row: tuple[str, object, object]) -> bool:
        return content_key(*row, self.orientation) in self.keys


def raise_original_errors() -> None:
    """Let map functions fail with their own error instead of Ray Data's UserCodeException, whose pickled
    cause is lost on the way to the driver: a StoreUnavailableError in a worker must reach the study as
    itself (its message, its exit code)."""
    ray.data.DataContext.get_current().raise_original_map_exception = True


def block_rows(options: IngestConfig, images: int, cpus: float) -> int:
    """Manifest rows per Ray block: `rows_per_block`, else about four blocks per CPU (the pass's last blocks
    then keep every CPU busy), between 16 and 256 rows. Each block costs Ray Data a task or an actor call
    (`jobs/benchmark.py scale` measures it); memory does not grow with it: a block's images are decoded
    `batch_size` at a time."""
    if options.rows_per_block is not None:
        return options.rows_per_block
    return max(16, min(256, math.ceil(images / (4 * max(1.0, cpus)))))


def blocks_dataset(table: pa.Table, rows_per_block: int) -> ray.data.Dataset:
    """A table as a Ray Dataset of blocks of about `rows_per_block` rows, small enough that decoding spreads
    over every CPU; map functions of the pipelines built on it fail with their own errors."""
    raise_original_errors()
    blocks = max(1, math.ceil(table.num_rows / max(1, rows_per_block)))
    size = max(1, math.ceil(table.num_rows / blocks))
    return ray.data.from_arrow([table.slice(start, size) for start in range(0, max(table.num_rows, 1), size)])


def manifest_dataset(manifest: pd.DataFrame, rows_per_block: int) -> ray.data.Dataset:
    """The manifest as a Ray Dataset of typed Arrow blocks (with the real uri of pseudonymised rows, to read)."""
    table = to_table(validate_manifest(manifest, source="<manifest>"))
    if SOURCE_COLUMN in manifest:
        table = table.append_column(SOURCE_COLUMN, pa.array(list(manifest[SOURCE_COLUMN]), pa.string()))
    for column in input_columns(manifest):  # another output's stored values, for the transforms (INPUT_PREFIX)
        table = table.append_column(column, pa.array([None if _absent(v) else v for v in manifest[column]]))
    return blocks_dataset(table, rows_per_block)


def input_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of `frame` that carry inputs of the transforms (`INPUT_PREFIX`)."""
    return [column for column in frame.columns if str(column).startswith(INPUT_PREFIX)]


def _absent(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def read_images(
    manifest: pd.DataFrame, options: IngestConfig = IngestConfig(), cached: Sequence[CachedContent] = (),
    placement: Placement = ANYWHERE,
) -> ray.data.Dataset:
    """Lazily read and decode every image of `manifest`; one output row per manifest row.

    Images whose content key is in every one of `cached` (each output's work already done; none given:
    always decode) are read and hashed but not decoded: their row has `cached` set and empty pixels.
    The decode tasks run where `placement` puts decoding.
    """
    rows_per_block = block_rows(options, len(manifest), ray.cluster_resources().get("CPU", 1.0))
    return manifest_dataset(manifest, rows_per_block).map_batches(
        decode_batch,
        batch_size=options.batch_size,
        batch_format="pandas",
        fn_kwargs={"options": options, "cached": cached},
        resources=placement.resources("decode"),
    )


def decode_batch(batch: pd.DataFrame, options: IngestConfig, cached: Sequence[CachedContent] = ()) -> pd.DataFrame:
    """Read and decode each row of a manifest batch; bad files become error rows, store failures raise."""
    rows = []
    for record in batch.to_dict("records"):
        decoded = _read_and_decode(record, options, cached)
        tag_laterality, tag_view = decoded.pop("tag_laterality"), decoded.pop("tag_view")
        # The manifest is the override; the file's own tags fill what the manifest leaves open. What the
        # manifest said is kept too: with the content it keys stored model outputs (content_keys.content_key).
        decoded["manifest_laterality"], decoded["manifest_view"] = record["laterality"], record["view"]
        decoded["laterality"] = _present(record["laterality"]) or tag_laterality
        decoded["view"] = _present(record["view"]) or tag_view
        rows.append({**record, **decoded})
    if not rows:
        return pd.DataFrame(columns=DECODED_COLUMNS)
    out = pd.DataFrame.from_records(rows)
    out["height"] = out["height"].astype(np.int32)
    out["width"] = out["width"].astype(np.int32)
    out["cached"] = out["cached"].astype(bool)
    return out[DECODED_COLUMNS + input_columns(batch)]


def _read_and_decode(record: dict, options: IngestConfig, cached: Sequence[CachedContent]) -> dict:
    """One image's decoded columns (not decoded when its content key is in every one of `cached`)."""
    uri = record["uri"]  # what every output shows: a pseudonymous locator where paths carry identifiers
    source = record.get(SOURCE_COLUMN) or uri  # where the bytes are
    digest = None
    try:
        data = _read(source, uri, options.max_bytes)
        digest = hashlib.sha256(data).hexdigest()
        content = (digest, record["laterality"], record["view"])
        if cached and all(content in outputs for outputs in cached):
            # Not decoded, but still judged: stored outputs of a CT stay unused (its header is read, no pixel).
            check_modality(data, uri, allowed_modalities=allowed_modalities(options.allow_modalities))
            return {"pixels": _EMPTY_PIXELS, "height": 0, "width": 0, "content_sha256": digest, "cached": True,
                    "tag_laterality": None, "tag_view": None, "error_type": None, "error_message": None}
        image = _decode(data, uri, options)
    except StoreUnavailableError:
        raise  # the store failed, not this image: the stage fails and its rerun does the work
    except Exception as error:  # noqa: BLE001 - a bad image is a row in the errors table, never a crash
        return {
            "pixels": _EMPTY_PIXELS, "height": 0, "width": 0, "content_sha256": digest, "cached": False,
            "tag_laterality": None, "tag_view": None,
            "error_type": type(error).__name__, "error_message": shown(describe(error, uri), source, uri),
        }
    return {
        "pixels": image.pixels, "height": image.pixels.shape[0], "width": image.pixels.shape[1],
        "content_sha256": digest, "cached": False, "tag_laterality": image.laterality, "tag_view": image.view,
        "error_type": None, "error_message": None,
    }


def _decode(data: bytes, uri: str, options: IngestConfig) -> DecodedImage:
    return decode_image(data, uri, apply_voi_lut=options.apply_voi_lut, max_pixels=options.max_pixels,
                        allowed_modalities=allowed_modalities(options.allow_modalities))


def read_image(record: Mapping[str, Any], options: IngestConfig) -> DecodedImage:
    """One manifest row's image read and decoded as the pass does it (its limits, modalities and VOI LUT), for
    a figure of a few images; errors name the row's `uri`, never its real source."""
    uri = record["uri"]
    return _decode(_read(record.get(SOURCE_COLUMN) or uri, uri, options.max_bytes), uri, options)


def _read(source: str, uri: str, max_bytes: int) -> bytes:
    """The bytes at `source`; a store failure is raised naming `uri`, the locator, not the real path."""
    try:
        return storage.read_bytes(source, max_bytes=max_bytes)
    except StoreUnavailableError as error:
        if source == uri:
            raise
        store = storage.split_uri(source)[1].split("/", 1)[0] if storage.is_remote(source) else "the local disk"
        raise StoreUnavailableError(f"{uri} (store {store})", shown(error.reason, source, uri)) from None


def _present(value: object) -> object:
    return None if _absent(value) else value


def error_records(batch: pd.DataFrame, stage: str) -> pd.DataFrame:
    """The errors-table rows (docs/design.md, "Errors table") of a decoded batch."""
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
    """Concatenate error-record frames into one table with the errors schema, sorted by image."""
    frames = [frame for frame in frames if len(frame)]
    if not frames:
        return ERRORS_SCHEMA.empty_table()
    frame = pd.concat(frames, ignore_index=True).sort_values(["image_id", "stage"], kind="stable")
    return pa.Table.from_pandas(frame, schema=ERRORS_SCHEMA, preserve_index=False)
