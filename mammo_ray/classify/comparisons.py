"""Paired comparisons of extractors on the same images: the paper's questions as numbers.

Each comparison takes one pre-specified pipeline (`grid.compare`: the same selection, balancing and
classifier for every extractor, so that no choice among cells inflates a winner) and the leak_free
out-of-fold scores of two extractors on the images both scored. It reports each AUC, their
difference with a patient-cluster bootstrap interval (both extractors under the same resampled
patients, each resample averaging the out-of-fold repeats), the paired DeLong p-value on each image's
repeat-mean score, and Holm's adjustment over all the comparisons made.

DeLong's variance assumes independent images; with several images per patient it is optimistic,
which is why the interval resamples patients and the report leads with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mammo_ray.classify.metrics import auc
from mammo_ray.classify.stats import delong_test, holm, patient_bootstrap_auc_difference

COMPARISON_COLUMNS = [
    "a", "b", "selection", "balancing", "classifier", "n_images", "n_positive", "auc_a", "auc_b", "difference",
    "ci_low", "ci_high", "delong_p", "holm_p",
]


def score_matrix(predictions: pd.DataFrame) -> pd.DataFrame:
    """One extractor-cell's out-of-fold predictions as a frame indexed by image_id, one column per repeat,
    plus `target`."""
    wide = predictions.pivot_table(index="image_id", columns="repeat", values="score", aggfunc="first")
    wide.columns = [int(c) for c in wide.columns]
    wide["target"] = predictions.groupby("image_id")["target"].first()
    return wide


def compare_pair(a: pd.DataFrame, b: pd.DataFrame, groups: pd.Series, n_resamples: int, level: float,
                 seed: int) -> dict[str, float] | None:
    """`a`, `b`: score matrices (`score_matrix`); `groups`: patient (any code) of each image_id. On the
    images both scored, with the repeats both have; None when those lack a class (nothing to compare)."""
    images = a.index.intersection(b.index).sort_values()
    repeats = sorted(set(a.columns).intersection(b.columns) - {"target"})
    labels = a.loc[images, "target"].to_numpy().astype(bool)
    if labels.all() or not labels.any():
        return None
    scores_a = a.loc[images, repeats].to_numpy(dtype=np.float64).T
    scores_b = b.loc[images, repeats].to_numpy(dtype=np.float64).T
    patients = groups.loc[images].to_numpy()
    auc_a = float(np.mean([auc(labels, s) for s in scores_a]))
    auc_b = float(np.mean([auc(labels, s) for s in scores_b]))
    low, high = patient_bootstrap_auc_difference(labels, scores_a, scores_b, patients, n_resamples, level, seed)
    delong = delong_test(labels, scores_a.mean(axis=0), scores_b.mean(axis=0))
    return {"n_images": int(images.size), "n_positive": int(labels.sum()), "auc_a": auc_a, "auc_b": auc_b,
            "difference": auc_a - auc_b, "ci_low": low, "ci_high": high, "delong_p": delong.p_value}


def paired_comparisons(predictions: pd.DataFrame, pairs: Sequence[tuple[str, str]], selection: str,
                       balancing: str, classifier: str, groups: Mapping[str, pd.Series], n_resamples: int = 1000,
                       level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Every pair (a, b) of `pairs` whose both extractors have leak_free out-of-fold predictions of the
    pipeline (selection, balancing, classifier) in `predictions` (grid_predictions rows); Holm over the
    comparisons made. `groups`: per extractor, the patient code of each image_id (a's codes serve a pair)."""
    chosen = predictions[predictions["image_id"].notna() & (predictions["protocol"] == "leak_free")
                         & (predictions["selection"] == selection) & (predictions["balancing"] == balancing)
                         & (predictions["classifier"] == classifier)]
    matrices = {name: score_matrix(rows) for name, rows in chosen.groupby("extractor")}
    rows = []
    for a, b in pairs:
        numbers = None
        if a in matrices and b in matrices:
            numbers = compare_pair(matrices[a], matrices[b], groups[a], n_resamples, level, seed)
        if numbers is not None:
            rows.append({"a": a, "b": b, "selection": selection, "balancing": balancing,
                         "classifier": classifier, **numbers})
    frame = pd.DataFrame(rows, columns=[c for c in COMPARISON_COLUMNS if c != "holm_p"])
    frame["holm_p"] = holm(frame["delong_p"].to_numpy()) if len(frame) else []
    return frame[COMPARISON_COLUMNS]


__all__ = ["COMPARISON_COLUMNS", "compare_pair", "paired_comparisons", "score_matrix"]
