"""The classifier study's grid as data: every axis and setting is a YAML key
(docs/design.md, "The paper's numbers").

A grid is the product extractor x selection x balancing x classifier x protocol (a combined extractor,
features of several side by side, is an extractor too). Standardisation is
not an axis: every cell standardises its features (fit where the protocol says: on all rows for
`paper`, inside each training fold for `leak_free`).

Example (a `grid:` section of a study config, or a file of its own)::

    extractors: [imagenet_resnet50, nyu_lcc, nyu_avg]   # null: every embeddings table present
    selection: [none, lasso]
    balancing: [none, smote]
    classifiers: [svm_linear, svm_rbf, logreg]
    protocols: [leak_free, paper]
    evaluation: oof                      # leak_free: every image scored out of fold (holdout: one split)
    oof: {folds: 5, repeats: 5, threshold_folds: 3, calibration: platt}
    permutations: 100                    # the negative control: the protocol on permuted labels
    combined: [[nyu_avg, imagenet_resnet50]]
    compare: {selection: lasso, balancing: smote, classifier: svm_linear}
    cv_folds: 10
    lasso: {alpha: 0.01}
    scale: {max_rows_exact: 2000, policy: approximate}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mammo_ray.config.base import StrictModel

Selection = Literal["none", "lasso"]
Balancing = Literal["none", "smote"]
ClassifierName = Literal["svm_linear", "svm_rbf", "logreg"]
Protocol = Literal["paper", "leak_free"]
Evaluation = Literal["oof", "holdout"]

SELECTIONS: tuple[str, ...] = ("none", "lasso")
BALANCINGS: tuple[str, ...] = ("none", "smote")
CLASSIFIERS: tuple[str, ...] = ("svm_linear", "svm_rbf", "logreg")
PROTOCOLS: tuple[str, ...] = ("leak_free", "paper")


class LassoConfig(StrictModel):
    """Feature selection by sklearn Lasso on the binary label (features with a non-zero coefficient).

    `alpha` is the L1 strength on standardised features (the paper kept 217-350 of 2048 features).
    `alpha: cv` chooses it by LassoCV inside the data the selector is fit on (inside each training fold for
    leak_free): slower, one LassoCV path per fit.
    At least `min_features` survive: if the Lasso zeroes everything, the features most correlated
    with the label are kept instead (so a cell on pure noise still has a classifier to fit).
    """

    alpha: float | Literal["cv"] = Field(0.01, description="L1 strength, or 'cv' for LassoCV")
    cv_folds: int = Field(5, ge=2, le=20, description="folds of LassoCV when alpha is 'cv'")
    max_iter: int = Field(2000, ge=10, description="iterations of sklearn's Lasso (or LassoCV) at most")
    tol: float = Field(1e-3, gt=0.0, description="optimisation tolerance of the Lasso (or LassoCV)")
    min_features: int = Field(1, ge=1, description="features kept at least: if the Lasso keeps fewer, the features "
                                                   "most correlated with the label are kept instead")

    @field_validator("alpha")
    @classmethod
    def _positive(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and value <= 0:
            raise ValueError("alpha must be > 0 (or 'cv')")
        return value


class SmoteConfig(StrictModel):
    k_neighbors: int = Field(5, ge=1, description="nearest neighbours SMOTE interpolates between")


class SvmConfig(StrictModel):
    """libsvm's SVC. `max_iter` bounds its SMO iterations: on some label permutations of a few Lasso-selected,
    SMOTE-interpolated features the linear kernel's solver crawls for many minutes (seen: 9+ min for one fit
    of ~500 rows, where fits normally take milliseconds); a fit stopped there is counted in the cell's
    `unconverged_fits`."""

    C: float = Field(1.0, gt=0.0, description="regularisation parameter C of the SVC")
    gamma: float | Literal["scale", "auto"] = Field(
        "scale", description="RBF kernel coefficient (svm_rbf and its Nystroem approximation): a number, scale or "
                             "auto, as sklearn's SVC takes it")
    max_iter: int = Field(1_000_000, ge=1000, description="bound on libsvm's SMO iterations; a fit stopped there is "
                                                          "counted in the cell's unconverged_fits")


class LogregConfig(StrictModel):
    C: float = Field(1.0, gt=0.0, description="inverse regularisation strength of the logistic regression")
    max_iter: int = Field(1000, ge=10, description="iterations of the lbfgs solver at most")


class ClassifierParams(StrictModel):
    svm_linear: SvmConfig = Field(default_factory=SvmConfig, description="the linear-kernel SVC's settings")
    svm_rbf: SvmConfig = Field(default_factory=SvmConfig, description="the RBF-kernel SVC's settings")
    logreg: LogregConfig = Field(default_factory=LogregConfig, description="the logistic regression's settings")


class ScalePathConfig(StrictModel):
    """What kernel SVMs do on big tables (libsvm's SVC is quadratic or worse in rows).

    Up to `max_rows_exact` labelled rows they are exact libsvm SVCs (the grid stage feeds them a
    kernel precomputed with BLAS: n_fit^2 doubles per fit, 72 MB at 3000 rows).
    Above `max_rows_exact` labelled rows, `policy: approximate` replaces
      - svm_rbf by Nystroem(`nystroem_components`, the same gamma) + LinearSVC,
      - svm_linear by LinearSVC (liblinear, squared hinge, primal, tol `linear_tol`),
    and `policy: refuse` fails those cells with a message naming this key. logreg (lbfgs, linear in
    rows) never switches. grid.parquet's `scale_path` column says what every cell ran.
    """

    max_rows_exact: int = Field(2000, ge=1, description="labelled rows up to which kernel SVMs are exact libsvm "
                                                        "SVCs; above it, policy applies")
    policy: Literal["approximate", "refuse"] = Field(
        "approximate", description="above max_rows_exact: approximate (svm_rbf becomes Nystroem + LinearSVC, "
                                   "svm_linear LinearSVC) or refuse (those cells fail); logreg never switches")
    nystroem_components: int = Field(500, ge=10, description="Nystroem components of the approximate svm_rbf")
    linear_tol: float = Field(1e-2, gt=0.0, description="tolerance of the LinearSVC of the approximate SVMs")
    linear_max_iter: int = Field(1000, ge=10, description="iterations of the LinearSVC of the approximate SVMs at "
                                                          "most")


class OofConfig(StrictModel):
    """Out-of-fold evaluation of leak_free cells (`evaluation: oof`): `repeats` x `folds` patient-grouped,
    stratified K-fold over all images; every image is scored once per repeat by a pipeline fitted on the
    other folds, at a threshold chosen by `threshold_folds` inner folds of those training folds. `calibration`
    maps the fold's scores to probabilities (Brier score, reliability figure) with a map fitted on the same
    inner scores: `platt` (a logistic curve, 2 parameters) or `isotonic` (monotone steps; needs more
    positives per fold to be stable)."""

    folds: int = Field(5, ge=2, le=50, description="folds of the patient-grouped, stratified K-fold over all images")
    repeats: int = Field(5, ge=1, le=100, description="repeats of the K-fold: every image is scored once per repeat")
    threshold_folds: int = Field(3, ge=2, le=20, description="inner folds of each training fold on which the "
                                                             "threshold and the calibration are fitted")
    calibration: Literal["platt", "isotonic"] = Field(
        "platt", description="scores to probabilities: platt (a logistic curve, 2 parameters) or isotonic (monotone "
                             "steps; needs more positives per fold to be stable)")


class ComparePipeline(StrictModel):
    """The one pipeline every extractor is compared on (pre-specified, so no pick among cells inflates it).
    A value left null is the paper's (lasso, smote, svm_linear) when the grid has it, else the grid's first."""

    selection: Selection | None = Field(
        None, description="the comparisons' selection; None: lasso when the grid has it, else the grid's first")
    balancing: Balancing | None = Field(
        None, description="the comparisons' balancing; None: smote when the grid has it, else the grid's first")
    classifier: ClassifierName | None = Field(
        None, description="the comparisons' classifier; None: svm_linear when the grid has it, else the grid's first")


class ExternalPair(StrictModel):
    """Fit on every image of source `train`, evaluate once on source `test`."""

    train: str = Field(min_length=1, description="the source (of data.sources) every pipeline is fitted on")
    test: str = Field(min_length=1, description="the source (of data.sources) it is scored on, once")

    @model_validator(mode="after")
    def _two_sources(self) -> ExternalPair:
        if self.train == self.test:
            raise ValueError(f"external: train and test are both {self.train!r}: use two sources")
        return self


#: The paper's combined extractor: what `combined: null` runs when both are in the grid.
PAPER_COMBINATION: tuple[str, ...] = ("nyu_avg", "imagenet_resnet50")


class GridConfig(StrictModel):
    """The whole classifier grid: the five axes and every setting a cell depends on."""

    extractors: list[str] | None = Field(
        None, description="embeddings tables to use; null = every table under <output>/embeddings/"
    )
    selection: list[Selection] = Field(default_factory=lambda: list(SELECTIONS), min_length=1,
                                       description="the feature-selection axis: none or lasso")
    balancing: list[Balancing] = Field(default_factory=lambda: list(BALANCINGS), min_length=1,
                                       description="the class-balancing axis: none or smote")
    classifiers: list[ClassifierName] = Field(default_factory=lambda: list(CLASSIFIERS), min_length=1,
                                              description="the classifier axis: svm_linear, svm_rbf or logreg")
    protocols: list[Protocol] = Field(
        default_factory=lambda: list(PROTOCOLS), min_length=1,
        description="the protocol axis: paper (standardisation fit on all rows, the paper's split) or leak_free "
                    "(every fit inside each training fold)")

    evaluation: Evaluation = Field(
        "oof", description="leak_free cells: 'oof' (repeated patient-grouped K-fold, every image scored) or "
        "'holdout' (one patient-grouped held-out split); paper cells always use the paper's split",
    )
    oof: OofConfig = Field(default_factory=OofConfig, description="out-of-fold evaluation of leak_free cells "
                                                                  "(evaluation: oof)")
    permutations: int = Field(
        100, ge=0, le=100_000,
        description="label permutations between patients per cell (at most, when control_stop is sequential), the "
        "protocol rerun on each: the AUC it reaches on no signal and a p-value (0 = no control)",
    )
    control_stop: Literal["sequential", "fixed"] = Field(
        "sequential",
        description="sequential: a cell's reruns stop once its p-value is decided, after 10 null AUCs at or above "
        "its own (Besag and Clifford 1991) or once p is below 0.05 with 95% confidence; the count used is the "
        "cell's permutations column. fixed: every cell runs all permutations",
    )
    combined: list[list[str]] | None = Field(
        None, description="extractor combinations run as extractors of their own (features concatenated, "
        "named 'a+b'); null = the paper's nyu_avg + imagenet_resnet50 when both are in the grid",
    )
    comparisons: list[tuple[str, str]] | None = Field(
        None, description="extractor pairs (a, b) compared on the same images (AUC(a) - AUC(b)); null = every "
        "pair of the grid's extractors, in the order listed",
    )
    compare: ComparePipeline = Field(default_factory=ComparePipeline, description="the one pre-specified pipeline "
                                                                                  "the extractors are compared on")
    external: list[ExternalPair] = Field(
        default_factory=list, description="external validation: each pipeline fitted on all of source `train` "
        "(its choices by CV inside it) and scored once on source `test` (data.sources names both)",
    )
    cv_folds: int = Field(10, ge=2, le=100, description="CV folds of the paper protocol and of a leak_free holdout")
    test_fraction: float = Field(
        0.33, gt=0.0, lt=1.0,
        description="held-out share: 0.33 gives the paper's 136 of 410 and 205 of 620 (sklearn rounds up)",
    )
    seed: int = Field(0, ge=0, description="seed of the grid's random draws: splits, SMOTE, label permutations, "
                                           "bootstrap resamples")
    bootstrap: int = Field(1000, ge=0, le=100_000, description="resamples for the AUC interval; 0 = none")
    ci_level: float = Field(0.95, gt=0.0, lt=1.0, description="confidence level of the bootstrap intervals")

    lasso: LassoConfig = Field(default_factory=LassoConfig, description="the lasso selection's settings")
    smote: SmoteConfig = Field(default_factory=SmoteConfig, description="the smote balancing's settings")
    classifier_params: ClassifierParams = Field(default_factory=ClassifierParams,
                                                description="the classifiers' settings: svm_linear, svm_rbf, logreg")
    scale: ScalePathConfig = Field(default_factory=ScalePathConfig,
                                   description="what kernel SVMs do on big tables (exact, approximate or refused)")

    trial_grouping: Literal["cell", "preprocessing", "selection", "protocol"] = Field(
        "selection",
        description="cells per Tune trial: one each ('cell'); those sharing (extractor, protocol, "
        "selection, balancing) ('preprocessing'); (extractor, protocol, selection) ('selection'); or "
        "(extractor, protocol) ('protocol'). Fits shared by a trial's cells are made once per fold.",
    )
    cpus_per_trial: float = Field(1.0, gt=0.0, description="CPUs each Ray Tune trial reserves")
    max_concurrent_trials: int | None = Field(None, ge=1, description="Ray Tune trials running at once at most; "
                                                                      "None: as many as the free CPUs allow")

    @field_validator("extractors")
    @classmethod
    def _extractor_names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("list at least one extractor, or null for every table present")
        bad = [v for v in value if not v or "/" in v or v.startswith(".")]
        if bad:
            raise ValueError(f"not a table name: {bad}")
        return value

    @model_validator(mode="after")
    def _comparable(self) -> GridConfig:
        axes = {"selection": self.selection, "balancing": self.balancing, "classifier": self.classifiers}
        for axis, values in axes.items():
            chosen = getattr(self.compare, axis)
            if chosen is not None and chosen not in values:
                raise ValueError(f"compare.{axis}: {chosen!r} is not among the grid's {axis} {values}")
        for a, b in self.comparisons or []:
            if a == b:
                raise ValueError(f"comparisons: {a!r} compared with itself")
            known = set(self.extractors or []) | {"+".join(m) for m in combinations(self, self.extractors or [])}
            if self.extractors is not None and not {a, b} <= known:
                raise ValueError(f"comparisons: ({a}, {b}) names an extractor not in grid.extractors or "
                                 "grid.combined")
        return self

    @field_validator("combined")
    @classmethod
    def _combinations(cls, value: list[list[str]] | None) -> list[list[str]] | None:
        for members in value or []:
            if len(members) < 2 or len(set(members)) != len(members):
                raise ValueError(f"a combination lists two or more different extractors, got {members}")
        return value

    @model_validator(mode="after")
    def _no_duplicates(self) -> GridConfig:
        for axis in ("extractors", "selection", "balancing", "classifiers", "protocols"):
            values = getattr(self, axis) or []
            if len(set(values)) != len(values):
                raise ValueError(f"{axis} lists a value twice: {values}")
        return self


def combinations(grid: GridConfig, extractors: list[str]) -> list[list[str]]:
    """The combinations to run, given the grid's extractors: what `combined` means (its validation needs it,
    so it stays with the section; `mammo_ray.classify.cells` enumerates the rest)."""
    if grid.combined is not None:
        return [list(members) for members in grid.combined]
    return [list(PAPER_COMBINATION)] if set(PAPER_COMBINATION) <= set(extractors) else []


@dataclass(frozen=True, order=True)
class GridCell:
    """One cell of the grid."""

    extractor: str
    selection: str
    balancing: str
    classifier: str
    protocol: str

    def as_dict(self) -> dict[str, str]:
        return {
            "extractor": self.extractor,
            "selection": self.selection,
            "balancing": self.balancing,
            "classifier": self.classifier,
            "protocol": self.protocol,
        }

    @property
    def label(self) -> str:
        return f"{self.extractor}/{self.protocol}/{self.selection}/{self.balancing}/{self.classifier}"
