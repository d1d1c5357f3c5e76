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
