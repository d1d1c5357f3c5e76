"""`engine`: the grid's hand-written shared-fit engine against imbalanced-learn's own caching.

Every leak_free cell (12 by default) of one synthetic table at the INbreast size (410 x 2048), one BLAS
thread, four ways: `engine`, `evaluate_cells` as the grid stage runs it (per fold the scaler, Lasso and SMOTE
fit once and shared, the exact SVMs sharing one Gram matrix); `engine, no kernels`, the sharing alone;
`cached pipelines`, a fresh imblearn Pipeline per cell and fold built with `memory=joblib.Memory(...)` (an
empty cache every run); `plain pipelines`, `evaluate_cell` per cell (--no-plain skips it). The cached
pipelines must agree bit for bit with the engine without kernels, and with the kernel engine to libsvm's
rounding. The paper protocol (no per-fold pipeline) is not compared. Measured numbers: docs/benchmarks.md,
"Shared-fit engine".
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from joblib import Memory
from sklearn.base import clone
from threadpoolctl import threadpool_limits

from mammo_ray.auc import auc
from mammo_ray.benchmarks.common import load_average, timed
from mammo_ray.classify import build_pipeline, evaluate_cell, evaluate_cells
from mammo_ray.classify.cells import grid_cells
from mammo_ray.classify.data import CellResult, GridData
from mammo_ray.classify.metrics import balanced_accuracy, best_threshold, binary_scores
from mammo_ray.classify.splits import leak_free_folds, leak_free_holdout
from mammo_ray.classify.stats import patient_bootstrap_auc
from mammo_ray.classify.synthetic import embedding_table, noise_table
from mammo_ray.config.grid import GridCell, GridConfig


@dataclass
class PipelineNumbers:
    """What one leak_free cell reports, computed through one cached imblearn Pipeline per fold."""

    cv_fold_scores: list[float] = field(default_factory=list)
    threshold: float = float("nan")
    test_scores: list[float] = field(default_factory=list)
    n_features: int = 0
    auc: float = float("nan")
    auc_ci: tuple[float, float] = (float("nan"), float("nan"))
    held_out: dict[str, float] = field(default_factory=dict)


def cached_pipeline_cell(data: GridData, cell: GridCell, config: GridConfig, memory: Memory) -> PipelineNumbers:
    """One leak_free cell the way `evaluate_cell` runs it, its Pipeline given `memory` (joblib caching)."""
    template, _ = build_pipeline(cell, config, data.n_rows)
    template.set_params(memory=memory)
    X, y, groups = data.X, data.y, data.groups
    train, test = leak_free_holdout(y, groups, config)
    X_train, y_train = X[train], y[train]
    numbers = PipelineNumbers()
    out_of_fold = np.zeros(len(train))
    for fit_rows, check_rows in leak_free_folds(y_train, groups[train], config):
        pipeline = clone(template).fit(X_train[fit_rows], y_train[fit_rows])
        scores = np.asarray(pipeline.decision_function(X_train[check_rows]), dtype=np.float64).ravel()
        out_of_fold[check_rows] = scores
        numbers.cv_fold_scores.append(balanced_accuracy(y_train[check_rows], scores > 0))
    numbers.threshold = best_threshold(y_train, out_of_fold)
    final = clone(template).fit(X_train, y_train)
    test_scores = np.asarray(final.decision_function(X[test]), dtype=np.float64).ravel()
    selector = final.named_steps.get("select")
    numbers.n_features = X.shape[1] if selector is None else int(selector.n_features_selected_)
    numbers.test_scores = [float(s) for s in test_scores]
    numbers.held_out = binary_scores(y[test], test_scores >= numbers.threshold)
    numbers.auc = auc(y[test], test_scores)
    numbers.auc_ci = patient_bootstrap_auc(y[test], test_scores, groups[test], config.bootstrap, config.ci_level,
                                           seed=config.seed)
    return numbers


def cached_pipelines(data: GridData, cells: Sequence[GridCell], config: GridConfig) -> list[PipelineNumbers]:
    """Every cell through its own cached Pipeline, one joblib cache (empty at the start) shared by all."""
    with tempfile.TemporaryDirectory(prefix="mammo-ray-pipeline-cache-") as folder, threadpool_limits(limits=1):
        memory = Memory(location=folder, verbose=0)
        return [cached_pipeline_cell(data, cell, config, memory) for cell in cells]


def _same(result: CellResult, numbers: PipelineNumbers) -> bool:
    """Bit for bit: fold scores, threshold, held-out scores, kept features, AUC and its interval."""
    return (result.status == "ok" and result.cv_fold_scores == numbers.cv_fold_scores
            and result.threshold == numbers.threshold and result.test_scores == numbers.test_scores
            and result.n_features == numbers.n_features and result.auc == numbers.auc
            and (result.auc_ci_low, result.auc_ci_high) == numbers.auc_ci)


def differences(results: Sequence[CellResult], numbers: list[PipelineNumbers]) -> dict[str, float]:
    """Largest absolute differences between engine results and pipeline numbers (cell by cell)."""
    worst = {"fold score": 0.0, "test score": 0.0, "auc": 0.0}
    for result, pipeline in zip(results, numbers, strict=True):
        if result.status != "ok":
            return {key: float("inf") for key in worst}
        worst["fold score"] = max(worst["fold score"], float(np.max(np.abs(
            np.subtract(result.cv_fold_scores, pipeline.cv_fold_scores)))))
        worst["test score"] = max(worst["test score"], float(np.max(np.abs(
            np.subtract(result.test_scores, pipeline.test_scores)))))
        worst["auc"] = max(worst["auc"], abs(result.auc - pipeline.auc))
    return worst


def _table(kind: str, rows: int, features: int) -> GridData:
    if kind == "noise":
        return noise_table(rows, features, rows * 100 // 410, seed=0, extractor="bench")
    return embedding_table(rows, features, seed=0, extractor="bench")


def _plain_pipelines(data: GridData, cells: Sequence[GridCell], config: GridConfig) -> list[CellResult]:
    return [evaluate_cell(data, cell, config) for cell in cells]


def run(args: argparse.Namespace) -> int:
    config = GridConfig(extractors=["bench"], protocols=["leak_free"], bootstrap=args.bootstrap,
                        cv_folds=args.cv_folds, evaluation="holdout", permutations=0)  # the engine, not the control
    cells = grid_cells(config)
    print(f"engine benchmark: {len(cells)} leak_free cells ({config.cv_folds} folds + the final fit each), "
          f"{args.rows} x {args.features} tables, one BLAS thread, median of {args.repeats} (interleaved); "
          f"{load_average()}")
    methods = ["engine", "engine, no kernels", "cached pipelines"] + (["plain pipelines"] if args.plain else [])
    header = f"{'table':<11}" + "".join(f"{m:>20}" for m in methods) + f"{'cached/engine':>15}{'cached/no-kern':>16}"
    print(header)
    print("-" * len(header))
    failed = False
    notes = []
    for kind in args.tables:
        data = _table(kind, args.rows, args.features)
        times: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(args.repeats):
            seconds, engine = timed(partial(evaluate_cells, data, cells, config))
            times["engine"].append(seconds)
            seconds, unkernelled = timed(partial(evaluate_cells, data, cells, config, precomputed_kernels=False))
            times["engine, no kernels"].append(seconds)
            seconds, cached = timed(partial(cached_pipelines, data, cells, config))
            times["cached pipelines"].append(seconds)
            if args.plain:
                seconds, _ = timed(partial(_plain_pipelines, data, cells, config))
                times["plain pipelines"].append(seconds)
        median = {m: statistics.median(t) for m, t in times.items()}
        print(f"{kind:<11}" + "".join(f"{median[m]:>19.2f}s" for m in methods)
              + f"{median['cached pipelines'] / median['engine']:>14.2f}x"
              + f"{median['cached pipelines'] / median['engine, no kernels']:>15.2f}x", flush=True)
        identical = all(_same(r, n) for r, n in zip(unkernelled, cached, strict=True))
        worst = differences(engine, cached)
        failed |= not identical or not all(v < 1e-6 for v in worst.values())
        notes.append(f"  {kind}: cached pipelines = engine without kernels bit for bit: "
                     f"{'yes' if identical else 'NO'}; against the kernel engine, largest |difference| of a fold "
                     f"score {worst['fold score']:.1e}, a held-out score {worst['test score']:.1e}, an AUC "
                     f"{worst['auc']:.1e}; all runs (s): "
                     + "; ".join(f"{m} {', '.join(f'{t:.1f}' for t in times[m])}" for m in methods))
    print("\n".join(notes))
    return 1 if failed else 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("engine", help="the grid's shared-fit engine vs imblearn Pipeline(memory=...)")
    parser.add_argument("--tables", nargs="+", choices=["noise", "embedding"], default=["noise", "embedding"],
                        help="synthetic tables (mammo_ray.classify.synthetic): pure noise, embedding-like")
    parser.add_argument("--rows", type=int, default=410, help="rows (INbreast: 410)")
    parser.add_argument("--features", type=int, default=2048, help="features (a ResNet-50 embedding: 2048)")
    parser.add_argument("--cv-folds", type=int, default=10)
    parser.add_argument("--bootstrap", type=int, default=1000, help="AUC bootstrap resamples (the study's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-plain", dest="plain", action="store_false",
                        help="skip the plain pipelines (evaluate_cell per cell, no cache)")
    parser.set_defaults(func=run)
