"""`score`: `mammo-ray score` against the embed stage alone, on the same images, side by side.

A study on a synthetic cohort (--patients, --rows; imagenet_resnet18 at --size, random-init; a small grid)
exports its packages; then, on --score-patients new patients of the same generator, each on a fresh output:

  embed alone  the study's `manifest` and `embed` stages (what scoring must do anyway)
  score        `score_collection` with the `-compare` package (the same stages, then the classifier)

on one local Ray with --cpus CPUs. It prints images/s of each, score / embed, and the classifier's share of
the scoring time (loading the package, reading the vectors, scoring, writing the table).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mammo_ray.benchmarks.common import load_average, timed
from mammo_ray.config import StudyConfig, parse_config


def _config(output: Path, patients: int, seed: int, rows: int, size: int) -> StudyConfig:
    return parse_config({
        "name": "score-benchmark", "output": str(output),
        "data": {"synthetic": {"patients": patients, "seed": seed, "rows": rows}},
        "embed": {"extractors": [{"name": "imagenet_resnet18", "input_size": size}]},
        "grid": {"cv_folds": 3, "bootstrap": 20, "classifiers": ["svm_linear"], "permutations": 0,
                 "oof": {"repeats": 1}},
    })


def run(args: argparse.Namespace) -> int:
    import ray

    from mammo_ray import scoring  # here, not at the top: keeps `jobs/benchmark.py --help` fast (no torch)
    from mammo_ray.study import run_study  # as above

    print(f"score benchmark: study on {args.patients} synthetic patients, scoring {args.score_patients} new ones "
          f"({4 * args.score_patients} images of {args.rows} rows), imagenet_resnet18 at {args.size}; Ray with "
          f"{args.cpus} CPUs; {load_average()}", flush=True)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="mammo-ray-bench-score-") as folder:
            root = Path(folder)
            run_study(_config(root / "study", args.patients, 0, args.rows, args.size),
                      ["manifest", "embed", "grid", "subgroups", "export"])
            package = str(root / "study" / "models" / "imagenet_resnet18-compare")
            new = {"seed": 1, "rows": args.rows, "size": args.size, "patients": args.score_patients}
            embed_s, _ = timed(lambda: run_study(_config(root / "embed", **new), ["manifest", "embed"]))
            score_s, result = timed(lambda: scoring.score_collection(package, _config(root / "score", **new)))
    finally:
        ray.shutdown()
    n = result.images + result.errors
    classifier_s = result.timings["classifier"]
    print(f"  embed alone (manifest + embed stages)  {embed_s:7.1f} s  {n / embed_s:6.1f} img/s")
    print(f"  score (the same + the classifier)      {score_s:7.1f} s  {n / score_s:6.1f} img/s")
    print(f"  score / embed = {score_s / embed_s:.2f}; the classifier's share of scoring (package, vectors, "
          f"scores, table): {classifier_s:.2f} s, {100 * classifier_s / score_s:.1f}%")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("score", help="mammo-ray score against the embed stage alone, same images")
    parser.add_argument("--patients", type=int, default=24, help="patients of the study that exports the package")
    parser.add_argument("--score-patients", type=int, default=32, help="new patients scored (4 images each)")
    parser.add_argument("--rows", type=int, default=256, help="image height")
    parser.add_argument("--size", type=int, default=224, help="ImageNet input size")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.set_defaults(func=run)
