"""The two protocols without Ray: the paper's leaks reproduced and measured, the leak-free default."""

from __future__ import annotations

import json

import numpy as np
import pytest
from imblearn.pipeline import Pipeline
from sklearn.base import clone

from mammo_ray.classify import GridData, build_pipeline, evaluate_cell, evaluate_cells
from mammo_ray.classify.cells import grid_cells
from mammo_ray.classify.engine import KernelCache
from mammo_ray.classify.estimators import LassoSelector, NystroemSVC, make_classifier, svc_gamma
from mammo_ray.classify.splits import leak_free_folds, leak_free_holdout, paper_folds, paper_holdout
from mammo_ray.classify.synthetic import cohort_feature_table, noise_table
from mammo_ray.config import GridCell, GridConfig

CONFIG = GridConfig(extractors=["noise"], bootstrap=200, evaluation="holdout", permutations=0)


@pytest.fixture(scope="module")
def noise() -> GridData:
    """The INbreast shape with no signal at all: 410 x 2048, 310 negatives and 100 positives."""
    return noise_table(410, 2048, 100, seed=0)


def _cell(selection="none", balancing="none", classifier="svm_linear", protocol="leak_free", extractor="noise"):
    return GridCell(extractor, selection, balancing, classifier, protocol)


def test_pure_noise_leak_free_is_chance_and_paper_with_smote_is_not(noise):
    assert noise.X.shape == (410, 2048) and (noise.n_positive, noise.n_rows - noise.n_positive) == (100, 310)
    cells = [_cell(balancing=b, protocol=p) for p in ("leak_free", "paper") for b in ("none", "smote")]
    results = {(r.protocol, r.balancing): r for r in evaluate_cells(noise, cells, CONFIG)}
    assert all(r.status == "ok" for r in results.values()), [r.error for r in results.values()]

    for balancing in ("none", "smote"):
        honest = results[("leak_free", balancing)]
        assert abs(honest.cv_balanced_accuracy_mean - 0.5) < 0.06, honest.cv_fold_scores
        assert abs(honest.auc - 0.5) < 0.15 and honest.auc_ci_low < 0.5 < honest.auc_ci_high
    # The paper's protocol: SMOTE on the whole set, folds over (synthetic) images. A plain linear SVM
    # "detects" cancer in pure noise.
    leaky = results[("paper", "smote")]
    assert leaky.cv_balanced_accuracy_mean > 0.85, leaky.cv_fold_scores
    assert leaky.auc > 0.85 and leaky.auc_ci_low > 0.75
    assert (leaky.n_train + leaky.n_test, leaky.n_test) == (620, 205)  # the paper's 1/205 denominators
    assert (results[("paper", "none")].n_test, results[("leak_free", "none")].n_features) == (136, 2048)
    # Without SMOTE the paper's folds over images do not leak on noise (nothing to copy).
    assert abs(results[("paper", "none")].cv_balanced_accuracy_mean - 0.5) < 0.08


def test_lasso_on_all_data_leaks_too(noise):
    paper, honest = evaluate_cells(noise, [_cell("lasso", protocol="paper"), _cell("lasso")], CONFIG)
    assert paper.cv_balanced_accuracy_mean > 0.8  # features chosen with the test rows' labels
    assert abs(honest.cv_balanced_accuracy_mean - 0.5) < 0.08
    assert 100 < paper.n_features < 400 and 100 < honest.n_features < 400


@pytest.mark.parametrize("evaluation", ["holdout", "oof"])
def test_shared_fits_give_the_numbers_of_one_pipeline_per_cell(evaluation):
    """The stage's engine (shared scaler/Lasso/SMOTE per fold, one Gram matrix per fold for both SVMs)
    against the notebook way (a fresh imblearn Pipeline with SVC(kernel=...) per fold and cell), the
    permutation control included."""
    data = noise_table(160, 40, 45, seed=4)
    config = GridConfig(extractors=["noise"], bootstrap=50, cv_folds=5, evaluation=evaluation, permutations=2,
                        oof={"repeats": 2, "folds": 3, "threshold_folds": 2})
    cells = grid_cells(config, ["noise"])
    shared = evaluate_cells(data, cells, config)
    plain = evaluate_cells(data, cells, config, precomputed_kernels=False)
    for cell, fast, unkernelled in zip(cells, shared, plain, strict=True):
        slow = evaluate_cell(data, cell, config)
        assert fast.status == slow.status == "ok", (fast.error, slow.error)
        assert unkernelled.cv_fold_scores == slow.cv_fold_scores and unkernelled.auc == slow.auc  # bit for bit
        # Precomputed kernels: the same libsvm problem, BLAS rounding only.
        assert fast.cv_fold_scores == pytest.approx(slow.cv_fold_scores, abs=1e-12), cell
        assert (fast.auc, fast.accuracy, fast.threshold) == pytest.approx(
            (slow.auc, slow.accuracy, slow.threshold), abs=1e-9), cell
        assert fast.n_features == slow.n_features and fast.cell_hash == slow.cell_hash and fast.cell == cell
        assert fast.null_aucs == pytest.approx(slow.null_aucs, abs=1e-9) and len(fast.null_aucs) == 2
        assert fast.evaluation == (evaluation if cell.protocol == "leak_free" else "holdout")


def test_kernel_cache_matches_libsvm_kernels():
    from sklearn.metrics.pairwise import rbf_kernel
    from sklearn.svm import SVC

    rng = np.random.default_rng(0)
    X, Z = rng.standard_normal((50, 7)), rng.standard_normal((9, 7))
    y = (X[:, 0] > 0).astype(int)
    cache = KernelCache(X, Z)
    gamma = svc_gamma(cache.X_fit, "scale")
    assert gamma == pytest.approx(1 / (7 * X.var()))
    fit, check = cache.rbf(gamma)
    assert fit == pytest.approx(rbf_kernel(X, X, gamma=gamma)) and check == pytest.approx(rbf_kernel(Z, X, gamma=gamma))
    for kernel in ("linear", "rbf"):
        direct = SVC(kernel=kernel).fit(X, y).decision_function(Z)
        assert cache.svc_scores(SVC(kernel=kernel), y) == pytest.approx(direct, abs=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_gamma_for_libsvm_nystroem_and_the_kernel_cache(dtype):
    from sklearn.svm import SVC

    rng = np.random.default_rng(3)
    X = (rng.standard_normal((40, 6)) * 3.0).astype(dtype)
    y = (X[:, 0] > 0).astype(int)
    for gamma in ("scale", "auto", 0.25):
        # libsvm works on float64 (as KernelCache does); Nystroem on the array it is given.
        assert svc_gamma(X.astype(np.float64), gamma) == SVC(kernel="rbf", gamma=gamma).fit(X, y)._gamma
        assert NystroemSVC(gamma=gamma, n_components=10).fit(X, y).gamma_ == svc_gamma(X, gamma)
    assert svc_gamma(np.ones((5, 3), dtype), "scale") == 1.0  # zero variance: sklearn's fallback


def test_leak_free_pipeline_steps_and_patient_grouping():
    pipeline, note = build_pipeline(_cell("lasso", "smote", "svm_rbf"), CONFIG, n_rows=410)
    assert isinstance(pipeline, Pipeline) and note == "exact"
    assert [name for name, _ in pipeline.steps] == ["scale", "select", "balance", "classify"]

    data = noise_table(200, 8, 50, seed=1, images_per_patient=4)
    train, test = leak_free_holdout(data.y, data.groups, CONFIG)
    assert not set(data.groups[train]) & set(data.groups[test])
    assert 0.25 < len(test) / len(data.y) < 0.42
    for fit_rows, check_rows in leak_free_folds(data.y[train], data.groups[train], CONFIG):
        assert not set(data.groups[train][fit_rows]) & set(data.groups[train][check_rows])
    # The paper's splits ignore patients: with 4 images per patient, patients straddle the split.
    p_train, p_test = paper_holdout(data.y, CONFIG)
    assert set(data.groups[p_train]) & set(data.groups[p_test])
    assert len(paper_folds(data.y, CONFIG)) == 10


def test_leak_free_threshold_comes_from_training_scores_only():
    data = noise_table(240, 16, 60, seed=2)
    holdout = GridConfig(bootstrap=0, evaluation="holdout", permutations=0)
    result = evaluate_cell(data, _cell(classifier="logreg"), holdout)
    assert result.status == "ok" and result.threshold != 0.0
    paper = evaluate_cell(data, _cell(classifier="logreg", protocol="paper"), GridConfig(bootstrap=0, permutations=0))
    assert paper.threshold == 0.0 and np.isnan(paper.auc_ci_low)


def test_signal_in_the_synthetic_cohort_is_found_by_the_leak_free_protocol():
    """Hand-made intensity/blob features of 240 synthetic mammograms (60 women): real signal."""
    data = cohort_feature_table(patients=60, seed=3, rows=128)
    assert data.X.shape == (240, 20) and data.n_positive == 60
    config = GridConfig(bootstrap=300, permutations=20)  # out-of-fold, 5 x 5, by patient; p >= 1/21
    cells = [c for c in grid_cells(config, [data.extractor]) if c.protocol == "leak_free"]
    results = evaluate_cells(data, cells, config)
    assert all(r.status == "ok" and r.evaluation == "oof" for r in results)
    assert min(r.auc for r in results) > 0.7
    # The negative control: no permuted labelling reaches the real AUC, the null sits at chance.
    assert max(r.permutation_p for r in results) < 0.05
    assert all(abs(r.null_auc_mean - 0.5) < 0.06 and r.null_auc_q95 < r.first_repeat_auc for r in results)
    # In-fold Platt calibration: better than the constant prior (Brier 0.25 * 0.75), probabilities in [0, 1].
    assert all(r.brier < 0.1875 and 0 <= min(r.test_probabilities) <= max(r.test_probabilities) <= 1
               for r in results)
    assert np.median([r.cv_balanced_accuracy_mean for r in results]) > 0.62
    best = max(results, key=lambda r: r.cv_balanced_accuracy_mean)
    assert best.cv_balanced_accuracy_mean > 0.7 and best.auc_ci_low > 0.55


def test_a_failing_cell_is_a_row_with_its_error_and_the_others_still_run():
    data = noise_table(120, 10, 30, seed=5)
    config = GridConfig(bootstrap=0, cv_folds=3, permutations=0, smote={"k_neighbors": 40})  # k > positives
    cells = [_cell(balancing="smote"), _cell(), _cell(balancing="smote", protocol="paper")]
    failed, ok, paper_failed = evaluate_cells(data, cells, config)
    assert failed.status == "failed" and "n_neighbors" in failed.error and failed.auc is None
    assert ok.status == "ok"
    assert paper_failed.status == "failed"


def test_lasso_selector_keeps_nonzero_coefficients_or_the_most_correlated_features():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 30))
    y = (X[:, 3] + 0.5 * X[:, 7] > 0).astype(int)
    selector = LassoSelector(alpha=0.05).fit(X, y)
    assert selector.get_support()[[3, 7]].all() and selector.n_features_selected_ < 30
    empty = LassoSelector(alpha=100.0, min_features=2).fit(X, y)
    assert empty.fallback_ and set(np.flatnonzero(empty.get_support())) == {3, 7}
    assert LassoSelector(alpha="cv", cv=3).fit(X, y).alpha_ > 0


def test_scale_path_replaces_kernel_svms_above_the_row_limit_and_can_refuse():
    config = GridConfig(scale={"max_rows_exact": 100}, permutations=0)
    _, exact = make_classifier("svm_rbf", config, 100)
    model, note = make_classifier("svm_rbf", config, 101)
    assert exact == "exact" and isinstance(model, NystroemSVC) and note.startswith("Nystroem(500)+LinearSVC")
    assert make_classifier("svm_linear", config, 101)[1].startswith("LinearSVC")
    assert make_classifier("logreg", config, 10**6)[1] == "exact"

    data = noise_table(240, 12, 60, seed=6)
    data = GridData("noise", data.X + 2.0 * data.y[:, None], data.y, data.groups)  # separable-ish
    small = GridConfig(bootstrap=0, cv_folds=3, permutations=0,
                       scale={"max_rows_exact": 100, "nystroem_components": 50})
    result = evaluate_cell(data, _cell(classifier="svm_rbf"), small)
    assert result.status == "ok" and result.scale_path.startswith("Nystroem(50)") and result.auc > 0.9

    refuse = GridConfig(bootstrap=0, cv_folds=3, permutations=0, scale={"max_rows_exact": 100, "policy": "refuse"})
    refused = evaluate_cells(data, [_cell(classifier="svm_rbf"), _cell(classifier="logreg")], refuse)
    assert refused[0].status == "failed" and "scale.max_rows_exact=100" in refused[0].error
    assert refused[1].status == "ok"


def test_estimators_are_reproducible():
    data = noise_table(150, 20, 40, seed=7)
    cell = _cell("lasso", "smote", "svm_rbf")
    first, second = evaluate_cell(data, cell, CONFIG), evaluate_cell(data, cell, CONFIG)
    assert first.cv_fold_scores == second.cv_fold_scores and first.auc_ci_low == second.auc_ci_low
    pipeline, _ = build_pipeline(cell, CONFIG, 150)
    assert clone(pipeline).get_params()["balance__random_state"] == CONFIG.seed


def test_isotonic_calibration_is_fitted_in_fold_and_recorded():
    """oof.calibration: isotonic steps instead of Platt's curve, the same scores and AUC, other probabilities."""
    data = cohort_feature_table(patients=60, seed=3, rows=128)
    cell = _cell(classifier="logreg")
    platt, isotonic = (evaluate_cell(data, cell, GridConfig(bootstrap=0, permutations=0, oof={"repeats": 2,
                                                                                           "calibration": method}))
                       for method in ("platt", "isotonic"))
    assert platt.test_scores == isotonic.test_scores and platt.auc == isotonic.auc
    assert platt.test_probabilities != isotonic.test_probabilities
    assert 0 <= min(isotonic.test_probabilities) <= max(isotonic.test_probabilities) <= 1
    assert isotonic.brier < 0.1875  # better than the prior here too
    assert json.loads(isotonic.cell_config)["oof"]["calibration"] == "isotonic"
    assert isotonic.cell_hash != platt.cell_hash
    with pytest.raises(ValueError, match="calibration"):
        GridConfig(oof={"calibration": "beta"})
