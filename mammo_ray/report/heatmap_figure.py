"""The paper's Figure 2 for a few images: (a) the view, (b) the oriented breast crop with the NYU window drawn on
it, (c) the NYU input window, (d) the benign and (e) the malignant heatmap as colour overlays on the crop, with
a scale bar (docs/design.md, "Heatmaps")."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mammo_ray import storage
from mammo_ray.report.render import Section

_TITLES = ("(a) view", "(b) cropped view, NYU window", "(c) NYU input", "(d) benign heatmap", "(e) malignant heatmap")


@dataclass(frozen=True)
class Figure2Row:
    """One image's panels. `window` is (top, left, height, width) on `crop`; the heatmaps are `heatmap_crop`'s size
    (the crop the patch classifier read, at its own scale)."""

    label: str
    view: np.ndarray
    crop: np.ndarray
    window: tuple[int, int, int, int]
    nyu_input: np.ndarray
    heatmap_crop: np.ndarray
    benign: np.ndarray
    malignant: np.ndarray


def draw_figure_2(rows: Sequence[Figure2Row], uri: str, note: str) -> None:
    """One row of five panels per image, as a PNG at `uri` (local or s3://); `note` under the figure (e.g. the
    weights and the stride)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    figure = Figure(figsize=(13.0, 3.0 * max(1, len(rows)) + 0.4), dpi=110)
    FigureCanvasAgg(figure)  # renders without a display
    grid = figure.add_gridspec(max(1, len(rows)), 6, width_ratios=(1, 1, 1, 1, 1, 0.06))
    image = None
    for index, row in enumerate(rows):
        panels = [figure.add_subplot(grid[index, column]) for column in range(5)]
        panels[0].imshow(row.view, cmap="gray")
        panels[1].imshow(row.crop, cmap="gray")
        top, left, height, width = row.window
        panels[1].add_patch(Rectangle((left, top), width, height, fill=False, edgecolor="#ffcc00", linewidth=1.5))
        panels[2].imshow(row.nyu_input, cmap="gray")
        for axes, heatmap in ((panels[3], row.benign), (panels[4], row.malignant)):
            axes.imshow(row.heatmap_crop, cmap="gray")
            image = axes.imshow(heatmap, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.55)
        for column, axes in enumerate(panels):
            axes.set_xticks([])
            axes.set_yticks([])
            if index == 0:
                axes.set_title(_TITLES[column], fontsize=9)
        panels[0].set_ylabel(row.label, fontsize=8)
    if image is not None:
        figure.colorbar(image, cax=figure.add_subplot(grid[:, 5]), label="patch probability")
    figure.text(0.5, 0.005, note, ha="center", va="bottom", fontsize=8, color="#555555")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    storage.write_bytes(uri, buffer.getvalue())


def figure_2_section(png: bytes | None, problem: str | None) -> Section:
    """The report's Figure 2 section: the figure the heatmaps stage drew, or why it is not shown."""
    section = Section("Figure 2: NYU patch heatmaps")
    if png is None:
        section.paragraphs.append(f"Not shown: {problem}.")
        return section
    section.paragraphs.append(
        "As the paper's Figure 2, per image: (a) the view, (b) the breast crop (chest wall on the left) with the "
        "NYU window, (c) the NYU input, (d) benign and (e) malignant patch probabilities, each pixel the mean over "
        "the patches covering it. With random-init weights the heatmaps show the pipeline, not the model.")
    section.figures.append(("NYU patch heatmaps (the paper's Figure 2)", "figure_2.png", png))
    return section
