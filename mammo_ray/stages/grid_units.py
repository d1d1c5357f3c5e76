"""The grid's Tune trial units: which cells run together in one trial, in what order, their journal, and the
progress a person reads as they finish.

Contract: `plan_units` groups the cells by `trial_grouping` into TrialUnits (cells of one unit share each
fold's fits in one process), the most expensive first, numbered in that order. `unit_key` names a unit's
results by its cells' settings and the content of its data only, so a journaled unit
(`<output>/results/grid_units/unit-<key>.json`, written by the trial before it reports) is reused exactly
when running it again would give the same numbers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from mammo_ray import storage
from mammo_ray.classify.cells import cell_settings
from mammo_ray.classify.data import CellResult, GridData
from mammo_ray.config.base import stable_hash
from mammo_ray.config.grid import GridCell, GridConfig
from mammo_ray.progress import Progress

log = logging.getLogger("mammo_ray.grid")


@dataclass(frozen=True)
class TrialUnit:
    """One Tune trial's work: cells of one extractor that run in one process, sharing their fits."""

    id: int  # its place in the plan (most expensive first); names the trial
    extractor: str
    cells: tuple[GridCell, ...]
    cost: float  # a rough relative cost, for the order only
    key: str = ""  # names its results in the journal (`unit_key`); set once its data's hash is known

    def keyed(self, data_hash: str, config: GridConfig) -> TrialUnit:
        return replace(self, key=unit_key(self, data_hash, config))


def _grouping_key(cell: GridCell, grouping: str) -> tuple[str, ...]:
    if grouping == "cell":
        return (cell.extractor, cell.protocol, cell.selection, cell.balancing, cell.classifier)
    if grouping == "preprocessing":
        return (cell.extractor, cell.protocol, cell.selection, cell.balancing)
    if grouping == "selection":
        return (cell.extractor, cell.protocol, cell.selection)
    return (cell.extractor, cell.protocol)


def _fits_per_cell(protocol: str, config: GridConfig) -> int:
    """Classifier fits one cell makes: its evaluation, then `permutations` control reruns (outer folds only)."""
    if protocol == "leak_free" and config.evaluation == "oof":
        evaluation = config.oof.repeats * config.oof.folds * (config.oof.threshold_folds + 1)
        return evaluation + config.permutations * config.oof.folds
    return config.cv_folds + 1 + config.permutations  # a CV, the held-out fit; one fit per control rerun


def _cost(cells: Sequence[GridCell], data: GridData, config: GridConfig) -> float:
    """A rough cost for ordering trials (largest first): per fit, the rows it fits on squared for exact
    kernel SVMs (linear otherwise) plus rows x features (Lasso-selected cells are narrower), times the
    fits of the evaluation and of the permutation control."""
    n, width = data.n_rows, int(data.X.shape[1])
    extra = max(0, (n - data.n_positive) - data.n_positive)  # rows SMOTE adds
    total = 0.0
    for cell in cells:
        rows = float(n + extra if cell.balancing == "smote" else n)
        if cell.protocol == "leak_free":  # folds fit on the training split only
            rows *= 1.0 - config.test_fraction
        features = min(width, 300) if cell.selection == "lasso" else width
        quadratic = cell.classifier.startswith("svm") and n <= config.scale.max_rows_exact
        per_fit = (rows * rows if quadratic else rows * 100.0) + rows * features
        total += per_fit * _fits_per_cell(cell.protocol, config)
    return total


def plan_units(cells: Sequence[GridCell], datasets: dict[str, GridData], config: GridConfig) -> list[TrialUnit]:
    """Cells grouped into trial units, most expensive first (so the last trial to start is a short one)."""
    groups: dict[tuple[str, ...], list[GridCell]] = {}
    for cell in cells:
        groups.setdefault(_grouping_key(cell, config.trial_grouping), []).append(cell)
    planned = [(members, _cost(members, datasets[members[0].extractor], config)) for members in groups.values()]
    planned.sort(key=lambda unit: -unit[1])
    return [TrialUnit(id=index, extractor=members[0].extractor, cells=tuple(members), cost=cost)
            for index, (members, cost) in enumerate(planned)]


def unit_key(unit: TrialUnit, data_hash: str, config: GridConfig) -> str:
    """Names a unit's results: the settings of its cells and the content of its data (`GridData.content_hash`),
    nothing else."""
    return stable_hash({"data": data_hash, "cells": sorted(stable_hash(cell_settings(config, c)) for c in unit.cells)})


def unit_file(units_uri: str, unit: TrialUnit) -> str:
    return storage.join(units_uri, f"unit-{unit.key}.json")


def finished_units(units: Sequence[TrialUnit], units_uri: str) -> dict[int, list[CellResult]]:
    """unit id -> results, for the units an earlier (interrupted) run already wrote (one listing, then one
    read per finished unit)."""
    present = set(storage.list_files(units_uri)) if storage.exists(units_uri) else set()
    return {unit.id: [CellResult(**row) for row in json.loads(storage.read_bytes(unit_file(units_uri, unit)))]
            for unit in units if unit_file(units_uri, unit) in present}


def cell_progress(units: dict[int, TrialUnit], label: str) -> Any:
    """A Tune callback on the driver: a progress line in cells (done / total, cells/s, time left, failed cells)
    as trials report, Tune's own status output being off."""
    from ray import tune  # Ray Tune: imported when the grid runs

    progress = Progress(log, label, sum(len(unit.cells) for unit in units.values()), unit="cells")

    class CellProgress(tune.Callback):
        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            unit = units.get((trial.config or {}).get("unit", -1))
            if unit is not None and "cells" in result:
                failed = sum(row.get("status") != "ok" for row in json.loads(result["cells"]))
                progress.advance(len(unit.cells), errors=failed)

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            progress.finish()

    return CellProgress()


__all__ = ["TrialUnit", "cell_progress", "finished_units", "plan_units", "unit_file", "unit_key"]
