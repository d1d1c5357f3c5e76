"""Zero-shot NYU inference (the paper's Figure 3): the published image-wise model, unchanged, on every image.

For each image: NYU preprocessing of the image's own view window (CC or MLO; any other or unknown view
gets the CC window), then the image-wise model's head for the image's own laterality and view
(L-CC, R-CC, L-MLO or R-MLO; an image whose view is 'other' or unknown uses the CC head of its side),
giving p_benign and p_malignant (with test-time augmentation, `tta` > 0, the mean over the windows).
An image without a known laterality (neither in the manifest nor in its DICOM tags) cannot be given a
head: it is an errors row.

Output: the feature store ``<output>/zero_shot/`` (schemas.ZERO_SHOT_SCHEMA, keyed by content and
model key, read joined to the current manifest with `read_zero_shot`), errors in
``<output>/errors/zero_shot.parquet`` (stage "zero_shot"), and the figure
``<output>/figures/zero_shot_by_birads.png`` of the current manifest's images (predicted benign vs
malignant per BI-RADS; see `mammo_ray.report.figures`). The pipeline is the shared one of
`mammo_ray.stages.inference`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mammo_ray import feature_store, preflight, schemas, tables
from mammo_ray.config.sections import EmbedConfig, IngestConfig, ZeroShotConfig
from mammo_ray.errors import MammoRayError
from mammo_ray.imaging.transforms import NYUHeatmapsTransform, NYUTransform
from mammo_ray.models import catalogue
from mammo_ray.models.weights import WeightsSpec
from mammo_ray.models.weights_resolver import resolve_weights
from mammo_ray.stages.inference import PassResult, run_inference
from mammo_ray.stages.inference_task import InferenceRun, InferenceTask, LoadedModel
from mammo_ray.stages.stage import Counts, ImageOutputs, Stage, model_output_missing

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from mammo_ray.current import CurrentInputs  # types only: CurrentInputs reads this module's model keys

log = logging.getLogger("mammo_ray.zero_shot")

NAME = "zero_shot"
HEATMAPS_NAME = "zero_shot_heatmaps"  # the image+heatmaps model's output
FIGURE_NAME = "zero_shot_by_birads.png"

class UnknownLateralityError(MammoRayError):
    """The image's breast side is unknown, so no head of the image-wise model fits it."""


@dataclass(frozen=True)
class ZeroShotResult:
    scored: int
    skipped: int
    errors: int
    uri: str
    errors_uri: str
    figure_uri: str
    weights_id: str
    preprocess_id: str


def zero_shot_uri(output_uri: str) -> str:
    return tables.zero_shot_uri(output_uri)


def errors_uri(output_uri: str) -> str:
    return tables.errors_uri(output_uri, NAME)


def figure_uri(output_uri: str) -> str:
    return tables.figures_uri(output_uri, FIGURE_NAME)


def head_for(laterality: object, view: object) -> str:
    """The image-wise head of an image: 'lcc', 'rcc', 'lmlo' or 'rmlo'.

    View 'other' or unknown -> the CC head of its side; unknown laterality -> UnknownLateralityError.
    """
    # torch: only where the model runs (the Ray tasks that unpickle this task decode without it)
    from mammo_ray.models.nyu import view_key

    if not (isinstance(laterality, str) and laterality in ("L", "R")):  # None, NaN and pd.NA included
        shown = repr(laterality) if isinstance(laterality, str) else "missing"
        raise UnknownLateralityError(
            f"laterality is {shown} (neither the manifest nor the DICOM ImageLaterality tag gives L or R): "
            "the NYU image-wise model has one head per breast side, so set `laterality` in the manifest"
        )
    return view_key(laterality, "MLO" if isinstance(view, str) and view == "MLO" else "CC")


@dataclass(frozen=True)
class ZeroShotTask(InferenceTask):
    """The zero-shot run as an inference task: own-view window, own-side-and-view head, two probabilities. With
    `heatmaps` (their key), the image+heatmaps model on the same windows and those heatmaps (its own output,
    `zero_shot_heatmaps`)."""

    spec: ZeroShotConfig
    heatmaps: feature_store.ModelKey | None = None

    @property
    def stage(self) -> str:  # type: ignore[override]
        return NAME if self.heatmaps is None else HEATMAPS_NAME

    @property
    def after(self) -> tuple[str, ...]:  # type: ignore[override]
        return () if self.heatmaps is None else ("heatmaps",)

    @property
    def weights_spec(self) -> WeightsSpec:
        if self.heatmaps is None:
            return catalogue.weights_spec(self.spec)
        return catalogue.zero_shot_heatmaps_weights(self.spec)

    @property
    def model_id(self) -> str:
        return catalogue.zero_shot_model_id(self.spec, with_heatmaps=self.heatmaps is not None)

    @property
    def transform(self) -> NYUTransform | NYUHeatmapsTransform:
        window = catalogue.nyu_transform(self.spec)
        return window if self.heatmaps is None else catalogue.with_heatmaps(window, self.heatmaps)

    @property
    def schema(self) -> pa.Schema:
        return schemas.ZERO_SHOT_SCHEMA

    def table_uri(self, output_uri: str) -> str:
        return zero_shot_uri(output_uri) if self.heatmaps is None else tables.zero_shot_heatmaps_uri(output_uri)

    def group(self, row: Any) -> str:
        return head_for(row.laterality, row.view)  # the image's own head: a missing side fails fast

    def load(self) -> LoadedModel:
        from mammo_ray.models.nyu import build_nyu_model  # imports torch: on the workers that load the model only

        resolved = resolve_weights(self.weights_spec)
        module = build_nyu_model(resolved.state_dict, seed=resolved.seed, source=resolved.source,
                                 in_channels=self.transform.shape[0])
        return LoadedModel(module, resolved.weights_id)

    def forward(self, model: LoadedModel, inputs: torch.Tensor, group: str) -> torch.Tensor:
        import torch

        p_benign, p_malignant = model.module.predict_proba(inputs, group)
        return torch.stack([p_benign, p_malignant], dim=1)

    def shared_trunks(self, group: str) -> tuple[str, ...]:
        from mammo_ray.models.nyu import NYUImageModel  # torch: in the actors only (see head_for)

        return (NYUImageModel.trunk_of_view(group),)  # the trunk the image's own head reads

    def from_trunks(self, model: LoadedModel, maps: dict[str, torch.Tensor], group: str) -> torch.Tensor:
        import torch

        (feature_map,) = maps.values()
        p_benign, p_malignant = model.module.proba_from_map(feature_map, group)
        return torch.stack([p_benign, p_malignant], dim=1)

    def output_columns(self, outputs: Sequence[np.ndarray | None]) -> dict[str, list]:
        nan = np.float32("nan")  # error rows only: dropped before writing
        return {
            "p_benign": [nan if o is None else np.float32(o[0]) for o in outputs],
            "p_malignant": [nan if o is None else np.float32(o[1]) for o in outputs],
        }

    def to_frame(self, rows: pd.DataFrame) -> pd.DataFrame:
        frame = super().to_frame(rows)
        return frame.assign(
            p_benign=frame["p_benign"].astype(np.float32), p_malignant=frame["p_malignant"].astype(np.float32)
        )


def zero_shot_key(spec: ZeroShotConfig, read: IngestConfig = IngestConfig()) -> feature_store.ModelKey:
    return catalogue.zero_shot_key(spec, read)


def read_zero_shot(output_uri: str, manifest: pd.DataFrame, spec: ZeroShotConfig = ZeroShotConfig(),
                   read: IngestConfig = IngestConfig(), key: feature_store.ModelKey | None = None) -> pd.DataFrame:
    """The probabilities of `manifest`'s images under `spec`, one row per scored image, with the manifest's
    columns; StaleTableError when the stage has not run for this manifest and these settings."""
    return feature_store.read_view(zero_shot_uri(output_uri), manifest, key or zero_shot_key(spec, read), NAME)


def run_zero_shot(
    manifest: pd.DataFrame,
    output_uri: str,
    spec: ZeroShotConfig = ZeroShotConfig(),
    options: EmbedConfig = EmbedConfig(),
    read: IngestConfig = IngestConfig(),
) -> ZeroShotResult:
    """Score every image of `manifest` not yet scored with these weights and preprocessing, then draw the
    figure of the manifest's images (predicted benign vs malignant per BI-RADS)."""
    run = run_inference(manifest, output_uri, ZeroShotTask(spec), options, read)
    return zero_shot_result(output_uri, manifest, run)


def read_zero_shot_heatmaps(output_uri: str, manifest: pd.DataFrame, key: feature_store.ModelKey) -> pd.DataFrame:
    """The image+heatmaps model's probabilities of `manifest`'s images under `key` (as `read_zero_shot`)."""
    return feature_store.read_view(tables.zero_shot_heatmaps_uri(output_uri), manifest, key, NAME)


#: The zero-shot models' names in the figure and the report.
MODEL_LABELS = {NAME: "image only", HEATMAPS_NAME: "image+heatmaps"}


def zero_shot_result(output_uri: str, manifest: pd.DataFrame, run: InferenceRun,
                     heatmaps_run: InferenceRun | None = None) -> ZeroShotResult:
    """After zero-shot ran (alone or in the image pass): draw the figure of the manifest's images, with the
    image+heatmaps model's bars beside the image-only ones when it ran too."""
    from mammo_ray.report.figures import zero_shot_by_birads  # matplotlib: the driver draws; workers unpickle tasks

    models = {MODEL_LABELS[NAME]: read_zero_shot(output_uri, manifest, key=run.key)}
    if heatmaps_run is not None:
        models[MODEL_LABELS[HEATMAPS_NAME]] = read_zero_shot_heatmaps(output_uri, manifest, heatmaps_run.key)
    figure = figure_uri(output_uri)
    zero_shot_by_birads(models, figure)
    for label, done in ((NAME, run), (HEATMAPS_NAME, heatmaps_run)):
        if done is not None:
            log.info("%s: %d scored, %d already stored (skipped), %d errors", label, done.written, done.skipped,
                     done.errors)
    log.info("zero-shot figure: %s", figure)
    return ZeroShotResult(
        scored=run.written, skipped=run.skipped, errors=run.errors, uri=run.uri, errors_uri=run.errors_uri,
        figure_uri=figure, weights_id=run.weights_id, preprocess_id=run.key.preprocess_id,
    )


def _tasks(current: CurrentInputs) -> list[ZeroShotTask]:
    with_heatmaps = current.zero_shot_heatmaps_key()
    tasks = [ZeroShotTask(current.config.zero_shot)]
    return tasks if with_heatmaps is None else [*tasks, ZeroShotTask(current.config.zero_shot, current.heatmaps_key())]


def _counts(current: CurrentInputs, done: PassResult) -> Counts:
    heatmaps_run = done.runs.get(HEATMAPS_NAME)
    scored = zero_shot_result(current.config.output, current.manifest(), done.runs[NAME], heatmaps_run)
    counts = {"zero_shot_scored": scored.scored, "zero_shot_skipped": scored.skipped,
              "zero_shot_errors": scored.errors}
    if heatmaps_run is not None:
        counts.update({"zero_shot_heatmaps_scored": heatmaps_run.written,
                       "zero_shot_heatmaps_skipped": heatmaps_run.skipped,
                       "zero_shot_heatmaps_errors": heatmaps_run.errors})
    return counts


def _outputs_missing(current: CurrentInputs) -> str | None:
    output = current.config.output
    problem = model_output_missing(current, zero_shot_uri(output), errors_uri(output), current.zero_shot_key())
    with_heatmaps = current.zero_shot_heatmaps_key()
    if problem is None and with_heatmaps is not None:
        problem = model_output_missing(current, tables.zero_shot_heatmaps_uri(output),
                                       tables.errors_uri(output, HEATMAPS_NAME), with_heatmaps)
    return problem


def _depends_on(current: CurrentInputs) -> object:
    with_heatmaps = current.zero_shot_heatmaps_key()
    return (current.digest("images"), current.zero_shot_key().as_dict(),
            None if with_heatmaps is None else with_heatmaps.as_dict())


STAGE = Stage(NAME, _depends_on, sections=("ingest",), needs_ray=True, check=preflight.zero_shot_weights,
              image_outputs=ImageOutputs(tasks=_tasks, counts=_counts),
              reads=(tables.MANIFEST, tables.COHORT, tables.HEATMAPS),
              writes=(tables.ZERO_SHOT, tables.ZERO_SHOT_ERRORS, tables.ZERO_SHOT_HEATMAPS,
                      tables.ZERO_SHOT_HEATMAPS_ERRORS, tables.ZERO_SHOT_FIGURE),
              outputs_missing=_outputs_missing)
