"""Report stage: report.md and a self-contained report.html from the study's tables.

Sections: provenance (data, counts, weights ids, versions, config hash; a banner when any weights are
random-init), Figure 3 (zero-shot by BI-RADS), Table 1 (fine-tuning), Table 2 (classifier grid) with
the paper protocol and the leak-free protocol side by side, per-fold score distributions, ROC curves of
the best grid cells and of the fine-tuned models. A stage that did not run is named as such, never silently left out.

Every number describes the current manifest and config: the study hands in what is current
(`ReportInputs`: the manifest, the zero-shot view, the errors tables of the configured stages, the
inputs each result table must describe), and a result table whose provenance names other inputs (an
earlier manifest, other embeddings) is reported as out of date instead of being shown.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mammo_ray import __version__, storage, tables
from mammo_ray.classify.subgroups import SMALL_CLASS, SMALL_IMAGES, subgroup_metrics
from mammo_ray.report.checklist import calibration_method, checklist_section
from mammo_ray.report.figures import zero_shot_by_birads, zero_shot_counts
from mammo_ray.report.preprocessing import preprocessing_section
from mammo_ray.report.published import beside, read_published
from mammo_ray.report.render import Section, write_report
from mammo_ray.report.verdict import verdict_section
from mammo_ray.training.metrics import METRIC_NAMES

RANDOM_INIT_BANNER = (
    "{which} weights are random-init (no pretrained file was used): these numbers show that the pipeline "
    "works, not how pretrained models transfer. See weights_id in every table."
)
#: What docs/design.md ("What the published numbers show") records of the paper's tables. Its exact values
#: are not in it: they are shown only when the user points `report.published` at them (see report.published),
#: never invented.
PAPER_FACTS = [
    "Table 1 (fine-tuning): accuracies are multiples of 1/82, i.e. an image-level 20% validation split.",
    "Table 2 (features + classifiers): without SMOTE accuracies are multiples of 1/136 (a 1/3 test split of "
    "410); with SMOTE multiples of 1/205 (a 1/3 split of 620 = 310+310): SMOTE ran on the whole data set "
    "before splitting, so synthetic copies of test images sat in training. Lasso kept 217, 350 and 325 "
    "features, most likely fit on all data.",
    "The `paper` protocol reproduces that procedure by name; `leak_free` (our default) fits scaling, Lasso "
    "and SMOTE inside each training fold and groups folds by patient. The gap between the two is a finding.",
]


@dataclass(frozen=True)
class ReportInputs:
    """What is current, as the study knows it: the manifest; the zero-shot view of it (None, with the
    reason, when the stage has not run for it); the errors tables of the configured stages; the weights
    ids of the configured models; and, per result table, the inputs its provenance must name."""

    manifest: pd.DataFrame
    zero_shot: pd.DataFrame | None = None
    zero_shot_problem: str | None = None
    error_uris: list[str] = field(default_factory=list)
    weights_ids: list[str] = field(default_factory=list)
    expected_inputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: per current image output: (family, the breast's share of each image's input)
    breast_shares: Mapping[str, tuple[str, pd.Series]] = field(default_factory=dict)
    #: the grid's pre-specified pipeline (selection, balancing, classifier): the one subgroups are shown for
    compare_pipeline: tuple[str, str, str] | None = None


def _read(uri: str, columns: list[str] | None = None) -> pd.DataFrame | None:
    """A table, or None when it is not there. A store failure is raised, never reported as 'not run'."""
    if not storage.exists(uri):
        return None
    return storage.read_table(uri, columns=columns).to_pandas()


def _current(uri: str, expected: Mapping[str, Any] | None) -> tuple[pd.DataFrame | None, str | None]:
    """The table at `uri` when its provenance names the `expected` inputs; else (None, why not)."""
    current = tables.describes(uri, expected)
    if current is None:
        return None, None
    if not current:
        stage = (tables.read_provenance(uri) or {}).get("stage", "its")
        return None, (f"{uri} was computed on other inputs than the current manifest and config (an earlier "
                      "manifest, other labels, embeddings or weights): it is out of date and not shown; rerun "
                      f"the {stage} stage")
    return _read(uri), None


def _current_errors(uris: list[str], manifest: pd.DataFrame) -> pd.DataFrame | None:
    """The rows of the configured stages' errors tables that describe the current manifest's images."""
    digest = tables.image_digest(manifest)
    frames = []
    for uri in uris:
        provenance = tables.read_provenance(uri)
        if provenance is None or provenance.get("inputs", {}).get("images") != digest:
            continue
        frames.append(_read(uri))
    if not frames:
        return None
    errors = pd.concat(frames, ignore_index=True)
    return errors[errors["image_id"].isin(set(manifest["image_id"]))]


def _png(draw: Callable[[Axes], None], size: tuple[float, float] = (5.5, 5.0)) -> bytes:
    """A PNG of what `draw` puts on one axes, rendered by the Agg canvas (no display, no global state)."""
    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    draw(figure.add_subplot())
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _versions() -> str:
    import ray
    import sklearn
    import torch

    return (f"mammo-ray {__version__}, ray {ray.__version__}, torch {torch.__version__}, "
            f"scikit-learn {sklearn.__version__}")


def provenance_section(output_uri: str, config: dict, manifest: pd.DataFrame | None, weights: list[str],
                       errors: pd.DataFrame | None) -> Section:
    rows = [("study", config.get("name", "")), ("config hash", config.get("config_hash", "")),
            ("output", output_uri), ("versions", _versions()), ("weights ids", ", ".join(weights) or "none")]
    if manifest is not None:
        labels = manifest["label"].value_counts(dropna=False)
        rows += [
            ("datasets", ", ".join(sorted(manifest["dataset"].unique()))),
            ("images", str(len(manifest))),
            ("patients", str(manifest["patient_id"].nunique())),
            ("labels (1 / 0 / none)", f"{int(labels.get(1, 0))} / {int(labels.get(0, 0))} / "
                                      f"{int(manifest['label'].isna().sum())}"),
        ]
    if errors is not None and len(errors):
        per_stage = errors.groupby("stage").size()
        rows.append(("images with errors", ", ".join(f"{stage}: {n}" for stage, n in per_stage.items())))
    return Section("Provenance", tables=[("Study", pd.DataFrame(rows, columns=["item", "value"]))])


def zero_shot_section(zero_shot: pd.DataFrame | None, problem: str | None = None) -> Section:
    section = Section("Figure 3: zero-shot NYU predictions by BI-RADS")
    if zero_shot is None or zero_shot.empty:
        missing = f"Not shown: {problem}." if problem else "The zero_shot stage has not run for this study."
        section.paragraphs.append(missing)
        return section
    section.paragraphs.append("An image counts as predicted malignant when p_malignant > p_benign, as in the paper.")
    weights = sorted(map(str, zero_shot["weights_id"].dropna().unique())) if "weights_id" in zero_shot else []
    caveat = ("Caveat: the paper's Figure 3 is a bar chart without printed numbers, so nothing published sits "
              "beside these counts; they are image-level, with no interval.")
    if any(w.startswith("random-init") for w in weights):
        caveat += (f" The weights are random-init ({', '.join(weights)}): these predictions say nothing about the "
                   "published model.")
    section.paragraphs.append(caveat)
    section.tables.append(("Images predicted benign / malignant per BI-RADS", zero_shot_counts(zero_shot)))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "zero_shot.png"
        zero_shot_by_birads(zero_shot, str(path))
        section.figures.append(("Zero-shot NYU predictions per BI-RADS category", "zero_shot_by_birads.png",
                                path.read_bytes()))
    return section


def _roc(axes: Axes, curves: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """One ROC plot of (label, targets, scores) curves; the label gets each curve's AUC."""
    from sklearn.metrics import roc_auc_score, roc_curve

    for label, targets, scores in curves:
        if len(np.unique(targets)) < 2:
            continue
        fpr, tpr, _ = roc_curve(targets, scores)
        axes.plot(fpr, tpr, label=f"{label} AUC {roc_auc_score(targets, scores):.2f}")
    axes.plot([0, 1], [0, 1], color="#999", linestyle=":")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.legend(fontsize=7, loc="lower right")


def finetune_section(finetune: pd.DataFrame | None, predictions: pd.DataFrame | None,
                     published: pd.DataFrame | None = None, problem: str | None = None) -> Section:
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
        keys = [*tables.FINETUNE_RUN_KEYS, "stage"]
        flagged = finetune[keys].apply(tuple, axis=1).isin(constant).to_numpy()
        table = table.assign(flag=np.where(flagged, "constant output: its metrics are not a result", ""))
        section.paragraphs.append(
            f"{int(flagged.sum())} fine-tuned runs give the same output for every image (flagged): their "
            "accuracy is the majority class share and their AUROC 0.5 by construction.")
    section.tables.append(("Held-out metrics per model, task and training stage (intervals: validation "
                           "patients resampled)", table))
    if published is not None and "stage_index" in finetune.columns:
        last = finetune.sort_values("stage_index").groupby(list(tables.FINETUNE_RUN_KEYS)).tail(1)
        ours = [c for c in ("weights_id",) if c in last.columns]  # what our run's weights were
        section.tables.append(("Last training stage of each model beside the published values (matched on "
                               "model, NYU view head and task; both runs' weights named)",
                               beside(last[[*tables.FINETUNE_RUN_KEYS, "stage", *ours, *metrics]], published, "1")))
    if predictions is not None and not predictions.empty:
        section.figures.append(("ROC curves of the fine-tuned models (binary task, every training stage)",
                                "finetune_roc.png",
                                _png(lambda axes: _finetune_roc(axes, predictions))))
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
    for key, rows in predictions.groupby([*tables.FINETUNE_RUN_KEYS, "stage"]):
        probabilities = np.stack([np.asarray(p, dtype=np.float64) for p in rows["probabilities"]])
        if len(rows) > 1 and np.ptp(probabilities, axis=0).max() < 1e-6:
            runs.add(tuple(key))
    return runs


def _finetune_roc(axes: Axes, predictions: pd.DataFrame) -> None:
    binary = predictions[predictions["task"] == "binary"]
    _roc(axes, [(f"{model}{'/' + variant if variant else ''} ({pretrained}, {stage})", rows["target"].to_numpy(),
           np.asarray([p[1] for p in rows["probabilities"]]))
          for (model, variant, pretrained, stage), rows
          in binary.groupby(["model", "variant", "pretrained_on", "stage"])])


_CELL = ["extractor", "selection", "balancing", "classifier"]
#: How many of the best cells (by CV balanced accuracy) of each protocol get an ROC curve.
BEST_CELLS_PER_PROTOCOL = 3


def _grid_roc(axes: Axes, best: pd.DataFrame, predictions: pd.DataFrame) -> None:
    if "repeat" in predictions:  # out-of-fold cells score every image once per repeat: the first repeat's
        predictions = predictions[predictions["repeat"] == 0]
    keyed = predictions.set_index([*_CELL, "protocol"]).sort_index()
    curves = []
    for cell in best.itertuples():
        key = tuple(getattr(cell, c) for c in [*_CELL, "protocol"])
        if key in keyed.index:
            rows = keyed.loc[key]
            label = f"{cell.protocol}: {cell.extractor}/{cell.selection}/{cell.balancing}/{cell.classifier}"
            curves.append((label, rows["target"].to_numpy(), rows["score"].to_numpy()))
    _roc(axes, curves)


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
            f"({int(cells['permutations'].max())} permutations per cell) it reaches AUC "
            f"{cells['null_auc_mean'].median():.2f} (median over {len(cells)} cells; 95th percentile up to "
            f"{cells['null_auc_q95'].max():.2f}); {beating} of {len(cells)} cells beat their own null at "
            "p < 0.05 (unadjusted).")
    return sentences


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


TRANSFER_TITLE = "Fine-tuned networks against their frozen features, on the same images"


def comparisons_section(comparisons: pd.DataFrame | None, problem: str | None = None,
                        title: str = "Extractors compared on the same images") -> Section:
    """Pairs compared on the same images: the extractors (results/comparisons.parquet) or, with
    TRANSFER_TITLE, the fine-tuned networks against frozen features (results/finetune_vs_frozen.parquet)."""
    transfer = title == TRANSFER_TITLE
    section = Section(title)
    if comparisons is None or comparisons.empty:
        section.paragraphs.append(problem or (
            "No comparison: it needs the transfer stage's table (fine-tuned binary runs and the grid's leak_free "
            "predictions of the same networks' features)." if transfer else
            "No comparison: it needs leak_free predictions of the compare pipeline for at least two extractors."))
        return section
    first = comparisons.iloc[0]
    method = ("95% interval by a patient-cluster bootstrap; p by the paired DeLong test (which assumes "
              "independent images), Holm-adjusted over the comparisons listed.")
    if transfer:
        section.paragraphs.append(
            "a: a fine-tuned network's last stage on its validation images (P(malignant)); b: the same network's "
            f"frozen features under {first['selection']}/{first['balancing']}/{first['classifier']} (grid.compare), "
            "scored out of fold, on the same images; rows marked (best) pick each side's best after the fact. "
            f"Difference = AUC(a) - AUC(b); {method}")
    else:
        section.paragraphs.append(
            f"Pipeline {first['selection']}/{first['balancing']}/{first['classifier']} for every extractor (fixed "
            "in advance: grid.compare). Difference = AUC(a) - AUC(b) on the images both scored; " + method)
    section.tables.append(("Paired comparisons", comparisons))
    return section


def external_section(external: pd.DataFrame | None, problem: str | None = None) -> Section:
    """results/external.parquet: internal (CV inside the training source) beside external (train -> test)."""
    section = Section("External validation: internal against external")
    if external is None or external.empty:
        section.paragraphs.append(problem or "No external validation: set data.sources and grid.external "
                                  "(pairs of sources: fit on one, evaluate on the other).")
        return section
    section.paragraphs.append(
        "Each leak_free pipeline: internal = its leak_free cross-validation inside the training source alone "
        "(every fit and choice inside its folds); external = the same pipeline fitted once on every image of the "
        "training source and scored once on every image of the test source. Intervals resample patients "
        "(the test source's, for the external AUC); drop = internal AUC - external AUC.")
    shown = external.assign(pipeline=external["selection"] + "/" + external["balancing"] + "/"
                            + external["classifier"], direction=external["train"] + " -> " + external["test"])
    columns = ["extractor", "pipeline", "direction", "n_train", "n_test", "n_test_positive", "internal_auc",
               "internal_ci_low", "internal_ci_high", "external_auc", "external_ci_low", "external_ci_high",
               "drop", "status"]
    section.tables.append(("Internal and external AUC", shown[columns]))
    return section


def subgroups_section(subgroups: pd.DataFrame | None, level: float) -> Section:
    """results/subgroups.parquet as a table: every subgroup shown, the small ones marked."""
    section = Section("Subgroups: view, side, density, BI-RADS group, site, device")
    if subgroups is None or subgroups.empty:
        section.paragraphs.append("No subgroup metrics: they need the grid's leak_free predictions of the compare "
                                  "pipeline (grid.compare) or of its nested choice.")
        return section
    section.paragraphs.append(
        f"Leak_free out-of-fold scores of the pipelines fixed before scoring (grid.compare, and 'selected': the "
        f"choice made by CV inside each training fold); AUC per subgroup with a {level:.0%} patient-cluster "
        f"bootstrap interval. Subgroups with fewer than {SMALL_IMAGES} images or fewer than {SMALL_CLASS} of "
        "either class are marked small: shown, not to be read as a difference. A subgroup of one class has no AUC.")
    shown = subgroups.assign(pipeline=subgroups["selection"] + "/" + subgroups["balancing"] + "/"
                             + subgroups["classifier"], small=subgroups["small"].map({True: "small", False: ""}))
    columns = ["extractor", "pipeline", *(c for c in subgroups.columns if c not in
                                         ("extractor", "selection", "balancing", "classifier"))]
    section.tables.append(("AUC per subgroup", shown[columns]))
    return section


#: The grid's nested choice (selection, balancing and classifier picked by CV inside each training fold): like
#: grid.compare, fixed before the outer folds are scored, so its subgroups are shown too.
SELECTED_PIPELINE = ("selected", "selected", "selected")


def write_subgroups(output_uri: str, predictions: pd.DataFrame | None, manifest: pd.DataFrame,
                    pipeline: tuple[str, str, str] | None, config: Mapping[str, Any],
                    grid_inputs: Mapping[str, Any] | None) -> pd.DataFrame | None:
    """results/subgroups.parquet from the current grid predictions and manifest, for the compare pipeline and
    the nested choice. Without current predictions there is none, and an earlier one is removed: it described
    other inputs."""
    if predictions is None:
        storage.remove(tables.subgroups_uri(output_uri))
        return None
    grid = config.get("grid") or {}
    pipelines = [p for p in (pipeline, SELECTED_PIPELINE) if p is not None]
    frames = [subgroup_metrics(predictions, manifest, chosen, n_resamples=int(grid.get("bootstrap", 1000)),
                               level=float(grid.get("ci_level", 0.95)), seed=int(grid.get("seed") or 0))
              for chosen in dict.fromkeys(pipelines)]
    found = [frame for frame in frames if not frame.empty]
    frame = pd.concat(found, ignore_index=True) if found else frames[0]
    inputs = {"manifest": tables.manifest_digest(manifest), "grid": dict(grid_inputs or {})}
    storage.write_table(tables.with_provenance(pa.Table.from_pandas(frame, preserve_index=False), "report",
                                               inputs=inputs), tables.subgroups_uri(output_uri))
    return frame


def grid_section(grid: pd.DataFrame | None, predictions: pd.DataFrame | None = None,
                 published: pd.DataFrame | None = None, problem: str | None = None,
                 pipeline: tuple[str, str, str] | None = None) -> Section:
    """Table 2 and what stands beside it; `pipeline`: the one the extractors are compared on."""
    section = Section("Table 2: features + classifiers, paper protocol vs leak-free protocol",
                      paragraphs=list(PAPER_FACTS))
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
                                "protocol_gap.png", _png(lambda axes: _protocol_gap(axes, wide))))
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
                            _png(lambda axes: _fold_scores(axes, best), size=(8.0, 0.45 * len(best) + 1.5))))
    if predictions is not None and "probability" in predictions and predictions["probability"].notna().any():
        section.figures.append((f"Reliability of the out-of-fold probabilities ({calibration_method(grid)} "
                                "calibration fitted inside the training folds; first repeat), one curve per "
                                "extractor, the comparison pipeline",
                                "calibration.png", _png(lambda axes: _reliability(axes, predictions, pipeline))))
    if predictions is not None and not predictions.empty:
        top = ranked.groupby("protocol").head(BEST_CELLS_PER_PROTOCOL)
        caption = (f"Held-out ROC curves of the {BEST_CELLS_PER_PROTOCOL} best cells of each protocol (by CV "
                   "balanced accuracy; paper + SMOTE test splits hold synthetic rows)")
        section.figures.append((caption, "grid_roc.png", _png(lambda axes: _grid_roc(axes, top, predictions))))
    return section


def _reliability(axes: Axes, predictions: pd.DataFrame, pipeline: tuple[str, str, str] | None) -> None:
    """Reliability curves of `pipeline` (selection, balancing, classifier; None: the first calibrated)."""
    from sklearn.calibration import calibration_curve

    calibrated = predictions[predictions["probability"].notna() & (predictions["repeat"] == 0)]
    first = calibrated.iloc[0]
    selection, balancing, classifier = pipeline or (first["selection"], first["balancing"], first["classifier"])
    chosen = calibrated[(calibrated["selection"] == selection) & (calibrated["balancing"] == balancing)
                        & (calibrated["classifier"] == classifier)]
    for extractor, rows in chosen.groupby("extractor"):
        observed, predicted = calibration_curve(rows["target"], rows["probability"], n_bins=8, strategy="quantile")
        axes.plot(predicted, observed, marker="o", label=extractor)
    axes.plot([0, 1], [0, 1], color="#999", linestyle=":")
    axes.set_xlabel(f"predicted probability ({selection}/{balancing}/{classifier})")
    axes.set_ylabel("observed share of positives")
    axes.legend(fontsize=7)


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


def _compared_pipeline(comparisons: pd.DataFrame | None) -> tuple[str, str, str] | None:
    if comparisons is None or comparisons.empty:
        return None
    first = comparisons.iloc[0]
    return str(first["selection"]), str(first["balancing"]), str(first["classifier"])


def build_report(output_uri: str, config: dict, current: ReportInputs) -> dict[str, str]:
    """Write the report of the tables under `output_uri` that describe `current`; returns its URIs."""
    manifest = current.manifest
    expected = current.expected_inputs
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
    published_uri = (config.get("report") or {}).get("published")
    published = read_published(published_uri) if published_uri else None
    random_init = [w.startswith("random-init") for w in weights]
    banner = RANDOM_INIT_BANNER.format(which="All" if all(random_init) else "Some") if any(random_init) else None
    pipeline = current.compare_pipeline or _compared_pipeline(comparisons)
    subgroups = write_subgroups(output_uri, grid_predictions, manifest, pipeline, config, expected.get("grid"))
    sections = [
        verdict_section(grid, comparisons, transfer, finetune),
        provenance_section(output_uri, config, manifest, weights, errors),
        preprocessing_section(current.breast_shares),
        zero_shot_section(current.zero_shot, current.zero_shot_problem),
        finetune_section(finetune, predictions, published, finetune_problem),
        grid_section(grid, grid_predictions, published, grid_problem, _compared_pipeline(comparisons)),
        comparisons_section(comparisons, comparisons_problem),
        comparisons_section(transfer, transfer_problem, TRANSFER_TITLE),
        external_section(external, external_problem),
        subgroups_section(subgroups, float((config.get("grid") or {}).get("ci_level", 0.95))),
        checklist_section(manifest, grid, weights, errors),
    ]
    title = f"mammo-ray study report: {config.get('name', 'study')}"
    uris = write_report(output_uri, title, banner, sections)
    document = {"config": config, "weights_ids": weights, "inputs": {
        "manifest": tables.manifest_digest(manifest), **{name: dict(value) for name, value in expected.items()}}}
    storage.write_bytes(storage.join(tables.report_uri(output_uri), "provenance.json"),
                        json.dumps(document, indent=2, default=str).encode())
    return uris
