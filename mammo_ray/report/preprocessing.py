"""The report's check of the preprocessing: how much of each network input the breast covers.

Every image output stores `breast_share` per image (schemas.BREAST_SHARE_FIELD). A NYU window is 2677 x 1942
native pixels, sized for a full-field mammogram: at the right source resolution the breast fills about two
thirds of it. An input whose resolution is misstated (a downsampled PNG declared full field) is shrunk again
before the window is cut, and the breast ends up a small patch in a window of zero padding: every number
downstream is then computed on that patch, silently. So the share is summarised per output, and implausibly
small shares are named with what to set.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from mammo_ray.report.render import Section

#: Below this median share a NYU window holds too little breast to be what the model was trained on
#: (~0.66 on full-field mammograms at their resolution; ~0.19 measured on INbreast PNGs declared full field).
PLAUSIBLE_NYU_MEDIAN = 0.35
#: An image whose window holds less than this share of breast is counted as nearly empty.
SMALL_SHARE = 0.2

ADVICE = (
    "`source_resolution` is the images' resolution relative to a full-field mammogram (1.0 for full-field "
    "DICOMs at ~70-100 um; 0.25 for images downsampled 4x). Leave it unset to estimate it from each image's "
    "height (4000 rows = full field), or set it to the value your files have; a PNG or JPEG export declared "
    "1.0 is shrunk again and the breast fills a corner of the window."
)


#: The input each family's networks read, as the summary names it.
_INPUTS = {"nyu": "NYU window", "nyu_heatmaps": "NYU window + heatmaps", "imagenet": "ImageNet square",
           "architecture": "square (the architecture's convention)"}


def breast_share_summary(shares: Mapping[str, tuple[str, pd.Series]]) -> pd.DataFrame:
    """Per output (name -> (family, shares per image)): images, median, 5th percentile, minimum, nearly empty."""
    rows = []
    for name, (family, values) in shares.items():
        finite = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=np.float64)
        if finite.size == 0:
            continue
        rows.append({
            "output": name, "input": _INPUTS.get(family, "square"),
            "n_images": int(finite.size), "median": float(np.median(finite)),
            "p05": float(np.percentile(finite, 5)), "min": float(finite.min()),
            f"n_below_{SMALL_SHARE:g}": int((finite < SMALL_SHARE).sum()),
        })
    return pd.DataFrame(rows)


def implausible(summary: pd.DataFrame) -> list[str]:
    """The NYU outputs whose median window holds implausibly little breast."""
    if summary.empty:
        return []
    nyu = summary[summary["input"].str.startswith("NYU window") & (summary["median"] < PLAUSIBLE_NYU_MEDIAN)]
    return nyu["output"].tolist()


def preprocessing_section(shares: Mapping[str, tuple[str, pd.Series]], contact_sheet: bytes | None = None,
                          sheet_problem: str | None = None) -> Section:
    """The breast-share summary, and the contact sheet (PNG) when there is one (else why not, when asked for)."""
    section = Section("Preprocessing: the breast in each network input")
    if contact_sheet is not None:
        section.figures.append(("Contact sheet: each image's NYU window (and ImageNet input), grouped by view and "
                                "side, with the breast's share of the window; look for a wrong flip, a bad crop, "
                                "a window on the label", "contact_sheet.png", contact_sheet))
    elif sheet_problem:
        section.paragraphs.append(f"Contact sheet not shown: {sheet_problem}.")
    summary = breast_share_summary(shares)
    if summary.empty:
        section.paragraphs.append("No image output of this study records the breast's share of its input yet.")
        return section
    section.paragraphs.append(
        "The share of each network input the breast covers, per image (mean over test-time windows). On "
        "full-field mammograms at their own resolution the breast fills about two thirds of a NYU window.")
    flagged = implausible(summary)
    if flagged:
        section.paragraphs.append(
            f"Warning: in {', '.join(flagged)} the breast covers a median under {PLAUSIBLE_NYU_MEDIAN:.0%} of the "
            f"NYU window: the images' resolution is most likely misstated, and these features describe a small "
            f"patch of breast in zero padding. {ADVICE}")
    section.tables.append(("Breast share of the network input", summary))
    return section
