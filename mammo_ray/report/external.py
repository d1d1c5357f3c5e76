"""External validation in the report: each pipeline's internal cross-validation beside its train -> test AUC
(results/external.parquet)."""

from __future__ import annotations

import pandas as pd

from mammo_ray.report.render import Section


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
