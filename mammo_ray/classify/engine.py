"""The grid's fitting engine: scores for many cells of one table, fitting every shared step once.

Contract: given (fit rows, check rows) rounds, `score_rounds` returns each live cell's decision scores on the
check rows of every round and the number of features its selector kept, with scale -> [Lasso] -> [SMOTE] ->
classifier fitted on the fit rows only. The scaler, each Lasso and each SMOTE sample are fitted once per
round for all the cells that use them, and the exact kernel SVMs of a round share one BLAS Gram matrix
(`KernelCache`). `pipeline_rounds` gives the same scores the notebook way (a fresh imblearn Pipeline per cell
and round): the reference tests/classify/test_protocols.py checks the engine against, bit for bit without
kernels and to libsvm's rounding with them. Why a hand-written engine rather than imbalanced-learn's own
caching: docs/benchmarks.md, "Shared-fit engine".

A cell whose fit fails becomes a result with status 'failed' and its error (`failing_into`); it never
stops the other cells. `CellBook` holds the cells' results, classifier templates and which are still live.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from imblearn.over_sampling import SMOTE
from imblearn.pipeline import Pipeline
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from mammo_ray.classify.data import CellResult, GridData
from mammo_ray.classify.estimators import LassoSelector, make_classifier, svc_gamma
from mammo_ray.config.grid import GridCell, GridConfig

Rounds = Sequence[tuple[np.ndarray, np.ndarray]]  # (fit rows, check rows) per round
RoundScores = tuple[dict[GridCell, list[np.ndarray]], dict[GridCell, list[int]]]  # per cell: scores, features kept


class CellBook:
    """Per-cell bookkeeping shared by the protocols: results (blank until filled), classifier templates,
    which cells are live (not failed)."""

    def __init__(self, data: GridData, cells: Sequence[GridCell], config: GridConfig,
                 precomputed_kernels: bool = True) -> None:
        self.precomputed_kernels = precomputed_kernels
        self.results = {cell: CellResult.blank(cell, data, config) for cell in cells}
        self.templates: dict[GridCell, Any] = {}
        for cell in cells:
            with failing_into(self, [cell]):
                self.templates[cell], self.results[cell].scale_path = make_classifier(
                    cell.classifier, config, data.n_rows
                )

    def live(self, selection: str | None = None, balancing: str | None = None) -> list[GridCell]:
        return [
            cell for cell, result in self.results.items()
            if result.status == "ok"
            and (selection is None or cell.selection == selection)
            and (balancing is None or cell.balancing == balancing)
        ]

    def all_results(self) -> list[CellResult]:
        return list(self.results.values())

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
        result = self.results[cell]
        with failing_into(self, [cell]), _timed_into(result):
            template = self.templates[cell]
            with counting_unconverged(result):
                if kernels is not None and isinstance(template, SVC) and template.kernel in ("linear", "rbf"):
                    return kernels.svc_scores(template, y_fit)
                model = clone(template).fit(X_fit, y_fit)
            return decision_scores(model, X_check)
        return None


@dataclass
class Attempt:
    """What `failing_into` yields: `failed` once its block raised."""

    failed: bool = False


@contextlib.contextmanager
def failing_into(book: CellBook, cells: Sequence[GridCell]) -> Iterator[Attempt]:
    """Run the block; an exception in it becomes the error row of each of `cells` (their status 'failed')
    instead of stopping the grid, and the yielded Attempt says so, for the caller to skip what needed it."""
    attempt = Attempt()
    try:
        yield attempt
    except Exception as error:  # noqa: BLE001 - a failed fit is its cells' error row, not a crashed grid
        book.fail(cells, error)
        attempt.failed = True


@contextlib.contextmanager
def _timed_into(result: CellResult) -> Iterator[None]:
    """Add the block's wall time to the cell's `classifier_seconds`, failed or not."""
    started = time.perf_counter()
    try:
        yield
    finally:
        result.classifier_seconds += time.perf_counter() - started


@contextlib.contextmanager
def counting_unconverged(result: CellResult) -> Iterator[None]:
    """Count the ConvergenceWarnings of the classifier fits inside (libsvm or lbfgs stopped at max_iter) in the
    cell's `unconverged_fits` instead of printing them (Lasso's are handled by LassoSelector)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        yield
    result.unconverged_fits += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    for other in (w for w in caught if not issubclass(w.category, ConvergenceWarning)):
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)


def decision_scores(model: Any, X: np.ndarray) -> np.ndarray:
    return np.asarray(model.decision_function(X), dtype=np.float64).ravel()


def smote(config: GridConfig) -> SMOTE:
    return SMOTE(k_neighbors=config.smote.k_neighbors, random_state=config.seed)


def build_pipeline(cell: GridCell, config: GridConfig, n_rows: int) -> tuple[Pipeline, str]:
    """The leak-free imblearn Pipeline of a cell (scale -> [Lasso] -> [SMOTE] -> classifier), its scale note."""
    classifier, note = make_classifier(cell.classifier, config, n_rows)
    steps: list[tuple[str, Any]] = [("scale", StandardScaler())]
    if cell.selection == "lasso":
        steps.append(("select", LassoSelector.from_config(config.lasso)))
    if cell.balancing == "smote":
        steps.append(("balance", smote(config)))
    steps.append(("classify", classifier))
    return Pipeline(steps), note


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
        return decision_scores(model, check)


def score_rounds(book: CellBook, X: np.ndarray, y: np.ndarray, rounds: Rounds, config: GridConfig) -> RoundScores:
    """For each (fit rows, check rows) of `rounds`: scale -> [Lasso] -> [SMOTE] -> classifier fitted on the fit
    rows only, every live cell's decision scores on the check rows and the features its selector kept. The
    scaler, each selector and each SMOTE sample are fitted once per round for all the cells that use them. A
    cell that fails stops (its error row) and keeps the scores of the rounds before."""
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
                with failing_into(book, users) as lasso:
                    selector = LassoSelector.from_config(config.lasso).fit(Z_fit, y_fit)
                if lasso.failed:
                    continue
                S_fit, S_check = selector.transform(Z_fit), selector.transform(Z_check)
                n_kept = int(selector.n_features_selected_)
            for balancing in dict.fromkeys(cell.balancing for cell in users):
                fitters = book.live(selection=selection, balancing=balancing)
                B_fit, b_fit = S_fit, y_fit
                if balancing == "smote":
                    with failing_into(book, fitters) as oversampling:
                        B_fit, b_fit = smote(config).fit_resample(S_fit, y_fit)
                    if oversampling.failed:
                        continue
                kernels = KernelCache(B_fit, S_check) if book.wants_kernels(fitters) else None
                for cell in fitters:
                    cell_scores = book.fit_score(cell, B_fit, b_fit, S_check, kernels)
                    if cell_scores is not None:
                        scores[cell].append(cell_scores)
                        kept[cell].append(n_kept)
    return scores, kept


def pipeline_rounds(book: CellBook, X: np.ndarray, y: np.ndarray, rounds: Rounds, config: GridConfig) -> RoundScores:
    """`score_rounds` the notebook way: a fresh imblearn Pipeline per cell and round, nothing shared."""
    scores: dict[GridCell, list[np.ndarray]] = {cell: [] for cell in book.live()}
    kept: dict[GridCell, list[int]] = {cell: [] for cell in book.live()}
    for cell in book.live():
        result = book.results[cell]
        with failing_into(book, [cell]), _timed_into(result):
            template, _ = build_pipeline(cell, config, result.n_rows)
            for fit_rows, check_rows in rounds:
                with counting_unconverged(result):
                    pipeline = clone(template).fit(X[fit_rows], y[fit_rows])
                scores[cell].append(decision_scores(pipeline, X[check_rows]))
                kept[cell].append(_n_kept(pipeline.named_steps.get("select"), X.shape[1]))
    return scores, kept


def _n_kept(selector: LassoSelector | None, n_in: int) -> int:
    return n_in if selector is None else int(selector.n_features_selected_)


Scorer = Callable[[CellBook, np.ndarray, np.ndarray, Rounds, GridConfig], RoundScores]  # score_rounds' shape

__all__ = ["Attempt", "CellBook", "KernelCache", "RoundScores", "Rounds", "Scorer", "build_pipeline",
           "counting_unconverged", "decision_scores", "failing_into", "pipeline_rounds", "score_rounds", "smote"]
