"""The classifier study (the paper's Table 2): grid config, the `paper` and `leak_free` protocols, metrics.

Pure scikit-learn / imbalanced-learn: importable and testable without Ray. The Ray Tune fan-out over
grid cells lives in `mammo_ray.stages.grid`.
"""

from mammo_ray.classify.config import (
    BALANCINGS,
    CLASSIFIERS,
    PROTOCOLS,
    SELECTIONS,
    ClassifierParams,
    GridCell,
    GridConfig,
    LassoConfig,
    ScalePathConfig,
    SmoteConfig,
)
from mammo_ray.classify.estimators import LassoSelector, NystroemSVC, ScalePathRefused, make_classifier
from mammo_ray.classify.protocols import (
    CellResult,
    GridData,
    build_pipeline,
    evaluate_cell,
    evaluate_cells,
)

__all__ = [
    "BALANCINGS", "CLASSIFIERS", "PROTOCOLS", "SELECTIONS", "CellResult", "ClassifierParams", "GridCell",
    "GridConfig", "GridData", "LassoConfig", "LassoSelector", "NystroemSVC", "ScalePathConfig",
    "ScalePathRefused", "SmoteConfig", "build_pipeline", "evaluate_cell", "evaluate_cells", "make_classifier",
]
