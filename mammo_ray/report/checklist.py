"""The reporting-checklist appendix: the CLAIM 2024 / TRIPOD+AI topics a study can fill from its own tables.

Each row names a topic both checklists ask about, what this study's tables say about it, and whether that
is filled here or left to the author (what no table can know: ethics approval, how patients were
recruited, who read the reference standard). Topic names only: the checklists' item numbers are the
author's to cite against the version they submit with.
"""

from __future__ import annotations

import json

import pandas as pd

from mammo_ray.report.render import Section

FILLED, LEFT = "filled", "left to the author"


def calibration_method(grid: pd.DataFrame | None) -> str | None:
    """'Platt' or 'isotonic': the in-fold calibration of the grid's out-of-fold rows (None without any)."""
    if grid is None or grid.empty or "evaluation" not in grid:
        return None
    oof = grid[(grid["status"] == "ok") & (grid["evaluation"] == "oof")]
    settings = [json.loads(text)["oof"] for text in oof["cell_config"] if "oof" in json.loads(text)]
    if not settings:
        return None
    method = settings[0].get("calibration", "platt")
    return "Platt" if method == "platt" else str(method)


def _grid_facts(grid: pd.DataFrame | None) -> tuple[str | None, str | None, str | None]:
    """(split, metrics, calibration) as sentences, None where the grid does not say."""
    if grid is None or grid.empty:
        return None, None, None
    ok = grid[grid["status"] == "ok"]
    oof = ok[ok["evaluation"] == "oof"] if "evaluation" in ok else ok.iloc[0:0]
    if len(oof):
        first = oof.iloc[0]
        split = (f"patient-grouped, stratified {int(first['oof_repeats'])}-times repeated K-fold (every image scored "
                 "by a pipeline fitted without its patient); the paper's protocol beside it, named as such")
    else:
        split = "patient-grouped held-out split (leak_free); the paper's image-level split beside it, named as such"
    metrics = ("AUC with 95% patient-cluster bootstrap intervals, balanced accuracy, sensitivity, specificity at "
               "thresholds chosen inside the training folds; a label-permutation control per cell")
    calibration = None
    if "brier" in ok and ok["brier"].notna().any():
        calibration = (f"Brier score of in-fold {calibration_method(grid)}-calibrated probabilities (median "
                       f"{ok['brier'].median():.3f} "
                       "over cells) and a reliability figure")
    return split, metrics, calibration


def checklist_section(manifest: pd.DataFrame, grid: pd.DataFrame | None, weights: list[str],
                      errors: pd.DataFrame | None) -> Section:
    """The appendix table: topic, what the study's tables say, filled or left to the author."""
    split, metrics, calibration = _grid_facts(grid)
    labels = manifest["label"]
    counts = (f"{len(manifest)} images of {manifest['patient_id'].nunique()} patients; label 1: "
              f"{int((labels == 1).sum())}, label 0: {int((labels == 0).sum())}, no label: {int(labels.isna().sum())}")
    failed = 0 if errors is None else errors["image_id"].nunique()
    missing = (f"{int(labels.isna().sum())} images without a label (left out of the grid, counted per cell); "
               f"{failed} images with an errors row (listed in the errors tables, never silently dropped)")
    rows = [
        ("Data source", f"datasets: {', '.join(sorted(manifest['dataset'].astype(str).unique()))}", FILLED),
        ("Eligibility and recruitment of patients", "", LEFT),
        ("Reference standard (what a label means, who assigned it)", "", LEFT),
        ("Class counts", counts, FILLED),
        ("Missing data", missing, FILLED),
        ("Partition of the data (patient level)", split or "", FILLED if split else LEFT),
        ("Model and weights", ", ".join(weights) or "", FILLED if weights else LEFT),
        ("Performance metrics with uncertainty", metrics or "", FILLED if metrics else LEFT),
        ("Calibration", calibration or "", FILLED if calibration else LEFT),
        ("Ethics approval and data access", "", LEFT),
    ]
    section = Section("Appendix: reporting checklist (CLAIM 2024, TRIPOD+AI)")
    section.paragraphs.append(f"{sum(r[2] == FILLED for r in rows)} of {len(rows)} topics are filled from this "
                              "study's tables; the rest are the author's to write.")
    section.tables.append(("Checklist topics", pd.DataFrame(rows, columns=["topic", "this study", "status"])))
    return section


__all__ = ["checklist_section"]
