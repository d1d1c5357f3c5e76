"""The classifier study (the paper's Table 2): the `paper` and `leak_free` protocols, metrics.

The grid's settings live in `mammo_ray.config.grid`. Modules: `data` (GridData, CellResult),
`estimators` (Lasso selection, the classifiers, their scale path), `protocols` (the three protocols),
`splits` (their folds), `engine` (the shared fits, the kernel cache, the leak-free pipeline), `control`
(the permutation control), `calibration`, `results` (a cell's numbers from its scores), `metrics`.

Pure scikit-learn / imbalanced-learn: importable and testable without Ray. The Ray Tune fan-out over
grid cells lives in `mammo_ray.stages.grid`.
"""

from mammo_ray.classify.data import CellResult, GridData
from mammo_ray.classify.engine import build_pipeline
from mammo_ray.classify.estimators import LassoSelector, NystroemSVC, ScalePathRefused, make_classifier
from mammo_ray.classify.protocols import evaluate_cell, evaluate_cells

__all__ = [
    "CellResult", "GridData", "LassoSelector", "NystroemSVC", "ScalePathRefused", "build_pipeline",
    "evaluate_cell", "evaluate_cells", "make_classifier",
]
