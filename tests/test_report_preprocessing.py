"""The report's preprocessing check: the breast's share of each network input, summarised and warned about."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mammo_ray.report.preprocessing import ADVICE, breast_share_summary, implausible, preprocessing_section


def _shares(median: float, n: int = 50, seed: int = 0) -> pd.Series:
    return pd.Series(np.clip(np.random.default_rng(seed).normal(median, 0.05, n), 0.01, 1.0))


def test_summary_counts_per_output_and_warns_on_small_nyu_windows() -> None:
    shares = {"nyu_lcc": ("nyu", _shares(0.19)), "nyu_avg": ("nyu", _shares(0.66)),
              "imagenet_resnet50": ("imagenet", _shares(0.19)), "empty": ("nyu", pd.Series([np.nan]))}
    summary = breast_share_summary(shares)
    assert summary["output"].tolist() == ["nyu_lcc", "nyu_avg", "imagenet_resnet50"]  # no finite share: no row
    assert summary["n_images"].tolist() == [50, 50, 50]
    assert summary.set_index("output").loc["nyu_lcc", "median"] < 0.25
    assert summary.set_index("output").loc["nyu_lcc", "n_below_0.2"] > 10
    assert implausible(summary) == ["nyu_lcc"]  # ImageNet squares are not judged by the NYU window's norm
    section = preprocessing_section(shares)
    warning = [p for p in section.paragraphs if p.startswith("Warning")]
    assert len(warning) == 1 and "nyu_lcc" in warning[0] and "nyu_avg" not in warning[0] and ADVICE in warning[0]


def test_no_warning_when_the_breast_fills_the_window_and_a_note_without_outputs() -> None:
    section = preprocessing_section({"nyu_avg": ("nyu", _shares(0.66))})
    assert not any(p.startswith("Warning") for p in section.paragraphs) and len(section.tables) == 1
    assert "No image output" in preprocessing_section({}).paragraphs[0]


def test_the_contact_sheet_spreads_its_sample_over_every_view_and_side_and_draws_each_group():
    import io

    import numpy as np
    from PIL import Image

    from mammo_ray.report.contact_sheet import SheetImage, draw_contact_sheet, spread

    rows = pd.DataFrame({"image_id": [f"i{n:03d}" for n in range(40)],
                         "view": ["CC", "MLO"] * 20, "laterality": ["L"] * 20 + ["R"] * 20})
    sample = spread(rows, 8)
    assert len(sample) == 8 and sample.groupby(["view", "laterality"]).size().tolist() == [2, 2, 2, 2]
    assert spread(rows, None).equals(spread(rows, 100))  # None and a limit above the rows: every image
    thumb = np.tile(np.arange(64, dtype=np.uint8), (96, 1))
    images = [SheetImage(row.image_id, row.view, row.laterality, (thumb, None if row.Index == 0 else thumb),
                         0.66 if row.Index else None) for row in sample.itertuples()]
    sheet = Image.open(io.BytesIO(draw_contact_sheet(images, ["nyu", "imagenet"])))
    assert sheet.mode == "L" and sheet.width == 900
    # Four group headers of 24 pixels and one row of cells each (96-pixel thumbnails, a label of 30 under them).
    assert sheet.height == 4 + 4 * (24 + 96 + 30 + 4)
    pixels = np.asarray(sheet)
    assert (pixels[28:28 + 96, 4:4 + 64] == thumb).all()  # the first image's first thumbnail, as stored
