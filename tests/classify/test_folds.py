"""Each grid row names the folds its own protocol used, and a split into more folds than there are patients
(or images) is refused with the counts, not with scikit-learn's message."""

from __future__ import annotations

import numpy as np
import pytest

from mammo_ray.classify.cells import cv_folds_of, grid_cells
from mammo_ray.classify.data import GridData
from mammo_ray.classify.protocols import evaluate_cells
from mammo_ray.classify.synthetic import noise_table
from mammo_ray.config.grid import GridConfig

ONE_PIPELINE = {"selection": ["none"], "balancing": ["none"], "classifiers": ["logreg"], "permutations": 0,
                "bootstrap": 0}


def _two_patients() -> GridData:
    """Eight images of two women, one with a positive breast, one without."""
    rng = np.random.default_rng(0)
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=np.int8)
    return GridData("e", rng.normal(size=(8, 4)).astype(np.float32), y, np.repeat([0, 1], 4))


@pytest.mark.parametrize(("evaluation", "leak_free"), [
    ("oof", "too few patients for 5 folds (grid.oof.folds): 2 labelled patients (1 with a positive image, 1 with a "
            "negative one)"),
    ("holdout", "too few patients for 3 folds (grid.test_fraction): 2 labelled patients (1 with a positive image, "
                "1 with a negative one)"),
])
def test_two_labelled_patients_are_too_few_for_the_folds(evaluation: str, leak_free: str) -> None:
    config = GridConfig(extractors=["e"], evaluation=evaluation, **ONE_PIPELINE)
    results = {result.protocol: result for result in evaluate_cells(_two_patients(), grid_cells(config, ["e"]), config)}
    assert results["leak_free"].status == "failed" and results["leak_free"].error == f"ValueError: {leak_free}"
    assert results["paper"].error == ("ValueError: too few images for 10 folds (grid.cv_folds): 8 labelled images "
                                      "(4 positive, 4 negative)")


def test_the_inner_folds_of_a_holdout_need_their_patients_too() -> None:
    config = GridConfig(extractors=["e"], evaluation="holdout", protocols=["leak_free"], cv_folds=5, **ONE_PIPELINE)
    data = noise_table(24, 4, 8, images_per_patient=4, extractor="e")  # 6 patients: 4 left to train on
    (result,) = evaluate_cells(data, grid_cells(config, ["e"]), config)
    assert result.error.startswith("ValueError: too few patients for 5 folds (grid.cv_folds): 4 labelled patients")


def test_each_row_names_the_folds_its_protocol_used() -> None:
    config = GridConfig(extractors=["noise"], cv_folds=4, oof={"folds": 3, "repeats": 2}, **ONE_PIPELINE)
    results = {r.protocol: r for r in evaluate_cells(noise_table(80, 6, 24), grid_cells(config, ["noise"]), config)}
    assert all(result.status == "ok" for result in results.values())
    assert results["leak_free"].cv_folds == 3 and len(results["leak_free"].cv_fold_scores) == 3 * 2
    assert results["paper"].cv_folds == 4 and len(results["paper"].cv_fold_scores) == 4
    holdout = config.model_copy(update={"evaluation": "holdout"})
    assert [cv_folds_of(holdout, protocol) for protocol in ("leak_free", "paper")] == [4, 4]
