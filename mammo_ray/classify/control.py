"""The negative control of every protocol: the same protocol rerun on label permutations between patients.

Contract: `with_permutation_control(run, ...)` returns `run`'s results with, per live cell, its
`permutations` null AUCs (each patient's images keep one label together; the same permutations for every
cell), their mean and 95th percentile, and a permutation p-value of the cell's first-repeat AUC. The reruns
ask `run` for what their AUC needs only (`complete=False`: no CV, no bootstrap). On no signal the paper
protocol reaches AUC near 1 (SMOTE and Lasso before the split), leak_free near 0.5: the null shows how much
of a result is the protocol's (docs/design.md, "The leak-free protocol", its last paragraph).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np
import sklearn

from mammo_ray.classify.data import CellResult, GridData
from mammo_ray.classify.stats import permutation_p_value, permute_labels_by_patient
from mammo_ray.config.grid import GridCell, GridConfig


class ProtocolRun(Protocol):
    """One protocol on some cells of one table; complete=False: the AUC only (the control's reruns)."""

    def __call__(self, data: GridData, cells: Sequence[GridCell], config: GridConfig,
                 precomputed_kernels: bool = True, complete: bool = True) -> list[CellResult]: ...


def with_permutation_control(run: ProtocolRun, data: GridData, cells: Sequence[GridCell], config: GridConfig,
                             precomputed_kernels: bool) -> list[CellResult]:
    """`run`'s cells, then its permutation control: the same protocol rerun (`complete=False`: what its AUC
    needs) on `permutations` label permutations between patients, the same permutations for every cell.
    The null is compared with the AUC the rerun's procedure gives on the real labels (for oof: its first
    repeat, the folds the reruns use)."""
    results = run(data, cells, config, precomputed_kernels)
    live = [result.cell for result in results if result.status == "ok"]
    if config.permutations == 0 or not live:
        return results
    quick = config.model_copy(update={"bootstrap": 0, "permutations": 0})
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0x9E4]))
    null: dict[GridCell, list[float]] = {cell: [] for cell in live}
    unconverged: dict[GridCell, int] = dict.fromkeys(live, 0)
    started = time.perf_counter()
    # The reruns fit the same, already validated matrices: sklearn's input checks are skipped (their share of a
    # rerun: docs/benchmarks.md, "Shared-fit engine").
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        null_runs = [run(replace(data, y=permute_labels_by_patient(data.y, data.groups, rng)), live, quick,
                         precomputed_kernels, complete=False) for _ in range(config.permutations)]
    for reruns in null_runs:
        for rerun in reruns:
            ok = rerun.status == "ok" and rerun.auc is not None
            null[rerun.cell].append(float(rerun.auc) if ok else float("nan"))
            unconverged[rerun.cell] += rerun.unconverged_fits
    seconds = (time.perf_counter() - started) / len(live)
    for result in results:
        if result.cell in null:
            values = np.asarray(null[result.cell])
            finite = values[np.isfinite(values)]
            result.permutations = int(finite.size)
            result.null_aucs = [float(v) for v in values]
            result.null_auc_mean = float(finite.mean()) if finite.size else None
            result.null_auc_q95 = float(np.percentile(finite, 95)) if finite.size else None
            result.permutation_p = permutation_p_value(result.first_repeat_auc, finite)
            result.control_seconds = seconds
            result.unconverged_fits += unconverged[result.cell]
    return results


__all__ = ["ProtocolRun", "with_permutation_control"]
