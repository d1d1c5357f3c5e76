"""The paired comparisons of the report: the extractors on the same images (results/comparisons.parquet) and the
fine-tuned networks against their frozen features (results/finetune_vs_frozen.parquet)."""

from __future__ import annotations

import pandas as pd

from mammo_ray.report.render import Section

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
    # The pipeline is one for every row and stated above: the table keeps the columns that differ.
    section.tables.append(("Paired comparisons", comparisons.drop(columns=["selection", "balancing", "classifier"],
                                                                  errors="ignore")))
    return section


def compared_pipeline(comparisons: pd.DataFrame | None) -> tuple[str, str, str] | None:
    """(selection, balancing, classifier) the extractors were compared on; None without comparisons."""
    if comparisons is None or comparisons.empty:
        return None
    first = comparisons.iloc[0]
    return str(first["selection"]), str(first["balancing"]), str(first["classifier"])
