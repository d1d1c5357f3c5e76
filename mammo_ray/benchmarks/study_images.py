"""`study-images`: the paper's image stages as one pass against one pass per stage, side by side.

On the first --images mini-MIAS PNGs, random-init weights: ingest, imagenet_resnet50 at --size, nyu_lcc and
nyu_avg at --nyu-scale, and zero-shot at the same scale,

  separate  one pass per stage, in study order (what a study did before the image pass), one output
  one pass  `run_pass` with every output, on a fresh output

on one local Ray with --cpus CPUs. It prints the wall time of each and their ratio, decodes and network
forwards per image (as the passes count them; a shared NYU trunk counts once), and checks that both wrote the
same tables (within 1e-4).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mammo_ray.benchmarks.common import load_average, mias_manifest, timed
from mammo_ray.compare import compare_outputs
from mammo_ray.config import EmbedConfig, ExtractorConfig, IngestConfig, ZeroShotConfig


def run(args: argparse.Namespace) -> int:
    import ray

    # Here, not at the top: keeps `jobs/benchmark.py --help` fast (no Ray/torch import).
    from mammo_ray.stages import embed, inference, zero_shot

    manifest = mias_manifest(args.images)
    extractors = [ExtractorConfig(name="imagenet_resnet50", weights="random-init:0", input_size=args.size),
                  ExtractorConfig(name="nyu_lcc", weights="random-init:0", nyu_scale=args.nyu_scale),
                  ExtractorConfig(name="nyu_avg", weights="random-init:0", nyu_scale=args.nyu_scale)]
    tasks = [*(embed.EmbedTask(spec) for spec in extractors),
             zero_shot.ZeroShotTask(ZeroShotConfig(weights="random-init:0", nyu_scale=args.nyu_scale))]
    options, read = EmbedConfig(batch_size=args.batch_size), IngestConfig()
    print(f"study-images benchmark: {len(manifest)} mini-MIAS images; ingest, imagenet_resnet50 at {args.size}, "
          f"nyu_lcc, nyu_avg and zero-shot at nyu_scale {args.nyu_scale}; Ray with {args.cpus} CPUs; "
          f"{load_average()}", flush=True)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="mammo-ray-bench-study-images-") as folder:
            separate, together = str(Path(folder) / "separate"), str(Path(folder) / "one-pass")
            inference.run_pass(manifest.iloc[:2], str(Path(folder) / "warm-up"), tasks, options, read, ingest=True)

            def one_per_stage() -> tuple[int, int]:
                passes = [inference.run_pass(manifest, separate, [], options, read, ingest=True),
                          *(inference.run_pass(manifest, separate, [task], options, read) for task in tasks)]
                return sum(p.decoded for p in passes), sum(p.forwards for p in passes)

            separate_s, (separate_decoded, separate_forwards) = timed(one_per_stage)
            pass_s, result = timed(lambda: inference.run_pass(manifest, together, tasks, options, read, ingest=True))
            different = [r.table for r in compare_outputs(separate, together, atol=1e-4) if not r.equal]
    finally:
        ray.shutdown()
    n = len(manifest)
    # Network forwards per image: ResNet-50, and NYU trunks (nyu_lcc the CC one, nyu_avg both, zero-shot its
    # view's: four apart, two shared in the pass).
    for name, seconds, decoded, forwards in (
            ("separate passes (ingest, 3 extractors, zero-shot)", separate_s, separate_decoded, separate_forwards),
            ("one pass", pass_s, result.decoded, result.forwards)):
        print(f"  {name:<50} {seconds:7.1f} s  {n / seconds:6.1f} img/s  decodes per image {decoded / n:.2f}  "
              f"network forwards per image {forwards / n:.2f}")
    print(f"  one pass / separate = {pass_s / separate_s:.2f}; "
          f"tables {'the same' if not different else 'DIFFERENT: ' + ', '.join(different)}")
    return 0 if not different else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("study-images", help="the study's image stages: one pass vs one per stage")
    parser.add_argument("--images", type=int, default=64, help="the first N mini-MIAS images (322 in all)")
    parser.add_argument("--size", type=int, default=224, help="ImageNet input size")
    parser.add_argument("--nyu-scale", type=float, default=0.25, help="fraction of the native NYU windows")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.set_defaults(func=run)
