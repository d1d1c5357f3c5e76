"""Table 1 of the report: the fine-tuned models' held-out metrics with their intervals, runs whose output is
constant flagged, the published values beside the last training stage, and their ROC curves."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from mammo_ray import schemas
from mammo_ray.report.plots import png, roc
from mammo_ray.report.published import beside
from mammo_ray.report.render import Section
from mammo_ray.training.metrics import METRIC_NAMES


def finetune_section(finetune: pd.DataFrame | None, predictions: pd.DataFrame | None,
                     published: pd.DataFrame | None = None, problem: str | None = None) -> Section:
    """Table 1 from results/finetune.parquet and its predictions (None: not run, or `problem` when out of date);
    `published`: the values of report.published, set beside our last training stage."""
    section = Section("Table 1: fine-tuning")
    if finetune is None or finetune.empty:
        section.paragraphs.append(problem or "The finetune stage has not run for this study.")
        return section
    metrics = list(METRIC_NAMES)
    columns = [c for c in ("model", "variant", "pretrained_on", "task", "stage", "protocol", "image_size",
                           "epochs", *metrics, "n_train", "n_val", "weights_id")
               if c in finetune.columns]
    if "variant" in finetune and not finetune["variant"].astype(bool).any():
        columns.remove("variant")  # no NYU view head among the runs: an empty column says nothing
    table = _with_intervals(finetune, columns, metrics)
    constant = constant_output_runs(predictions)
    if constant:
        keys = [*schemas.FINETUNE_RUN_KEYS, "stage"]
        flagged = finetune[keys].apply(tuple, axis=1).isin(constant).to_numpy()
        table = table.assign(flag=np.where(flagged, "constant output: its metrics are not a result", ""))
        section.paragraphs.append(
            f"{int(flagged.sum())} fine-tuned runs give the same output for every image (flagged): their "
            "accuracy is the majority class share and their AUROC 0.5 by construction.")
    section.tables.append(("Held-out metrics per model, task and training stage (intervals: validation "
                           "patients resampled)", table))
    if published is not None and "stage_index" in finetune.columns:
        last = finetune.sort_values("stage_index").groupby(list(schemas.FINETUNE_RUN_KEYS)).tail(1)
        ours = [c for c in ("weights_id",) if c in last.columns]  # what our run's weights were
        section.tables.append(("Last training stage of each model beside the published values (matched on "
                               "model, NYU view head and task; both runs' weights named)",
                               beside(last[[*schemas.FINETUNE_RUN_KEYS, "stage", *ours, *metrics]], published, "1")))
    if predictions is not None and not predictions.empty:
        section.figures.append(("ROC curves of the fine-tuned models (binary task, every training stage)",
                                "finetune_roc.png",
                                png(lambda axes: _finetune_roc(axes, predictions))))
    return section


def _with_intervals(frame: pd.DataFrame, columns: list[str], metrics: list[str]) -> pd.DataFrame:
    """`frame[columns]` with a `<metric> CI` text column ("low-high") after each metric that has an interval."""
    out = frame[columns].copy()
    for metric in metrics:
        low, high = f"{metric}_ci_low", f"{metric}_ci_high"
        if metric in out and low in frame:
            text = [f"{a:.3f}-{b:.3f}" if np.isfinite(a) and np.isfinite(b) else ""
                    for a, b in zip(frame[low], frame[high], strict=True)]
            out.insert(out.columns.get_loc(metric) + 1, f"{metric} CI", text)
    return out


def constant_output_runs(predictions: pd.DataFrame | None) -> set[tuple]:
    """(model, variant, pretrained_on, task, stage) of the runs whose predicted probabilities are the same
    for every validation image (e.g. a random-init SqueezeNet giving [0.5, 0.5])."""
    if predictions is None or predictions.empty:
        return set()
    runs = set()
    for key, rows in predictions.groupby([*schemas.FINETUNE_RUN_KEYS, "stage"]):
        probabilities = np.stack([np.asarray(p, dtype=np.float64) for p in rows["probabilities"]])
        if len(rows) > 1 and np.ptp(probabilities, axis=0).max() < 1e-6:
            runs.add(tuple(key))
    return runs


def _finetune_roc(axes: Axes, predictions: pd.DataFrame) -> None:
    binary = predictions[predictions["task"] == "binary"]
    roc(axes, [(f"{model}{'/' + variant if variant else ''} ({pretrained}, {stage})", rows["target"].to_numpy(),
          np.asarray([p[1] for p in rows["probabilities"]]))
         for (model, variant, pretrained, stage), rows
         in binary.groupby(["model", "variant", "pretrained_on", "stage"])])
