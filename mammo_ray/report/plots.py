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
