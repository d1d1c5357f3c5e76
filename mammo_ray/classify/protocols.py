"""The three evaluation protocols of the classifier grid (docs/design.md, "The paper's numbers"), pure
scikit-learn / imbalanced-learn: `evaluate_cells` runs the cells of one table, `evaluate_cell` one cell the
notebook way. Their splits are in `classify.splits`, the shared fits in `classify.engine`, the negative
control in `classify.control`, the numbers filled from the scores in `classify.results`.

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
  2. CV: ``cv_folds`` StratifiedGroupKFold by patient over the training split, each training fold's
     scaling, selection and synthetic rows fitted on that fold's training rows only; the fold score is
     the balanced accuracy of the classifier's own decision (score > 0) on the fold's validation rows;
  3. threshold: the one maximising balanced accuracy on the pooled out-of-fold scores of step 2
     (training data only);
  4. held-out metrics: the pipeline refit on the whole training split scores the test split, positives
     are scores >= the threshold of step 3.

Every protocol carries the permutation control (`classify.control`) and reports n_features kept (of the
final selector: on all rows for paper, on the training split for leak_free), CV balanced accuracy (mean,
population std, per fold), held-out accuracy, balanced accuracy, precision, recall, AUC (from the decision
scores, threshold-free) and its bootstrap interval. A failing cell becomes a result with status 'failed' and
its error; it never stops the other cells. Results come back in the order of the cells asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from mammo_ray.auc import auc
from mammo_ray.classify.calibration import calibrate
from mammo_ray.classify.control import ProtocolRun, with_permutation_control
from mammo_ray.classify.data import CellResult, GridData
from mammo_ray.classify.engine import CellBook, KernelCache, Scorer, failing_into, pipeline_rounds, score_rounds, smote
from mammo_ray.classify.estimators import LassoSelector
from mammo_ray.classify.metrics import balanced_accuracy, best_threshold
from mammo_ray.classify.results import finish_holdout, finish_oof
from mammo_ray.classify.splits import (
    leak_free_folds,
    leak_free_holdout,
    oof_splits,
    paper_folds,
    paper_holdout,
    threshold_folds,
)
from mammo_ray.config.grid import GridCell, GridConfig


def evaluate_cells(
    data: GridData, cells: Sequence[GridCell], config: GridConfig,
    on_result: Callable[[CellResult], None] | None = None, precomputed_kernels: bool = True,
    blas_threads: int | None = 1,
) -> list[CellResult]:
    """Every cell of `cells` (all on `data`), sharing fitted scalers, Lasso selectors and SMOTE samples
    between cells that use the same ones, and (precomputed_kernels) one BLAS Gram matrix per fold
    between the exact kernel SVMs (see engine.KernelCache). Results come back in the order of `cells`.
    `blas_threads` as in evaluate_cell."""
    results: dict[GridCell, CellResult] = {}
    with threadpool_limits(limits=blas_threads):
        for protocol in dict.fromkeys(cell.protocol for cell in cells):
            chosen = [cell for cell in cells if cell.protocol == protocol]
            run = _protocol_run(protocol, config)
            for result in with_permutation_control(run, data, chosen, config, precomputed_kernels):
                results[result.cell] = result
                if on_result is not None:
                    on_result(result)
    return [results[cell] for cell in cells]


def evaluate_cell(data: GridData, cell: GridCell, config: GridConfig, blas_threads: int | None = 1) -> CellResult:
    """One cell, everything fit from scratch: a fresh imblearn Pipeline per leak-free fold (the
    notebook way, and the reference the shared engine is tested against).

    `blas_threads`: BLAS/OpenMP threads while fitting (None: the library default). One by default:
    parallelism belongs to the grid (Ray trials); on these small matrices extra BLAS threads cost
    more than they give, and on a busy machine far more.
    """
    if cell.protocol == "paper":  # no pipeline to refit per fold: global steps, then the classifier
        return evaluate_cells(data, [cell], config, precomputed_kernels=False, blas_threads=blas_threads)[0]
    run = partial(_protocol_run(cell.protocol, config), scorer=pipeline_rounds)
    with threadpool_limits(limits=blas_threads):
        return with_permutation_control(run, data, [cell], config, False)[0]


def _protocol_run(protocol: str, config: GridConfig) -> ProtocolRun:
    if protocol == "paper":
        return paper_cells
    return oof_cells if config.evaluation == "oof" else holdout_cells


def paper_cells(data: GridData, cells: Sequence[GridCell], config: GridConfig,
                precomputed_kernels: bool = True, complete: bool = True) -> list[CellResult]:
    """The paper's steps 1-6; complete=False: the held-out AUC only (what the permutation control reads)."""
    book = CellBook(data, cells, config, precomputed_kernels)
    # Step 1: standardise on all rows.
    Z = StandardScaler().fit_transform(data.X)
    for balancing in dict.fromkeys(cell.balancing for cell in cells):
        users = book.live(balancing=balancing)
        if not users:
            continue
        Z_b, y_b = Z, data.y
        with failing_into(book, users) as splitting:
            if balancing == "smote":  # step 2: SMOTE on the whole data set, before any split
                Z_b, y_b = smote(config).fit_resample(Z, data.y)
            train, test = paper_holdout(y_b, config)  # step 4: split over images, synthetic rows included
            folds = paper_folds(y_b, config) if complete else []  # step 5: folds over images of the oversampled data
        if splitting.failed:
            continue
        for selection in dict.fromkeys(cell.selection for cell in users):
            fitters = book.live(selection=selection, balancing=balancing)
            S = Z_b
            n_kept = int(Z.shape[1])
            if selection == "lasso":  # step 3: Lasso on all (oversampled) rows
                with failing_into(book, fitters) as lasso:
                    selector = LassoSelector.from_config(config.lasso).fit(Z_b, y_b)
                if lasso.failed:
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
                    with failing_into(book, [cell]):
                        finish_holdout(book.results[cell], fold_scores[cell], test, y_b[test], scores, None, config)
    return book.all_results()


def holdout_cells(data: GridData, cells: Sequence[GridCell], config: GridConfig, precomputed_kernels: bool = True,
                  complete: bool = True, scorer: Scorer = score_rounds) -> list[CellResult]:
    """leak_free, evaluation holdout: CV folds on the training split (the threshold from their pooled scores),
    then the pipeline refit on the training split scores the patient-grouped test split. complete=False: no CV,
    the held-out AUC only (what the permutation control reads)."""
    book = CellBook(data, cells, config, precomputed_kernels)
    X, y, groups = data.X, data.y, data.groups
    with failing_into(book, book.live()) as splitting:
        train, test = leak_free_holdout(y, groups, config)
        folds = leak_free_folds(y[train], groups[train], config) if complete else []
    if splitting.failed:
        return book.all_results()
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
        with failing_into(book, [cell]):
            threshold = best_threshold(y_train, out_of_fold)
            finish_holdout(result, fold_scores, test, y[test], scores[cell][-1], threshold, config, groups[test])
    return book.all_results()


def oof_cells(data: GridData, cells: Sequence[GridCell], config: GridConfig, precomputed_kernels: bool = True,
              complete: bool = True, scorer: Scorer = score_rounds) -> list[CellResult]:
    """leak_free, evaluation oof: every image scored once per repeat by the pipeline fitted on the other
    folds, positive at the threshold its training folds chose (the best balanced accuracy on the pooled
    scores of `oof.threshold_folds` inner folds). complete=False: one repeat's outer folds and its AUC only
    (what the permutation control reads)."""
    book = CellBook(data, cells, config, precomputed_kernels)
    X, y, groups = data.X, data.y, data.groups
    with failing_into(book, book.live()) as splitting:
        splits = oof_splits(y, groups, config, repeats=None if complete else 1)
        inner = [[threshold_folds(fit, y, groups, config) if complete else [] for fit, _ in folds]
                 for folds in splits]
    if splitting.failed:
        return book.all_results()
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
        return book.all_results()
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
        with failing_into(book, [cell]):
            finish_oof(result, oof, called, probability, fold_scores, cuts, n_kept, data, config)
    return book.all_results()


__all__ = ["evaluate_cell", "evaluate_cells", "holdout_cells", "oof_cells", "paper_cells"]
