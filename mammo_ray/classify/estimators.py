"""The grid's building blocks as scikit-learn estimators: Lasso selection, the classifiers and their
scale path. Every estimator is seeded and single-threaded (n_jobs=1): parallelism is Ray's job.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import SelectorMixin
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import Lasso, LassoCV, LogisticRegression
from sklearn.model_selection import KFold
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from mammo_ray.config.grid import GridConfig, LassoConfig
from mammo_ray.errors import MammoRayError


class ScalePathRefused(MammoRayError):
    """A kernel that does not scale was asked for on more rows than `scale.max_rows_exact`."""


class LassoSelector(SelectorMixin, BaseEstimator):
    """Keep the features whose sklearn Lasso coefficient (fit on the 0/1 label) is non-zero.

    `alpha="cv"` picks the strength with LassoCV (`cv` unshuffled folds) on the data given to fit.
    When fewer than `min_features` survive, the `min_features` features with the largest absolute
    correlation with the label are kept instead. `n_features_selected_` and `alpha_` are set by fit.
    """

    def __init__(self, alpha: float | str = 0.01, cv: int = 5, max_iter: int = 2000, tol: float = 1e-3,
                 min_features: int = 1) -> None:
        self.alpha = alpha
        self.cv = cv
        self.max_iter = max_iter
        self.tol = tol
        self.min_features = min_features

    @classmethod
    def from_config(cls, config: LassoConfig) -> LassoSelector:
        return cls(alpha=config.alpha, cv=config.cv_folds, max_iter=config.max_iter, tol=config.tol,
                   min_features=config.min_features)

    def fit(self, X: np.ndarray, y: np.ndarray) -> LassoSelector:
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=True)
        target = np.asarray(y, dtype=X.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if self.alpha == "cv":
                model = LassoCV(cv=KFold(self.cv), max_iter=self.max_iter, tol=self.tol, alphas=30)
                model.fit(X, target)
                self.alpha_ = float(model.alpha_)
            else:
                model = Lasso(alpha=float(self.alpha), max_iter=self.max_iter, tol=self.tol)
                model.fit(X, target)
                self.alpha_ = float(self.alpha)
        self.n_iter_ = int(np.max(model.n_iter_))
        coef = np.asarray(model.coef_).ravel()
        mask = coef != 0
        if mask.sum() < self.min_features:
            centred = target - target.mean()
            strength = np.abs(centred @ (X - X.mean(axis=0)))
            mask = np.zeros(X.shape[1], dtype=bool)
            mask[np.argsort(-strength, kind="stable")[: self.min_features]] = True
            self.fallback_ = True
        else:
            self.fallback_ = False
        self.coef_ = coef
        self.mask_ = mask
        self.n_features_selected_ = int(mask.sum())
        return self

    def _get_support_mask(self) -> np.ndarray:
        check_is_fitted(self, "mask_")
        return self.mask_


def svc_gamma(X: np.ndarray, gamma: float | str) -> float:
    """The RBF gamma SVC uses on X: 'scale' = 1 / (n_features * X.var()) (1.0 when X.var() is 0),
    'auto' = 1 / n_features, a number as it is."""
    if gamma == "scale":
        variance = float(np.var(X))
        return 1.0 / (X.shape[1] * variance) if variance != 0 else 1.0
    if gamma == "auto":
        return 1.0 / X.shape[1]
    return float(gamma)


class NystroemSVC(ClassifierMixin, BaseEstimator):
    """The RBF SVM's scale path: Nystroem features (gamma as SVC's 'scale'/'auto'/value) + LinearSVC.

    Cost is linear in rows: O(n * components * features) for the map, liblinear for the fit.
    """

    def __init__(self, C: float = 1.0, gamma: float | str = "scale", n_components: int = 500,
                 tol: float = 1e-3, max_iter: int = 1000, random_state: int = 0) -> None:
        self.C = C
        self.gamma = gamma
        self.n_components = n_components
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> NystroemSVC:
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        gamma = self.gamma_ = svc_gamma(X, self.gamma)
        self.map_ = Nystroem(gamma=gamma, n_components=min(self.n_components, X.shape[0]),
                             random_state=self.random_state)
        features = self.map_.fit_transform(X)
        self.svm_ = LinearSVC(C=self.C, dual=False, tol=self.tol, max_iter=self.max_iter,
                              random_state=self.random_state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.svm_.fit(features, y)
        self.classes_ = self.svm_.classes_
        self.n_iter_ = int(self.svm_.n_iter_)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "svm_")
        X = validate_data(self, X, reset=False)
        return self.svm_.decision_function(self.map_.transform(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        scores = self.decision_function(X)
        return self.classes_[(scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)]


class QuietLinearSVC(LinearSVC):
    """LinearSVC without ConvergenceWarning noise (the scale path runs with a bounded max_iter)."""

    def fit(self, X: np.ndarray, y: np.ndarray,  # sklearn's signature
            sample_weight: np.ndarray | None = None) -> QuietLinearSVC:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return super().fit(X, y, sample_weight=sample_weight)


def make_classifier(name: str, config: GridConfig, n_rows: int) -> tuple[BaseEstimator, str]:
    """The classifier of a cell and its scale-path note ('exact' or what replaced the exact kernel).

    `n_rows` is the number of labelled rows of the cell's table: above `scale.max_rows_exact` the
    kernel SVMs follow `scale.policy`.
    """
    seed = config.seed
    scale = config.scale
    big = n_rows > scale.max_rows_exact
    if name == "logreg":
        params = config.classifier_params.logreg
        return LogisticRegression(C=params.C, max_iter=params.max_iter), "exact"
    if name not in ("svm_linear", "svm_rbf"):
        raise ValueError(f"unknown classifier {name!r}")
    params = getattr(config.classifier_params, name)
    if not big:
        if name == "svm_linear":
            return SVC(kernel="linear", C=params.C, max_iter=params.max_iter, random_state=seed), "exact"
        return SVC(kernel="rbf", C=params.C, gamma=params.gamma, max_iter=params.max_iter, random_state=seed), "exact"
    if scale.policy == "refuse":
        raise ScalePathRefused(
            f"{name}: {n_rows} labelled rows > scale.max_rows_exact={scale.max_rows_exact}; libsvm's SVC "
            "is quadratic or worse in rows. Set scale.policy: approximate (Nystroem/LinearSVC) or raise "
            "scale.max_rows_exact."
        )
    if name == "svm_linear":
        model = QuietLinearSVC(C=params.C, dual=False, tol=scale.linear_tol, max_iter=scale.linear_max_iter,
                               random_state=seed)
        return model, f"LinearSVC(liblinear primal, squared hinge, tol={scale.linear_tol:g}) for SVC(linear): " \
                      f"{n_rows} rows > {scale.max_rows_exact}"
    model = NystroemSVC(C=params.C, gamma=params.gamma, n_components=scale.nystroem_components,
                        tol=scale.linear_tol, max_iter=scale.linear_max_iter, random_state=seed)
    return model, f"Nystroem({scale.nystroem_components})+LinearSVC for SVC(rbf): " \
                  f"{n_rows} rows > {scale.max_rows_exact}"
