"""The negative control on pure noise: the paper protocol's null is far above chance, leak_free's is at it."""

from __future__ import annotations

import numpy as np

from mammo_ray.classify import GridData, evaluate_cells
from mammo_ray.classify.cells import grid_cells
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
                        oof={"repeats": 2, "threshold_folds": 2}, seed=7)
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
