"""The negative control of every protocol: the same protocol rerun on label permutations between patients.

Contract: `with_permutation_control(run, ...)` returns `run`'s results with, per live cell, its
`permutations` null AUCs (each patient's images keep one label together; the same permutations for every
cell), their mean and 95th percentile, and a permutation p-value of the cell's first-repeat AUC. The reruns
ask `run` for what their AUC needs only (`complete=False`: no CV, no bootstrap). Sequential (the default,
`grid.control_stop`): a cell leaves the reruns once its p-value is decided (`sequential_p_value`), which
spends the permutations where the decision is open; the permutations are drawn in the same order either way,
so a cell's null is a prefix of the fixed one's. On no signal the paper
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
from scipy.stats import beta

from mammo_ray.classify.data import CellResult, GridData
from mammo_ray.classify.stats import permutation_p_value, permute_labels_by_patient
from mammo_ray.config.grid import GridCell, GridConfig

#: The sequential control's rules: stop a cell after this many null AUCs at or above its own (Besag & Clifford
#: 1991, "Sequential Monte Carlo p-values": p = EXCEEDANCES / reruns, exact for that stopping rule) ...
EXCEEDANCES = 10
#: ... or once the Clopper-Pearson upper bound of its p at this confidence is below the level the report reads p
#: at (with no exceedance: after 59 reruns), p then (1 + exceedances) / (1 + reruns).
LEVEL, CONFIDENCE = 0.05, 0.95


def sequential_p_value(observed: float, null: Sequence[float], limit: int) -> float | None:
    """The p-value of `observed` once the null AUCs so far (`null`, NaN for a failed rerun) decide it, else None
    (go on); at `limit` reruns, the fixed test's p."""
    finite = np.asarray([value for value in null if np.isfinite(value)], dtype=np.float64)
    if len(null) >= limit:
        return permutation_p_value(observed, finite)
    if not np.isfinite(observed) or finite.size == 0:
        return None
    exceeding = int(np.sum(finite >= observed))
    if exceeding >= EXCEEDANCES:
        return exceeding / finite.size
    if float(beta.ppf(CONFIDENCE, exceeding + 1, finite.size - exceeding)) < LEVEL:
        return (1 + exceeding) / (1 + finite.size)
    return None


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
    observed = {result.cell: result.first_repeat_auc for result in results if result.cell in live}
    null: dict[GridCell, list[float]] = {cell: [] for cell in live}
    unconverged: dict[GridCell, int] = dict.fromkeys(live, 0)
    decided: dict[GridCell, float] = {}
    open_cells = list(live)
    started = time.perf_counter()
    # The reruns fit the same, already validated matrices: sklearn's input checks are skipped (their share of a
    # rerun: docs/benchmarks.md, "Shared-fit engine").
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for _ in range(config.permutations):
            permuted = replace(data, y=permute_labels_by_patient(data.y, data.groups, rng))
            for rerun in run(permuted, open_cells, quick, precomputed_kernels, complete=False):
                ok = rerun.status == "ok" and rerun.auc is not None
                null[rerun.cell].append(float(rerun.auc) if ok else float("nan"))
                unconverged[rerun.cell] += rerun.unconverged_fits
            if config.control_stop == "sequential":
                for cell in list(open_cells):
                    p_value = sequential_p_value(_finite(observed[cell]), null[cell], config.permutations)
                    if p_value is not None:
                        decided[cell] = p_value
                        open_cells.remove(cell)
                if not open_cells:
                    break
    seconds = (time.perf_counter() - started) / len(live)
    for result in results:
        if result.cell in null:
            values = np.asarray(null[result.cell])
            finite = values[np.isfinite(values)]
            result.permutations = int(finite.size)
            result.null_aucs = [float(v) for v in values]
            result.null_auc_mean = float(finite.mean()) if finite.size else None
            result.null_auc_q95 = float(np.percentile(finite, 95)) if finite.size else None
            result.permutation_p = decided.get(result.cell, permutation_p_value(_finite(result.first_repeat_auc),
                                                                                finite))
            result.control_seconds = seconds
            result.unconverged_fits += unconverged[result.cell]
    return results


def _finite(value: float | None) -> float:
    return float("nan") if value is None else float(value)


__all__ = ["ProtocolRun", "sequential_p_value", "with_permutation_control"]
