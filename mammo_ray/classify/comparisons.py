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

from mammo_ray.auc import auc
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


#: The frozen extractor of each fine-tuned network: the same network's features under a classifier (a NYU
#: model fine-tuned from an MLO head has no MLO-only extractor: nyu_avg holds its trunk).
FROZEN_FEATURES_OF = {"resnet50": "imagenet_resnet50", "resnet18": "imagenet_resnet18",
                      "squeezenet1_1": "imagenet_squeezenet", "nyu": "nyu_lcc", "nyu/mlo": "nyu_avg"}


def finetuned_label(model: str, variant: str | None) -> str:
    return f"finetuned:{model}" + (f"/{variant}" if variant else "")


def _frozen_of(model: str, variant: str | None) -> str | None:
    if model == "nyu" and variant and variant.endswith("mlo"):
        return FROZEN_FEATURES_OF["nyu/mlo"]
    return FROZEN_FEATURES_OF.get(model)


def finetuned_matrices(rows: pd.DataFrame, predictions: pd.DataFrame) -> dict[str, tuple[str, float, pd.DataFrame]]:
    """Per fine-tuned binary run (model, variant, pretrained_on): its frozen counterpart's name, its validation
    AUROC and the score matrix (`score_matrix`, one column) of its last stage's validation predictions
    (P(malignant)). A model fine-tuned from several starting weights is labelled with them too."""
    keys = [k for k in ("model", "variant", "pretrained_on") if k in rows and k in predictions]
    binary = rows[rows["task"] == "binary"]
    last_stages = binary.sort_values("stage_index").groupby(keys).tail(1)
    starts = last_stages.groupby([k for k in keys if k != "pretrained_on"])["stage"].transform("size")
    out: dict[str, tuple[str, float, pd.DataFrame]] = {}
    for (_, last), several in zip(last_stages.iterrows(), starts, strict=True):
        chosen = predictions[(predictions["task"] == "binary") & (predictions["stage"] == last["stage"])]
        for key in keys:
            chosen = chosen[chosen[key] == last[key]]
        if chosen.empty:
            continue
        variant = last.get("variant") or None
        label = finetuned_label(last["model"], variant) + (f" ({last['pretrained_on']})" if several > 1 else "")
        frame = pd.DataFrame({"image_id": chosen["image_id"].astype(str), "target": chosen["target"].astype(int),
                              "score": [float(p[1]) for p in chosen["probabilities"]], "repeat": 0})
        out[label] = (_frozen_of(last["model"], variant) or "", float(last["auroc"]), score_matrix(frame))
    return out


def finetuned_vs_frozen(finetune_rows: pd.DataFrame, finetune_predictions: pd.DataFrame,
                        grid_predictions: pd.DataFrame, pipeline: tuple[str, str, str], n_resamples: int = 1000,
                        level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """The paper's second question on the same images: each fine-tuned network (binary, last stage) against
    its own frozen features under the pre-specified `pipeline` (leak_free, out of fold), on the fine-tuning
    validation images; then the best fine-tuned run (by its validation AUROC) against the best honestly
    selected frozen row (`selected`, nested choice) on those images. Both "best" are picked after the fact on
    these images, which the report says. Patients from the fine-tuning predictions; Holm over all rows."""
    runs = finetuned_matrices(finetune_rows, finetune_predictions)
    leak_free = grid_predictions[grid_predictions["image_id"].notna() & (grid_predictions["protocol"] == "leak_free")]
    images = finetune_predictions.drop_duplicates("image_id")
    patients = pd.Series(images["patient_id"].to_numpy(), index=images["image_id"].astype(str).to_numpy())
    rows = []

    def compare(label: str, tuned: pd.DataFrame, frozen: pd.DataFrame, keys: tuple[str, str, str], name: str) -> None:
        frozen_matrix = score_matrix(frozen)
        # The fine-tuned run scored each image once: the same score stands for it in every out-of-fold repeat.
        tiled = pd.DataFrame({r: tuned[0] for r in frozen_matrix.columns if r != "target"}, index=tuned.index)
        tiled["target"] = tuned["target"]
        numbers = compare_pair(tiled, frozen_matrix, patients, n_resamples, level, seed)
        if numbers is not None:
            rows.append({"a": label, "b": name, "selection": keys[0], "balancing": keys[1], "classifier": keys[2],
                         **numbers})

    for label, (frozen_name, _, tuned) in runs.items():
        frozen = leak_free[(leak_free["extractor"] == frozen_name) & (leak_free["selection"] == pipeline[0])
                           & (leak_free["balancing"] == pipeline[1]) & (leak_free["classifier"] == pipeline[2])]
        if not frozen.empty:
            compare(label, tuned, frozen, pipeline, frozen_name)
    selected = leak_free[leak_free["selection"] == "selected"]
    if runs and not selected.empty:
        best_label = max(runs, key=lambda label: runs[label][1])
        tuned = runs[best_label][2]
        on_images = selected[selected["image_id"].astype(str).isin(tuned.index)]
        by_extractor = {name: score_matrix(group) for name, group in on_images.groupby("extractor")}
        aucs = {name: float(np.mean([auc(m["target"].to_numpy().astype(bool), m[c].to_numpy())
                                     for c in m.columns if c != "target"])) for name, m in by_extractor.items()}
        best_frozen = max(aucs, key=lambda name: (np.nan_to_num(aucs[name], nan=-1.0), name))
        compare(best_label + " (best)", tuned, selected[selected["extractor"] == best_frozen],
                ("selected", "selected", "selected"), best_frozen + " (best)")
    frame = pd.DataFrame(rows, columns=[c for c in COMPARISON_COLUMNS if c != "holm_p"])
    frame["holm_p"] = holm(frame["delong_p"].to_numpy()) if len(frame) else []
    return frame[COMPARISON_COLUMNS]


__all__ = ["COMPARISON_COLUMNS", "FROZEN_FEATURES_OF", "compare_pair", "finetuned_label", "finetuned_matrices",
           "finetuned_vs_frozen", "paired_comparisons", "score_matrix"]
