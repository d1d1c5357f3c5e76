"""The export stage (docs/design.md, "Model packages"): the study's chosen frozen-feature pipelines as packages under
`<output>/models/<name>/`, and their full-fit predictions of the study's own images
(results/model_predictions.parquet), from the current grid.

Per extractor, two packages: `<extractor>-compare`, the pipeline fixed before scoring (grid.compare), and
`<extractor>-selected`, the cell the nested selection stands for (the best leak_free out-of-fold AUC over all
images: what "choose by cross-validation, then fit on everything" picks), whose performance is the nested
estimate, not the winner's own row. Extractor combinations are not exported (scoring one needs every member's
pass). Packages of earlier inputs are removed: a package describes the current manifest and config.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mammo_ray import __version__, storage, tables
from mammo_ray.classify.cells import compare_pipeline
from mammo_ray.classify.data import GridData
from mammo_ray.config import ExtractorConfig, StudyConfig
from mammo_ray.config.grid import GridCell
from mammo_ray.current_tables import read_current
from mammo_ray.feature_store import ModelKey
from mammo_ray.models.catalogue import family
from mammo_ray.models.registry import pretraining_of
from mammo_ray.package_schemas import MODEL_PREDICTIONS_SCHEMA
from mammo_ray.packages.card import card_files
from mammo_ray.packages.files import pipeline_files, write_package
from mammo_ray.packages.model import FittedModel, fit_model
from mammo_ray.report.comparisons import compared_pipeline
from mammo_ray.stages.grid import study_datasets
from mammo_ray.stages.stage import Counts, Stage, tables_missing

if TYPE_CHECKING:  # pragma: no cover
    from mammo_ray.current import CurrentInputs  # types only: stages are above the current inputs' module

log = logging.getLogger("mammo_ray.export")
NAME = "export"
_PERFORMANCE = ("auc", "auc_ci_low", "auc_ci_high", "interval", "balanced_accuracy", "recall", "specificity",
                "brier", "n_breasts", "auc_breast", "auc_breast_ci_low", "auc_breast_ci_high", "oof_repeats",
                "cv_folds", "n_features")
_CONTROL = ("permutations", "first_repeat_auc", "null_auc_mean", "null_auc_q95", "permutation_p")


def extractor_identity(spec: ExtractorConfig, key: ModelKey) -> dict[str, Any]:
    """What a package records of its extractor: its settings without any location (a weights file is named by
    its sha256, the key's weights_id), its model key, family and what it was pretrained on."""
    settings = spec.model_dump(mode="json", exclude={"weights", "sha256"})
    pretraining, licence = pretraining_of(spec)
    weights = spec.weights if spec.weights.startswith(("random-init", "torchvision:")) else None
    return {"name": spec.name, "family": family(spec), "architecture": spec.architecture, "weights": weights,
            "weights_id": key.weights_id, "settings": settings, "model_key": key.as_dict(),
            "pretrained_on": list(pretraining.collections), "pretraining_group": pretraining.group,
            "pretraining_modality": pretraining.modality, "licence": licence}


def _numbers(row: pd.Series, names: tuple[str, ...]) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            return None
        return value.item() if hasattr(value, "item") else value
    return {name: plain(row[name]) for name in names if name in row.index}


def _oof_scores(predictions: pd.DataFrame, data: GridData, pipeline: tuple[str, str, str, str]) -> np.ndarray:
    """(repeats, rows) out-of-fold decision scores of one leak_free cell, rows in `data`'s order."""
    extractor, selection, balancing, classifier = pipeline
    rows = predictions[(predictions["extractor"] == extractor) & (predictions["protocol"] == "leak_free")
                       & (predictions["selection"] == selection) & (predictions["balancing"] == balancing)
                       & (predictions["classifier"] == classifier)]
    table = rows.pivot(index="repeat", columns="image_id", values="score")
    return table.loc[:, list(data.image_ids)].to_numpy(dtype=np.float64)


def _training(config: StudyConfig, manifest: pd.DataFrame, data: GridData, digest: str) -> dict[str, Any]:
    labelled = manifest[manifest["image_id"].isin(data.image_ids)]
    return {"manifest_digest": digest, "images": data.n_rows, "positives": data.n_positive,
            "patients": int(len(np.unique(data.groups))), "unlabelled_left_out": data.n_dropped,
            "datasets": sorted(map(str, labelled["dataset"].dropna().unique())),
            "views": sorted(map(str, labelled["view"].dropna().unique())),
            "lateralities": sorted(map(str, labelled["laterality"].dropna().unique())),
            "label_definition": "the manifest's label column (schemas.MANIFEST_SCHEMA): from BI-RADS (1-3: 0, 4-6: "
                                "1) or from pathology, as the collection's adapter says",
            "study": config.name}


def _package(name: str, kind: str, cell_row: pd.Series, performance_row: pd.Series, model: FittedModel,
             identity: dict[str, Any], training: dict[str, Any], subgroups: list[dict[str, Any]],
             settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name, "kind": kind, "created_by": f"mammo-ray {__version__}", "extractor": identity,
        "pipeline": {"selection": cell_row["selection"], "balancing": cell_row["balancing"],
                     "classifier": cell_row["classifier"], "grid_settings": settings,
                     "support_vectors": model.support_vectors()},
        "threshold": model.threshold, "calibration": settings["calibration"], "training": training,
        "performance": {"evaluation": "leak_free out-of-fold (patient-grouped folds, everything fitted inside "
                                      "training folds)", **_numbers(performance_row, _PERFORMANCE)},
        # The nested row runs no control of its own: the chosen cell's (the same pipeline on permuted labels).
        "control": _numbers(cell_row, _CONTROL), "subgroups": subgroups,
        "shift": {"statistic": "mean shift: sqrt(images) x RMS over features of the images' mean standardised "
                               "embedding; reference: patient-bootstrap resamples of the training images",
                  "training_median": model.shift.training_median, "training_q95": model.shift.training_q95},
    }


def export_packages(current: CurrentInputs) -> tuple[list[str], pd.DataFrame]:
    """Write every package of the current grid; their names and full-fit predictions."""
    config, manifest = current.config, current.manifest()
    expected = current.grid_inputs()
    grid, _ = read_current(tables.grid_uri(config.output), expected)
    predictions, _ = read_current(tables.grid_predictions_uri(config.output), expected)
    # The predictions first: a run that fails after this leaves no table naming packages that are gone.
    storage.remove(tables.model_predictions_uri(config.output))
    storage.remove(tables.models_uri(config.output), recursive=True)
    if grid is None or predictions is None:
        return [], pd.DataFrame(columns=MODEL_PREDICTIONS_SCHEMA.names)
    comparisons, _ = read_current(tables.comparisons_uri(config.output), expected)
    subgroups, _ = read_current(tables.subgroups_uri(config.output),
                                {"manifest": tables.manifest_digest(manifest), "grid": expected})
    compare = compare_pipeline(config.grid) or compared_pipeline(comparisons)
    datasets = study_datasets(current)
    names, rows = [], []
    ok = grid[(grid["status"] == "ok") & (grid["protocol"] == "leak_free") & (grid["evaluation"] == "oof")]
    for spec in config.grid_extractors:
        cells = ok[(ok["extractor"] == spec.name) & (ok["selection"] != "selected")]
        if cells.empty:
            continue
        chosen = {"selected": (cells.loc[cells["auc"].idxmax()], ok[(ok["extractor"] == spec.name)
                                                                     & (ok["selection"] == "selected")])}
        if compare is not None:
            fixed = cells[(cells["selection"] == compare[0]) & (cells["balancing"] == compare[1])
                          & (cells["classifier"] == compare[2])]
            if not fixed.empty:
                chosen["compare"] = (fixed.iloc[0], fixed)
        data = datasets[spec.name]
        identity = extractor_identity(spec, current.embedding_key(spec))
        training = _training(config, manifest, data, current.digest("manifest"))
        for kind, (row, performance) in chosen.items():
            if performance.empty:
                continue
            name = f"{spec.name}-{kind}"
            cell = GridCell(spec.name, row["selection"], row["balancing"], row["classifier"], "leak_free")
            pipeline = (cell.selection, cell.balancing, cell.classifier)
            model = fit_model(data, cell, config.grid, _oof_scores(predictions, data, (spec.name, *pipeline)))
            perf = performance.iloc[0]
            groups = [] if subgroups is None else _subgroups(subgroups, spec.name, perf)
            settings = {**json.loads(row["cell_config"] or "{}"), "calibration": config.grid.oof.calibration}
            description = _package(name, kind, row, perf, model, identity, training, groups, settings)
            written = write_package(tables.models_uri(config.output, name), description,
                                    {**pipeline_files(model), **card_files(description)})
            scores, probability, flag, _ = model.apply(data.X)
            rows.append(pd.DataFrame({"package": name, "image_id": list(data.image_ids), "score": scores,
                                      "probability": probability, "flag": flag}))
            names.append(name)
            log.info("export: %s (%s) -> %s, package %s", name, "/".join(pipeline),
                     tables.models_uri(config.output, name), written["package_id"])
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=MODEL_PREDICTIONS_SCHEMA.names)
    return names, frame


def _subgroups(subgroups: pd.DataFrame, extractor: str, performance: pd.Series) -> list[dict[str, Any]]:
    rows = subgroups[(subgroups["extractor"] == extractor) & (subgroups["selection"] == performance["selection"])
                     & (subgroups["balancing"] == performance["balancing"])
                     & (subgroups["classifier"] == performance["classifier"])]
    columns = ["subgroup", "value", "n_images", "n_patients", "n_positive", "auc", "ci_low", "ci_high", "small"]
    return json.loads(rows[columns].to_json(orient="records"))


def _run(current: CurrentInputs) -> Counts:
    names, frame = export_packages(current)
    table = pa.Table.from_pandas(frame, schema=MODEL_PREDICTIONS_SCHEMA, preserve_index=False)
    storage.write_table(tables.with_provenance(table, NAME, inputs=current.grid_inputs()),
                        tables.model_predictions_uri(current.config.output))
    return {"models_exported": len(names)}


STAGE = Stage(NAME, lambda current: current.grid_inputs(), run=_run, sections=("grid", "embed"),
              reads=(tables.MANIFEST, tables.EMBEDDINGS, tables.GRID, tables.GRID_PREDICTIONS, tables.COMPARISONS,
                     tables.SUBGROUPS),
              writes=(tables.MODELS, tables.MODEL_PREDICTIONS),
              outputs_missing=tables_missing(tables.MODEL_PREDICTIONS))  # a grid without ok cells exports none


__all__ = ["NAME", "STAGE", "export_packages", "extractor_identity"]
