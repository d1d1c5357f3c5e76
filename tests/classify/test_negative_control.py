"""The negative control on pure noise: the paper protocol's null is far above chance, leak_free's is at it."""

from __future__ import annotations

import numpy as np

from mammo_ray.classify import GridData, evaluate_cells
from mammo_ray.classify.cells import cell_settings, grid_cells
from mammo_ray.classify.control import EXCEEDANCES, sequential_p_value
from mammo_ray.classify.stats import holm
from mammo_ray.config import GridConfig


def _inbreast_shaped_noise(seed: int = 0) -> GridData:
    """410 x 2048 standard normal features, 310 negatives and 100 positives, 108 patients of 3-4 images."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((410, 2048), dtype=np.float32)
    y = np.zeros(410, dtype=np.int8)
    y[rng.permutation(410)[:100]] = 1
    groups = rng.permutation(np.arange(410) % 108)
    return GridData("noise", X, y, groups.astype(np.int64))


def test_on_noise_the_null_shows_the_leak_and_nothing_is_significant():
    data = _inbreast_shaped_noise()
    assert (data.n_rows, data.n_positive, len(np.unique(data.groups))) == (410, 100, 108)
    config = GridConfig(extractors=["noise"], classifiers=["svm_linear"], permutations=20, bootstrap=200,
                        oof={"repeats": 2, "threshold_folds": 2}, seed=7, control_stop="fixed")
    results = evaluate_cells(data, grid_cells(config, ["noise"]), config)
    assert all(r.status == "ok" for r in results), [r.error for r in results]
    leak_free = [r for r in results if r.protocol == "leak_free"]
    paper = {(r.selection, r.balancing): r for r in results if r.protocol == "paper"}

    # leak_free: the protocol on no signal gives chance, and no cell survives Holm's adjustment.
    for result in leak_free:
        assert result.evaluation == "oof" and result.permutations == 20
        assert abs(result.null_auc_mean - 0.5) < 0.05, result.cell
        assert result.auc_ci_low < 0.5 < result.auc_ci_high, result.cell
    assert (holm(np.array([r.permutation_p for r in leak_free])) > 0.05).all()

    # paper: SMOTE or Lasso before the split "detects" cancer in pure noise, and so does its own null,
    # so the published-style numbers are indistinguishable from it.
    for key in [("none", "smote"), ("lasso", "none"), ("lasso", "smote")]:
        assert paper[key].auc > 0.85 and paper[key].null_auc_mean >= 0.85, key
        assert paper[key].permutation_p > 0.05, key
    assert abs(paper[("none", "none")].null_auc_mean - 0.5) < 0.1  # nothing copied, nothing selected: no leak

    # Same seeds, same numbers.
    again = evaluate_cells(data, [leak_free[0].cell], config)[0]
    assert (again.auc, again.null_aucs, again.auc_ci_low) == (leak_free[0].auc, leak_free[0].null_aucs,
                                                              leak_free[0].auc_ci_low)


def test_the_sequential_control_stops_where_the_decision_is_made_and_decides_as_the_fixed_one():
    """A cell with signal and one without, 120 permutations at most: the sequential control spends far fewer on
    both (the null cell stops after 10 exceedances, the signal cell once p is surely below 0.05), each cell's
    null is a prefix of the fixed control's, and both controls decide alike at the 0.05 level."""
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(50), 2)
    y = (rng.random(50) < 0.4).repeat(2).astype(np.int8)
    X = rng.standard_normal((100, 12)).astype(np.float32)
    signal = GridData("signal", np.c_[X[:, :6] + 1.5 * y[:, None], X[:, 6:]], y, groups)
    noise = GridData("noise", X, y, groups)
    base = {"protocols": ["leak_free"], "selection": ["none"], "balancing": ["none"], "classifiers": ["logreg"],
            "permutations": 120, "bootstrap": 0, "oof": {"repeats": 1, "threshold_folds": 2}, "seed": 1}
    # The stopping rule changes the recorded numbers, so it is part of every cell's settings (and journal key).
    (cell,) = grid_cells(GridConfig(**base), ["signal"])
    assert cell_settings(GridConfig(**base), cell) != cell_settings(GridConfig(**base, control_stop="fixed"), cell)
    for data in (signal, noise):
        cells = grid_cells(GridConfig(**base), [data.extractor])
        (fixed,) = evaluate_cells(data, cells, GridConfig(**base, control_stop="fixed"))
        (sequential,) = evaluate_cells(data, cells, GridConfig(**base))
        assert fixed.permutations == 120 and 10 <= sequential.permutations < 120, data.extractor
        assert sequential.null_aucs == fixed.null_aucs[:sequential.permutations]  # the same draws, in order
        assert (sequential.permutation_p < 0.05) == (fixed.permutation_p < 0.05), data.extractor
    assert sequential.permutation_p == EXCEEDANCES / sequential.permutations  # the noise cell: Besag-Clifford


def test_sequential_p_values_follow_their_stopping_rules():
    assert sequential_p_value(0.9, [0.5] * 58, 100) is None  # 0 of 58: not yet surely below 0.05
    assert sequential_p_value(0.9, [0.5] * 59, 100) == 1 / 60  # 0 of 59: the upper bound is below 0.05
    assert sequential_p_value(0.6, [0.7] * 10 + [0.5] * 5, 100) == 10 / 15  # ten at or above: Besag-Clifford
    assert sequential_p_value(0.6, [0.7] * 9 + [0.5] * 20, 100) is None
    assert sequential_p_value(0.6, [0.7] * 3 + [0.5] * 97, 100) == 4 / 101  # the limit: the fixed test's p
    assert sequential_p_value(float("nan"), [0.5] * 20, 100) is None
