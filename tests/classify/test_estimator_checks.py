"""The package's own scikit-learn estimators pass scikit-learn's estimator checks (sklearn's own contract:
input validation, fitted state, n_features_in_, multiclass, pickling, no mutation of parameters...)."""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from mammo_ray.classify.estimators import LassoSelector, NystroemSVC, QuietLinearSVC

#: Checks scikit-learn itself expects its LinearSVC to fail (liblinear's sample weights are not equivalent to
#: repeated rows): QuietLinearSVC is a LinearSVC that only silences ConvergenceWarning.
_LINEAR_SVC_EXPECTED = {
    check: "liblinear: sample_weight is not equivalent to repeating rows (as for sklearn's LinearSVC)"
    for check in ("check_sample_weight_equivalence_on_dense_data", "check_sample_weight_equivalence_on_sparse_data")
}


def _expected_failures(estimator: object) -> dict[str, str]:
    return _LINEAR_SVC_EXPECTED if isinstance(estimator, QuietLinearSVC) else {}


@parametrize_with_checks([LassoSelector(), NystroemSVC(n_components=20), QuietLinearSVC()],
                         expected_failed_checks=_expected_failures)
def test_the_package_estimators_pass_sklearns_checks(estimator, check):
    check(estimator)
