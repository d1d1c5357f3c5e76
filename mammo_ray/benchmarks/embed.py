"""`embed`: the embed stage against a naive loop and against the network alone, on the same images.

On the real mini-MIAS PNGs (or the first --images of them), one ImageNet extractor, side by side:

  (a) loop      one process, image by image: read the bytes, decode, preprocess, and forward in batches
                of --batch-size (the notebook way), with torch's default threads; (a1) the same with one
                torch thread, which is what a Ray actor holding one CPU gets;
  (b) stage     `run_embed` on a fresh output, on a local Ray with --cpus CPUs (actor start included);
  (c) model     the network alone on the decoded, preprocessed inputs, batches of --batch-size: the
                ceiling of any pipeline on this machine;
  (d) prepare   decode + preprocess alone, one process.

It prints images/s of each and the ratios b/c (how close the stage comes to the network alone) and b/a
(the stage against the loop it replaces). The stage's vectors are checked against the loop's.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from mammo_ray.benchmarks.common import load_average, mias_manifest, timed

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from mammo_ray.config import ExtractorConfig

T = TypeVar("T")
IMAGENET_EXTRACTORS = ("imagenet_resnet50", "imagenet_resnet18", "imagenet_squeezenet")


def _prepare(manifest: pd.DataFrame, spec: ExtractorConfig) -> list[np.ndarray]:
    """Every image read, decoded and preprocessed in this process: (1, 3, size, size) each."""
    from mammo_ray import storage
    from mammo_ray.imaging.decode import decode_image

    transform = spec.transform
    return [transform(decode_image(storage.read_bytes(row.uri), row.uri).pixels, row.view, row.laterality)
            for row in manifest.itertuples()]


def _forward(spec: ExtractorConfig, inputs: list[np.ndarray], batch_size: int) -> np.ndarray:
    """The network on `inputs` in batches, in inference mode: (n, dim)."""
    import torch

    from mammo_ray.models.extractors import LoadedExtractor

    model = LoadedExtractor(spec)
    model.module.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            batch = torch.from_numpy(np.concatenate(inputs[start:start + batch_size]))
            outputs.append(model(batch).numpy())
    return np.concatenate(outputs)


def _loop(manifest: pd.DataFrame, spec: ExtractorConfig, batch_size: int) -> np.ndarray:
    return _forward(spec, _prepare(manifest, spec), batch_size)


def _with_torch_threads(threads: int, work: Callable[[], T]) -> T:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return work()
    finally:
        torch.set_num_threads(before)


def run(args: argparse.Namespace) -> int:
    import ray
    import torch

    from mammo_ray.config import EmbedConfig, ExtractorConfig
    from mammo_ray.stages.embed import read_embeddings, run_embed

    manifest = mias_manifest(args.images)
    spec = ExtractorConfig(name=args.extractor, weights="random-init:0", input_size=args.size)
    threads = torch.get_num_threads()
    print(f"embed benchmark: {spec.name} at {args.size} px, {len(manifest)} mini-MIAS images, batch "
          f"{args.batch_size}, Ray with {args.cpus} CPUs, torch threads {threads}; {load_average()}", flush=True)
    _loop(manifest.iloc[:args.batch_size], spec, args.batch_size)  # warm-up: imports, first allocations
    loop_s, loop_vectors = timed(lambda: _loop(manifest, spec, args.batch_size))
    loop1_s, _ = timed(lambda: _with_torch_threads(1, lambda: _loop(manifest, spec, args.batch_size)))
    prepare_s, inputs = timed(lambda: _prepare(manifest, spec))
    model_s, _ = timed(lambda: _forward(spec, inputs, args.batch_size))
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="mammo-ray-bench-embed-") as folder:
            output = str(Path(folder) / "out")
            stage_s, result = timed(lambda: run_embed(manifest, output, spec, EmbedConfig(batch_size=args.batch_size)))
            stored = read_embeddings(output, manifest, spec).set_index("image_id").loc[manifest["image_id"]]
            difference = float(np.max(np.abs(np.stack(stored["embedding"].to_numpy()) - loop_vectors)))
    finally:
        ray.shutdown()
    n = len(manifest)
    rows = [("(a)  naive loop, one process", loop_s), ("(a1) the same loop, one torch thread", loop1_s),
            ("(b)  embed stage (Ray Data pipeline)", stage_s), ("(c)  the network alone", model_s),
            ("(d)  decode + preprocess alone", prepare_s)]
    for name, seconds in rows:
        print(f"  {name:<40} {n / seconds:7.1f} img/s  ({seconds:6.1f} s)")
    print(f"  b/c = {model_s / stage_s:.2f}, b/a = {loop_s / stage_s:.2f}, a1/a = {loop_s / loop1_s:.2f}; "
          f"{result.embedded} embedded, {result.errors} errors; largest |stage - loop| {difference:.1e}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("embed", help="the embed stage vs a naive loop vs the network alone")
    parser.add_argument("--extractor", choices=IMAGENET_EXTRACTORS, default="imagenet_resnet50")
    parser.add_argument("--size", type=int, default=224, help="input size")
    parser.add_argument("--images", type=int, default=322, help="the first N mini-MIAS images (322 in all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.set_defaults(func=run)
