"""Report stage: what is current (`report_inputs`), the tables that describe it (one computed on other inputs is
named out of date, never shown), the sections of mammo_ray.report, and report.md with a self-contained
report.html under `<output>/report/`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from mammo_ray import feature_store, preflight, privacy, storage, tables
from mammo_ray.config import StudyConfig
from mammo_ray.current_tables import read_current
from mammo_ray.errors import MammoRayError, StaleTableError
from mammo_ray.models.catalogue import family
from mammo_ray.models.registry import pretraining_of
from mammo_ray.packages.files import DESCRIPTION_FILE
from mammo_ray.report.checklist import checklist_section
from mammo_ray.report.comparisons import TRANSFER_TITLE, compared_pipeline, comparisons_section
from mammo_ray.report.contact_sheet import SheetImage, draw_contact_sheet, spread
from mammo_ray.report.external import external_section
from mammo_ray.report.figures import zero_shot_section
from mammo_ray.report.finetune import finetune_section
from mammo_ray.report.grid import grid_section
from mammo_ray.report.heatmap_figure import figure_2_section
from mammo_ray.report.packages import packages_section
from mammo_ray.report.preprocessing import preprocessing_section
from mammo_ray.report.provenance import provenance_section, random_init_banner
from mammo_ray.report.published import read_published
from mammo_ray.report.render import write_report
from mammo_ray.report.subgroups import subgroups_section
from mammo_ray.report.verdict import verdict_section
from mammo_ray.stages.embed import read_embeddings
from mammo_ray.stages.heatmaps import figure_inputs, figure_uri
from mammo_ray.stages.stage import Counts, Stage
from mammo_ray.stages.thumbnails import families as thumbnail_families
from mammo_ray.stages.thumbnails import read_thumbnails, thumbnail
from mammo_ray.stages.zero_shot import HEATMAPS_NAME as ZERO_SHOT_HEATMAPS
from mammo_ray.stages.zero_shot import MODEL_LABELS, read_zero_shot, read_zero_shot_heatmaps
from mammo_ray.stages.zero_shot import NAME as ZERO_SHOT

if TYPE_CHECKING:  # pragma: no cover
    from mammo_ray.current import CurrentInputs  # types only: CurrentInputs reads the image stages' model keys

log = logging.getLogger("mammo_ray.report")


@dataclass(frozen=True)
class ReportInputs:
    """What is current, as the study knows it: the manifest; the zero-shot view of it (None, with the
    reason, when the stage has not run for it); the errors tables of the configured stages; the weights
    ids of the configured models; and, per result table, the inputs its provenance must name."""

    manifest: pd.DataFrame
    zero_shot: pd.DataFrame | None = None
    zero_shot_problem: str | None = None
    #: the image+heatmaps model's zero-shot view, when it is asked for (None: not asked for, or a problem)
    zero_shot_heatmaps: pd.DataFrame | None = None
    error_uris: list[str] = field(default_factory=list)
    weights_ids: list[str] = field(default_factory=list)
    expected_inputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: per current image output: (family, the breast's share of each image's input)
    breast_shares: Mapping[str, tuple[str, pd.Series]] = field(default_factory=dict)
    #: the heatmaps' Figure 2 (PNG) when drawn from the current heatmaps and images; else None, with why not
    figure_2: bytes | None = None
    figure_2_problem: str | None = None
    #: the preprocessing contact sheet (PNG) from the current thumbnails; else None, with why not (None: not asked)
    contact_sheet: bytes | None = None
    contact_sheet_problem: str | None = None


def _shown_config(config: StudyConfig) -> dict[str, Any]:
    """The config as the report shows it: secrets redacted (a salt leaves as its fingerprint), with its hash."""
    return {**privacy.redact_secrets(config.model_dump(mode="json")), "config_hash": config.config_hash()}


def _current(uri: str, expected: Mapping[str, Any] | None) -> tuple[pd.DataFrame | None, str | None]:
    """The table at `uri` when it describes the `expected` inputs; else (None, why not, naming the table)."""
    frame, problem = read_current(uri, expected)
    return frame, (f"{uri} was {problem}" if problem else None)


def _current_errors(uris: list[str], manifest: pd.DataFrame) -> pd.DataFrame | None:
    """The rows of the configured stages' errors tables that describe the current manifest's images."""
    digest = tables.image_digest(manifest)
    frames = []
    for uri in uris:
        provenance = tables.read_provenance(uri)
        if provenance is None or provenance.get("inputs", {}).get("images") != digest:
            continue
        frames.append(storage.read_table(uri).to_pandas())
    if not frames:
        return None
    errors = pd.concat(frames, ignore_index=True)
    return errors[errors["image_id"].isin(set(manifest["image_id"]))]


def build_report(config: StudyConfig, current: ReportInputs) -> dict[str, str]:
    """Write the report of the tables under `config.output` that describe `current`; returns its URIs."""
    output_uri, manifest, expected = config.output, current.manifest, current.expected_inputs
    grid, grid_problem = _current(tables.grid_uri(output_uri), expected.get("grid"))
    grid_predictions, _ = _current(tables.grid_predictions_uri(output_uri), expected.get("grid"))
    comparisons, comparisons_problem = _current(tables.comparisons_uri(output_uri), expected.get("grid"))
    external, external_problem = _current(tables.external_uri(output_uri), expected.get("grid"))
    transfer, transfer_problem = None, None
    if "grid" in expected and "finetune" in expected:
        transfer, transfer_problem = _current(tables.finetune_vs_frozen_uri(output_uri),
                                              {"grid": expected["grid"], "finetune": expected["finetune"]})
    finetune, finetune_problem = _current(tables.finetune_uri(output_uri), expected.get("finetune"))
    predictions, _ = _current(tables.finetune_predictions_uri(output_uri), expected.get("finetune"))
    errors = _current_errors(current.error_uris, manifest)
    weights = sorted(set(current.weights_ids))
    published = read_published(config.report.published) if config.report.published else None
    subgroups, _ = _current(tables.subgroups_uri(output_uri), {"manifest": tables.manifest_digest(manifest),
                                                                "grid": dict(expected.get("grid", {}))})
    shown = _shown_config(config)
    sections = [
        verdict_section(grid, comparisons, transfer, finetune,
                        {spec.name: pretraining_of(spec)[0].group for spec in config.embed.extractors}),
        provenance_section(output_uri, config.name, shown["config_hash"], manifest, weights, errors,
                           _extractor_pretraining(config)),
        preprocessing_section(current.breast_shares, current.contact_sheet, current.contact_sheet_problem),
        zero_shot_section(current.zero_shot if current.zero_shot_heatmaps is None else
                          {MODEL_LABELS[ZERO_SHOT]: current.zero_shot,
                           MODEL_LABELS[ZERO_SHOT_HEATMAPS]: current.zero_shot_heatmaps},
                          current.zero_shot_problem),
        *([figure_2_section(current.figure_2, current.figure_2_problem)]
          if current.figure_2 is not None or current.figure_2_problem else []),
        finetune_section(finetune, predictions, published, finetune_problem),
        grid_section(grid, grid_predictions, published, grid_problem, compared_pipeline(comparisons)),
        comparisons_section(comparisons, comparisons_problem),
        comparisons_section(transfer, transfer_problem, TRANSFER_TITLE),
        external_section(external, external_problem),
        subgroups_section(subgroups, config.grid.ci_level),
        packages_section([*_current_packages(output_uri, expected.get("grid")),
                          *_current_networks(output_uri, tables.manifest_digest(manifest))]),
        checklist_section(manifest, grid, weights, errors),
    ]
    uris = write_report(output_uri, f"mammo-ray study report: {config.name}", random_init_banner(weights), sections)
    document = {"config": shown, "weights_ids": weights, "inputs": {
        "manifest": tables.manifest_digest(manifest), **{name: dict(value) for name, value in expected.items()}}}
    storage.write_bytes(storage.join(tables.report_uri(output_uri), "provenance.json"),
                        json.dumps(document, indent=2, default=str).encode())
    return uris


def _current_packages(output_uri: str, expected: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The descriptions of the packages the export stage wrote for the current grid (none when not current)."""
    predictions, _ = _current(tables.model_predictions_uri(output_uri), expected)
    if predictions is None:
        return []
    return [json.loads(storage.read_bytes(storage.join(tables.models_uri(output_uri, name), DESCRIPTION_FILE)))
            for name in sorted(predictions["package"].unique())]


def _current_networks(output_uri: str, manifest_digest: str) -> list[dict[str, Any]]:
    """The descriptions of the fine-tuned network packages trained on the current manifest."""
    found = [json.loads(storage.read_bytes(storage.join(tables.networks_uri(output_uri, name), DESCRIPTION_FILE)))
             for name in feature_store.subfolders(tables.networks_uri(output_uri))
             if storage.exists(storage.join(tables.networks_uri(output_uri, name), DESCRIPTION_FILE))]
    return [package for package in found if package["training"]["manifest_digest"] == manifest_digest]


def report_inputs(current: CurrentInputs) -> ReportInputs:
    """What is current for the report, from the study's current inputs: a table whose inputs cannot be computed
    (its weights are not here) is expected to name that, so it is never shown as current."""
    config, manifest = current.config, current.manifest()
    zero_shot, problem = None, None
    weights: list[str] = []
    try:
        zero_shot = read_zero_shot(config.output, manifest, key=current.zero_shot_key())
    except StaleTableError as error:
        problem = None if "has not run" in error.reason else str(error)
    except MammoRayError as error:  # e.g. its weights are not here: nothing can be current
        problem = f"the zero-shot model key cannot be computed: {error}"
    zero_shot_heatmaps = None
    if zero_shot is not None and config.zero_shot.heatmaps_weights is not None:
        try:
            key = current.zero_shot_heatmaps_key()
            assert key is not None  # asked for
            zero_shot_heatmaps = read_zero_shot_heatmaps(config.output, manifest, key)
            weights.append(key.weights_id)
        except MammoRayError as error:  # not run for these inputs, or its weights are not here
            zero_shot, problem = None, f"the image+heatmaps model's zero-shot rows are not current: {error}"
    expected: dict[str, Any] = {}
    for name, inputs in (("grid", current.grid_inputs), ("finetune", current.finetune_inputs)):
        try:
            expected[name] = inputs()
        except MammoRayError as error:  # weights missing: the table cannot be shown as current
            expected[name] = {"unavailable": str(error)}
    weights += list(expected["finetune"].get("weights", {}).values())
    weights += [embedding["key"]["weights_id"] for embedding in expected["grid"].get("embeddings", {}).values()]
    if zero_shot is not None:
        weights.append(current.zero_shot_key().weights_id)
    stages = ["ingest", *(f"embed:{spec.name}" for spec in config.embed.extractors), "zero_shot"]
    if config.zero_shot.heatmaps_weights is not None:
        stages.append(ZERO_SHOT_HEATMAPS)
    if config.heatmaps.enabled:
        stages.append("heatmaps")
        with contextlib.suppress(MammoRayError):  # its weights are not here: nothing of it can be current
            weights.append(current.heatmaps_key().weights_id)
    figure, figure_problem = _current_figure_2(current)
    sheet, sheet_problem = _contact_sheet(current)
    return ReportInputs(
        manifest=manifest, zero_shot=zero_shot, zero_shot_problem=problem, zero_shot_heatmaps=zero_shot_heatmaps,
        error_uris=[tables.errors_uri(config.output, stage) for stage in stages],
        weights_ids=weights, expected_inputs=expected, breast_shares=_breast_shares(current, zero_shot),
        figure_2=figure, figure_2_problem=figure_problem, contact_sheet=sheet, contact_sheet_problem=sheet_problem,
    )


def _current_figure_2(current: CurrentInputs) -> tuple[bytes | None, str | None]:
    """Figure 2 when the heatmaps are asked for and it was drawn from the current heatmaps of the current images."""
    if not current.config.heatmaps.enabled or current.config.heatmaps.figure_images == []:
        return None, None
    folder = figure_uri(current.config.output)
    record_uri = storage.join(folder, "figure.json")
    if not storage.exists(record_uri):
        return None, "the heatmaps stage has not drawn it for this study"
    record = json.loads(storage.read_bytes(record_uri))
    try:
        key = current.heatmaps_key().as_dict()
    except MammoRayError as error:  # its weights are not here: nothing can be current
        return None, f"the heatmaps' model key cannot be computed: {error}"
    if record.get("key") != key or record.get("inputs") != figure_inputs(current):
        return None, (f"{folder} was drawn from other heatmaps, other images, other image choices or another "
                      "window (out of date)")
    return storage.read_bytes(storage.join(folder, "figure.png")), None


def _extractor_pretraining(config: StudyConfig) -> pd.DataFrame:
    """Per extractor: its pretraining group, collections, licence, and whether its rows are external here."""
    tested = {source.adapter.name for source in (config.data.sources or {"data": config.data}).values()
              if source.adapter is not None}
    rows = []
    for spec in config.embed.extractors:
        pretraining, licence = pretraining_of(spec)
        seen = sorted(set(pretraining.collections) & tested)
        rows.append({"extractor": spec.name, "group": pretraining.group,
                     "pretrained on": ", ".join(pretraining.collections) or "-", "modality": pretraining.modality,
                     "licence": licence, "external": f"no ({', '.join(seen)})" if seen else "yes"})
    return pd.DataFrame(rows)


def _contact_sheet(current: CurrentInputs) -> tuple[bytes | None, str | None]:
    """The contact sheet of `report.contact_sheet` images spread over the manifest, from the current thumbnails."""
    shown = thumbnail_families(current)
    if not shown:
        return None, None
    stored = {}
    for inputs in shown:
        try:
            stored[inputs.family] = read_thumbnails(current, inputs).set_index("image_id")
        except StaleTableError:
            return None, "the thumbnails stage has not run for the current images and settings"
    images = []
    for row in spread(current.manifest(), current.config.report.contact_sheet).itertuples():
        thumbs = tuple(thumbnail(stored[f.family].loc[row.image_id]) if row.image_id in stored[f.family].index
                       else None for f in shown)
        nyu = stored["nyu"]
        share = float(nyu.loc[row.image_id, "breast_share"]) if row.image_id in nyu.index else None
        images.append(SheetImage(str(row.image_id), _text(row.view), _text(row.laterality), thumbs, share))
    return draw_contact_sheet(images, [family.family for family in shown]), None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _breast_shares(current: CurrentInputs, zero_shot: pd.DataFrame | None) -> dict[str, tuple[str, pd.Series]]:
    """Per current image output: its family and the breast's share of each image's input (outputs not current
    for this manifest and config are left out: the report shows only what describes the current inputs)."""
    config, manifest = current.config, current.manifest()
    shares: dict[str, tuple[str, pd.Series]] = {}
    for spec in config.embed.extractors:
        try:
            key = current.embedding_key(spec)
        except MammoRayError:  # its weights are not here: nothing of it can be current
            continue
        try:
            view = read_embeddings(config.output, manifest, spec, key=key, columns=["breast_share"])
        except StaleTableError:  # not run for these inputs (a store failure is not caught: the report fails)
            continue
        shares[spec.name] = (family(spec), view["breast_share"])
    if zero_shot is not None and "breast_share" in zero_shot:
        shares["zero_shot"] = ("nyu", zero_shot["breast_share"])
    return shares


def _run(current: CurrentInputs) -> Counts:
    uris = build_report(current.config, report_inputs(current))
    log.info("report: %s and %s", uris["markdown"], uris["html"])
    return {"report_files": len(uris)}


# Cheap, and its inputs are every other table: always rebuilt.
STAGE = Stage("report", None, run=_run, check=preflight.published_values,
              reads=(tables.MANIFEST, tables.INGEST_ERRORS, tables.EMBEDDINGS, tables.EMBED_ERRORS, tables.ZERO_SHOT,
                     tables.ZERO_SHOT_ERRORS, tables.ZERO_SHOT_HEATMAPS, tables.ZERO_SHOT_HEATMAPS_ERRORS,
                     tables.GRID, tables.GRID_PREDICTIONS, tables.COMPARISONS,
                     tables.EXTERNAL, tables.SUBGROUPS, tables.FINETUNE, tables.FINETUNE_PREDICTIONS,
                     tables.FINETUNE_VS_FROZEN, tables.ZERO_SHOT_FIGURE, tables.HEATMAPS_ERRORS,
                     tables.HEATMAPS_FIGURE, tables.THUMBNAILS, tables.THUMBNAILS_ERRORS, tables.MODELS,
                     tables.MODEL_PREDICTIONS, tables.NETWORKS),
              writes=(tables.REPORT,))


__all__ = ["STAGE", "ReportInputs", "build_report", "report_inputs"]
