"""`scale`: a collection of --images (100,000) small images through manifest, ingest and one small extractor,
as a job runs it (a study process with its own local Ray of --cpus CPUs), beside the same for its first tenth.

The collection is written fast: --size px 8-bit PNGs of a breast-like shape over a zero background, every
--dicom-every-th image a 16-bit DICOM instead, each with noise of its own (identical bytes would be embedded
once and make the run look cheaper). It prints, for both runs: wall time and images/s, peak memory (PSS of the
study process and its Ray), the files and bytes the output holds (and how many part files the pass wrote
before merging them), and then:

  per-image overhead  the pipeline's time per image beyond its work: the marginal wall time per image (the
                      large run minus the small one, over the images between them: fixed costs cancel) less
                      the work per image divided over the CPUs (read + decode + preprocess + forward, measured
                      image by image in one single-thread process on a sample of the collection);
  memory              peak of the large run / peak of the small one;
  no-op rerun         the same study run again on the large output (nothing to do: every stage skipped).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from mammo_ray.benchmarks.common import REPO_ROOT, load_average, timed
from mammo_ray.benchmarks.embed import forward_batches, prepare_images
from mammo_ray.config import ExtractorConfig
from mammo_ray.datasets.manifest import validate_manifest, write_manifest
from mammo_ray.datasets.synthetic.dicom import synthetic_dicom_bytes
from mammo_ray.memory import MeasuredRun, run_measured

#: The extractor of the run: ResNet-18 at its smallest input, the cheapest network the study offers.
EXTRACTOR = {"name": "imagenet_resnet18", "input_size": 32, "weights": "random-init:0"}
_CHUNK = 1000  # images per folder and per generation task


def _pixels(index: int, size: int) -> np.ndarray:
    """A breast-like half-ellipse on the left over a zero background, with noise drawn from `index`."""
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    inside = (xx / 0.75) ** 2 + ((yy - 0.5) / 0.45) ** 2 < 1.0
    tissue = 200.0 - 120.0 * xx + rng.normal(0.0, 12.0, (size, size))
    return np.where(inside, np.clip(tissue, 1, 255), 0).astype(np.uint8)


def _write_chunk(root: str, start: int, stop: int, size: int, dicom_every: int) -> list[str]:
    """Write images start..stop-1 under root/<chunk>/; return their URIs."""
    folder = Path(root) / f"{start // _CHUNK:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    uris = []
    for index in range(start, stop):
        pixels = _pixels(index, size)
        if dicom_every and index % dicom_every == 0:
            path = folder / f"img-{index:07d}.dcm"
            path.write_bytes(synthetic_dicom_bytes(pixels.astype(np.uint16) * 16, patient_id=f"p{index // 4:06d}",
                                                   exam_id="1", laterality="L", view="CC"))
        else:
            path = folder / f"img-{index:07d}.png"
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
            path.write_bytes(buffer.getvalue())
        uris.append(str(path))
    return uris


def write_collection(root: Path, images: int, size: int, dicom_every: int, workers: int) -> pd.DataFrame:
    """The collection's files (in parallel) and its manifest: four images per woman, L/R x CC/MLO."""
    starts = list(range(0, images, _CHUNK))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        chunks = pool.map(_write_chunk, [str(root)] * len(starts), starts,
                          [min(images, s + _CHUNK) for s in starts], [size] * len(starts),
                          [dicom_every] * len(starts))
        uris = [uri for chunk in chunks for uri in chunk]
    index = np.arange(images)
    frame = pd.DataFrame({
        "image_id": [f"scale/{i:07d}" for i in index], "uri": uris, "dataset": "scale",
        "patient_id": [f"scale/p{i // 4:06d}" for i in index], "exam_id": [f"scale/p{i // 4:06d}/1" for i in index],
        "laterality": np.where(index % 2 == 0, "L", "R"), "view": np.where(index % 4 < 2, "CC", "MLO"),
        "label": (index % 4 == 0).astype(int),
    })
    return validate_manifest(frame, source=str(root))


def _study(folder: Path, manifest: pd.DataFrame, name: str, args: argparse.Namespace) -> tuple[list[str], Path]:
    """The command of a study (manifest, ingest, embed) on `manifest`, and its output folder."""
    manifest_path, output = folder / f"{name}.parquet", folder / f"out-{name}"
    write_manifest(manifest, str(manifest_path))
    config = folder / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "name": f"scale-{name}", "output": str(output), "data": {"manifest": str(manifest_path)},
        "ray": {"num_cpus": args.cpus},
        "ingest": {"batch_size": args.read_batch,
                   **({"rows_per_block": args.rows_per_block} if args.rows_per_block else {})},
        "embed": {"extractors": [EXTRACTOR], "batch_size": args.batch_size},
    }))
    command = [sys.executable, str(REPO_ROOT / "jobs" / "full_study.py"), "--config", str(config),
               "--stages", "manifest", "ingest", "embed"]
    return command, output


def _measured(command: list[str]) -> tuple[MeasuredRun, dict]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = run_measured(command, interval=1.0, timeout=4 * 3600, env=env, cwd=REPO_ROOT)
    if run.returncode != 0:
        raise RuntimeError(f"the study failed:\n{run.output[-3000:]}")
    return run, json.loads(run.output.strip().splitlines()[-1])


def _files(output: Path) -> tuple[int, int, int]:
    """(files, bytes, feature-store part files) the output holds."""
    files = [path for path in output.rglob("*") if path.is_file()]
    parts = [path for path in files if "features" in path.parts and path.name.startswith("part-")]
    return len(files), sum(path.stat().st_size for path in files), len(parts)


def _work_per_image(manifest: pd.DataFrame, batch_size: int) -> float:
    """CPU-seconds per image of read + decode + preprocess + forward, one thread, on `manifest`'s images."""
    import torch  # keeps `jobs/benchmark.py --help` fast: no torch import

    torch.set_num_threads(1)
    spec = ExtractorConfig(**EXTRACTOR)
    forward_batches(spec, prepare_images(manifest.iloc[:batch_size], spec), batch_size)  # warm-up
    seconds, _ = timed(lambda: forward_batches(spec, prepare_images(manifest, spec), batch_size))
    return seconds / len(manifest)


def run(args: argparse.Namespace) -> int:
    small_n = max(1, args.images // 10)
    with tempfile.TemporaryDirectory(prefix="mammo-ray-bench-scale-", dir=args.tmp) as tmp:
        folder = Path(tmp)
        written_s, manifest = timed(lambda: write_collection(folder / "images", args.images, args.size,
                                                             args.dicom_every, args.cpus))
        print(f"scale benchmark: {args.images} images of {args.size} px (every {args.dicom_every}th a DICOM) "
              f"written in {written_s:.0f} s; {EXTRACTOR['name']} at {EXTRACTOR['input_size']} px, embed batch "
              f"{args.batch_size}, decode batch {args.read_batch}, {args.rows_per_block or 'derived'} rows per block, "
              f"Ray with {args.cpus} CPUs; {load_average()}", flush=True)
        sample = manifest.sample(n=min(args.sample, len(manifest)), random_state=0)
        work = _work_per_image(sample, args.batch_size)
        results = {}
        for name, rows in (("small", manifest.iloc[:small_n]), ("large", manifest)):
            command, output = _study(folder, rows, name, args)
            measured, summary = _measured(command)
            results[name] = (len(rows), measured, summary, _files(output))
            print(f"  {len(rows):>7} images: {measured.seconds:7.1f} s  {len(rows) / measured.seconds:6.1f} img/s  "
                  f"peak {measured.peak_bytes / 2**20:6.0f} MiB  output {results[name][3][0]} files "
                  f"{results[name][3][1] / 2**20:.0f} MiB ({results[name][3][2]} part files; the pass wrote one per "
                  f"batch: {-(-len(rows) // args.batch_size)})", flush=True)
        rerun, summary = _measured(command)
    (small, small_run, _, _), (large, large_run, large_summary, _) = results["small"], results["large"]
    counts = large_summary["counts"]
    marginal = (large_run.seconds - small_run.seconds) / (large - small)
    overhead = marginal - work / args.cpus
    print(f"  work per image (read + decode + preprocess + forward, one thread): {work * 1e3:.2f} ms; over "
          f"{args.cpus} CPUs {work / args.cpus * 1e3:.2f} ms")
    print(f"  marginal wall time per image {marginal * 1e3:.2f} ms; per-image overhead {overhead * 1e3:.2f} ms")
    print(f"  memory: {large} images / {small} images = {large_run.peak_bytes / small_run.peak_bytes:.2f}x the peak")
    print(f"  no-op rerun of the {large}-image study: {rerun.seconds:.1f} s (ran {summary['ran']}, skipped "
          f"{summary['skipped']})")
    name = EXTRACTOR["name"]
    print(f"  large run: {counts.get('embedded:' + name)} embedded, {counts.get('ingest_errors')} ingest errors, "
          f"{counts.get('embed_errors:' + name)} embed errors")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("scale", help="100,000 small images through manifest, ingest and embed")
    parser.add_argument("--images", type=int, default=100_000, help="the large collection; the small is a tenth")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--dicom-every", type=int, default=10, help="every Nth image a DICOM (0: none)")
    parser.add_argument("--batch-size", type=int, default=8, help="embed.batch_size")
    parser.add_argument("--read-batch", type=int, default=4, help="ingest.batch_size")
    parser.add_argument("--rows-per-block", type=int, default=None, help="ingest.rows_per_block (default: derived)")
    parser.add_argument("--sample", type=int, default=512, help="images the work per image is measured on")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--tmp", default=None, help="where the collection and outputs go (default: the system's)")
    parser.set_defaults(func=run)
