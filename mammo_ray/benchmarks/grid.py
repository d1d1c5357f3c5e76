"""`grid`: the classifier grid, a plain sequential loop over cells (the notebook way) against the Ray Tune
stage `run_grid`, on synthetic embedding tables (410 and 4,000 rows), then per-classifier wall time up to
40,000 rows (kernel SVMs on their scale path there). `--control-from CONFIG`: instead, a study's own grid on
its stored embeddings (real images: libsvm converges far slower on them than on synthetic features), its
negative control fixed against sequential, side by side, with every cell's p-value compared at 0.05.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from mammo_ray.benchmarks.common import load_average
from mammo_ray.classify import evaluate_cell, evaluate_cells
from mammo_ray.classify.cells import grid_cells
from mammo_ray.classify.data import CellResult, GridData
from mammo_ray.classify.synthetic import embedding_table, read_synthetic, write_embeddings
from mammo_ray.config import load_config
from mammo_ray.config.grid import GridCell, GridConfig, combinations
from mammo_ray.current import CurrentInputs
from mammo_ray.stages.grid import run_grid, study_datasets


def _sequential_grid(data: GridData, cells: Sequence[GridCell], config: GridConfig,
                     threads: str) -> tuple[float, list[CellResult]]:
    """The notebook way: one process, a plain loop over cells, every cell fit from scratch."""
    limits = 1 if threads == "1" else None
    start = time.perf_counter()
    results = [evaluate_cell(data, cell, config, blas_threads=limits) for cell in cells]
    return time.perf_counter() - start, results


def _in_process_grid(data: GridData, cells: Sequence[GridCell], config: GridConfig) -> float:
    """Our engine without Ray: shared fits and kernels, one process, one thread."""
    start = time.perf_counter()
    evaluate_cells(data, cells, config)
    return time.perf_counter() - start


def _stage_grid(data: GridData, config: GridConfig, workdir: Path) -> tuple[float, pd.DataFrame]:
    """Our stage end to end: read the embeddings (feature store joined to the manifest), Ray Tune trials,
    write results/grid.parquet."""
    output = str(workdir / f"grid-{data.n_rows}")
    manifest, key = write_embeddings(output, data, extractor="bench")
    start = time.perf_counter()
    result = run_grid(output, config, {"bench": read_synthetic(output, "bench", manifest, key)})
    elapsed = time.perf_counter() - start
    if os.environ.get("MAMMO_RAY_BENCH_VERBOSE"):
        print("    stage phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
              + f"; classifier s in trials {result.frame['classifier_seconds'].sum():.1f}")
    return elapsed, result.frame


def _differences(results: Sequence[CellResult], frame: pd.DataFrame) -> tuple[float, int]:
    """Largest |AUC difference| between the sequential loop and the stage, and cells whose status differs.

    Exact kernels agree to rounding. The scale path's liblinear fits (tol 1e-2) drift a little more (the
    sizes seen: docs/benchmarks.md, "Classifier grid"): same inputs, but the stage's worker computes in
    another process on a matrix read zero-copy from the object store, and last-bit float32 differences (a
    likely cause, not proven) are amplified by the loose tolerance.
    """
    by_key = {tuple(r[k] for k in ("extractor", "protocol", "selection", "balancing", "classifier")): r
              for r in frame.to_dict("records")}
    worst, mismatched = 0.0, 0
    for result in results:
        row = by_key[(result.extractor, result.protocol, result.selection, result.balancing, result.classifier)]
        if row["status"] != result.status:
            mismatched += 1
        elif result.status == "ok":
            worst = max(worst, abs(row["auc"] - result.auc))
    return worst, mismatched


def _study_grid(args: argparse.Namespace, workdir: Path) -> None:
    """The paper's study shape: three 410-row extractor tables of the same images (2048, 2048 and 256
    features, like ResNet-50, NYU L-CC 4x4 and NYU Avg) and their combination, the whole grid with the new
    evaluation, through run_grid (Ray Tune, all CPUs) against the same cells in one process (our engine
    with shared fits, no Ray)."""
    shapes = {"imagenet_resnet50": 2048, "nyu_lcc": 2048, "nyu_avg": 256}
    base = embedding_table(args.study_rows, 2048, seed=0, extractor="imagenet_resnet50")
    tables = {name: replace(embedding_table(args.study_rows, width, seed=index, extractor=name), y=base.y,
                            groups=base.groups) for index, (name, width) in enumerate(shapes.items())}
    config = GridConfig(extractors=list(shapes), bootstrap=args.bootstrap, evaluation=args.evaluation,
                        permutations=args.permutations, oof={"repeats": args.oof_repeats},
                        trial_grouping=args.grouping)
    output = str(workdir / "study")
    datasets = {}
    for name, data in tables.items():
        manifest, key = write_embeddings(output, data, extractor=name, image_prefix="study")
        datasets[name] = read_synthetic(output, name, manifest, key)
    for members in combinations(config, list(datasets)):
        combined = GridData.combine([datasets[name] for name in members])
        datasets[combined.extractor] = combined
    cells = grid_cells(config, list(datasets))
    print(f"\nthe study's grid: {len(datasets)} extractors ({', '.join(datasets)}), {args.study_rows} rows, "
          f"{len(cells)} cells, leak_free {args.evaluation} (5 folds x {args.oof_repeats} repeats), "
          f"{args.permutations} permutations per cell")
    started = time.perf_counter()
    result = run_grid(output, config, datasets)
    stage_s = time.perf_counter() - started
    control = result.frame["control_seconds"].sum()
    fits = result.frame["classifier_seconds"].sum()
    unconverged = int(result.frame["unconverged_fits"].fillna(0).sum())
    print(f"  stage (Ray Tune, {args.num_cpus or os.cpu_count()} CPUs): {stage_s:.0f} s ({stage_s / 60:.1f} min); "
          f"{result.n_ok} rows ok; inside the trials {fits:.0f} CPU-s of classifier fits (shared scaler, Lasso "
          f"and SMOTE fits not counted) and {control:.0f} CPU-s of permutation control; {unconverged} classifier "
          f"fits stopped at max_iter", flush=True)
    if args.in_process:
        started = time.perf_counter()
        for name, data in datasets.items():
            evaluate_cells(data, grid_cells(config, [name]), config)
        sequential_s = time.perf_counter() - started
        print(f"  in-process, one process and thread (our engine, no Ray): {sequential_s:.0f} s "
              f"({sequential_s / 60:.1f} min); sequential / stage {sequential_s / stage_s:.2f}x", flush=True)


def _control_comparison(config_path: str, workdir: Path) -> None:
    """The study's grid on its stored embeddings, twice in one run: every cell's permutations (fixed) against
    the sequential control, the time of each and the p-values side by side."""
    study = load_config(config_path)
    datasets = study_datasets(CurrentInputs(study))
    rows = {name: data.n_rows for name, data in datasets.items()}
    print(f"the grid of {config_path} on its stored embeddings ({study.output}): {rows}; "
          f"{study.grid.permutations} permutations at most per cell")
    frames, seconds = {}, {}
    for mode in ("fixed", "sequential"):
        config = study.grid.model_copy(update={"control_stop": mode})
        started = time.perf_counter()
        frames[mode] = run_grid(str(workdir / mode), config, datasets).frame
        seconds[mode] = time.perf_counter() - started
        ok = frames[mode][frames[mode]["status"] == "ok"]
        print(f"  {mode:<10} {seconds[mode]:7.0f} s; control {ok['control_seconds'].sum():7.0f} CPU-s; "
              f"permutations per cell: median {ok['permutations'].median():.0f}, total {ok['permutations'].sum():.0f}"
              f" ({load_average()})", flush=True)
    keys = ["extractor", "protocol", "selection", "balancing", "classifier"]
    both = frames["fixed"].merge(frames["sequential"], on=keys, suffixes=("_fixed", "_sequential"))
    both = both[both["permutation_p_fixed"].notna()]
    agree = (both["permutation_p_fixed"] < 0.05) == (both["permutation_p_sequential"] < 0.05)
    print(f"  fixed / sequential: {seconds['fixed'] / seconds['sequential']:.2f}x; p-values on the same side of "
          f"0.05 in {int(agree.sum())} of {len(both)} cells")
    for row in both[~agree].itertuples():
        print(f"    differs: {row.extractor} {row.protocol} {row.selection}/{row.balancing}/{row.classifier}: "
              f"p {row.permutation_p_fixed:.3f} vs {row.permutation_p_sequential:.3f}")


def run(args: argparse.Namespace) -> int:
    import ray  # keeps `jobs/benchmark.py --help` fast: no Ray import

    cpus = args.num_cpus or os.cpu_count() or 1
    started = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    if args.control_from:
        with tempfile.TemporaryDirectory(prefix="mammo-grid-control-") as workdir:
            _control_comparison(args.control_from, Path(workdir))
        ray.shutdown()
        return 0
    print(f"grid benchmark: {cpus} CPUs for Ray (ray.init {time.perf_counter() - started:.1f} s, not counted), "
          f"{load_average()}")
    print(f"data: synthetic embedding-like features, {args.features} columns, 25% positives, 4 images/patient")
    print(f"sequential = the notebook way: a plain loop over cells in one process, a fresh imblearn Pipeline "
          f"with SVC(kernel=...) per fold (BLAS threads: {args.baseline_threads})")
    print("in-process = our engine (shared scaler/Lasso/SMOTE per fold, one Gram matrix per fold for both "
          "SVMs) in one process, no Ray")
    print(f"every whole-grid row: leak_free evaluation '{args.evaluation}' (oof: 5 folds x {args.oof_repeats} "
          f"repeats), {args.permutations} label permutations per cell (negative control), both protocols")
    print(f"stage = run_grid end to end: read the Parquet table, Ray Tune trials grouped by '{args.grouping}' "
          f"(1 CPU each), write grid.parquet; ratio = sequential / stage")
    with tempfile.TemporaryDirectory(prefix="mammo-grid-warmup-") as warm:  # imports, caches: untimed
        tiny = embedding_table(80, 16, seed=1, extractor="bench")
        tiny_config = GridConfig(extractors=["bench"], trial_grouping=args.grouping, bootstrap=10, cv_folds=3,
                                 permutations=2, oof={"repeats": 1})
        _sequential_grid(tiny, grid_cells(tiny_config), tiny_config, args.baseline_threads)
        _stage_grid(tiny, tiny_config, Path(warm))
    print("(one untimed warm-up of both paths on an 80-row table first)")
    header = (f"{'rows':>7}{'cells':>7}{'sequential s':>14}{'in-process s':>14}{'stage s':>10}{'ratio':>8}"
              f"{'max|dAUC|':>11}  scale paths")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="mammo-grid-bench-") as workdir:
        for n_rows in args.rows:
            data = embedding_table(n_rows, args.features, seed=0, extractor="bench")
            config = GridConfig(extractors=["bench"], trial_grouping=args.grouping, bootstrap=args.bootstrap,
                                evaluation=args.evaluation, permutations=args.permutations,
                                oof={"repeats": args.oof_repeats})
            cells = grid_cells(config)
            for repeat in range(args.repeats):
                seq_s, results = _sequential_grid(data, cells, config, args.baseline_threads)
                inproc = f"{_in_process_grid(data, cells, config):>14.1f}" if args.in_process else f"{'-':>14}"
                stage_s, frame = _stage_grid(data, config, Path(workdir) / f"r{repeat}")
                paths = sorted({p.split(":")[0] for p in frame["scale_path"].dropna()})
                worst, mismatched = _differences(results, frame)
                agree = f"{worst:.1e}" if not mismatched else f"{mismatched} differ"
                print(f"{n_rows:>7}{len(cells):>7}{seq_s:>14.1f}{inproc}{stage_s:>10.1f}{seq_s / stage_s:>7.2f}x"
                      f"{agree:>11}  {'; '.join(paths)}  ({load_average()})", flush=True)
        if args.study_rows:
            _study_grid(args, Path(workdir))
        if args.big_rows:
            sizes = sorted({*args.growth_rows, args.big_rows})
            print(f"\nper classifier, one leak_free cell (no selection, no balancing: {args.features} features, "
                  f"holdout: 10 folds + final fit, no control), sequential, one thread; scale.max_rows_exact = "
                  f"{GridConfig().scale.max_rows_exact}")
            print(f"{'classifier':<12}" + "".join(f"{n:>10}" for n in sizes) + "   growth (last/first)  path at "
                  f"{sizes[-1]}")
            tables = {n: embedding_table(n, args.features, seed=0, extractor="bench") for n in sizes}
            config = GridConfig(extractors=["bench"], bootstrap=args.bootstrap, evaluation="holdout", permutations=0)
            for classifier in args.big_classifiers:
                times, path = [], ""
                for n in sizes:
                    cell = GridCell("bench", "none", "none", classifier, "leak_free")
                    start = time.perf_counter()
                    result = evaluate_cell(tables[n], cell, config)
                    times.append(time.perf_counter() - start)
                    path = result.scale_path if result.status == "ok" else f"failed: {result.error}"
                print(f"{classifier:<12}" + "".join(f"{t:>9.1f}s" for t in times)
                      + f"   {times[-1] / times[0]:>8.0f}x  {path}", flush=True)
            big = tables[args.big_rows]
            del tables
            stage_config = GridConfig(extractors=["bench"], bootstrap=args.bootstrap, selection=["none"],
                                      evaluation="holdout", permutations=0,
                                      balancing=["none"], protocols=["leak_free"],
                                      classifiers=list(args.big_classifiers), trial_grouping="cell")
            stage_s, frame = _stage_grid(big, stage_config, Path(workdir) / "big")
            status = {k: int(v) for k, v in frame["status"].value_counts().items()}
            aucs = ", ".join(f"{c} {a:.3f}" for c, a in zip(frame["classifier"], frame["auc"], strict=True))
            print(f"the same {len(frame)} cells at {args.big_rows} rows through run_grid (one trial each, "
                  f"{cpus} CPUs): {stage_s:.1f} s; status {status}; AUC {aucs}", flush=True)
    ray.shutdown()
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("grid", help="classifier grid: sequential loop vs the Ray Tune stage")
    parser.add_argument("--rows", type=int, nargs="*", default=[410, 4000],
                        help="table sizes for the whole grid (none: skip that part)")
    parser.add_argument("--growth-rows", type=int, nargs="*", default=[410, 4000],
                        help="smaller sizes of the per-classifier growth table (with --big-rows)")
    parser.add_argument("--features", type=int, default=2048)
    parser.add_argument("--big-rows", type=int, default=40000, help="per-classifier growth up to this size (0: skip)")
    parser.add_argument("--big-classifiers", nargs="+", default=["logreg", "svm_linear", "svm_rbf"],
                        help="classifiers timed up to --big-rows (kernel SVMs take their scale path there)")
    parser.add_argument("--study-rows", type=int, default=410,
                        help="rows of the study-shaped grid (3 extractors + combined; 0: skip)")
    parser.add_argument("--grouping", default="selection", choices=["cell", "preprocessing", "selection", "protocol"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-in-process", dest="in_process", action="store_false",
                        help="skip the in-process (no Ray) column")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--evaluation", choices=["oof", "holdout"], default="oof",
                        help="leak_free evaluation of the whole-grid rows")
    parser.add_argument("--oof-repeats", type=int, default=5)
    parser.add_argument("--permutations", type=int, default=200, help="negative-control permutations per cell")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for Ray (default: all)")
    parser.add_argument("--control-from", default=None, metavar="CONFIG",
                        help="only this: the study CONFIG's grid on its stored embeddings (run its embed stage "
                        "first), negative control fixed vs sequential")
    parser.add_argument("--baseline-threads", choices=["1", "all"], default="1",
                        help="BLAS threads of the sequential loop (1: no hidden parallelism, and the faster "
                        "choice on a busy machine)")
    parser.set_defaults(func=run)
