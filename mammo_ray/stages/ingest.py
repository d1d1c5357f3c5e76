"""Ingest: stream every image of the manifest through decoding, record what was read and what failed.

Writes `<output>/ingest/images.parquet` (one row per decoded image: id, uri, the orientation used, size,
content hash, intensity statistics; labels and patients stay in the manifest) and
`<output>/errors/ingest.parquet` (one row per image that could not be read). Pixels never reach the
driver: they are summarised inside the Ray tasks. A failure of the store fails the stage (nothing is
written); only problems of single files are errors rows. Ingest is part of the image pass
(`mammo_ray.stages.inference.run_pass`): in a study it shares each image's one read and decode with the
extractors and zero-shot; alone it is a pass without model outputs.
"""

from __future__ import annotations

import logging

import pandas as pd

from mammo_ray import tables
from mammo_ray.config.sections import IngestConfig
from mammo_ray.current import CurrentInputs
from mammo_ray.stages.inference import IngestRun, PassResult, run_pass
from mammo_ray.stages.stage import Counts, ImageOutputs, Stage

log = logging.getLogger("mammo_ray.study")


def run_ingest(manifest: pd.DataFrame, output_uri: str, options: IngestConfig = IngestConfig()) -> IngestRun:
    """Decode every image of `manifest` on Ray and write the image and error tables under `output_uri`."""
    ingested = run_pass(manifest, output_uri, [], read=options, ingest=True).ingest
    assert ingested is not None  # asked for: always there
    return ingested


def _counts(current: CurrentInputs, done: PassResult) -> Counts:
    assert done.ingest is not None  # the pass was asked for ingest
    log.info("ingest: %d images decoded, %d errors -> %s", done.ingest.images, done.ingest.errors,
             done.ingest.errors_uri)
    return {"ingested_images": done.ingest.images, "ingest_errors": done.ingest.errors}


# The image stages depend on the manifest's images and orientation (labels do not change pixels), on the
# decode settings and, for model outputs, on each model's key.
STAGE = Stage("ingest", lambda current: current.digest("images"), sections=("ingest",), needs_ray=True,
              image_outputs=ImageOutputs(tasks=lambda current: (), counts=_counts, ingest=True),
              reads=(tables.MANIFEST, tables.COHORT), writes=(tables.INGEST_IMAGES, tables.INGEST_ERRORS))
