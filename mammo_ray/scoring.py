"""`mammo-ray score`: a model package (mammo_ray.packages) applied to a collection, into
`<output>/scores/<package>.parquet` (package_schemas.SCORES_SCHEMA).

The collection is a study config's `data` (manifest, adapter, synthetic or named sources; local or s3://). The
images go through the study's own pass (the manifest and embed stages, on Ray Data, locally or on a cluster)
with the package's extractor: read and decoded once, embedded once per content and extractor key, so a rerun
embeds only new images and the feature store of an earlier run on the same output is reused. The classifier
then scores every current image (milliseconds), so removed images leave the table. Refused before any work:
a package changed after export or holding foreign types (packages.files), weights whose sha256 is not the
package's, preprocessing that differs from the package's (each differing setting named). An image whose view
or side the package was not trained on is an errors row (`errors/score-<package>.parquet`) with the reason;
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

from mammo_ray import schemas, storage, tables
from mammo_ray.config import EmbedConfig, ExtractorConfig, StudyConfig
from mammo_ray.current import CurrentInputs
from mammo_ray.errors import ConfigError
from mammo_ray.package_schemas import SCORES_SCHEMA
from mammo_ray.packages.files import LoadedPackage, PackageRefused, load_package
from mammo_ray.stages.embed import embedding_key, read_embeddings
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
    """Per image: why the package cannot score it (a view or side it was not trained on), or None."""
    def reason(view: object, side: object) -> str | None:
        if view not in training["views"]:
            return f"view {view!r}: the package was trained on {', '.join(training['views'])} only"
        if training["lateralities"] and side not in training["lateralities"]:
            return f"side {side!r}: the package was trained on {', '.join(training['lateralities'])} only"
        return None
    return pd.Series([reason(v, s) for v, s in zip(frame["view"], frame["laterality"], strict=True)],
                     index=frame.index, dtype=object)


def _levels(images: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Breast rows (mean of their images) and exam rows (max of their breasts), as the grid's levels."""
    known = images[images["laterality"].notna()].assign(
        exam=lambda f: f["exam_id"].fillna(f["patient_id"]))
    breasts = known.groupby(["patient_id", "exam", "laterality"], as_index=False, dropna=False).agg(
        exam_id=("exam_id", "first"), images=("images", "sum"), score=("score", "mean"),
        probability=("probability", "mean"))
    breasts["unit"] = breasts["patient_id"] + "/" + breasts["exam"].astype(str) + "/" + breasts["laterality"]
    exams = breasts.groupby(["patient_id", "exam"], as_index=False).agg(
        exam_id=("exam_id", "first"), images=("images", "sum"), score=("score", "max"),
        probability=("probability", "max"))
    exams["unit"] = exams["patient_id"] + "/" + exams["exam"].astype(str)
    frames = [breasts.assign(level="breast", view=None), exams.assign(level="exam", view=None, laterality=None)]
    levels = pd.concat(frames, ignore_index=True).drop(columns=["exam"])
    return levels.assign(flag=levels["score"] >= threshold, shift_distance=np.nan)


def score_collection(package_uri: str, config: StudyConfig, weights: str | None = None) -> ScoreResult:
    """Score `config`'s collection with the package at `package_uri` into `config.output`."""
    if storage.exists(tables.ledger_uri(config.output, "grid")):
        raise ConfigError("output", f"{config.output} holds a study: score into an output of its own (a scoring "
                                    "run writes its own manifest.parquet there)")
    package = load_package(package_uri)
    spec = scoring_extractor(package, config, weights)
    name = package.description["name"]
    scoring = config.model_copy(update={"embed": EmbedConfig(**{**config.embed.model_dump(), "extractors": [spec]})})
    started = time.perf_counter()
    study = run_study(scoring, list(SCORING_STAGES))
    stages_done = time.perf_counter()
    current = CurrentInputs(scoring)
    view = read_embeddings(scoring.output, current.manifest(), spec, scoring.ingest, current.embedding_key(spec))
    reasons = _unscorable(view, package.description["training"])
    scorable = view[reasons.isna()].reset_index(drop=True)
    X = np.stack([np.asarray(v, dtype=np.float32) for v in scorable["embedding"]]) if len(scorable) else None
    images = scorable[["patient_id", "exam_id", "laterality", "view"]].assign(
        level="image", unit=scorable["image_id"], images=1)
    if X is not None:
        score, probability, flag, distance = package.model.apply(X)
        images = images.assign(score=score, probability=probability, flag=flag, shift_distance=distance)
    else:
        images = images.assign(score=np.nan, probability=np.nan, flag=False, shift_distance=np.nan)
    parts = [images, _levels(images, package.model.threshold)] if len(images) else [images]
    table = pa.concat_tables([pa.Table.from_pandas(part.assign(package_id=package.package_id)[SCORES_SCHEMA.names],
                                                   schema=SCORES_SCHEMA, preserve_index=False) for part in parts])
    shift = package.model.shift.summary(package.model.scaled(X) if X is not None else np.zeros((0, 1)))
    inputs = {"manifest": current.digest("manifest"), "embeddings": current.embedding_key(spec).as_dict(),
              "package_id": package.package_id}
    uri = tables.scores_uri(scoring.output, name)
    storage.write_table(tables.with_provenance(table, "score", inputs=inputs, shift=shift), uri)
    refused = view[reasons.notna()]
    errors = pd.DataFrame({"image_id": refused["image_id"], "uri": refused["uri"], "stage": f"score-{name}",
                           "error_type": "UnscorableImage", "message": reasons[reasons.notna()]})
    storage.write_table(pa.Table.from_pandas(errors, schema=schemas.ERRORS_SCHEMA, preserve_index=False),
                        tables.SCORE_ERRORS.uri(scoring.output, name))
    log.info("score %s: %d images scored, %d not scorable -> %s; shift check: mean shift %.2f (training range: "
             "median %.2f, 95th percentile %.2f)%s", name, len(images), len(errors), uri, shift["mean_shift"],
             shift["training_median"], shift["training_q95"],
             ": BEYOND the training range (another scanner or population?)" if shift["beyond_training_q95"] else "")
    embedded = study.counts.get(f"embedded:{spec.name}", 0) if "embed" in study.ran else 0  # else: the ledger's
    timings = {"stages": stages_done - started, "classifier": time.perf_counter() - stages_done}
    return ScoreResult(package.package_id, uri, len(images), len(errors), embedded, shift, timings)


def score_from_cli(package_uri: str, config_uri: str | None, output: str | None, weights: str | None) -> int:
    """`mammo-ray score`: score, print the outcome as JSON; the exit code."""
    result = score_collection(package_uri, load_study_config(config_uri, output), weights)
    print(json.dumps(result.__dict__))
    return 0


__all__ = ["SCORING_STAGES", "ScoreResult", "score_collection", "score_from_cli", "scoring_extractor"]
