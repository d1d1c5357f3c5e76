"""Nested selection: the best cell chosen inside each training fold is not inflated by the choice."""

from __future__ import annotations

import numpy as np

from mammo_ray.classify import evaluate_cells
from mammo_ray.classify.cells import grid_cells
from mammo_ray.classify.selection import select_inside
from mammo_ray.classify.synthetic import embedding_table, noise_table
from mammo_ray.config import GridConfig

CONFIG = GridConfig(protocols=["leak_free"], permutations=0, bootstrap=200, oof={"repeats": 2})


def _grid(data):
    results = evaluate_cells(data, grid_cells(CONFIG, [data.extractor]), CONFIG)
    assert all(r.status == "ok" and len(r.inner_aucs) == 10 for r in results)
    (selected,) = select_inside(results, {data.extractor: data}, CONFIG)
    return results, selected


def test_on_noise_the_chosen_best_is_chance_while_the_best_after_the_fact_looks_better():
    results, selected = _grid(noise_table(160, 64, 40, seed=3))
    assert (selected.selection, selected.evaluation, selected.n_test) == ("selected", "oof", 160)
    assert selected.cv_folds == CONFIG.oof.folds == 5 != CONFIG.cv_folds  # the folds it used, not the paper's
    assert abs(selected.auc - 0.5) < 0.1 and selected.auc_ci_low < 0.5 < selected.auc_ci_high
    assert max(r.auc for r in results) > selected.auc  # picking after the fact is optimistic
    assert len(selected.test_scores) == 2 * 160


def test_with_signal_the_chosen_best_finds_it_and_names_what_it_chose():
    import json

    results, selected = _grid(embedding_table(160, 64, seed=1, signal=1.0))
    assert selected.auc > 0.7 and selected.auc <= max(r.auc for r in results) + 1e-9
    chosen = json.loads(selected.cell_config)["chosen"]
    assert sum(chosen.values()) == 10 and set(chosen) <= {r.cell.label.split("/", 2)[2] for r in results}
    assert np.isfinite(selected.balanced_accuracy) and selected.interval == "patient bootstrap"
