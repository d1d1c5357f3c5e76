"""`train`: fine-tuning throughput on Ray Train, images/s of one stage with 1, 2, ... workers and the
scaling efficiency images/s(n) / (n * images/s(1)), for each torch thread setting (--threads: one thread
per worker as before, and `auto`, the node's CPUs shared by its workers); with --gpu, fp32 and mixed
precision.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import uuid

import pandas as pd

from mammo_ray.config import FinetuneConfig
from mammo_ray.datasets.synthetic import SyntheticSource, generate_cohort


def _train_rate(manifest: pd.DataFrame, output: str, args: argparse.Namespace, workers: int,
                amp: bool, threads: int | None) -> tuple[float, float]:
    """(images/s of the last epoch, wall seconds of the whole fit) of one fresh single-stage run."""
    # Here, not at the top: keeps `jobs/benchmark.py --help` fast (no Ray/torch import).
    from mammo_ray.stages.finetune import run_finetune

    config = FinetuneConfig.model_validate({
        "name": f"bench-{workers}w-{'amp' if amp else 'fp32'}-{uuid.uuid4().hex[:8]}",
        "models": [{"name": args.model, "weights": "random-init:0"}],
        "tasks": ["binary"],
        "stages": [{"name": "bench", "train": "all", "size": args.size, "epochs": args.epochs, "lr": 1e-3}],
        "batch_size": args.batch_size,
        "num_workers": workers,
        "use_gpu": args.gpu,
        "cpus_per_worker": 0.0 if args.gpu else 1.0,
        "torch_threads": threads,
        "mixed_precision": amp,
        "cache_inputs": True,  # preprocess once, before the clock: the benchmark times training
        "keep_checkpoints": 1,
    })
    start = time.perf_counter()
    result = run_finetune(manifest, output, config)
    return result.runs[0].images_per_s, time.perf_counter() - start


def _thread_settings(text: str) -> list[int | None]:
    """'1,auto' -> [1, None] (None: the worker's node CPUs shared by its workers)."""
    return [None if item.strip() == "auto" else int(item) for item in text.split(",")]


def run(args: argparse.Namespace) -> int:
    import ray  # keeps `jobs/benchmark.py --help` fast: no Ray import

    counts = sorted({int(w) for w in args.workers.split(",")})
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    if not ray.is_initialized():
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    resources = ray.cluster_resources()
    with tempfile.TemporaryDirectory(prefix="mammo-ray-bench-") as folder:
        cohort = SyntheticSource(patients=args.patients, rows=args.rows)
        manifest = generate_cohort(os.path.join(folder, "cohort"), cohort)
        print(
            f"train benchmark: {args.model} at {args.size} px, batch {args.batch_size}, {args.epochs} epochs "
            f"(images/s of the last), {len(manifest)} synthetic images (~80% train); cluster "
            f"{resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU; "
            f"{'1 GPU' if args.gpu else '1 CPU'} per worker; torch threads per worker: {args.threads} "
            "(auto: the node's CPUs / its workers)"
        )
        header = (f"{'threads':>8}{'workers':>8}{'precision':>11}{'images/s':>11}{'per worker':>12}{'efficiency':>12}"
                  f"{'fit s':>8}")
        print(header)
        print("-" * len(header))
        for threads in _thread_settings(args.threads):
            for amp in ([False, True] if args.gpu else [False]):
                base = None
                for workers in counts:
                    rate, seconds = _train_rate(manifest, os.path.join(folder, "out"), args, workers, amp, threads)
                    base = rate if workers == counts[0] else base
                    efficiency = rate * counts[0] / (workers * base) if base else float("nan")
                    print(f"{threads or 'auto':>8}{workers:>8}{'fp16 amp' if amp else 'fp32':>11}{rate:>11.2f}"
                          f"{rate / workers:>12.2f}{efficiency:>11.0%} {seconds:>7.0f}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="fine-tuning images/s with 1, 2, ... Ray Train workers")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--model", default="resnet18",
                        choices=["resnet50", "resnet18", "squeezenet1_1", "nyu", "small_cnn"])
    parser.add_argument("--size", type=int, default=128, help="input size in pixels")
    parser.add_argument("--batch-size", type=int, default=32, help="per worker")
    parser.add_argument("--epochs", type=int, default=2, help="the last one is timed")
    parser.add_argument("--patients", type=int, default=48, help="synthetic cohort size (4 images each)")
    parser.add_argument("--rows", type=int, default=256, help="synthetic image height")
    parser.add_argument("--threads", default="1,auto",
                        help="torch thread settings to compare, comma-separated: counts or auto (default 1,auto)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker; fp32 and mixed precision")
    parser.add_argument("--address", default=None, help="Ray address (default: start or join local Ray)")
    parser.set_defaults(func=run)
