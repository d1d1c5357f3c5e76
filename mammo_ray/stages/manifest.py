"""The manifest stage: the study's images, labels and patients from its source(s) -> manifest.parquet.

The source is the synthetic cohort, a manifest file or a dataset adapter, or each of `data.sources` (ids
prefixed with the source's name). Every adapter's rows read, kept and dropped are logged and recorded; a
source without images is refused here, before any image stage. Identifying paths leave as locators: the real
ones stay in memory (`locations`) and, where the config asks, in the user's own locations file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pandas as pd

from mammo_ray import preflight, privacy, tables
from mammo_ray.config import StudyConfig
from mammo_ray.config.sections import DataSource
from mammo_ray.current import CurrentInputs
from mammo_ray.datasets.adapters import build_source
from mammo_ray.datasets.counts import SourceCounts, counts_of
from mammo_ray.datasets.manifest import read_manifest, write_manifest
from mammo_ray.datasets.synthetic import generate_cohort
from mammo_ray.errors import ConfigError, ManifestError
from mammo_ray.stages.stage import Counts, Stage, tables_missing

log = logging.getLogger("mammo_ray.study")


def build_manifest(config: StudyConfig) -> pd.DataFrame:
    """The study's manifest from the configured source (synthetic cohort, manifest file or adapter), or from
    every one of data.sources, ids prefixed with their source's name."""
    return build_counted_manifest(config)[0]


def build_counted_manifest(config: StudyConfig) -> tuple[pd.DataFrame, dict[str, SourceCounts]]:
    """build_manifest, and what each source read, kept and dropped ('data' for a single source). A source
    without images, or a grid.external source without labels, is refused here: before any image stage."""
    data = config.data
    if data.sources is None:
        cohort = tables.cohort_uri(config.output)
        frame = _source_manifest(data, cohort)
        return frame, {"data": _counted("data", data, frame, cohort)}
    frames: dict[str, pd.DataFrame] = {}
    counts: dict[str, SourceCounts] = {}
    for name, source in data.sources.items():
        cohort = tables.cohort_uri(config.output, name)
        frames[name] = _source_manifest(source, cohort, f"data.sources.{name}.adapter")
        counts[name] = _counted(f"data.sources.{name}", source, frames[name], cohort)
    _check_external_labels(config, frames)
    # validated as it is written (ids unique across sources)
    return pd.concat([_from_source(name, frame) for name, frame in frames.items()], ignore_index=True), counts


def locate(config: StudyConfig) -> Callable[[], dict[str, str]]:
    """Where the manifest's locators are: the manifest rebuilt from its source (in memory, never written)."""
    return lambda: privacy.locations(build_manifest(config))


def _counted(key_path: str, source: DataSource, frame: pd.DataFrame, cohort_uri: str) -> SourceCounts:
    """The source's counts (an adapter's own; a manifest file or the cohort drops nothing), logged; a source
    that kept no image is refused naming where its images were looked for (a typo in images_uri lists nothing)."""
    counts = counts_of(frame) or SourceCounts.whole(frame, source.manifest or cohort_uri)
    log.info("manifest: %s: %s", key_path, counts.describe())
    if counts.kept == 0:
        raise ManifestError(counts.looked_in, [f"{key_path}: no image to study: {counts.describe()}"])
    return counts


def _check_external_labels(config: StudyConfig, frames: dict[str, pd.DataFrame]) -> None:
    """Each source a grid.external pair fits on or tests on must hold labelled images: refused by name here,
    not as failed rows of results/external.parquet after every image was embedded."""
    for pair in config.grid.external:
        for role, name in (("fitted on", pair.train), ("tested on", pair.test)):
            if not frames[name]["label"].notna().any():
                raise ConfigError("grid.external", f"({pair.train} -> {pair.test}): source {name!r} (data.sources."
                                  f"{name}) holds {len(frames[name])} images and none has a label: it cannot be "
                                  f"{role}")


def _source_manifest(source: DataSource, cohort_uri: str, key_path: str = "data.adapter") -> pd.DataFrame:
    if source.synthetic is not None:
        return generate_cohort(cohort_uri, source.synthetic)
    if source.manifest is not None:
        # Files are not checked here (one request per image on S3): a missing one is an errors row
        # of the ingest stage, and every other image is processed.
        return read_manifest(source.manifest)
    assert source.adapter is not None  # the config guarantees exactly one source
    return build_source(source.adapter.name, source.adapter.args, source.adapter.pseudonymise, key_path)


def _from_source(name: str, manifest: pd.DataFrame) -> pd.DataFrame:
    """One source's rows as the study's: `dataset` = the source, ids `<source>/...` (unique across sources; a
    patient seen at two sites is two patients, which no id can tell apart), site the source's where unset."""
    frame = manifest.copy()
    for column in ("image_id", "patient_id", "exam_id"):
        frame[column] = frame[column].map(lambda value: None if pd.isna(value) else f"{name}/{value}")
    frame["dataset"] = name
    frame["site"] = frame["site"].where(frame["site"].notna(), name)
    return frame


def run_manifest(current: CurrentInputs) -> Counts:
    """Build and write the manifest (and the configured locations files); the current inputs learn it."""
    config = current.config
    manifest, sources = build_counted_manifest(config)
    uri = tables.manifest_uri(config.output)
    write_manifest(manifest, uri, sources=sources)
    current.manifest_written(privacy.locations(manifest))
    _write_locations(config, manifest)
    log.info("manifest: %d images -> %s", len(manifest), uri)
    return {"manifest_rows": len(manifest)}


def _write_locations(config: StudyConfig, manifest: pd.DataFrame) -> None:
    """Each adapter source's mapping file of locators to real paths, where the config asks for one."""
    data = config.data
    named = {None: data} if data.sources is None else dict(data.sources)
    for name, source in named.items():
        if source.adapter is not None and source.adapter.locations:
            rows = manifest if name is None else manifest[manifest["dataset"] == name]
            written = privacy.write_locations(rows, source.adapter.locations)
            log.info("manifest: %d locators' real paths -> the configured locations file", written)


def _synthetic_only(current: CurrentInputs) -> object:
    # The manifest is rebuilt from its source every run (a corrected label file must be seen), except the
    # synthetic cohort, which its settings fix.
    data = current.config.data
    synthetic = [data] if data.sources is None else list(data.sources.values())
    return "synthetic cohort" if all(source.synthetic is not None for source in synthetic) else None


STAGE = Stage("manifest", _synthetic_only, run=run_manifest, sections=("data",),
              check=preflight.locations_outside_output, writes=(tables.MANIFEST, tables.COHORT),
              outputs_missing=tables_missing(tables.MANIFEST))  # the cohort folder exists only when synthetic
