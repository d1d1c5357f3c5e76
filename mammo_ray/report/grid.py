"""Table 2 of the report: the classifier grid under the paper protocol and the leak-free protocol side by side,
what the paper's tables show, the negative control, degenerate cells, the nested choice, and the figures (protocol
gap, per-fold scores, reliability, ROC curves of the best cells)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from mammo_ray.report.checklist import calibration_method
from mammo_ray.report.plots import png, reliability, roc
from mammo_ray.report.published import beside
from mammo_ray.report.render import Section

#: What the design records of the paper's tables (docs/design.md, "What the published numbers show"). Its exact
#: values are not in it: they are shown only when the user points `report.published` at them (see
#: report.published), never invented.
PAPER_FACTS = [
    "Table 1 (fine-tuning): accuracies are multiples of 1/82, i.e. an image-level 20% validation split.",
    "Table 2 (features + classifiers): without SMOTE accuracies are multiples of 1/136 (a 1/3 test split of "
    "410); with SMOTE multiples of 1/205 (a 1/3 split of 620 = 310+310): SMOTE ran on the whole data set "
    "before splitting, so synthetic copies of test images sat in training. Lasso kept 217, 350 and 325 "
    "features, most likely fit on all data.",
    "The `paper` protocol reproduces that procedure by name; `leak_free` (our default) fits scaling, Lasso "
    "and SMOTE inside each training fold and groups folds by patient. The gap between the two is a finding.",
]


#: The title of the box that sets the paper's own facts apart from this study's results.
PAPER_BOX = "In the paper (not this study's numbers)"

_CELL = ["extractor", "selection", "balancing", "classifier"]
#: How many of the best cells (by CV balanced accuracy) of each protocol get an ROC curve.
BEST_CELLS_PER_PROTOCOL = 3


def _grid_roc(axes: Axes, best: pd.DataFrame, predictions: pd.DataFrame) -> None:
    if "repeat" in predictions:  # out-of-fold cells score every image once per repeat: the first repeat's
        predictions = predictions[predictions["repeat"] == 0]
    keyed = predictions.set_index([*_CELL, "protocol"]).sort_index()
    curves, aucs = [], []
    for cell in best.itertuples():
        key = tuple(getattr(cell, c) for c in [*_CELL, "protocol"])
        if key in keyed.index:
            rows = keyed.loc[key]
            label = f"{cell.protocol}: {cell.extractor}/{cell.selection}/{cell.balancing}/{cell.classifier}"
            curves.append((label, rows["target"].to_numpy(), rows["score"].to_numpy()))
            aucs.append(float(cell.auc))  # the table's AUC (out of fold: the mean over repeats), not the curve's
    roc(axes, curves, aucs)


def control_paragraphs(ok: pd.DataFrame) -> list[str]:
    """One sentence per protocol: what it reaches on permuted labels (the negative control)."""
    if "permutations" not in ok or not (ok["permutations"] > 0).any():
        return ["No negative control ran (grid.permutations: 0): nothing here shows what the protocol gives "
                "on no signal."]
    sentences = []
    for protocol, cells in ok[ok["permutations"] > 0].groupby("protocol"):
        beating = int((cells["permutation_p"] < 0.05).sum())
        sentences.append(
            f"Negative control, {protocol} protocol: on labels permuted between patients "
            f"({_permutation_counts(cells)}) it reaches AUC "
            f"{cells['null_auc_mean'].median():.2f} (median over {len(cells)} cells; 95th percentile up to "
            f"{cells['null_auc_q95'].max():.2f}); {beating} of {len(cells)} cells beat their own null at "
            "p < 0.05 (unadjusted).")
    return sentences


def _permutation_counts(cells: pd.DataFrame) -> str:
    """How many reruns the control took per cell: one number (fixed), or the range (sequential: a cell stops
    once its p-value is decided)."""
    low, high = int(cells["permutations"].min()), int(cells["permutations"].max())
    return f"{high} permutations per cell" if low == high else (
        f"{low} to {high} permutations per cell, each stopped once its p-value was decided")


def selected_paragraphs(ok: pd.DataFrame) -> list[str]:
    """The grid's best chosen inside each training fold (rows with selection 'selected'), in words."""
    sentences = []
    for row in ok[ok["selection"] == "selected"].itertuples():
        chosen = json.loads(row.cell_config).get("chosen", {})
        naive = ok[(ok["extractor"] == row.extractor) & (ok["protocol"] == "leak_free")
                   & (ok["selection"] != "selected")]["auc"].max()
        sentences.append(
            f"Best of the grid for {row.extractor}, chosen inside each training fold (nested): out-of-fold AUC "
            f"{row.auc:.3f} (95% CI {row.auc_ci_low:.3f} to {row.auc_ci_high:.3f}); the best cell picked after "
            f"the fact shows {naive:.3f}, which is optimistic. Chosen per outer fold: "
            + ", ".join(f"{cell} x{count}" for cell, count in chosen.items()) + ".")
    return sentences


def cell_flag(row: pd.Series) -> str:
    """What makes a cell's numbers degenerate, in words ('' when nothing does)."""
    if row.get("specificity") == 0.0:
        return "calls every image positive"
    if row.get("recall") == 0.0:
        return "calls every image negative"
    return ""


def degenerate_paragraphs(ok: pd.DataFrame) -> list[str]:
    """Sentences that flag degenerate results instead of letting them pass as numbers."""
    sentences = []
    flags = ok.apply(cell_flag, axis=1) if len(ok) else pd.Series(dtype=str)
    if (flags != "").any():
        sentences.append(f"{int((flags != '').sum())} cells call every image one class at their threshold "
                         "(flagged below): their accuracy is the class share, not a result.")
    metrics = ["auc", "accuracy", "cv_balanced_accuracy_mean"]
    if {"none", "smote"} <= set(ok["balancing"]):
        keys = [c for c in _CELL if c != "balancing"] + ["protocol"]
        paired = ok[ok["balancing"] == "none"].merge(ok[ok["balancing"] == "smote"], on=keys, suffixes=("", "_s"))
        same = paired[np.logical_and.reduce([np.isclose(paired[m], paired[f"{m}_s"], rtol=0, atol=1e-12)
                                             for m in metrics])]
        if len(same):
            sentences.append(
                f"{len(same)} cells give the same numbers with and without SMOTE: their training folds are "
                "linearly separable (more features than images), so the synthetic positives, which lie "
                "between real ones, do not move the decision boundary.")
    return sentences


def grid_section(grid: pd.DataFrame | None, predictions: pd.DataFrame | None = None,
                 published: pd.DataFrame | None = None, problem: str | None = None,
                 pipeline: tuple[str, str, str] | None = None) -> Section:
    """Table 2 and what stands beside it; `pipeline`: the one the extractors are compared on."""
    section = Section("Table 2: features + classifiers, paper protocol vs leak-free protocol",
                      boxes=[(PAPER_BOX, list(PAPER_FACTS))])
    if grid is None or grid.empty:
        section.paragraphs.append(problem or "The grid stage has not run for this study.")
        return section
    ok = grid[grid["status"] == "ok"]
    failed = grid[grid["status"] != "ok"]
    if len(failed):
        section.tables.append(("Cells that failed", failed[[*_CELL, "protocol", "error"]]))
    if ok.empty:
        section.paragraphs.append("No grid cell succeeded: see the failed cells above.")
        return section
    wide = ok.pivot_table(index=_CELL, columns="protocol",
                          values=[c for c in ("cv_balanced_accuracy_mean", "cv_balanced_accuracy_std", "accuracy",
                                              "auc", "n_features") if c in ok], aggfunc="first")
    wide.columns = [f"{metric} ({protocol})" for metric, protocol in wide.columns]
    wide = beside(wide.reset_index(), published, "2")  # the paper's own numbers, beside its protocol
    if {"cv_balanced_accuracy_mean (paper)", "cv_balanced_accuracy_mean (leak_free)"} <= set(wide.columns):
        wide["gap (paper - leak_free)"] = (
            wide["cv_balanced_accuracy_mean (paper)"] - wide["cv_balanced_accuracy_mean (leak_free)"]
        )
        section.figures.append(("CV balanced accuracy per cell: paper protocol against leak-free",
                                "protocol_gap.png", png(lambda axes: _protocol_gap(axes, wide))))
    section.tables.append(("CV balanced accuracy, held-out accuracy and AUC per cell", wide))
    section.paragraphs.extend(selected_paragraphs(ok))
    section.paragraphs.extend(control_paragraphs(ok))
    section.paragraphs.extend(degenerate_paragraphs(ok))
    if "permutations" in ok and (ok["permutations"] > 0).any():
        levels = [c for c in ("auc_breast", "auc_exam", "brier") if c in ok]
        control = ok[[*_CELL, "protocol", "evaluation", "auc", "auc_ci_low", "auc_ci_high", "interval",
                      "null_auc_mean", "null_auc_q95", "permutation_p", *levels]].assign(
                          flag=ok.apply(cell_flag, axis=1))
        section.tables.append(("AUC per cell beside its negative control (the protocol on permuted labels); "
                               "breast level (mean of a breast's views), exam level (max of its breasts) and the "
                               "Brier score of the in-fold calibrated probabilities for out-of-fold cells",
                               control.sort_values(["protocol", *_CELL], kind="stable")))
    if "scale_path" in ok.columns:
        scaled = ok[ok["scale_path"].notna() & (ok["scale_path"] != "exact")]
        if len(scaled):
            section.tables.append(("Cells run on the scale path (kernels replaced above the row limit)",
                                   scaled[[*_CELL, "protocol", "scale_path"]]))
    ranked = ok.sort_values("cv_balanced_accuracy_mean", ascending=False, kind="stable")
    best = ranked.groupby("protocol").head(6)
    section.figures.append(("Per-fold balanced accuracy of the best cells of each protocol", "fold_scores.png",
                            png(lambda axes: _fold_scores(axes, best), size=(8.0, 0.45 * len(best) + 1.5))))
    if predictions is not None and "probability" in predictions and predictions["probability"].notna().any():
        section.figures.append((f"Reliability of the out-of-fold probabilities ({calibration_method(grid)} "
                                "calibration fitted inside the training folds; first repeat), one curve per "
                                "extractor, the comparison pipeline",
                                "calibration.png", png(lambda axes: _reliability(axes, predictions, pipeline))))
    if predictions is not None and not predictions.empty:
        top = ranked.groupby("protocol").head(BEST_CELLS_PER_PROTOCOL)
        caption = (f"Held-out ROC curves of the {BEST_CELLS_PER_PROTOCOL} best cells of each protocol (by CV "
                   "balanced accuracy; paper + SMOTE test splits hold synthetic rows); out-of-fold cells drawn from "
                   "their first repeat, each labelled with the table's AUC (the mean over repeats)")
        section.figures.append((caption, "grid_roc.png", png(lambda axes: _grid_roc(axes, top, predictions))))
    return section


def _reliability(axes: Axes, predictions: pd.DataFrame, pipeline: tuple[str, str, str] | None) -> None:
    """Reliability curves of `pipeline` (selection, balancing, classifier; None: the first calibrated)."""
    calibrated = predictions[predictions["probability"].notna() & (predictions["repeat"] == 0)]
    first = calibrated.iloc[0]
    selection, balancing, classifier = pipeline or (first["selection"], first["balancing"], first["classifier"])
    chosen = calibrated[(calibrated["selection"] == selection) & (calibrated["balancing"] == balancing)
                        & (calibrated["classifier"] == classifier)]
    reliability(axes, [(str(extractor), rows["target"].to_numpy(), rows["probability"].to_numpy())
                       for extractor, rows in chosen.groupby("extractor")])
    axes.set_xlabel(f"predicted probability ({selection}/{balancing}/{classifier}), 5 bins of equal count")


def _protocol_gap(axes: Axes, wide: pd.DataFrame) -> None:
    x, y = wide["cv_balanced_accuracy_mean (leak_free)"], wide["cv_balanced_accuracy_mean (paper)"]
    axes.scatter(x, y, s=18, color="#c8504a")
    axes.plot([0.3, 1], [0.3, 1], color="#999", linestyle=":")
    axes.set_xlabel("leak-free protocol")
    axes.set_ylabel("paper protocol")
    axes.set_title("CV balanced accuracy per grid cell")


def _fold_scores(axes: Axes, best: pd.DataFrame) -> None:
    labels = [f"{r.protocol}: {r.extractor}/{r.selection}/{r.balancing}/{r.classifier}" for r in best.itertuples()]
    axes.boxplot([list(s) for s in best["cv_fold_scores"]], orientation="horizontal", tick_labels=labels)
    axes.set_xlabel("balanced accuracy per fold")

