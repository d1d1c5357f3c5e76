"""Ingest: stream every image of the manifest through decoding, record what was read and what failed.

Writes `<output>/ingest/images.parquet` (one row per decoded image: id, uri, the orientation used, size,
content hash, intensity statistics; labels and patients stay in the manifest) and
`<output>/errors/ingest.parquet` (one row per image that could not be read). Pixels never reach the
driver: they are summarised inside the Ray tasks. A failure of the store fails the stage (nothing is
written); only problems of single files are errors rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from mammo_ray import storage, tables
from mammo_ray.config.sections import IngestConfig
from mammo_ray.image_stream import error_records, errors_table, read_images
from mammo_ray.tables import IMAGES_SCHEMA

STAGE = "ingest"


@dataclass(frozen=True)
class IngestResult:
    images: int
    errors: int
    images_uri: str
    errors_uri: str


def summarise_batch(batch: pd.DataFrame) -> pd.DataFrame:
    """Replace the pixel arrays by a few statistics, so only small rows travel to the driver."""
    out = batch.drop(columns=["pixels"])
    out["intensity_max"] = [float(p.max()) if p.size else 0.0 for p in batch["pixels"]]
    out["breast_fraction"] = [float(np.count_nonzero(p)) / p.size if p.size else 0.0 for p in batch["pixels"]]
    return out


def run_ingest(manifest: pd.DataFrame, output_uri: str, options: IngestConfig = IngestConfig()) -> IngestResult:
    """Decode every image of `manifest` on Ray and write the image and error tables under `output_uri`."""
    decoded = read_images(manifest, options).map_batches(summarise_batch, batch_format="pandas")
    good: list[pd.DataFrame] = []
    errors: list[pd.DataFrame] = []
    for batch in decoded.iter_batches(batch_format="pandas", batch_size=256):
        failed = batch["error_type"].notna()
        errors.append(error_records(batch, STAGE))
        good.append(batch[~failed])
    images = pd.concat(good, ignore_index=True) if good else pd.DataFrame(columns=IMAGES_SCHEMA.names)
    images = images.sort_values("image_id").reset_index(drop=True)
    inputs = {"images": tables.image_digest(manifest)}
    table = pa.Table.from_pandas(images[IMAGES_SCHEMA.names], schema=IMAGES_SCHEMA, preserve_index=False)
    table = tables.with_provenance(table, STAGE, inputs=inputs, decode_id=options.decode_id)
    failures = tables.with_provenance(errors_table(errors), STAGE, inputs=inputs)
    images_uri, errors_uri = tables.ingest_uri(output_uri), tables.errors_uri(output_uri, STAGE)
    storage.write_table(failures, errors_uri)
    storage.write_table(table, images_uri)
    return IngestResult(images=table.num_rows, errors=failures.num_rows, images_uri=images_uri, errors_uri=errors_uri)
