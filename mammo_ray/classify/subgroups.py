"""Metrics per subgroup: does a pipeline work as well on every view, side, density, BI-RADS group, site and
device as on the whole collection?

The predictions are the grid's leak_free out-of-fold scores of one pre-specified pipeline (`grid.compare`),
so no subgroup's number comes from a pipeline chosen after looking. For every extractor and every value of
every subgroup column of the manifest: the images, patients and positives it holds, the AUC (the mean over
the out-of-fold repeats), and its patient-cluster bootstrap interval (patients resampled within the
subgroup). A subgroup with fewer than SMALL_IMAGES images or SMALL_CLASS images of either class is marked
`small`, never hidden: its interval says how little it shows. A subgroup of one class has no AUC (NaN).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from mammo_ray.auc import auc
from mammo_ray.classify.comparisons import score_matrix
from mammo_ray.classify.stats import patient_bootstrap_auc
from mammo_ray.schemas import SUBGROUPS_SCHEMA

#: Manifest columns that define subgroups ('birads_group' is derived from birads).
SUBGROUP_COLUMNS: tuple[str, ...] = ("view", "laterality", "density", "birads_group", "site", "device")
SMALL_IMAGES = 30
SMALL_CLASS = 5
SUBGROUP_RESULT_COLUMNS: list[str] = SUBGROUPS_SCHEMA.names


def birads_group(birads: object) -> str | None:
    """'0' (incomplete), '1-3' (benign-ish) or '4-6' (suspicious): the paper's binary split, as groups."""
    if birads is None or (isinstance(birads, float) and np.isnan(birads)):
        return None
    text = str(birads)
    if text == "0":
        return "0"
    return "1-3" if text[:1] in ("1", "2", "3") else "4-6"


def subgroup_frame(manifest: pd.DataFrame) -> pd.DataFrame:
    """image_id -> patient_id and every subgroup column (birads_group derived), from the manifest."""
    frame = manifest.set_index("image_id")
    groups = pd.DataFrame(index=frame.index)
    groups["patient_id"] = frame["patient_id"]
    for column in SUBGROUP_COLUMNS:
        groups[column] = frame["birads"].map(birads_group) if column == "birads_group" else frame.get(column)
    return groups


def subgroup_metrics(predictions: pd.DataFrame, manifest: pd.DataFrame, pipeline: tuple[str, str, str], *,
                     n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """One row per (extractor, subgroup column, value) of the leak_free predictions of `pipeline`
    (selection, balancing, classifier) in `predictions` (grid_predictions rows)."""
    selection, balancing, classifier = pipeline
    chosen = predictions[predictions["image_id"].notna() & (predictions["protocol"] == "leak_free")
                         & (predictions["selection"] == selection) & (predictions["balancing"] == balancing)
                         & (predictions["classifier"] == classifier)]
    attributes = subgroup_frame(manifest)
    rows = []
    for extractor, cell in chosen.groupby("extractor", sort=True):
        matrix = score_matrix(cell)
        matrix = matrix[matrix.index.isin(attributes.index)]
        repeats = [c for c in matrix.columns if c != "target"]
        known = attributes.loc[matrix.index]
        for column in SUBGROUP_COLUMNS:
            for value, members in known.groupby(column, sort=True).groups.items():
                images = matrix.loc[members]
                labels = images["target"].to_numpy().astype(bool)
                scores = images[repeats].to_numpy(dtype=np.float64).T
                both = labels.any() and not labels.all()
                low, high = patient_bootstrap_auc(labels, scores, known.loc[members, "patient_id"].to_numpy(),
                                                  n_resamples, level, seed) if both else (np.nan, np.nan)
                positives = int(labels.sum())
                rows.append({
                    "extractor": extractor, "selection": selection, "balancing": balancing,
                    "classifier": classifier, "subgroup": column, "value": str(value), "n_images": len(labels),
                    "n_patients": int(known.loc[members, "patient_id"].nunique()), "n_positive": positives,
                    "auc": float(np.mean([auc(labels, s) for s in scores])) if both else np.nan,
                    "ci_low": low, "ci_high": high,
                    "small": bool(len(labels) < SMALL_IMAGES or min(positives, len(labels) - positives) < SMALL_CLASS),
                })
    return pd.DataFrame(rows, columns=SUBGROUP_RESULT_COLUMNS)


def interval_text(row: Mapping[str, Any]) -> str:
    """A subgroup's interval as "a to b"; "too few patients" where resampling patients cannot vary it (one
    patient, or every resample the same): a zero-width interval would read as certainty."""
    low, high = row["ci_low"], row["ci_high"]
    if pd.isna(row["auc"]):
        return ""
    if row["n_patients"] < 2 or pd.isna(low) or pd.isna(high) or high - low <= 0:
        return f"too few patients ({int(row['n_patients'])})"
    return f"{low:.3f} to {high:.3f}"
