"""Heatmaps (docs/design.md, "Heatmaps"): the NYU patch classifier over every image's breast crop, an output of
the image pass beside ingest, the extractors and zero-shot, so the image is read and decoded once for all.

Output: the feature store ``<output>/heatmaps/`` (schemas.HEATMAPS_SCHEMA: per image its crop's size, the stride
and one malignant and one benign probability per patch, keyed like every model output by content, weights and
every setting that changes them), errors in ``<output>/errors/heatmaps.parquet``. `read_heatmaps` gives the
current manifest's rows; `heatmap_images` draws a row's two heatmaps at any scale.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa

from mammo_ray import feature_store, preflight, schemas, storage, tables
from mammo_ray.config.sections import HeatmapsConfig, IngestConfig
from mammo_ray.datasets.manifest import BIRADS_VALUES
from mammo_ray.image_stream import read_image
from mammo_ray.imaging.heatmaps import PatchGrid, StoredHeatmaps
from mammo_ray.imaging.nyu import oriented_crop, place_window
from mammo_ray.imaging.transforms import HEATMAPS_INPUTS, HeatmapCropTransform, source_resolution_for
from mammo_ray.models import catalogue
from mammo_ray.models.weights_resolver import resolve_weights
from mammo_ray.report.heatmap_figure import Figure2Row, draw_figure_2
from mammo_ray.stages.inference import PassResult, gpus_per_actor
from mammo_ray.stages.inference_task import InferenceTask, LoadedModel
from mammo_ray.stages.stage import Counts, ImageOutputs, Stage, model_output_missing

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from mammo_ray.current import CurrentInputs  # types only: CurrentInputs reads this module's model key

log = logging.getLogger("mammo_ray.heatmaps")

NAME = "heatmaps"


@dataclass(frozen=True)
class HeatmapsTask(InferenceTask):
    """The patch classifier as an inference task. Its output vector per image is (crop height, crop width, the
    malignant probability of each patch, the benign one of each): crops differ in size, and the pass runs each
    size as its own sub-batch, so one vector carries what `output_columns` needs to split it."""

    spec: HeatmapsConfig
    heavy: ClassVar[bool] = True  # hundreds of patches an image: a second actor pays for itself on a single batch

    @property
    def stage(self) -> str:  # type: ignore[override]
        return NAME

    @property
    def model_id(self) -> str:
        return catalogue.heatmaps_model_id(self.spec)

    @property
    def transform(self) -> HeatmapCropTransform:
        return catalogue.heatmaps_transform(self.spec)

    @property
    def schema(self) -> pa.Schema:
        return schemas.HEATMAPS_SCHEMA

    def table_uri(self, output_uri: str) -> str:
        return tables.heatmaps_uri(output_uri)

    def load(self) -> LoadedModel:
        from mammo_ray.models.patch_classifier import build_patch_classifier  # torch: on the model's workers only

        resolved = resolve_weights(self.weights_spec)
        return LoadedModel(build_patch_classifier(resolved.state_dict, seed=resolved.seed, source=resolved.source),
                           resolved.weights_id)

    def forward(self, model: LoadedModel, inputs: torch.Tensor, group: str) -> torch.Tensor:
        import torch

        from mammo_ray.models.patch_classifier import crop_probabilities  # torch: on the model's workers only

        rows = []
        for crop in inputs[:, 0]:
            _, probabilities = crop_probabilities(model.module, crop, self.spec.stride, self.spec.batch_size)
            size = torch.tensor(crop.shape, dtype=probabilities.dtype, device=probabilities.device)
            rows.append(torch.cat([size, probabilities[:, 0], probabilities[:, 1]]))
        return torch.stack(rows)

    def output_columns(self, outputs: Sequence[np.ndarray | None]) -> dict[str, list]:
        # Rows without an output (errors) get placeholders: they are dropped before writing.
        sizes = [(0, 0) if o is None else (int(round(o[0])), int(round(o[1]))) for o in outputs]
        counts = [(len(o) - 2) // 2 if o is not None else 0 for o in outputs]
        return {
            "crop_height": [h for h, _ in sizes], "crop_width": [w for _, w in sizes],
            "stride": [self.spec.stride] * len(outputs),
            "malignant": [np.zeros(0, np.float32) if o is None else o[2:2 + n] for o, n in zip(outputs, counts,
                                                                                                 strict=True)],
            "benign": [np.zeros(0, np.float32) if o is None else o[2 + n:] for o, n in zip(outputs, counts,
                                                                                            strict=True)],
        }

    def to_frame(self, rows: pd.DataFrame) -> pd.DataFrame:
        frame = super().to_frame(rows)
        return frame.assign(crop_height=frame["crop_height"].astype(np.int32),
                            crop_width=frame["crop_width"].astype(np.int32), stride=frame["stride"].astype(np.int32))


def heatmaps_key(spec: HeatmapsConfig, read: IngestConfig = IngestConfig()) -> feature_store.ModelKey:
    return catalogue.heatmaps_key(spec, read)


def read_heatmaps(output_uri: str, manifest: pd.DataFrame, spec: HeatmapsConfig, read: IngestConfig = IngestConfig(),
                  key: feature_store.ModelKey | None = None) -> pd.DataFrame:
    """The heatmap rows of `manifest`'s images under `spec`, with the manifest's columns; StaleTableError when the
    stage has not run for this manifest and these settings."""
    return feature_store.read_view(tables.heatmaps_uri(output_uri), manifest, key or heatmaps_key(spec, read), NAME)


def heatmap_images(row: Any, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(benign, malignant) heatmaps of one stored row, float32 in [0, 1], the crop's size times `scale`, in the
    crop's orientation (chest wall on the left)."""
    return stored(row).images(scale)


def stored(row: Any) -> StoredHeatmaps:
    """One stored row's heatmaps."""
    return StoredHeatmaps(int(row.crop_height), int(row.crop_width), int(row.stride), np.asarray(row.benign),
                          np.asarray(row.malignant))


def with_heatmaps(current: CurrentInputs, manifest: pd.DataFrame) -> pd.DataFrame:
    """`manifest` (the pass's rows) with each image's stored heatmaps as pass inputs (`HEATMAPS_INPUTS`: null
    where the heatmaps stage made the image an errors row), for the outputs that read them."""
    rows = read_heatmaps(current.config.output, current.manifest(), current.config.heatmaps, current.read,
                         key=current.heatmaps_key())
    inputs = rows[["image_id", *HEATMAPS_INPUTS]].rename(columns=HEATMAPS_INPUTS)
    return manifest.merge(inputs, on="image_id", how="left", validate="one_to_one")


def _tasks(current: CurrentInputs) -> list[InferenceTask]:
    spec = current.config.heatmaps
    return [HeatmapsTask(spec)] if spec.enabled else []


#: The oriented breast crop of a full-field mammogram at NYU's native resolution, roughly (rows, columns).
_FULL_FIELD_CROP = (3000, 2000)


def _announce_cost(current: CurrentInputs) -> None:
    """Before the pass, on CPUs: the patch classifier's cost on this machine, measured (one thread, as each CPU
    actor runs it) and multiplied out for a full-field image and the manifest, at this stride and at 256."""
    spec = current.config.heatmaps
    if not spec.enabled or gpus_per_actor(current.config.embed) > 0:
        return
    from mammo_ray.models.patch_classifier import seconds_per_patch  # torch: only when the heatmaps are asked for

    per_patch = seconds_per_patch(threads=current.config.embed.torch_threads or 1)
    images = len(current.manifest())
    crop = tuple(round(side * spec.scale) for side in _FULL_FIELD_CROP)
    patches = {stride: PatchGrid.over(*crop, stride=stride).count for stride in dict.fromkeys((spec.stride, 256))}
    log.warning(
        "heatmaps on CPU: %.2f s per patch measured here (one thread); a full-field image's crop at scale %s is "
        "about %d patches at stride %d: about %.1f s per image, %.1f CPU-minutes for %d images (images already "
        "stored are skipped); at stride 256 about %d patches, %.1f s per image. GPU actors (embed.num_gpus) "
        "or a coarser heatmaps.stride cut it", per_patch, spec.scale, patches[spec.stride], spec.stride,
        patches[spec.stride] * per_patch, images * patches[spec.stride] * per_patch / 60, images, patches[256],
        patches[256] * per_patch)


def figure_images(rows: pd.DataFrame, chosen: list[str] | None) -> pd.DataFrame:
    """The rows Figure 2 shows: `chosen` image ids in their order, or by default the highest-BI-RADS image of each
    view (CC first; ties by image id), or the first image when no view is known."""
    if chosen is not None:
        by_id = rows.set_index("image_id", drop=False)
        return by_id.loc[[image for image in chosen if image in by_id.index]].reset_index(drop=True)
    rank = rows["birads"].map({value: i for i, value in enumerate(BIRADS_VALUES)}).fillna(-1)
    ordered = rows.assign(_rank=rank).sort_values(["_rank", "image_id"], ascending=[False, True])
    picked = [ordered[ordered["view"] == view].head(1) for view in ("CC", "MLO")]
    picked = [frame for frame in picked if len(frame)] or [ordered.head(1)]
    return pd.concat(picked).drop(columns="_rank").reset_index(drop=True)


def figure_uri(output_uri: str) -> str:
    """Figure 2 (figure.png) and what it was drawn from (figure.json: the heatmaps' key, the images)."""
    return tables.figures_uri(output_uri, "figure_2")


def _draw_figure(current: CurrentInputs) -> int:
    """Figure 2 of the chosen images whose heatmaps are stored: each image read and decoded again here, on the
    driver (a few images), its window placed as zero-shot places it. Returns how many images it shows."""
    config, output = current.config, current.config.output
    key = current.heatmaps_key()
    rows = read_heatmaps(output, current.manifest(), config.heatmaps, key=key)
    shown = figure_images(rows, config.heatmaps.figure_images)
    sources = current.readable_manifest().set_index("image_id", drop=False)
    panels = []
    for row in shown.itertuples():
        pixels = read_image(sources.loc[row.image_id].to_dict(), current.read).pixels
        laterality = row.laterality if row.laterality in ("L", "R") else None
        nyu = catalogue.nyu_transform(config.zero_shot).preprocess(pixels.shape[0])
        placed = place_window(pixels, row.view, laterality, nyu.scale, nyu.source_resolution)
        crop_transform = catalogue.heatmaps_transform(config.heatmaps)
        crop = oriented_crop(pixels, laterality=laterality, scale=crop_transform.scale,
                             source_resolution=source_resolution_for(pixels.shape[0], crop_transform.source_resolution))
        benign, malignant = heatmap_images(row)
        panels.append(Figure2Row(
            label=f"{row.image_id}\n{row.view or '?'} {row.laterality or '?'}, BI-RADS {row.birads or '?'}",
            view=pixels, crop=placed.crop, window=(placed.top, placed.left, *placed.window_hw),
            nyu_input=placed.window(), heatmap_crop=crop, benign=_fit(benign, crop.shape),
            malignant=_fit(malignant, crop.shape)))
    uri = figure_uri(output)
    note = (f"patch classifier weights {key.weights_id}, stride {config.heatmaps.stride}, scale "
            f"{config.heatmaps.scale}; window as zero-shot's (nyu_scale {config.zero_shot.nyu_scale})")
    storage.write_bytes(storage.join(uri, "figure.json"), json.dumps(
        {"key": key.as_dict(), "inputs": figure_inputs(current), "image_ids": list(shown["image_id"])}).encode())
    draw_figure_2(panels, storage.join(uri, "figure.png"), note)
    return len(panels)


def figure_inputs(current: CurrentInputs) -> dict[str, object]:
    """What Figure 2 shows besides the heatmaps (their key is recorded apart): the images' content, the manifest
    columns it picks and labels the images by, the images asked for, and the window drawn on the crop."""
    picked_by = current.manifest()[["image_id", "view", "laterality", "birads"]].sort_values("image_id")
    return {"images": current.digest("images"),
            "picked_by": hashlib.sha256(picked_by.to_json(orient="values").encode()).hexdigest()[:16],
            "figure_images": current.config.heatmaps.figure_images,
            "window": catalogue.zero_shot_model_id(current.config.zero_shot)}


def _fit(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A heatmap drawn at its stored crop's size, on a crop recomputed here (the same, unless the decode settings
    changed since): cut or padded to it."""
    out = np.zeros(shape, dtype=np.float32)
    rows, cols = min(shape[0], heatmap.shape[0]), min(shape[1], heatmap.shape[1])
    out[:rows, :cols] = heatmap[:rows, :cols]
    return out


def _counts(current: CurrentInputs, done: PassResult) -> Counts:
    run = done.runs.get(NAME)
    if run is None:
        return {"heatmaps_computed": 0, "heatmaps_skipped": 0, "heatmaps_errors": 0}
    shown = _draw_figure(current) if current.config.heatmaps.figure_images != [] else 0
    return {"heatmaps_computed": run.written, "heatmaps_skipped": run.skipped, "heatmaps_errors": run.errors,
            "heatmaps_figure_images": shown}


def _fingerprint(current: CurrentInputs) -> object:
    if not current.config.heatmaps.enabled:
        return "off"
    figure = figure_inputs(current) if current.config.heatmaps.figure_images != [] else None
    return current.digest("images"), current.heatmaps_key().as_dict(), figure


def _outputs_missing(current: CurrentInputs) -> str | None:
    if not current.config.heatmaps.enabled:
        return None
    output = current.config.output
    return model_output_missing(current, tables.heatmaps_uri(output), tables.errors_uri(output, NAME),
                                current.heatmaps_key())


STAGE = Stage(NAME, _fingerprint, sections=("ingest",), needs_ray=True, check=preflight.heatmaps_weights,
              image_outputs=ImageOutputs(tasks=_tasks, counts=_counts, announce=_announce_cost,
                                         inputs_for_later=with_heatmaps),
              reads=(tables.MANIFEST, tables.COHORT),
              writes=(tables.HEATMAPS, tables.HEATMAPS_ERRORS, tables.HEATMAPS_FIGURE),
              outputs_missing=_outputs_missing)
