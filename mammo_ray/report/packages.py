"""The report's model packages: what the export stage kept of the study to score new mammograms (mammo_ray.packages),
one row per package from its own description, so the report and the package cannot disagree."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from mammo_ray.report.render import Section

TITLE = "Model packages: the chosen pipelines, kept to score new mammograms"


def packages_section(packages: Sequence[dict[str, Any]]) -> Section:
    """One row per package (its description, package.json): pipeline or network, AUC and interval (out of fold;
    a network's on its validation split), the negative control's p, the threshold, what it was pretrained on,
    and its id."""
    section = Section(TITLE)
    if not packages:
        section.paragraphs.append("No model packages: the export stage writes them from the current grid's "
                                  "leak_free out-of-fold cells (the grid has none, or they are not current).")
        return section
    section.paragraphs.append(
        "Each is a folder under models/<name>/ of the output: the pipeline fitted on every labelled image, its "
        "threshold and calibration chosen on the out-of-fold scores, and its model card (card.md). The -compare "
        "package is the pipeline fixed before scoring (grid.compare); -selected is the nested selection's choice, "
        "with the nested estimate (its control: the chosen cell's). Fine-tuned networks are under networks/<name>/. "
        "Score new images with: mammo-ray score <package folder> --config new.yaml (README, \"Scoring new "
        "mammograms\").")
    rows = []
    for package in packages:
        performance, control, extractor = package["performance"], package["control"], package["extractor"]
        if "network" in package:  # a fine-tuned network: its validation AUROC
            network = package["network"]
            model, auc = f"network {network['model']} at {network['size']} px", "auroc"
        else:
            pipeline = package["pipeline"]
            model, auc = f"{pipeline['selection']}/{pipeline['balancing']}/{pipeline['classifier']}", "auc"
        rows.append({
            "package": package["name"], "model": model,
            "auc": performance.get(auc), "ci_low": performance.get(f"{auc}_ci_low"),
            "ci_high": performance.get(f"{auc}_ci_high"), "permutation_p": control.get("permutation_p"),
            "threshold": package["threshold"],
            "pretrained on": ", ".join(extractor["pretrained_on"]) or extractor["pretraining_group"],
            "package id": package["package_id"][:12],
        })
    section.tables.append(("Model packages (pipelines: leak_free out of fold; networks: held-out validation)",
                           pd.DataFrame(rows)))
    return section


__all__ = ["TITLE", "packages_section"]
