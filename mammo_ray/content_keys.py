"""The image part of a feature store's keys (docs/design.md, "Feature stores"): an image's bytes and, for models
whose preprocessing depends on them, the manifest's laterality and view, as one string."""

from __future__ import annotations

import pandas as pd


def content_key(content_sha256: str, laterality: object, view: object, orientation: bool) -> str:
    """The image part of a feature key as one string: the bytes and, for models whose preprocessing flips
    and windows by side and view (`orientation`), the manifest's laterality and view."""
    if not orientation:
        return content_sha256
    return f"{content_sha256}|{orientation_hint(laterality)}|{orientation_hint(view)}"


def content_keys(content_sha256: pd.Series, laterality: pd.Series, view: pd.Series, orientation: bool) -> pd.Series:
    """`content_key` of whole columns at once (readers join 100,000s of rows on it)."""
    sha = content_sha256.astype("string")
    if not orientation:
        return sha
    hints = [column.astype("string").fillna("") for column in (laterality, view)]
    return sha.str.cat(hints, sep="|")


def _is_null(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def orientation_hint(value: object) -> str:
    """A manifest laterality or view as stored in a feature key: '' when unknown."""
    return "" if _is_null(value) else str(value)
