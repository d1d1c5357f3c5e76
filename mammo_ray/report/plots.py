"""Drawing helpers shared by the report's figures: one axes rendered to PNG bytes by the Agg canvas (no display,
no global pyplot state), and ROC curves."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve


def png(draw: Callable[[Axes], None], size: tuple[float, float] = (5.5, 5.0)) -> bytes:
    """A PNG of what `draw` puts on one axes, rendered by the Agg canvas (no display, no global state)."""
    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    draw(figure.add_subplot())
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def roc(axes: Axes, curves: list[tuple[str, np.ndarray, np.ndarray]], aucs: list[float] | None = None) -> None:
    """One ROC plot of (label, targets, scores) curves; each label gets its AUC: `aucs` where given (the number
    the report's table shows for that row), else the curve's own. The legend sits beside the axes, where it
    hides no curve."""
    for index, (label, targets, scores) in enumerate(curves):
        if len(np.unique(targets)) < 2:
            continue
        fpr, tpr, _ = roc_curve(targets, scores)
        shown = aucs[index] if aucs is not None else roc_auc_score(targets, scores)
        axes.plot(fpr, tpr, label=f"{label} AUC {shown:.3f}")
    axes.plot([0, 1], [0, 1], color="#999", linestyle=":")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def reliability_bins(targets: np.ndarray, probabilities: np.ndarray, bins: int = 5) -> pd.DataFrame:
    """Binned reliability: probabilities cut at their quantiles into `bins` groups (fewer where values tie); per
    group the mean predicted probability, the observed share of positives with its 95% Wilson interval, and the
    count, so a reader sees how much each point rests on."""
    frame = pd.DataFrame({"target": np.asarray(targets, dtype=float), "p": np.asarray(probabilities, dtype=float)})
    frame["bin"] = pd.qcut(frame["p"].rank(method="first"), q=min(bins, len(frame)), labels=False)
    grouped = frame.groupby("bin").agg(predicted=("p", "mean"), observed=("target", "mean"), n=("target", "size"))
    z = 1.959963984540054  # the normal quantile of a two-sided 95% interval
    n, share = grouped["n"].to_numpy(dtype=float), grouped["observed"].to_numpy()
    centre = (share + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(share * (1 - share) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return grouped.assign(low=centre - half, high=centre + half).reset_index(drop=True)


def reliability(axes: Axes, curves: list[tuple[str, np.ndarray, np.ndarray]], bins: int = 5) -> None:
    """Binned reliability of (label, targets, probabilities) curves: points with their Wilson intervals, each
    point's count written beside it, the diagonal of perfect calibration, the legend beside the axes."""
    for label, targets, probabilities in curves:
        points = reliability_bins(targets, probabilities, bins)
        line = axes.errorbar(points["predicted"], points["observed"],
                             yerr=[points["observed"] - points["low"], points["high"] - points["observed"]],
                             marker="o", capsize=3, label=label)
        for row in points.itertuples():
            axes.annotate(f"n={row.n}", (row.predicted, row.observed), textcoords="offset points", xytext=(4, -10),
                          fontsize=6, color=line[0].get_color())
    axes.plot([0, 1], [0, 1], color="#999", linestyle=":")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_ylabel("observed share of positives (95% Wilson interval)")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
