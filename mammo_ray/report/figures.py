"""Figure 3 of the report (zero-shot NYU predictions per BI-RADS): its counts, its figure and its section. The
figure is drawn with matplotlib's Agg backend (no display needed) and written through `mammo_ray.storage`, so a
local path and an s3:// URI work alike.

Zero-shot NYU predictions per BI-RADS (the paper's Figure 3)
-------------------------------------------------------------
An image is *predicted malignant* when its p_malignant > p_benign (the paper compares the two
probabilities of the image-wise model), otherwise *predicted benign* (a tie counts as benign).
Images are grouped by their BI-RADS category, in the order 0, 1, 2, 3, 4, 4a, 4b, 4c, 5, 6 (only
categories present are shown). Images without a BI-RADS but with a pathology (datasets such as MIAS
that only give pathology) are grouped by it, as ``pathology: normal`` / ``pathology: benign`` /
``pathology: malignant`` after the BI-RADS groups; images with neither form a last group ``n/a``.
Rows whose probabilities are missing are not scored images and are left out.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from mammo_ray import storage
from mammo_ray.datasets.manifest import BIRADS_VALUES, PATHOLOGY_VALUES
from mammo_ray.report.render import Section

COUNT_COLUMNS: list[str] = ["birads", "predicted_benign", "predicted_malignant"]
NO_GROUP = "n/a"
PATHOLOGY_PREFIX = "pathology: "
_GROUP_ORDER: list[str] = [*BIRADS_VALUES, *(PATHOLOGY_PREFIX + p for p in PATHOLOGY_VALUES), NO_GROUP]
_BENIGN_COLOUR = "#4878a8"
_MALIGNANT_COLOUR = "#c8504a"


def _present(value: object) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and np.isnan(value))


def zero_shot_group(birads: object, pathology: object) -> str:
    """The figure's group of an image: its BI-RADS, else 'pathology: <p>', else 'n/a'."""
    if _present(birads) and str(birads) != "":
        return str(birads)
    if _present(pathology) and str(pathology) != "":
        return PATHOLOGY_PREFIX + str(pathology)
    return NO_GROUP


def _ordered(groups: set[str]) -> list[str]:
    """Groups in the figure's order: BI-RADS, then pathology, then n/a (others by name at the end)."""
    rank = {group: index for index, group in enumerate(_GROUP_ORDER)}
    return sorted(groups, key=lambda g: (rank.get(g, len(rank)), g))


def zero_shot_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Per group (see the module doc), how many images are predicted benign and predicted malignant.

    `frame` has columns p_benign, p_malignant, birads and (optionally) pathology, one row per image
    (e.g. `read_zero_shot`). Returns columns birads (the group), predicted_benign, predicted_malignant
    (int64), one row per group present, in BI-RADS order.
    """
    missing = [c for c in ("p_benign", "p_malignant", "birads") if c not in frame.columns]
    if missing:
        raise ValueError(f"zero-shot counts need column(s) {missing}; got {list(frame.columns)}")
    scored = frame[frame["p_benign"].notna() & frame["p_malignant"].notna()]
    pathology = scored["pathology"] if "pathology" in scored.columns else pd.Series(None, index=scored.index)
    groups = [zero_shot_group(b, p) for b, p in zip(scored["birads"], pathology, strict=True)]
    p_benign = scored["p_benign"].to_numpy(dtype=np.float64)
    malignant = scored["p_malignant"].to_numpy(dtype=np.float64) > p_benign
    table = pd.DataFrame({"birads": groups, "malignant": malignant})
    rows = []
    for group in _ordered(set(groups)):
        chosen = table.loc[table["birads"] == group, "malignant"]
        rows.append((group, int((~chosen).sum()), int(chosen.sum())))
    counts = pd.DataFrame(rows, columns=COUNT_COLUMNS)
    return counts.astype({"birads": object, "predicted_benign": np.int64, "predicted_malignant": np.int64})


def zero_shot_by_birads(models: pd.DataFrame | Mapping[str, pd.DataFrame], path_or_uri: str, *,
                        title: str | None = None) -> None:
    """Grouped bar chart of `zero_shot_counts` as a PNG at `path_or_uri` (local or s3://): one frame, or one per
    model by name (the image-only and the image+heatmaps model), each model's bars side by side per group."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    frames = {"": models} if isinstance(models, pd.DataFrame) else dict(models)
    counts = {name: zero_shot_counts(frame) for name, frame in frames.items()}
    groups = _ordered({group for table in counts.values() for group in table["birads"]})
    n_images = max(int(table[["predicted_benign", "predicted_malignant"]].to_numpy().sum())
                   for table in counts.values())
    figure = Figure(figsize=(max(7.0, (0.6 + 0.5 * len(counts)) * len(groups) + 4.0), 4.8), dpi=120)
    FigureCanvasAgg(figure)  # the Agg canvas: renders without a display
    axes = figure.add_subplot()
    positions = np.arange(len(groups))
    width = 0.76 / (2 * len(counts))
    for index, (name, table) in enumerate(counts.items()):
        table = table.set_index("birads").reindex(groups, fill_value=0)
        hatch = "//" if index else None  # the second model's bars hatched, beside the first's
        suffix = f" ({name})" if name else ""
        for column, label, colour, offset in (
                ("predicted_benign", "predicted benign", _BENIGN_COLOUR, 2 * index),
                ("predicted_malignant", "predicted malignant", _MALIGNANT_COLOUR, 2 * index + 1)):
            container = axes.bar(positions - 0.38 + width * (offset + 0.5), table[column], width,
                                 label=label + suffix, color=colour, hatch=hatch, edgecolor="white")
            axes.bar_label(container, padding=2, fontsize=8 if len(counts) > 1 else 9)
    first = next(iter(counts.values())).set_index("birads").reindex(groups, fill_value=0)
    totals = first["predicted_benign"] + first["predicted_malignant"]
    names = [group.replace(PATHOLOGY_PREFIX, "pathology:\n") for group in groups]
    labels = [f"{name}\nn={total}" for name, total in zip(names, totals, strict=True)]
    axes.set_xticks(positions, labels)
    has_other = any(g not in BIRADS_VALUES for g in groups)
    axes.set_xlabel("BI-RADS" + (" (pathology or n/a where no BI-RADS)" if has_other else ""))
    axes.set_ylabel("images")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.margins(y=0.12)
    axes.spines[["top", "right"]].set_visible(False)
    default = ("Zero-shot NYU image-wise models" if len(counts) > 1 else "Zero-shot NYU image-wise model")
    axes.set_title(title or f"{default}: predictions per BI-RADS", fontsize=11)
    figure.text(0.5, 0.005, f"{n_images} images; predicted malignant = p_malignant > p_benign",
                ha="center", va="bottom", fontsize=8, color="#555555")
    if groups:
        axes.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        axes.set_ylim(0, 1)
        axes.set_yticks([])
        axes.text(0.5, 0.5, "no scored images", ha="center", va="center", transform=axes.transAxes)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    storage.write_bytes(path_or_uri, buffer.getvalue())


def zero_shot_section(zero_shot: pd.DataFrame | Mapping[str, pd.DataFrame] | None,
                      problem: str | None = None) -> Section:
    """Figure 3 with its counts, from the zero-shot views of the current manifest: one frame, or one per model
    by name (image only, image+heatmaps); None: not run, or `problem`."""
    section = Section("Figure 3: zero-shot NYU predictions by BI-RADS")
    models = {"": zero_shot} if isinstance(zero_shot, pd.DataFrame) or zero_shot is None else dict(zero_shot)
    if not models or any(frame is None or frame.empty for frame in models.values()):
        missing = f"Not shown: {problem}." if problem else "The zero_shot stage has not run for this study."
        section.paragraphs.append(missing)
        return section
    section.paragraphs.append("An image counts as predicted malignant when p_malignant > p_benign, as in the paper."
                              + (" The image+heatmaps model (hatched bars) reads the same windows with the "
                                 "image's benign and malignant heatmaps as two more channels: the paper's "
                                 "second model." if len(models) > 1 else ""))
    weights = sorted({str(w) for frame in models.values() if "weights_id" in frame
                      for w in frame["weights_id"].dropna().unique()})
    caveat = ("Caveat: the paper's Figure 3 is a bar chart without printed numbers, so nothing published sits "
              "beside these counts; they are image-level, with no interval.")
    if any(w.startswith("random-init") for w in weights):
        caveat += (f" The weights are random-init ({', '.join(weights)}): these predictions say nothing about the "
                   "published model.")
    section.paragraphs.append(caveat)
    for name, frame in models.items():
        section.tables.append((f"Images predicted benign / malignant per BI-RADS{f' ({name})' if name else ''}",
                               zero_shot_counts(frame)))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "zero_shot.png"
        zero_shot_by_birads(models if len(models) > 1 else next(iter(models.values())), str(path))
        section.figures.append(("Zero-shot NYU predictions per BI-RADS category", "zero_shot_by_birads.png",
                                path.read_bytes()))
    return section
