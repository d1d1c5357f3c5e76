"""The grid's cells from its config (docs/design.md, "The paper's numbers"): the product of the axes, the one
pipeline the extractors are compared on, the extractor pairs compared, and the settings each cell's numbers
depend on (recorded per row, hashed into the cell's key).
"""

from __future__ import annotations

from typing import Any

from mammo_ray.config.grid import GridCell, GridConfig

#: The paper's pipeline: the comparisons run on it when the grid has it.
_PAPER_PIPELINE = {"selection": "lasso", "balancing": "smote", "classifier": "svm_linear"}


def grid_cells(grid: GridConfig, extractors: list[str] | None = None) -> list[GridCell]:
    """Every cell, in a stable order (extractor, protocol, selection, balancing, classifier); `extractors`
    None: the grid's own."""
    names = extractors if extractors is not None else (grid.extractors or [])
    return [
        GridCell(e, s, b, c, p)
        for e in names
        for p in grid.protocols
        for s in grid.selection
        for b in grid.balancing
        for c in grid.classifiers
    ]


def compare_pipeline(grid: GridConfig) -> tuple[str, str, str]:
    """(selection, balancing, classifier) of the extractor comparisons: `compare`'s choice per axis, else the
    paper's when the grid has it, else the grid's first."""
    axes = {"selection": grid.selection, "balancing": grid.balancing, "classifier": grid.classifiers}
    chosen = []
    for axis, values in axes.items():
        value = getattr(grid.compare, axis)
        chosen.append(value or (_PAPER_PIPELINE[axis] if _PAPER_PIPELINE[axis] in values else values[0]))
    return chosen[0], chosen[1], chosen[2]


def comparison_pairs(grid: GridConfig, extractors: list[str]) -> list[tuple[str, str]]:
    """The extractor pairs (a, b) compared: `comparisons`, else every pair in the order listed."""
    if grid.comparisons is not None:
        return [(a, b) for a, b in grid.comparisons]
    return [(a, b) for i, a in enumerate(extractors) for b in extractors[i + 1:]]


def cv_folds_of(grid: GridConfig, protocol: str) -> int:
    """The folds of a cell's CV: `oof.folds` for leak_free out of fold (its outer folds), else `cv_folds`
    (paper; leak_free holdout's CV inside its training split)."""
    return grid.oof.folds if protocol == "leak_free" and grid.evaluation == "oof" else grid.cv_folds


def cell_settings(grid: GridConfig, cell: GridCell) -> dict[str, Any]:
    """Everything that decides one cell's numbers (besides its data): recorded per row."""
    settings: dict[str, Any] = {
        **cell.as_dict(),
        "standardise": True,
        "cv_folds": grid.cv_folds,
        "test_fraction": grid.test_fraction,
        "seed": grid.seed,
        "bootstrap": grid.bootstrap,
        "ci_level": grid.ci_level,
        "permutations": grid.permutations,
        "control_stop": grid.control_stop,  # sequential or fixed: which null AUCs and p the cell records
        "classifier_params": getattr(grid.classifier_params, cell.classifier).model_dump(mode="json"),
        "scale": grid.scale.model_dump(mode="json"),
    }
    if cell.protocol == "leak_free":
        settings["evaluation"] = grid.evaluation
        if grid.evaluation == "oof":
            settings["oof"] = grid.oof.model_dump(mode="json")
    if cell.selection == "lasso":
        settings["lasso"] = grid.lasso.model_dump(mode="json")
    if cell.balancing == "smote":
        settings["smote"] = grid.smote.model_dump(mode="json")
    return settings
