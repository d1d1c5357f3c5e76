"""Drawing helpers shared by the report's figures: one axes rendered to PNG bytes by the Agg canvas (no display,
no global pyplot state), and ROC curves."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
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


def roc(axes: Axes, curves: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """One ROC plot of (label, targets, scores) curves; the label gets each curve's AUC."""
    for label, targets, scores in curves:
        if len(np.unique(targets)) < 2:
            continue
        fpr, tpr, _ = roc_curve(targets, scores)
        axes.plot(fpr, tpr, label=f"{label} AUC {roc_auc_score(targets, scores):.2f}")
    axes.plot([0, 1], [0, 1], color="#999", linestyle=":")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.legend(fontsize=7, loc="lower right")
