"""Subgroup metrics in the report: results/subgroups.parquet (AUC per view, side, density, BI-RADS group, site
and device), the small subgroups marked."""

from __future__ import annotations

import pandas as pd

from mammo_ray.classify.subgroups import SMALL_CLASS, SMALL_IMAGES, interval_text
from mammo_ray.report.render import Section


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
                             + subgroups["classifier"], small=subgroups["small"].map({True: "small", False: ""}),
                             interval=[interval_text(row) for _, row in subgroups.iterrows()])
    columns = ["extractor", "pipeline", *(c for c in subgroups.columns if c not in
                                         ("extractor", "selection", "balancing", "classifier", "ci_low", "ci_high"))]
    columns.insert(columns.index("auc") + 1, "interval")
    section.tables.append(("AUC per subgroup", shown[columns]))
    return section
