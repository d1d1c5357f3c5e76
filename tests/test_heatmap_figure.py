"""Figure 2's images (the highest-BI-RADS image of each view, or the ones named) and its drawing."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from PIL import Image

from mammo_ray.report.heatmap_figure import Figure2Row, draw_figure_2, figure_2_section
from mammo_ray.stages.heatmaps import figure_images

ROWS = pd.DataFrame({"image_id": ["a", "b", "c", "d", "e"], "view": ["CC", "CC", "MLO", "MLO", None],
                     "birads": ["2", "4c", "5", None, "6"]})


def test_by_default_the_highest_birads_image_of_each_view_cc_first():
    assert figure_images(ROWS, None)["image_id"].tolist() == ["b", "c"]
    assert figure_images(ROWS.assign(view=None), None)["image_id"].tolist() == ["e"]  # no view known: the top one


def test_named_images_in_their_order_and_unknown_ones_left_out():
    assert figure_images(ROWS, ["d", "zz", "a"])["image_id"].tolist() == ["d", "a"]


def test_the_figure_has_a_row_of_five_panels_per_image(tmp_path):
    rng = np.random.default_rng(0)
    row = Figure2Row(label="img", view=rng.random((60, 40)), crop=rng.random((50, 30)), window=(5, 3, 30, 20),
                     nyu_input=rng.random((30, 20)), heatmap_crop=rng.random((50, 30)), benign=rng.random((50, 30)),
                     malignant=rng.random((50, 30)))
    draw_figure_2([row, row], str(tmp_path / "figure.png"), "random-init weights")
    one = Image.open(tmp_path / "figure.png")
    draw_figure_2([row], str(tmp_path / "one.png"), "random-init weights")
    assert one.size[1] > Image.open(tmp_path / "one.png").size[1]  # one row per image
    section = figure_2_section((tmp_path / "figure.png").read_bytes(), None)
    assert section.figures[0][1] == "figure_2.png" and "(e) malignant" in section.paragraphs[0]
    assert "Not shown: out of date." in figure_2_section(None, "out of date").paragraphs
    Image.open(io.BytesIO(section.figures[0][2])).verify()
