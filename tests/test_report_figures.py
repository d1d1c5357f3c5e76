"""The report's ROC figure reads with its table: every curve in a legend beside the axes (none hidden), each
labelled with the AUC the table shows for its row (out of fold: the mean over repeats, not the drawn repeat's)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mammo_ray.report.grid import _grid_roc


def test_roc_legend_sits_beside_the_axes_and_shows_the_tables_auc():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 2, 60)
    rows = []
    for extractor in ("a", "b"):
        for repeat in range(3):
            score = target * (1.0 + repeat) + rng.normal(size=60)
            rows += [{"extractor": extractor, "selection": "none", "balancing": "none", "classifier": "logreg",
                      "protocol": "leak_free", "repeat": repeat, "target": t, "score": s}
                     for t, s in zip(target, score, strict=True)]
    best = pd.DataFrame({"extractor": ["a", "b"], "selection": "none", "balancing": "none", "classifier": "logreg",
                         "protocol": "leak_free", "auc": [0.8123, 0.7456]})
    axes = Figure().add_subplot()
    _grid_roc(axes, best, pd.DataFrame(rows))
    legend = axes.get_legend()
    assert [text.get_text() for text in legend.get_texts()] == [
        "leak_free: a/none/none/logreg AUC 0.812", "leak_free: b/none/none/logreg AUC 0.746"]
    anchor = legend.get_bbox_to_anchor().transformed(axes.transAxes.inverted())
    assert anchor.x0 > 1.0  # right of the axes: over no curve


def test_reliability_bins_hold_every_image_once_with_intervals_that_contain_their_share():
    from mammo_ray.report.plots import reliability_bins

    rng = np.random.default_rng(1)
    probability = rng.uniform(0, 1, 400)
    target = (rng.uniform(0, 1, 400) < probability).astype(int)  # calibrated by construction
    bins = reliability_bins(target, probability, bins=5)
    assert len(bins) == 5 and bins["n"].sum() == 400 and (bins["n"] == 80).all()
    assert ((bins["low"] <= bins["observed"]) & (bins["observed"] <= bins["high"])).all()
    assert (bins["predicted"].diff().dropna() > 0).all()
    # Calibrated scores: the bins' shares follow their mean predictions (each interval 95%: most bins cover it).
    assert (bins["observed"] - bins["predicted"]).abs().mean() < 0.08
    assert ((bins["low"] <= bins["predicted"]) & (bins["predicted"] <= bins["high"])).sum() >= 4
    # All of one class: the interval still has width, and never leaves [0, 1].
    ones = reliability_bins(np.ones(10), np.linspace(0.5, 1, 10), bins=2)
    assert (ones["observed"] == 1).all() and (ones["low"] < 1).all() and (ones["high"] <= 1 + 1e-12).all()
