"""`crop`: the published breast crop (`reference_breast_box`) against the fast exact `breast_box`.

On the real mini-MIAS images and the 8 CBIS-DDSM DICOMs: median wall times side by side, their ratio,
and the largest box difference in pixels (0: the fast crop is exact).
"""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np

from mammo_ray.benchmarks.common import median_time, real_image_sets
from mammo_ray.imaging.crop import breast_box, reference_breast_box, scaled_crop_params

_COLUMNS = ("data set", "images", "Mpx/img", "reference s", "fast s", "ratio", "max diff px")
_WIDTHS = (18, 7, 9, 13, 9, 8, 13)


def _row(*cells: object) -> str:
    return "".join(
        f"{cell!s:<{w}}" if i == 0 else f"{cell!s:>{w}}"
        for i, (cell, w) in enumerate(zip(cells, _WIDTHS, strict=True))
    )


def _time_pair(image: np.ndarray, repeats: int) -> tuple[float, float, int]:
    """Reference and fast wall time on one image, interleaved so both see the same machine load."""
    ref_time, expected = median_time(repeats, partial(reference_breast_box, image))
    fast_time, actual = median_time(repeats, partial(breast_box, image))
    return ref_time, fast_time, actual.max_abs_diff(expected)


def run(args: argparse.Namespace) -> int:
    iterations, margin = scaled_crop_params(1.0)
    print(
        f"crop benchmark: median of {args.repeats} runs per image; iterations={iterations}, margin={margin}"
    )
    print(_row(*_COLUMNS))
    print("-" * sum(_WIDTHS))
    for name, images in real_image_sets(args.mias).items():
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


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("crop", help="published breast crop vs the fast exact one")
    parser.add_argument(
        "--mias", type=int, default=322, help="how many mini-MIAS images, spread over the set"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per image and algorithm")
    parser.add_argument("--verbose", action="store_true", help="one line per image")
    parser.set_defaults(func=run)
