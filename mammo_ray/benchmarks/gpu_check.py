"""`gpu-check`: everything the product does differently on a GPU, in one short run that stops at the first error.

For the first GPU machine a session is lent: nothing to set up, under 8 minutes on one GPU. Steps, each timed:
(1) the check's study config is validated (CPU); (2) a CUDA device is found, else the
run stops here with exit code 3, saying that everything before ran; (3) the patch classifier on the device in
bf16 with channels_last: patches/s and seconds per full-field crop at strides 70 and 256; (4) the image pass with
GPU actors (ingest, ImageNet ResNet-50, zero-shot, heatmaps at stride 70 on full-field-sized images): every image
computed, none an error; (5) one fine-tuning epoch with mixed precision on Ray Train, one GPU worker; (6) the
GPU rows of the README's cost model, printed to paste there.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mammo_ray import storage, tables
from mammo_ray.config import StudyConfig, parse_config
from mammo_ray.imaging.heatmaps import PatchGrid
from mammo_ray.models.patch_classifier import build_patch_classifier, crop_probabilities
from mammo_ray.study import run_study

NO_CUDA_EXIT = 3
_STAGES = ["manifest", "ingest", "embed", "zero_shot", "heatmaps"]


def check_config(output: str) -> StudyConfig:
    """The GPU check's study: 16 full-field-sized synthetic images, GPU actors, heatmaps at the published stride,
    one mixed-precision fine-tuning epoch on one GPU worker. Random-init weights: the cost is the same."""
    return parse_config({
        "name": "gpu-check", "output": output,
        "data": {"synthetic": {"patients": 4, "rows": 3000}},
        "embed": {"extractors": [{"name": "imagenet_resnet50"}], "num_gpus": 1, "batch_size": 8},
        "zero_shot": {"nyu_scale": 1.0},
        "heatmaps": {"enabled": True, "stride": 70, "source_resolution": 1.0, "batch_size": 128},
        "grid": {"cv_folds": 2, "bootstrap": 10, "classifiers": ["logreg"], "permutations": 1, "oof": {"repeats": 1}},
        "finetune": {"models": [{"name": "resnet18", "weights": "random-init:0"}], "tasks": ["binary"],
                     "stages": [{"name": "all", "size": 512, "epochs": 1}], "use_gpu": True,
                     "mixed_precision": True, "bootstrap": 10},
    })


def _step(number: int, title: str, work: Callable[[], str]) -> None:
    print(f"[{number}] {title} ...", flush=True)
    start = time.perf_counter()
    detail = work()
    print(f"[{number}] ok in {time.perf_counter() - start:.1f} s: {detail}", flush=True)


def _cuda_device() -> str:
    import torch

    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device here (torch {torch.__version__}, built for CUDA {torch.version.cuda}): "
              "every step before this one ran; the steps from here need a GPU", flush=True)
        raise SystemExit(NO_CUDA_EXIT)
    return f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}, torch {torch.__version__}"


def _heatmaps_on_device(rows: dict[str, str]) -> str:
    import torch

    model = build_patch_classifier(seed=0).cuda().to(memory_format=torch.channels_last)
    crop = torch.randn(3000, 2000, device="cuda")
    timings = {}
    for stride in (256, 70, 70):  # the first stride 70 run warms the kernels up; the second is timed
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            _, probabilities = crop_probabilities(model, crop, stride, batch_size=128)
        torch.cuda.synchronize()
        timings[stride] = time.perf_counter() - start
        if not torch.isfinite(probabilities).all():
            raise RuntimeError(f"non-finite patch probabilities at stride {stride}")
    patches = PatchGrid.over(3000, 2000, stride=70).count
    rows["heatmaps, stride 70, GPU-s per 3000 x 2000 crop (bf16, channels_last)"] = f"{timings[70]:.2f}"
    rows["heatmaps, stride 256, GPU-s per crop"] = f"{timings[256]:.2f}"
    rows["patch classifier, patches/s (GPU, bf16)"] = f"{patches / timings[70]:.0f}"
    return f"{patches} patches at stride 70 in {timings[70]:.2f} s ({patches / timings[70]:.0f} patches/s)"


def _image_pass(config: StudyConfig, rows: dict[str, str]) -> str:
    start = time.perf_counter()
    result = run_study(config, _STAGES)
    elapsed = time.perf_counter() - start
    counts = result.counts
    images = counts["manifest_rows"]
    failed = {name: value for name, value in counts.items() if "error" in name and value}
    if failed or counts["heatmaps_computed"] != images or counts["embedded:imagenet_resnet50"] != images:
        raise RuntimeError(f"the pass did not compute every image: {counts}")
    rows["image pass on 1 GPU (ingest, ResNet-50, zero-shot, heatmaps@70), s per image"] = f"{elapsed / images:.2f}"
    return f"{images} images, {counts['pass_forwards']} forwards, {elapsed:.1f} s"


def _finetune(config: StudyConfig, rows: dict[str, str]) -> str:
    start = time.perf_counter()
    run_study(config, ["manifest", "finetune"])
    elapsed = time.perf_counter() - start
    runs = storage.read_table(tables.finetune_uri(config.output)).to_pandas()
    rows["fine-tuning, one epoch of ResNet-18 at 512 px with mixed precision, s"] = f"{elapsed:.1f}"
    return f"{len(runs)} run(s), {elapsed:.1f} s"


def run(args: argparse.Namespace) -> int:
    output = args.output or tempfile.mkdtemp(prefix="mammo-ray-gpu-check-")
    config = check_config(str(Path(output) / "study"))  # a config error stops the check before any step
    rows: dict[str, str] = {}
    _step(1, "the check's study config (CPU)", lambda: f"config {config.config_hash()}, output {output}")
    _step(2, "a CUDA device", _cuda_device)
    _step(3, "heatmaps on the device", lambda: _heatmaps_on_device(rows))
    _step(4, "the image pass with GPU actors", lambda: _image_pass(config, rows))
    _step(5, "one mixed-precision fine-tuning epoch on Ray Train", lambda: _finetune(config, rows))
    print("\n[6] the cost model's GPU rows (paste into the README's cost model):")
    for name, value in rows.items():
        print(f"| {name} | {value} |")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("gpu-check", help="everything that differs on a GPU, in one short run")
    parser.add_argument("--output", help="where the check's study writes (default: a new temporary folder)")
    parser.set_defaults(func=run)

