"""The preprocessing contact sheet (docs/design.md, "Contact sheet"): each image's network inputs as thumbnails,
grouped by view and side, with the breast's share of the NYU window printed, so a wrong flip, a bad crop or a
window on the label is seen at a glance instead of by opening images one by one."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

_GAP = 4
_FONT = 12  # pixels: legible where the report shows the sheet at its own size
_LABEL = 2 * _FONT + 6  # pixels under each cell for its id and share
_HEADER = _FONT + 12
_WIDTH = 900  # the sheet's width in pixels, about the report's text column: cells wrap to it


@dataclass(frozen=True)
class SheetImage:
    """One image on the sheet: its id, view and side, one thumbnail per input family (None where that input
    failed), and the breast's share of its NYU window (None when unknown)."""

    image_id: str
    view: str | None
    laterality: str | None
    thumbnails: tuple[np.ndarray | None, ...]
    share: float | None


def spread(rows: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """At most `limit` rows (None: all), spread evenly over the rows sorted by view, side and image id, so every
    group is represented in proportion; in that order."""
    ordered = rows.sort_values(["view", "laterality", "image_id"], na_position="last").reset_index(drop=True)
    if limit is None or len(ordered) <= limit:
        return ordered
    picks = np.unique(np.linspace(0, len(ordered) - 1, num=limit).round().astype(int))
    return ordered.iloc[picks].reset_index(drop=True)


def draw_contact_sheet(images: Sequence[SheetImage], families: Sequence[str]) -> bytes:
    """The sheet as PNG bytes: a header per (view, side) group, then its images' thumbnails side by side (one per
    family, in `families`' order), each cell labelled with the image id and the NYU window's breast share."""
    font = ImageFont.load_default(size=_FONT)
    cells = [_cell(image, len(families)) for image in images]
    cell_width = max([cell.width for cell in cells] or [1])
    per_row = max(1, (_WIDTH - _GAP) // (cell_width + _GAP))
    groups: dict[str, list[tuple[SheetImage, Image.Image]]] = {}
    for image, cell in zip(images, cells, strict=True):
        groups.setdefault(f"{image.view or 'view ?'} {image.laterality or 'side ?'}", []).append((image, cell))
    cell_height = max([cell.height for cell in cells] or [1]) + _LABEL
    height = _GAP + sum(_HEADER + -(-len(members) // per_row) * (cell_height + _GAP) for members in groups.values())
    sheet = Image.new("L", (_WIDTH, max(height, _HEADER)), color=255)
    draw = ImageDraw.Draw(sheet)
    top = _GAP
    for name, members in groups.items():
        draw.text((_GAP, top + 5), f"{name}: {len(members)} images  (inputs: {', '.join(families)})", fill=0,
                  font=font)
        top += _HEADER
        for index, (image, cell) in enumerate(members):
            left = _GAP + (index % per_row) * (cell_width + _GAP)
            row_top = top + (index // per_row) * (cell_height + _GAP)
            sheet.paste(cell, (left, row_top))
            share = "share ?" if image.share is None else f"share {image.share:.2f}"
            draw.text((left, row_top + cell.height + 2), image.image_id[-20:], fill=0, font=font)
            draw.text((left, row_top + cell.height + 3 + _FONT), share, fill=0 if (image.share or 0) >= 0.2 else 96,
                      font=font)
        top += -(-len(members) // per_row) * (cell_height + _GAP)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _cell(image: SheetImage, families: int) -> Image.Image:
    """The image's thumbnails side by side on a light background (a mid grey box where one is missing)."""
    thumbs = [np.full((48, 48), 160, np.uint8) if t is None else t for t in image.thumbnails]
    thumbs += [np.full((48, 48), 160, np.uint8)] * (families - len(thumbs))
    height = max(t.shape[0] for t in thumbs)
    width = sum(t.shape[1] for t in thumbs) + _GAP * (len(thumbs) - 1)
    cell = Image.new("L", (width, height), color=230)
    left = 0
    for thumb in thumbs:
        cell.paste(Image.fromarray(thumb), (left, 0))
        left += thumb.shape[1] + _GAP
    return cell
