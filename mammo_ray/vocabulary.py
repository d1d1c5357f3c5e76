"""The words for a breast's side and an image's view, shared by the manifest and the DICOM reader.

The manifest's contract (docs/design.md, "Manifest") has laterality L/R and view CC/MLO/other; every
spelling a collection or a DICOM header uses is read into these words here, once.
"""

from __future__ import annotations

import math

LATERALITY_VALUES: tuple[str, ...] = ("L", "R")
VIEW_VALUES: tuple[str, ...] = ("CC", "MLO", "other")


def _blank(value: object) -> bool:
    """None, NaN, or a text meaning nothing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return str(value).strip().upper() in {"", "NAN", "NONE"}


def normalise_laterality(value: object) -> str | None:
    """'L', 'LEFT', 'left' -> 'L'; 'R', 'RIGHT' -> 'R'; null-like -> None; anything else -> ValueError."""
    if _blank(value):
        return None
    text = str(value).strip().upper()
    if text in {"L", "LEFT"}:
        return "L"
    if text in {"R", "RIGHT"}:
        return "R"
    raise ValueError(f"unknown laterality {value!r} (expected L or R)")


def normalise_view(value: object) -> str | None:
    """'CC' -> CC; 'MLO', 'ML' (INbreast's name for MLO) -> MLO; other known views (FB, XCCL...) -> other."""
    if _blank(value):
        return None
    text = str(value).strip().upper()
    if text == "CC":
        return "CC"
    if text in {"MLO", "ML"}:
        return "MLO"
    return "other"


#: What an extractor was pretrained on, coarsely: the paper's first question compares the best of each group
#: (`unknown`: a file the weights registry does not know and the config does not describe).
PRETRAINING_GROUPS: tuple[str, ...] = ("mammography", "other medical", "natural images", "none", "unknown")
