"""`mammo-ray score`: a model package (mammo_ray.packages) applied to a collection, into
`<output>/scores/<package>.parquet` (package_schemas.SCORES_SCHEMA).

The collection is a study config's `data` (manifest, adapter, synthetic or named sources; local or s3://). The
images go through the study's own pass (the manifest and embed stages, on Ray Data, locally or on a cluster)
with the package's extractor: read and decoded once, embedded once per content and extractor key, so a rerun
embeds only new images and the feature store of an earlier run on the same output is reused. The classifier
then scores every current image (milliseconds), so removed images leave the table. Refused before any work:
a package changed after export or holding foreign types (packages.files), weights whose sha256 is not the
package's, preprocessing that differs from the package's (each differing setting named). An image of a view the
package was not trained on (or of none known) is an errors row (`errors/score-<package>.parquet`) with the reason;
the shift check (packages.model.ShiftReference) is logged and kept in the table's provenance.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mammo_ray import feature_store, schemas, storage, tables
from mammo_ray.config import EmbedConfig, ExtractorConfig, IngestConfig, ScoreConfig, StudyConfig
from mammo_ray.current import CurrentInputs
from mammo_ray.errors import ConfigError
from mammo_ray.output_lock import hold_output
from mammo_ray.package_schemas import SCORES_SCHEMA
from mammo_ray.packages.files import NETWORK_FILE, LoadedPackage, PackageRefused, load_package
from mammo_ray.ray_setup import ensure_ray, work_placement
from mammo_ray.stages.embed import embedding_key, read_embeddings
from mammo_ray.stages.inference import run_pass
from mammo_ray.stages.manifest import locate
from mammo_ray.stages.network_task import NetworkSpec, NetworkTask
from mammo_ray.study import load_study_config, run_study

log = logging.getLogger("mammo_ray.score")
SCORING_STAGES = ("manifest", "embed")


@dataclass
class ScoreResult:
    package_id: str
    uri: str
    images: int
    errors: int
    embedded: int
    shift: dict[str, Any]
    #: seconds: `stages` (manifest + embed, the images' pass), `classifier` (the rest: vectors, scores, tables)
    timings: dict[str, float]


def scoring_extractor(package: LoadedPackage, config: StudyConfig, weights: str | None) -> ExtractorConfig:
    """The extractor to score with: the config's extractor of the package's name, else the package's settings
    with `weights` (needed when the package's weights were a file: it records their sha256, never a path).
    PackageRefused when its weights or preprocessing are not the package's."""
    described = package.description["extractor"]
    named = next((spec for spec in config.embed.extractors if spec.name == described["name"]), None)
    if named is None:
        source = weights or described["weights"]
        if source is None:
            raise PackageRefused(package.uri, f"its extractor {described['name']!r} was fitted on a weights file "
                                              f"(sha256 {described['weights_id']}): name it with --weights")
        named = ExtractorConfig(**{**described["settings"], "weights": source})
    elif weights is not None:
        named = named.model_copy(update={"weights": weights})
    key = embedding_key(named, config.ingest).as_dict()
    expected = described["model_key"]
    if key["weights_id"] != expected["weights_id"]:
        raise PackageRefused(package.uri, f"weights differ: the package's extractor {described['name']!r} has "
                                          f"weights {expected['weights_id']}, the scoring config's are "
                                          f"{key['weights_id']} ({named.weights})")
    if (key["model_id"], key["preprocess_id"]) != (expected["model_id"], expected["preprocess_id"]):
        given = named.model_dump(mode="json", exclude={"weights", "sha256"})
        differing = [f"{name} {given.get(name)!r} (package: {value!r})"
                     for name, value in described["settings"].items() if given.get(name) != value]
        raise PackageRefused(package.uri, "preprocessing differs from the package's: " + (
            ", ".join(differing) or f"the ingest settings (preprocess id {key['preprocess_id']}, package: "
                                    f"{expected['preprocess_id']})"))
    return named


def _unscorable(frame: pd.DataFrame, training: dict[str, Any]) -> pd.Series:
    """Per image: why the package cannot score it (a view it was not trained on, or none known), or None. An
    image of unknown side is scored (the pipelines are not side-specific) but belongs to no breast row."""
    views = training["views"]
    reasons = [None if view in views else f"view {view!r}: the package was trained on {', '.join(views)} only"
               for view in frame["view"]]
    return pd.Series(reasons, index=frame.index, dtype=object)


def _levels(images: pd.DataFrame, threshold: float, how: ScoreConfig) -> pd.DataFrame:
    """Breast rows (`how.breast` of their images) and exam rows (`how.exam` of their breasts); the defaults are the
    grid's levels (mean, max)."""
    known = images[images["laterality"].notna()].assign(
        exam=lambda f: f["exam_id"].fillna(f["patient_id"]))
    breasts = known.groupby(["patient_id", "exam", "laterality"], as_index=False, dropna=False).agg(
        exam_id=("exam_id", "first"), images=("images", "sum"), score=("score", how.breast),
        probability=("probability", how.breast))
    breasts["unit"] = breasts["patient_id"] + "/" + breasts["exam"].astype(str) + "/" + breasts["laterality"]
    exams = breasts.groupby(["patient_id", "exam"], as_index=False).agg(
        exam_id=("exam_id", "first"), images=("images", "sum"), score=("score", how.exam),
        probability=("probability", how.exam))
    exams["unit"] = exams["patient_id"] + "/" + exams["exam"].astype(str)
    frames = [breasts.assign(level="breast", view=None), exams.assign(level="exam", view=None, laterality=None)]
    levels = pd.concat(frames, ignore_index=True).drop(columns=["exam"])
    return levels.assign(flag=levels["score"] >= threshold, shift_distance=np.nan)


def score_view(package: LoadedPackage, view: pd.DataFrame,
               how: ScoreConfig | None = None) -> tuple[pa.Table, pd.DataFrame, dict[str, Any]]:
    """Score a `read_embeddings` frame: the scores table (images, breasts, exams), the errors rows of the images
    the package cannot score, and the shift check of the scored ones."""
    reasons = _unscorable(view, package.description["training"])
    scorable = view[reasons.isna()].reset_index(drop=True)
    images = scorable[["patient_id", "exam_id", "laterality", "view"]].assign(
        level="image", unit=scorable["image_id"], images=1)
    threshold = float(package.description["threshold"])
    if package.model is None:  # a network: its stored softmax probability is its score; no embedding to compare
        probability = scorable["probability"].to_numpy(dtype=np.float64)
        images = images.assign(score=probability, probability=probability, flag=probability >= threshold,
                               shift_distance=np.nan)
        shift = {"images": len(images), "mean_shift": None, "beyond_training_q95": False,
                 "note": "a network package keeps no embedding reference: no shift check"}
    elif len(scorable):
        X = np.stack([np.asarray(v, dtype=np.float32) for v in scorable["embedding"]])
        score, probability, flag, distance = package.model.apply(X)
        images = images.assign(score=score, probability=probability, flag=flag, shift_distance=distance)
        shift = package.model.shift.summary(package.model.scaled(X))
    else:
        images = images.assign(score=np.nan, probability=np.nan, flag=False, shift_distance=np.nan)
        shift = package.model.shift.summary(np.zeros((0, 1)))
    parts = [images, _levels(images, threshold, how or ScoreConfig())] if len(images) else [images]
    table = pa.concat_tables([pa.Table.from_pandas(part.assign(package_id=package.package_id)[SCORES_SCHEMA.names],
                                                   schema=SCORES_SCHEMA, preserve_index=False) for part in parts])
    refused = view[reasons.notna()]
    errors = pd.DataFrame({"image_id": refused["image_id"], "uri": refused["uri"],
                           "stage": f"score-{package.description['name']}", "error_type": "UnscorableImage",
                           "message": reasons[reasons.notna()]})
    return table, errors, shift


def score_collection(package_uri: str, config: StudyConfig, weights: str | None = None) -> ScoreResult:
    """Score `config`'s collection with the package at `package_uri` into `config.output`."""
    if storage.exists(tables.ledger_uri(config.output, "grid")):
        raise ConfigError("output", f"{config.output} holds a study: score into an output of its own (a scoring "
                                    "run writes its own manifest.parquet there)")
    package = load_package(package_uri)
    name = package.description["name"]
    started = time.perf_counter()
    if package.model is None:
        task = network_task(package, config.ingest)
        scoring, embedded = config, _run_network(task, config)
        current = CurrentInputs(scoring)
        key = task.key(scoring.ingest)
        view = feature_store.read_view(task.table_uri(scoring.output), current.manifest(), key, "score")
    else:
        spec = scoring_extractor(package, config, weights)
        scoring = config.model_copy(update={"embed": EmbedConfig(**{**config.embed.model_dump(),
                                                                    "extractors": [spec]})})
        study = run_study(scoring, list(SCORING_STAGES))
        embedded = study.counts.get(f"embedded:{spec.name}", 0) if "embed" in study.ran else 0  # else: the ledger's
        current = CurrentInputs(scoring)
        key = current.embedding_key(spec)
        view = read_embeddings(scoring.output, current.manifest(), spec, scoring.ingest, key)
    stages_done = time.perf_counter()
    table, errors, shift = score_view(package, view, scoring.score)
    inputs = {"manifest": current.digest("manifest"), "model": key.as_dict(), "package_id": package.package_id}
    uri = tables.scores_uri(scoring.output, name)
    storage.write_table(tables.with_provenance(table, "score", inputs=inputs, shift=shift), uri)
    storage.write_table(pa.Table.from_pandas(errors, schema=schemas.ERRORS_SCHEMA, preserve_index=False),
                        tables.SCORE_ERRORS.uri(scoring.output, name))
    scored = int(np.sum(np.asarray(table.column("level")) == "image"))
    log.info("score %s: %d images scored, %d not scorable -> %s; %s", name, scored, len(errors), uri, _said(shift))
    timings = {"stages": stages_done - started, "classifier": time.perf_counter() - stages_done}
    return ScoreResult(package.package_id, uri, scored, len(errors), embedded, shift, timings)


def _said(shift: dict[str, Any]) -> str:
    if shift.get("mean_shift") is None:
        return shift.get("note", "no shift check")
    beyond = ": BEYOND the training range (another scanner or population?)" if shift["beyond_training_q95"] else ""
    return (f"shift check: mean shift {shift['mean_shift']:.2f} (training range: median {shift['training_median']:.2f},"
            f" 95th percentile {shift['training_q95']:.2f}){beyond}")


def network_task(package: LoadedPackage, read: IngestConfig) -> NetworkTask:
    """The image-pass output of a network package, its weights the package's own file; PackageRefused when the
    scoring decode settings would prepare other inputs than the package's."""
    network = package.description["network"]
    spec = NetworkSpec(package.description["name"], network["model"], network["input_family"], network["variant"],
                       network["num_classes"], network["positive"], network["size"], network["crop_to_breast"],
                       network["source_resolution"], storage.join(package.uri, NETWORK_FILE),
                       package.description["files"][NETWORK_FILE])
    task = NetworkTask(spec)
    expected = package.description["model_key"]
    key = task.key(read).as_dict()
    if key["preprocess_id"] != expected["preprocess_id"]:
        raise PackageRefused(package.uri, "preprocessing differs from the package's: the ingest settings (preprocess "
                                          f"id {key['preprocess_id']}, package: {expected['preprocess_id']})")
    return task


def _run_network(task: NetworkTask, config: StudyConfig) -> int:
    """The collection's manifest (the manifest stage), then one pass of the network over the images it has not
    scored yet, holding the output; the images computed."""
    run_study(config, ["manifest"])
    with hold_output(config.output):
        ensure_ray(config)
        current = CurrentInputs(config, locate=locate(config))
        done = run_pass(current.readable_manifest(), config.output, [task], config.embed, config.ingest,
                        placement=work_placement(config))
    return done.runs[task.stage].written


def score_from_cli(package_uri: str, config_uri: str | None, output: str | None, weights: str | None) -> int:
    """`mammo-ray score`: score, print the outcome as JSON; the exit code."""
    result = score_collection(package_uri, load_study_config(config_uri, output), weights)
    print(json.dumps(result.__dict__))
    return 0


__all__ = ["SCORING_STAGES", "ScoreResult", "network_task", "score_collection", "score_from_cli", "score_view",
           "scoring_extractor"]
