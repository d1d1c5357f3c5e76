"""Every table of a study in one place: where it lives under the output URI (the path functions), the declared
`Table` objects stages name as what they read and write (name, path, schema from `mammo_ray/schemas.py`),
and the digests and provenance that tell a table of the current inputs from one left over
(docs/design.md, "Data contracts": views of the manifest, feature stores, indexes).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mammo_ray import __version__, package_schemas, schemas, storage
from mammo_ray.schemas import IMAGE_COLUMNS, MANIFEST_COLUMNS

# --- paths ------------------------------------------------------------------------------------------


def manifest_uri(output_uri: str) -> str:
    return storage.join(output_uri, "manifest.parquet")


def ingest_uri(output_uri: str) -> str:
    return storage.join(output_uri, "ingest", "images.parquet")


def errors_root(output_uri: str) -> str:
    """The folder of every stage's errors table (`pd.read_parquet` of it reads them all)."""
    return storage.join(output_uri, "errors")


def errors_uri(output_uri: str, stage: str) -> str:
    """One stage's errors table: `errors/ingest.parquet`, `errors/embed-<extractor>.parquet`, ..."""
    return storage.join(errors_root(output_uri), f"{stage.replace(':', '-')}.parquet")


def finetune_errors_uri(output_uri: str, inputs: str) -> str:
    """The folder of fine-tuning's errors for one input family and size (`<family>-<size>`): its Ray Data
    workers write one part file per batch that held a bad image."""
    return storage.join(errors_root(output_uri), f"finetune-{inputs}")


def embeddings_uri(output_uri: str, extractor: str | None = None) -> str:
    """The folder of one extractor's feature store and index (or of all extractors)."""
    return storage.join(output_uri, "embeddings", *([extractor] if extractor else []))


def zero_shot_uri(output_uri: str) -> str:
    return storage.join(output_uri, "zero_shot")


def zero_shot_heatmaps_uri(output_uri: str) -> str:
    return storage.join(output_uri, "zero_shot_heatmaps")


def thumbnails_uri(output_uri: str, family: str | None = None) -> str:
    """The folder of one input family's thumbnails (or of all of them)."""
    return storage.join(output_uri, "thumbnails", *([family] if family else []))


def heatmaps_uri(output_uri: str) -> str:
    return storage.join(output_uri, "heatmaps")


def features_uri(table_uri: str) -> str:
    """The feature store of a model output folder (embeddings/<extractor> or zero_shot)."""
    return storage.join(table_uri, "features")


def index_uri(table_uri: str) -> str:
    """The index of a model output folder: image -> content, for the manifest of its last run. Named with a
    leading '_' so that Parquet readers of the folder (pandas, DuckDB, Ray Data) see only the feature store."""
    return storage.join(table_uri, "_index.parquet")


def figures_uri(output_uri: str, name: str) -> str:
    return storage.join(output_uri, "figures", name)


def grid_uri(output_uri: str) -> str:
    return storage.join(output_uri, "results", "grid.parquet")


def grid_predictions_uri(output_uri: str) -> str:
    return storage.join(output_uri, "results", "grid_predictions.parquet")


def comparisons_uri(output_uri: str) -> str:
    return storage.join(output_uri, "results", "comparisons.parquet")


def external_uri(output_uri: str) -> str:
    return storage.join(output_uri, "results", "external.parquet")


def subgroups_uri(output_uri: str) -> str:
    return storage.join(output_uri, "results", "subgroups.parquet")


def finetune_vs_frozen_uri(output_uri: str) -> str:
    return storage.join(output_uri, "results", "finetune_vs_frozen.parquet")


def grid_units_uri(output_uri: str) -> str:
    """The grid's journal: one file per finished Tune trial unit, removed once grid.parquet is written."""
    return storage.join(output_uri, "results", "grid_units")


def finetune_uri(output_uri: str) -> str:
    return storage.join(output_uri, "results", "finetune.parquet")


def finetune_predictions_uri(output_uri: str) -> str:
    return storage.join(output_uri, "results", "finetune_predictions.parquet")


def report_uri(output_uri: str) -> str:
    return storage.join(output_uri, "report")


def ledger_uri(output_uri: str, stage: str) -> str:
    """What a finished stage recorded: its fingerprint and counts (the study skips it when they match)."""
    return storage.join(output_uri, "_stages", f"{stage}.json")


def lock_uri(output_uri: str) -> str:
    return storage.join(output_uri, "_lock.json")


def cohort_uri(output_uri: str, source: str | None = None) -> str:
    """Where the synthetic cohort's images are generated (one folder per source of data.sources)."""
    return storage.join(output_uri, "cohort", *([source] if source else []))


def models_uri(output_uri: str, name: str | None = None) -> str:
    """The exported model packages (the export stage), or the package `name`."""
    folder = storage.join(output_uri, "models")
    return folder if name is None else storage.join(folder, name)


def networks_uri(output_uri: str, name: str | None = None) -> str:
    """The exported fine-tuned network packages (the export_networks stage), or the package `name`."""
    folder = storage.join(output_uri, "networks")
    return folder if name is None else storage.join(folder, name)


def model_predictions_uri(output_uri: str) -> str:
    return storage.join(output_uri, "results", "model_predictions.parquet")


def scores_uri(output_uri: str, package: str) -> str:
    """`mammo-ray score`'s table of one package, under the scoring run's output."""
    return storage.join(output_uri, "scores", f"{package}.parquet")


def tune_uri(output_uri: str) -> str:
    """Ray Tune's experiment folders of the grid (its trials' state), where the output is a local folder."""
    return storage.join(output_uri, "tune")


def checkpoints_uri(output_uri: str) -> str:
    """Fine-tuning's checkpoints, where finetune.checkpoint_path does not put them elsewhere."""
    return storage.join(output_uri, "checkpoints")


# --- the declared tables ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """A table (a Parquet file, or a folder of them) a stage writes or reads: its name, where it lives under an
    output (`uri(output_uri, *params)`; `params` name what it is one of, e.g. one per extractor) and its
    schema where that is fixed. Stages declare their tables as these objects; the study's order and the
    check that stages touch only what they declare both read them."""

    name: str
    uri: Callable[..., str]
    params: tuple[str, ...] = ()
    schema: pa.Schema | None = field(default=None, compare=False)

    def pattern(self, output_uri: str) -> str:
        """Its path with every parameter as '*' (fnmatch): all the tables it names under `output_uri`."""
        return self.uri(output_uri, *("*" for _ in self.params))

    def holds(self, output_uri: str, uri: str) -> bool:
        """Whether `uri` is this table, one of its instances, or a file inside it."""
        pattern = self.pattern(output_uri)
        return fnmatch.fnmatchcase(uri, pattern) or fnmatch.fnmatchcase(uri, f"{pattern}/*")


MANIFEST = Table("manifest", manifest_uri, schema=schemas.MANIFEST_SCHEMA)
COHORT = Table("cohort", cohort_uri)
INGEST_IMAGES = Table("ingest", ingest_uri, schema=schemas.IMAGES_SCHEMA)
INGEST_ERRORS = Table("errors/ingest", lambda output_uri: errors_uri(output_uri, "ingest"),
                      schema=schemas.ERRORS_SCHEMA)
EMBEDDINGS = Table("embeddings/<extractor>", embeddings_uri, ("extractor",))
EMBED_ERRORS = Table("errors/embed-<extractor>", lambda output_uri, name: errors_uri(output_uri, f"embed:{name}"),
                     ("extractor",), schemas.ERRORS_SCHEMA)
ZERO_SHOT = Table("zero_shot", zero_shot_uri, schema=schemas.ZERO_SHOT_SCHEMA)
ZERO_SHOT_ERRORS = Table("errors/zero_shot", lambda output_uri: errors_uri(output_uri, "zero_shot"),
                         schema=schemas.ERRORS_SCHEMA)
ZERO_SHOT_FIGURE = Table("figures/zero_shot_by_birads.png",
                         lambda output_uri: figures_uri(output_uri, "zero_shot_by_birads.png"))
ZERO_SHOT_HEATMAPS = Table("zero_shot_heatmaps", zero_shot_heatmaps_uri, schema=schemas.ZERO_SHOT_SCHEMA)
ZERO_SHOT_HEATMAPS_ERRORS = Table("errors/zero_shot_heatmaps",
                                  lambda output_uri: errors_uri(output_uri, "zero_shot_heatmaps"),
                                  schema=schemas.ERRORS_SCHEMA)
HEATMAPS = Table("heatmaps", heatmaps_uri, schema=schemas.HEATMAPS_SCHEMA)
THUMBNAILS = Table("thumbnails/<family>", thumbnails_uri, ("family",), schemas.THUMBNAILS_SCHEMA)
THUMBNAILS_ERRORS = Table("errors/thumbnails-<family>",
                          lambda output_uri, family: errors_uri(output_uri, f"thumbnails:{family}"), ("family",),
                          schemas.ERRORS_SCHEMA)
HEATMAPS_ERRORS = Table("errors/heatmaps", lambda output_uri: errors_uri(output_uri, "heatmaps"),
                        schema=schemas.ERRORS_SCHEMA)
HEATMAPS_FIGURE = Table("figures/figure_2", lambda output_uri: figures_uri(output_uri, "figure_2"))
GRID = Table("results/grid", grid_uri, schema=schemas.GRID_SCHEMA)
GRID_PREDICTIONS = Table("results/grid_predictions", grid_predictions_uri, schema=schemas.GRID_PREDICTIONS_SCHEMA)
COMPARISONS = Table("results/comparisons", comparisons_uri, schema=schemas.COMPARISONS_SCHEMA)
EXTERNAL = Table("results/external", external_uri, schema=schemas.EXTERNAL_SCHEMA)
GRID_UNITS = Table("results/grid_units", grid_units_uri)
TUNE = Table("tune", tune_uri)
SUBGROUPS = Table("results/subgroups", subgroups_uri, schema=schemas.SUBGROUPS_SCHEMA)
FINETUNE = Table("results/finetune", finetune_uri, schema=schemas.FINETUNE_SCHEMA)
FINETUNE_PREDICTIONS = Table("results/finetune_predictions", finetune_predictions_uri,
                             schema=schemas.FINETUNE_PREDICTIONS_SCHEMA)
FINETUNE_ERRORS = Table("errors/finetune-<family>-<size>", finetune_errors_uri, ("inputs",), schemas.ERRORS_SCHEMA)
CHECKPOINTS = Table("checkpoints", checkpoints_uri)
FINETUNE_VS_FROZEN = Table("results/finetune_vs_frozen", finetune_vs_frozen_uri, schema=schemas.COMPARISONS_SCHEMA)
MODELS = Table("models", models_uri)  # one folder per package: models/<name>/
NETWORKS = Table("networks", networks_uri)  # one folder per package: networks/<name>/
MODEL_PREDICTIONS = Table("results/model_predictions", model_predictions_uri,
                          schema=package_schemas.MODEL_PREDICTIONS_SCHEMA)
#: Written by `mammo-ray score` (mammo_ray.scoring), not by a stage of the study.
SCORES = Table("scores/<package>", scores_uri, ("package",), package_schemas.SCORES_SCHEMA)
SCORE_ERRORS = Table("errors/score-<package>", lambda output_uri, package: errors_uri(output_uri, f"score-{package}"),
                     ("package",), schemas.ERRORS_SCHEMA)
REPORT = Table("report", report_uri)


# --- digests of the inputs --------------------------------------------------------------------------


def frame_digest(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    """A digest of `columns` of `frame`, independent of row order and of pandas dtypes (nulls are one value).

    Vectorised (it runs in every rerun's fingerprints, on manifests of 100,000+ rows): each row's text is
    hashed to 64 bits by pandas, the sorted row hashes are hashed once. A pandas release that changed its
    row hash would change every digest once: stages would rerun, never be skipped wrongly.
    """
    columns = list(columns)
    digest = hashlib.sha256(json.dumps(columns).encode())
    text = frame[columns].astype("string")
    rows = pd.util.hash_pandas_object(text, index=False, categorize=False).to_numpy()
    digest.update(np.sort(rows).tobytes())
    return digest.hexdigest()[:24]


def manifest_digest(manifest: pd.DataFrame) -> str:
    """Names the whole manifest: images, labels, patients, BI-RADS. Result tables record it."""
    return frame_digest(manifest, MANIFEST_COLUMNS)


def image_digest(manifest: pd.DataFrame) -> str:
    """Names what the image stages depend on: which images, where, and the orientation the manifest gives."""
    return frame_digest(manifest, IMAGE_COLUMNS)


# --- provenance -------------------------------------------------------------------------------------

PROVENANCE_KEY = b"mammo_ray"


def provenance(
    stage: str,
    *,
    inputs: Mapping[str, Any] | None = None,
    config_hash: str | None = None,
    weights_ids: Sequence[str] = (),
    **details: Any,
) -> dict[bytes, bytes]:
    """The Parquet metadata every table carries: package version, stage, config hash, weights ids, and
    `inputs`, the digests of what the table describes (compare them with `read_provenance`)."""
    document = {"package_version": __version__, "stage": stage, "config_hash": config_hash,
                "weights_ids": sorted(set(map(str, weights_ids))), "inputs": dict(inputs or {}), **details}
    return {PROVENANCE_KEY: json.dumps(document, sort_keys=True, default=str).encode()}


def with_provenance(table: pa.Table, stage: str, **kwargs: Any) -> pa.Table:
    """`table` with `provenance(stage, **kwargs)` as its only metadata (pandas' own would bring back
    nullable dtypes on reading)."""
    return table.replace_schema_metadata(provenance(stage, **kwargs))


def provenance_of(schema: pa.Schema) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(PROVENANCE_KEY)
    return json.loads(raw) if raw else {}


def describes(uri: str, expected: Mapping[str, Any] | None) -> bool | None:
    """Whether the table at `uri` was computed on the `expected` inputs (its provenance names them; None
    expects nothing); None when there is no such table. A store failure is raised, never read as 'not there'."""
    provenance = read_provenance(uri)
    if provenance is None:
        return None
    return expected is None or provenance.get("inputs") == dict(expected)


def read_provenance(uri: str) -> dict[str, Any] | None:
    """The provenance of the Parquet file at `uri` (one footer read); None when there is no such file."""
    if not storage.exists(uri):
        return None
    fs, path = storage.arrow_filesystem(uri)
    try:
        return provenance_of(pq.read_schema(path, filesystem=fs))
    except Exception as error:  # noqa: BLE001 - every backend failure becomes a declared type
        raise storage.wrap_error(uri, "read Parquet metadata", error) from error
