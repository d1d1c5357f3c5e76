"""The two evaluation protocols of the classifier grid (docs/design.md, "The paper's numbers"), pure
scikit-learn / imbalanced-learn.

``paper`` reproduces what the paper's Table 2 numbers show, step by step (each step is a leak, kept on
purpose so that the published numbers can be reproduced and the gap measured):

  1. standardise every feature on ALL rows (test rows included);
  2. balancing=smote: SMOTE on the WHOLE data set (310 + 100 -> 310 + 310 on INbreast), so synthetic
     interpolations of test images, and of their neighbours, land in training;
  3. selection=lasso: the Lasso is fit on ALL (oversampled) rows, test rows included;
  4. held-out split: ``test_fraction`` (0.33, as sklearn's ``train_test_split(test_size=0.33)`` gives
     136 of 410 and 205 of 620, the denominators of the paper's accuracies), stratified, over images
     of the (oversampled) data, ignoring patients;
  5. CV: ``cv_folds`` StratifiedKFold over images of the whole (oversampled) data set, ignoring patients;
     the fold score is the balanced accuracy of the classifier's own decision (score > 0);
  6. held-out metrics: the classifier fit on the training split, its own decision (score > 0).

``leak_free`` (the default) touches an image only to score it with a pipeline that never saw it. With
``evaluation: oof`` (the default):

  1. ``oof.repeats`` x ``oof.folds`` StratifiedGroupKFold by patient over all images; per outer fold an
     imblearn-style pipeline StandardScaler -> Lasso selection -> SMOTE -> classifier is fitted on the
     other folds and scores the fold's images, so every image gets one out-of-fold score per repeat;
  2. threshold: per outer fold, the best balanced accuracy on the pooled scores of ``oof.threshold_folds``
     inner folds of its training rows (nothing of the outer fold's images);
  3. calibration: per outer fold, Platt scaling (or isotonic, `oof.calibration`) fitted on the same inner
     scores maps the fold's scores to probabilities (the Brier score is computed on them);
  4. metrics per repeat over all images (AUC of the pooled scores; accuracy, balanced accuracy,
     sensitivity, specificity, precision at each fold's threshold; Brier), averaged over repeats; the
     AUC interval resamples patients (a patient-cluster bootstrap, `classify.stats`).

With ``evaluation: holdout``:

  1. held-out split: StratifiedGroupKFold(round(1 / test_fraction)) by patient, first fold = test;
  2. CV: ``cv_folds`` StratifiedGroupKFold by patient over the training split; inside each training
     fold an imblearn Pipeline fits StandardScaler -> Lasso selection -> SMOTE -> classifier, so
     scaling, selection and synthetic rows only ever see that fold's training rows; the fold score is
     the balanced accuracy of the classifier's own decision (score > 0) on the fold's validation rows;
  3. threshold: the one maximising balanced accuracy on the pooled out-of-fold scores of step 2
     (training data only);
  4. held-out metrics: the pipeline refit on the whole training split scores the test split, positives
     are scores >= the threshold of step 3.

Both protocols carry a negative control: the protocol rerun on ``permutations`` label permutations between
patients (each patient's images kept together), its null AUCs, their mean and 95th percentile, and a
permutation p-value. On no signal the paper protocol reaches AUC near 1 (SMOTE and Lasso before the split),
leak_free near 0.5: the null shows how much of a result is the protocol's.

Both protocols report: n_features kept (of the final selector: on all rows for paper, on the training
split for leak_free), CV balanced accuracy (mean, population std, per fold), held-out accuracy,
balanced accuracy, precision, recall, AUC (from the decision scores, threshold-free) and its
percentile bootstrap interval over held-out rows.

Two implementations give the same numbers: :func:`evaluate_cell` runs one cell the way a notebook
does (a fresh imblearn Pipeline per fold), :func:`evaluate_cells` runs many cells of one table and
protocol at once, fitting the scaler, Lasso and SMOTE once per fold and sharing them between the cells
that have the same steps. A failing cell becomes a result with status 'failed' and its error; it never
stops the other cells. The data types they work on (GridData, CellResult) are in `classify.data`.

Why a hand-written engine, measured (`jobs/benchmark.py engine`): imbalanced-learn's own caching,
`Pipeline(memory=joblib.Memory(...))` per cell, gives the same numbers (bit for bit against the engine
without kernels) but takes 9.8 s / 11.6 s for the 12 leak_free cells of a 410 x 2048 noise / embedding-like
table, against 3.5 s / 3.7 s here (2.8x / 3.2x; one BLAS thread, busy 2-core machine): the cache loads
fitted steps from disk for every cell, and cannot share the SVMs' Gram matrix. So the engine stays;
tests/classify/test_protocols.py checks it against the plain pipelines.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import sklearn
from imblearn.over_sampling import SMOTE
from imblearn.pipeline import Pipeline
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from mammo_ray.classify.data import CellResult, GridData
from mammo_ray.classify.estimators import LassoSelector, make_classifier, svc_gamma
from mammo_ray.classify.levels import level_auc
from mammo_ray.classify.metrics import (
    auc,
    balanced_accuracy,
    best_threshold,
    binary_scores,
    bootstrap_auc_interval,
)
from mammo_ray.classify.stats import patient_bootstrap_auc, permutation_p_value, permute_labels_by_patient
from mammo_ray.config.base import stable_hash
from mammo_ray.config.grid import GridCell, GridConfig


def _new_result(cell: GridCell, data: GridData, config: GridConfig) -> CellResult:
    import json

    settings = config.cell_settings(cell)
    return CellResult(
        **cell.as_dict(), n_rows=data.n_rows, n_positive=data.n_positive, n_dropped_unlabelled=data.n_dropped,
        n_features_in=int(data.X.shape[1]), cv_folds=config.cv_folds_of(cell.protocol),
        cell_config=json.dumps(settings, sort_keys=True), cell_hash=stable_hash(settings),
    )


# ------------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------------


def check_patients(n_splits: int, y: np.ndarray, groups: np.ndarray, key: str) -> None:
    """Refuse a patient-grouped split into more folds than there are patients, naming the counts and the
    setting (`key`); scikit-learn's own message speaks of groups or class members."""
    patients = len(np.unique(groups))
    if patients < n_splits:
        positive, negative = (len(np.unique(groups[y == label])) for label in (1, 0))
        raise ValueError(f"too few patients for {n_splits} folds ({key}): {patients} labelled patients ({positive} "
                         f"with a positive image, {negative} with a negative one)")


def check_images(n_splits: int, y: np.ndarray, key: str) -> None:
    """Refuse a stratified split over images into more folds than its larger class has images."""
    positive, negative = int(np.sum(y == 1)), int(np.sum(y == 0))
    if max(positive, negative) < n_splits:
        raise ValueError(f"too few images for {n_splits} folds ({key}): {len(y)} labelled images ({positive} "
                         f"positive, {negative} negative)")


def leak_free_holdout(y: np.ndarray, groups: np.ndarray, config: GridConfig) -> tuple[np.ndarray, np.ndarray]:
    """Patient-grouped, stratified held-out split: the first fold of StratifiedGroupKFold(round(1/f))."""
    n_splits = max(2, round(1.0 / config.test_fraction))
    check_patients(n_splits, y, groups, "grid.test_fraction")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=config.seed)
    train, test = next(splitter.split(np.zeros(len(y)), y, groups))
    return np.sort(train), np.sort(test)


def leak_free_folds(y: np.ndarray, groups: np.ndarray, config: GridConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """`cv_folds` StratifiedGroupKFold folds by patient (indices into the given rows)."""
    check_patients(config.cv_folds, y, groups, "grid.cv_folds")
    splitter = StratifiedGroupKFold(n_splits=config.cv_folds, shuffle=True, random_state=config.seed)
    return list(splitter.split(np.zeros(len(y)), y, groups))


def paper_holdout(y: np.ndarray, config: GridConfig) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split over images (synthetic SMOTE rows included), as train_test_split does it."""
    train, test = train_test_split(
        np.arange(len(y)), test_size=config.test_fraction, stratify=y, random_state=config.seed
    )
    return np.sort(train), np.sort(test)


def paper_folds(y: np.ndarray, config: GridConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """`cv_folds` StratifiedKFold folds over images of the whole (oversampled) data set."""
    check_images(config.cv_folds, y, "grid.cv_folds")
    splitter = StratifiedKFold(n_splits=config.cv_folds, shuffle=True, random_state=config.seed)
    return list(splitter.split(np.zeros(len(y)), y))


def _smote(config: GridConfig) -> SMOTE:
    return SMOTE(k_neighbors=config.smote.k_neighbors, random_state=config.seed)


def build_pipeline(cell: GridCell, config: GridConfig, n_rows: int) -> tuple[Pipeline, str]:
    """The leak-free imblearn Pipeline of a cell (scale -> [Lasso] -> [SMOTE] -> classifier), its scale note."""
    classifier, note = make_classifier(cell.classifier, config, n_rows)
    steps: list[tuple[str, Any]] = [("scale", StandardScaler())]
    if cell.selection == "lasso":
        steps.append(("select", LassoSelector.from_config(config.lasso)))
    if cell.balancing == "smote":
        steps.append(("balance", _smote(config)))
    steps.append(("classify", classifier))
    return Pipeline(steps), note


# ------------------------------------------------------------------------------------------------
# Results from scores
# ------------------------------------------------------------------------------------------------


def _finish(result: CellResult, fold_scores: list[float], test_rows: np.ndarray, y_test: np.ndarray,
            test_scores: np.ndarray, threshold: float | None, config: GridConfig,
            test_groups: np.ndarray | None = None) -> CellResult:
    """Fill the CV and held-out numbers. threshold None: the classifier's own rule (score > 0). The AUC
    interval resamples the test rows' patients when `test_groups` are given, else the rows (the paper's
    test rows include synthetic SMOTE rows, which belong to no patient)."""
    result.test_rows = [int(row) for row in test_rows]
    result.test_targets = [int(target) for target in y_test]
    result.test_scores = [float(score) for score in test_scores]
    result.cv_fold_scores = [float(s) for s in fold_scores]
    if fold_scores:  # none in the permutation control's reruns
        result.cv_balanced_accuracy_mean = float(np.mean(fold_scores))
        result.cv_balanced_accuracy_std = float(np.std(fold_scores))
    predicted = test_scores > 0 if threshold is None else test_scores >= threshold
    result.threshold = 0.0 if threshold is None else float(threshold)
    held_out = binary_scores(y_test, predicted)
    result.accuracy = held_out["accuracy"]
    result.balanced_accuracy = held_out["balanced_accuracy"]
    result.precision = held_out["precision"]
    result.recall = held_out["recall"]
    result.specificity = held_out["specificity"]
    result.auc = auc(y_test, test_scores)
    result.first_repeat_auc = result.auc
    if test_groups is None:
        result.auc_ci_low, result.auc_ci_high = bootstrap_auc_interval(
            y_test, test_scores, config.bootstrap, config.ci_level, seed=config.seed)
        result.interval = "image bootstrap"
    else:
        result.auc_ci_low, result.auc_ci_high = patient_bootstrap_auc(
            y_test, test_scores, test_groups, config.bootstrap, config.ci_level, seed=config.seed)
        result.interval = "patient bootstrap"
    return result


def _scores(model: Any, X: np.ndarray) -> np.ndarray:
    return np.asarray(model.decision_function(X), dtype=np.float64).ravel()


# ------------------------------------------------------------------------------------------------
# One cell, the notebook way (the reference)
# ------------------------------------------------------------------------------------------------


def evaluate_cell(data: GridData, cell: GridCell, config: GridConfig, blas_threads: int | None = 1) -> CellResult:
    """One cell, everything fit from scratch: a fresh imblearn Pipeline per leak-free fold (the
    notebook way, and the reference the shared engine is tested against).

    `blas_threads`: BLAS/OpenMP threads while fitting (None: the library default). One by default:
    parallelism belongs to the grid (Ray trials); on these small matrices extra BLAS threads cost
    more than they give, and on a busy machine far more.
    """
    if cell.protocol == "paper":  # no pipeline to refit per fold: global steps, then the classifier
        return evaluate_cells(data, [cell], config, precomputed_kernels=False, blas_threads=blas_threads)[0]
    run = _oof_cells if config.evaluation == "oof" else _holdout_cells
    with threadpool_limits(limits=blas_threads):
        return _with_control(partial(run, scorer=_pipeline_rounds), data, [cell], config, False)[0]


def _pipeline_rounds(book: _Cells, X: np.ndarray, y: np.ndarray, rounds: Sequence[tuple[np.ndarray, np.ndarray]],
                     config: GridConfig) -> tuple[dict[GridCell, list[np.ndarray]], dict[GridCell, list[int]]]:
    """`_score_rounds` the notebook way: a fresh imblearn Pipeline per cell and round, nothing shared."""
    scores: dict[GridCell, list[np.ndarray]] = {cell: [] for cell in book.live()}
    kept: dict[GridCell, list[int]] = {cell: [] for cell in book.live()}
    for cell in book.live():
        started = time.perf_counter()
        try:
            template, _ = build_pipeline(cell, config, book.results[cell].n_rows)
            for fit_rows, check_rows in rounds:
                with _counting_unconverged(book.results[cell]):
                    pipeline = clone(template).fit(X[fit_rows], y[fit_rows])
                scores[cell].append(_scores(pipeline, X[check_rows]))
                kept[cell].append(_n_kept(pipeline.named_steps.get("select"), X.shape[1]))
        except Exception as error:  # noqa: BLE001 - a failed cell is a row, not a crashed grid
            book.fail([cell], error)
        finally:
            book.results[cell].classifier_seconds += time.perf_counter() - started
    return scores, kept


@contextlib.contextmanager
def _counting_unconverged(result: CellResult) -> Iterator[None]:
    """Count the ConvergenceWarnings of the classifier fits inside (libsvm or lbfgs stopped at max_iter) in the
    cell's `unconverged_fits` instead of printing them (Lasso's are handled by LassoSelector)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        yield
    result.unconverged_fits += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    for other in (w for w in caught if not issubclass(w.category, ConvergenceWarning)):
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)


def _n_kept(selector: LassoSelector | None, n_in: int) -> int:
    return n_in if selector is None else int(selector.n_features_selected_)


# ------------------------------------------------------------------------------------------------
# Many cells of one table, shared fits
# ------------------------------------------------------------------------------------------------


def evaluate_cells(
    data: GridData, cells: Sequence[GridCell], config: GridConfig,
    on_result: Callable[[CellResult], None] | None = None, precomputed_kernels: bool = True,
    blas_threads: int | None = 1,
) -> list[CellResult]:
    """Every cell of `cells` (all on `data`), sharing fitted scalers, Lasso selectors and SMOTE samples
    between cells that use the same ones, and (precomputed_kernels) one BLAS Gram matrix per fold
    between the exact kernel SVMs (see KernelCache). Results come back in the order of `cells`.
    `blas_threads` as in evaluate_cell."""
    with threadpool_limits(limits=blas_threads):
        return _evaluate_cells(data, cells, config, on_result, precomputed_kernels)


def _evaluate_cells(data: GridData, cells: Sequence[GridCell], config: GridConfig,
                    on_result: Callable[[CellResult], None] | None, precomputed_kernels: bool) -> list[CellResult]:
    results: dict[GridCell, CellResult] = {}
    for protocol in dict.fromkeys(cell.protocol for cell in cells):
        chosen = [cell for cell in cells if cell.protocol == protocol]
        run = _paper_protocol if protocol == "paper" else _leak_free_cells
        for result in run(data, chosen, config, precomputed_kernels):
            results[result.cell] = result
            if on_result is not None:
                on_result(result)
    return [results[cell] for cell in cells]


class _Cells:
    """Per-cell bookkeeping shared by both protocols: classifier templates, live cells, failures."""

    def __init__(self, data: GridData, cells: Sequence[GridCell], config: GridConfig,
                 precomputed_kernels: bool = True) -> None:
        self.precomputed_kernels = precomputed_kernels
        self.results = {cell: _new_result(cell, data, config) for cell in cells}
        self.templates: dict[GridCell, Any] = {}
        for cell in cells:
            try:
                self.templates[cell], self.results[cell].scale_path = make_classifier(
                    cell.classifier, config, data.n_rows
                )
            except Exception as error:  # noqa: BLE001 - a failed fit is its cells' error row, not a crashed grid
                self.results[cell].fail(error)

    def live(self, selection: str | None = None, balancing: str | None = None) -> list[GridCell]:
        return [
            cell for cell, result in self.results.items()
            if result.status == "ok"
            and (selection is None or cell.selection == selection)
            and (balancing is None or cell.balancing == balancing)
        ]

    def wants_kernels(self, cells: Sequence[GridCell]) -> bool:
        return self.precomputed_kernels and any(isinstance(self.templates.get(c), SVC) for c in cells)

    def fail(self, cells: Sequence[GridCell], error: BaseException) -> None:
        for cell in cells:
            self.results[cell].fail(error)

    def fit_score(self, cell: GridCell, X_fit: np.ndarray, y_fit: np.ndarray, X_check: np.ndarray,
                  kernels: KernelCache | None = None) -> np.ndarray | None:
        """Fit the cell's classifier, return its decision scores on X_check (None when it failed).

        An exact kernel SVM given a KernelCache (of the same X_fit, X_check) is fit on the cache's
        precomputed kernel instead: the same libsvm problem, kernel computed once for all the cells
        of this fold that need it.
        """
        started = time.perf_counter()
        try:
            template = self.templates[cell]
            with _counting_unconverged(self.results[cell]):
                if kernels is not None and isinstance(template, SVC) and template.kernel in ("linear", "rbf"):
                    return kernels.svc_scores(template, y_fit)
                model = clone(template).fit(X_fit, y_fit)
            return _scores(model, X_check)
        except Exception as error:  # noqa: BLE001 - a failed fit is its cells' error row, not a crashed grid
            self.results[cell].fail(error)
            return None
        finally:
            self.results[cell].classifier_seconds += time.perf_counter() - started


class KernelCache:
    """Linear and RBF kernels of one (fit rows, check rows) pair, computed once with BLAS.

    libsvm evaluates kernels row by row without BLAS; for dense, wide embeddings (2048 features) that is
    most of an SVC fit. The Gram matrix X_fit X_fit^T (and X_check X_fit^T) is computed once here and
    serves the linear kernel directly and the RBF kernel as exp(-gamma (|x|^2 + |y|^2 - 2 x.y)), the
    formula libsvm uses itself. `SVC(kernel="precomputed")` on these is the same optimisation problem
    as SVC(kernel="linear"/"rbf") on the features: the solutions agree to libsvm's tolerance.
    Memory: n_fit^2 doubles (exact kernels only run up to scale.max_rows_exact rows).
    """

    def __init__(self, X_fit: np.ndarray, X_check: np.ndarray) -> None:
        self.X_fit = np.ascontiguousarray(X_fit, dtype=np.float64)
        self.X_check = np.ascontiguousarray(X_check, dtype=np.float64)
        self._gram: np.ndarray | None = None
        self._cross: np.ndarray | None = None

    def linear(self) -> tuple[np.ndarray, np.ndarray]:
        if self._gram is None:
            self._gram = self.X_fit @ self.X_fit.T
            self._cross = self.X_check @ self.X_fit.T
        return self._gram, self._cross

    def rbf(self, gamma: float) -> tuple[np.ndarray, np.ndarray]:
        gram, cross = self.linear()
        sq_fit = np.einsum("ij,ij->i", self.X_fit, self.X_fit)
        sq_check = np.einsum("ij,ij->i", self.X_check, self.X_check)
        fit = np.exp(-gamma * np.maximum(sq_fit[:, None] + sq_fit[None, :] - 2.0 * gram, 0.0))
        check = np.exp(-gamma * np.maximum(sq_check[:, None] + sq_fit[None, :] - 2.0 * cross, 0.0))
        return fit, check

    def svc_scores(self, template: SVC, y_fit: np.ndarray) -> np.ndarray:
        if template.kernel == "linear":
            fit, check = self.linear()
        else:
            fit, check = self.rbf(svc_gamma(self.X_fit, template.gamma))
        params = {k: v for k, v in template.get_params().items() if k not in ("kernel", "gamma")}
        model = SVC(kernel="precomputed", **params).fit(fit, y_fit)
        return _scores(model, check)


def _score_rounds(book: _Cells, X: np.ndarray, y: np.ndarray, rounds: Sequence[tuple[np.ndarray, np.ndarray]],
                  config: GridConfig) -> tuple[dict[GridCell, list[np.ndarray]], dict[GridCell, list[int]]]:
    """For each (fit rows, check rows) of `rounds`: scale -> [Lasso] -> [SMOTE] -> classifier fitted on the fit
    rows only, every live cell's decision scores on the check rows and the features its selector kept. The
    scaler, each selector and each SMOTE sample are fitted once per round for all the cells that use them. A
    cell that fails stops (book.fail) and keeps the scores of the rounds before."""
    scores: dict[GridCell, list[np.ndarray]] = {cell: [] for cell in book.live()}
    kept: dict[GridCell, list[int]] = {cell: [] for cell in book.live()}
    for fit_rows, check_rows in rounds:
        live = book.live()
        if not live:
            break
        X_fit, y_fit = X[fit_rows], y[fit_rows]
        scaler = StandardScaler().fit(X_fit)
        Z_fit, Z_check = scaler.transform(X_fit), scaler.transform(X[check_rows])
        for selection in dict.fromkeys(cell.selection for cell in live):
            users = book.live(selection=selection)
            S_fit, S_check, n_kept = Z_fit, Z_check, int(X.shape[1])
            if selection == "lasso":
                try:
                    selector = LassoSelector.from_config(config.lasso).fit(Z_fit, y_fit)
                except Exception as error:  # noqa: BLE001 - a failed fit is its cells' error row, not a crashed grid
                    book.fail(users, error)
                    continue
                S_fit, S_check = selector.transform(Z_fit), selector.transform(Z_check)
                n_kept = int(selector.n_features_selected_)
            for balancing in dict.fromkeys(cell.balancing for cell in users):
                fitters = book.live(selection=selection, balancing=balancing)
                B_fit, b_fit = S_fit, y_fit
                if balancing == "smote":
                    try:
                        B_fit, b_fit = _smote(config).fit_resample(S_fit, y_fit)
                    except Exception as error:  # noqa: BLE001 - a failed fit is its cells' error row, not a crashed grid
                        book.fail(fitters, error)
                        continue
                kernels = KernelCache(B_fit, S_check) if book.wants_kernels(fitters) else None
                for cell in fitters:
                    cell_scores = book.fit_score(cell, B_fit, b_fit, S_check, kernels)
                    if cell_scores is not None:
                        scores[cell].append(cell_scores)
                        kept[cell].append(n_kept)
    return scores, kept


def _leak_free_cells(data: GridData, cells: Sequence[GridCell], config: GridConfig,
                     precomputed_kernels: bool = True) -> list[CellResult]:
    run = _oof_cells if config.evaluation == "oof" else _holdout_cells
    return _with_control(run, data, cells, config, precomputed_kernels)


def _paper_protocol(data: GridData, cells: Sequence[GridCell], config: GridConfig,
                    precomputed_kernels: bool = True) -> list[CellResult]:
    return _with_control(_paper_cells, data, cells, config, precomputed_kernels)


def _with_control(run: Callable[..., list[CellResult]], data: GridData, cells: Sequence[GridCell],
                  config: GridConfig, precomputed_kernels: bool) -> list[CellResult]:
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
    # The reruns fit the same, already validated matrices: sklearn's input checks are skipped (~10% of a rerun).
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


def _holdout_cells(data: GridData, cells: Sequence[GridCell], config: GridConfig, precomputed_kernels: bool = True,
                   complete: bool = True, scorer: Callable[..., Any] = _score_rounds) -> list[CellResult]:
    """leak_free, evaluation holdout: CV folds on the training split (the threshold from their pooled scores),
    then the pipeline refit on the training split scores the patient-grouped test split. complete=False: no CV,
    the held-out AUC only (what the permutation control reads)."""
    book = _Cells(data, cells, config, precomputed_kernels)
    X, y, groups = data.X, data.y, data.groups
    try:
        train, test = leak_free_holdout(y, groups, config)
        folds = leak_free_folds(y[train], groups[train], config) if complete else []
    except Exception as error:  # noqa: BLE001 - a failed fit is its cells' error row, not a crashed grid
        book.fail(book.live(), error)
        return list(book.results.values())
    # The CV folds (indices into the training split), then the final fit on the whole training split.
    rounds = [(train[fit], train[check]) for fit, check in folds] + [(train, test)]
    scores, kept = scorer(book, X, y, rounds, config)
    y_train = y[train]
    for cell in book.live():
        result = book.results[cell]
        if not complete:  # the control's rerun: only its AUC is read
            result.auc = auc(y[test], scores[cell][-1])
            continue
        result.n_train, result.n_test = len(train), len(test)
        result.n_features = kept[cell][-1]
        out_of_fold = np.zeros(len(train))
        fold_scores = []
        for (_, check), fold in zip(folds, scores[cell][:-1], strict=True):
            out_of_fold[check] = fold
            fold_scores.append(balanced_accuracy(y_train[check], fold > 0))
        try:
            threshold = best_threshold(y_train, out_of_fold)
            _finish(result, fold_scores, test, y[test], scores[cell][-1], threshold, config, groups[test])
        except Exception as error:  # noqa: BLE001 - a failed fit is its cells' error row, not a crashed grid
            result.fail(error)
    return list(book.results.values())


def oof_splits(y: np.ndarray, groups: np.ndarray, config: GridConfig, repeats: int | None = None
               ) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per repeat, `oof.folds` StratifiedGroupKFold folds by patient over all rows, each repeat shuffled
    by its own seed drawn from `seed`."""
    count = config.oof.repeats if repeats is None else repeats
    check_patients(config.oof.folds, y, groups, "grid.oof.folds")
    seeds = np.random.SeedSequence([config.seed, 0x00F]).generate_state(count)
    return [list(StratifiedGroupKFold(n_splits=config.oof.folds, shuffle=True, random_state=int(seed))
                 .split(np.zeros(len(y)), y, groups)) for seed in seeds]


def _threshold_folds(fit_rows: np.ndarray, y: np.ndarray, groups: np.ndarray,
                     config: GridConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Inner folds of an outer fold's training rows (indices into all rows), for its threshold."""
    check_patients(config.oof.threshold_folds, y[fit_rows], groups[fit_rows], "grid.oof.threshold_folds")
    splitter = StratifiedGroupKFold(n_splits=config.oof.threshold_folds, shuffle=True, random_state=config.seed)
    return [(fit_rows[fit], fit_rows[check])
            for fit, check in splitter.split(np.zeros(len(fit_rows)), y[fit_rows], groups[fit_rows])]


def _oof_cells(data: GridData, cells: Sequence[GridCell], config: GridConfig, precomputed_kernels: bool = True,
               complete: bool = True, scorer: Callable[..., Any] = _score_rounds) -> list[CellResult]:
    """leak_free, evaluation oof: every image scored once per repeat by the pipeline fitted on the other
    folds, positive at the threshold its training folds chose (the best balanced accuracy on the pooled
    scores of `oof.threshold_folds` inner folds). complete=False: one repeat's outer folds and its AUC only
    (what the permutation control reads)."""
    book = _Cells(data, cells, config, precomputed_kernels)
    X, y, groups = data.X, data.y, data.groups
    try:
        splits = oof_splits(y, groups, config, repeats=None if complete else 1)
        inner = [[_threshold_folds(fit, y, groups, config) if complete else [] for fit, _ in folds]
                 for folds in splits]
    except Exception as error:  # noqa: BLE001 - a failed fit is its cells' error row, not a crashed grid
        book.fail(book.live(), error)
        return list(book.results.values())
    # Per outer fold: its inner threshold folds, then the outer fit scoring the fold's held-out images.
    rounds = [pair for folds, inners in zip(splits, inner, strict=True)
              for outer, threshold_rounds in zip(folds, inners, strict=True) for pair in [*threshold_rounds, outer]]
    scores, kept = scorer(book, X, y, rounds, config)
    if not complete:  # the control's rerun: one repeat, outer folds only, and only its AUC is read
        for cell in book.live():
            pooled = np.zeros(data.n_rows)
            for (_, check_rows), outer_scores in zip(splits[0], scores[cell], strict=True):
                pooled[check_rows] = outer_scores
            book.results[cell].auc = auc(y, pooled)
        return list(book.results.values())
    for cell in book.live():
        result = book.results[cell]
        produced = iter(zip(scores[cell], kept[cell], strict=True))
        oof = np.zeros((len(splits), data.n_rows))
        called = np.zeros((len(splits), data.n_rows), dtype=bool)
        probability = np.full((len(splits), data.n_rows), np.nan)
        fold_scores, cuts, n_kept, inner_aucs = [], [], [], []
        for repeat, (folds, inners) in enumerate(zip(splits, inner, strict=True)):
            for (fit_rows, check_rows), threshold_rounds in zip(folds, inners, strict=True):
                pooled = np.zeros(data.n_rows)
                for _, inner_check in threshold_rounds:
                    pooled[inner_check] = next(produced)[0]
                outer_scores, outer_kept = next(produced)
                cut = best_threshold(y[fit_rows], pooled[fit_rows])
                oof[repeat, check_rows] = outer_scores
                called[repeat, check_rows] = outer_scores >= cut
                probability[repeat, check_rows] = calibrate(config.oof.calibration, y[fit_rows], pooled[fit_rows],
                                                            outer_scores)
                fold_scores.append(balanced_accuracy(y[check_rows], outer_scores > 0))
                cuts.append(cut)
                n_kept.append(outer_kept)
                inner_aucs.append(auc(y[fit_rows], pooled[fit_rows]))
        result.fold_thresholds, result.inner_aucs = [float(c) for c in cuts], [float(a) for a in inner_aucs]
        try:
            _finish_oof(result, oof, called, probability, fold_scores, cuts, n_kept, data, config)
        except Exception as error:  # noqa: BLE001 - a failed fit is its cells' error row, not a crashed grid
            result.fail(error)
    return list(book.results.values())


def fill_levels(result: CellResult, data: GridData, scores: np.ndarray, config: GridConfig) -> None:
    """Breast- and exam-level AUCs of out-of-fold `scores` (R, n), when the data names breasts and exams."""
    if not data.breasts:
        return
    breast = level_auc(data.breasts, data.y, scores, data.groups, "mean", config.bootstrap, config.ci_level,
                       config.seed)
    exam = level_auc(data.exams, data.y, scores, data.groups, "max", 0, config.ci_level, config.seed,
                     from_breasts=data.breasts)
    result.n_breasts, result.auc_breast = breast.units, breast.auc
    result.auc_breast_ci_low, result.auc_breast_ci_high = breast.ci_low, breast.ci_high
    result.n_exams, result.auc_exam = exam.units, exam.auc


def calibrate(method: str, y_fit: np.ndarray, scores_fit: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Probabilities for `scores` from a map fitted on (scores_fit, y_fit): the training folds' own
    out-of-fold scores, so the calibration never sees the images it maps. `platt`: a logistic regression of
    the label on the score; `isotonic`: sklearn's monotone step fit, clipped outside the fitted range. One
    class only: its share."""
    y_fit = np.asarray(y_fit).astype(int)
    if y_fit.min() == y_fit.max():
        return np.full(len(scores), float(y_fit[0]))
    if method == "isotonic":
        steps = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores_fit, y_fit)
        return np.asarray(steps.predict(np.asarray(scores, dtype=np.float64)), dtype=np.float64)
    model = LogisticRegression(C=1e4).fit(np.asarray(scores_fit).reshape(-1, 1), y_fit)
    return model.predict_proba(np.asarray(scores).reshape(-1, 1))[:, 1]


def _finish_oof(result: CellResult, oof: np.ndarray, called: np.ndarray, probability: np.ndarray,
                fold_scores: list[float], cuts: list[float], n_kept: list[int], data: GridData,
                config: GridConfig) -> None:
    """The numbers of an out-of-fold cell: per repeat over all images, then the mean over repeats; the AUC
    interval resamples patients (each resample averages the repeats)."""
    result.n_features = int(np.median(n_kept))
    result.threshold = float(np.median(cuts))
    result.cv_fold_scores = [float(s) for s in fold_scores]
    result.cv_balanced_accuracy_mean = float(np.mean(fold_scores))
    result.cv_balanced_accuracy_std = float(np.std(fold_scores))
    fill_out_of_fold(result, data, oof, called, config)
    if np.isfinite(probability).all():
        result.brier = float(np.mean([brier_score_loss(data.y, p) for p in probability]))
        result.test_probabilities = [float(p) for p in probability.ravel()]


def fill_out_of_fold(result: CellResult, data: GridData, oof: np.ndarray, called: np.ndarray,
                     config: GridConfig) -> None:
    """The numbers every out-of-fold row has, from its scores (R, n) and calls (R, n): metrics per repeat over
    all images, then their mean; the AUC interval resamples patients (each resample averages the repeats);
    breast/exam level and the per-image rows."""
    y = data.y
    repeats, n = oof.shape
    result.evaluation, result.oof_repeats, result.n_test = "oof", repeats, n
    result.n_train = int(round(n * (1.0 - 1.0 / config.oof.folds)))
    per_repeat = [binary_scores(y, predicted) for predicted in called]
    for name in ("accuracy", "balanced_accuracy", "precision", "recall", "specificity"):
        setattr(result, name, float(np.nanmean([scores[name] for scores in per_repeat])))
    aucs = [auc(y, scores) for scores in oof]
    result.auc, result.first_repeat_auc = float(np.mean(aucs)), float(aucs[0])
    result.auc_ci_low, result.auc_ci_high = patient_bootstrap_auc(
        y, oof, data.groups, config.bootstrap, config.ci_level, seed=config.seed)
    result.interval = "patient bootstrap"
    fill_levels(result, data, oof, config)
    result.test_rows = [int(row) for row in np.tile(np.arange(n), repeats)]
    result.test_repeats = [int(r) for r in np.repeat(np.arange(repeats), n)]
    result.test_targets = [int(target) for target in np.tile(y, repeats)]
    result.test_scores = [float(score) for score in oof.ravel()]


def _paper_cells(data: GridData, cells: Sequence[GridCell], config: GridConfig,
                 precomputed_kernels: bool = True, complete: bool = True) -> list[CellResult]:
    """The paper's steps 1-6; complete=False: the held-out AUC only (what the permutation control reads)."""
    book = _Cells(data, cells, config, precomputed_kernels)
    # Step 1: standardise on all rows.
    Z = StandardScaler().fit_transform(data.X)
    for balancing in dict.fromkeys(cell.balancing for cell in cells):
        users = book.live(balancing=balancing)
        if not users:
            continue
        Z_b, y_b = Z, data.y
        try:
            if balancing == "smote":  # step 2: SMOTE on the whole data set, before any split
                Z_b, y_b = _smote(config).fit_resample(Z, data.y)
            train, test = paper_holdout(y_b, config)  # step 4: split over images, synthetic rows included
            folds = paper_folds(y_b, config) if complete else []  # step 5: folds over images of the oversampled data
        except Exception as error:  # noqa: BLE001 - a failed fit is its cells' error row, not a crashed grid
            book.fail(users, error)
            continue
        for selection in dict.fromkeys(cell.selection for cell in users):
            fitters = book.live(selection=selection, balancing=balancing)
            S = Z_b
            n_kept = int(Z.shape[1])
            if selection == "lasso":  # step 3: Lasso on all (oversampled) rows
                try:
                    selector = LassoSelector.from_config(config.lasso).fit(Z_b, y_b)
                except Exception as error:  # noqa: BLE001 - a failed fit is its cells' error row, not a crashed grid
                    book.fail(fitters, error)
                    continue
                S = selector.transform(Z_b)
                n_kept = selector.n_features_selected_
            fold_scores: dict[GridCell, list[float]] = {cell: [] for cell in fitters}
            for cell in fitters:
                book.results[cell].n_features = n_kept
                book.results[cell].n_train, book.results[cell].n_test = len(train), len(test)
            # The CV folds over all (oversampled) rows, then step 6: fit on the training split.
            rounds = [(fit_rows, check_rows) for fit_rows, check_rows in folds] + [(train, None)]
            for fit_rows, check_rows in rounds:
                check = test if check_rows is None else check_rows
                live = [cell for cell in fitters if book.results[cell].status == "ok"]
                kernels = KernelCache(S[fit_rows], S[check]) if book.wants_kernels(live) else None
                for cell in live:
                    scores = book.fit_score(cell, S[fit_rows], y_b[fit_rows], S[check], kernels)
                    if scores is None:
                        continue
                    if check_rows is not None:
                        fold_scores[cell].append(balanced_accuracy(y_b[check_rows], scores > 0))
                        continue
                    if not complete:  # the control's rerun: only its AUC is read
                        book.results[cell].auc = auc(y_b[test], scores)
                        continue
                    try:
                        _finish(book.results[cell], fold_scores[cell], test, y_b[test], scores, None, config)
                    except Exception as error:  # noqa: BLE001 - a failed fit is its cells' error row, not a crashed grid
                        book.results[cell].fail(error)
    return list(book.results.values())
