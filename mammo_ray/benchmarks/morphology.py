"""`morphology`: the breast crop's opening, hand-written against scipy.ndimage, on the real images.

The crop (mammo_ray.imaging.crop; docs/design.md, "Breast crop") opens the mask `pixels > 0` by 100
iterations of erosion then 100 of dilation with scipy's default cross. Three ways to the same opening are
timed per image (median of --repeats runs), and their masks must be identical: `packed`, the crop's own
(the taxicab diamond as 8 sparse crosses on the mask bit-packed 64 columns to a word, `crop._open_packed`);
`cdt`, scipy's taxicab distance transform twice (erosion = distance to the zero-padded background > n,
dilation = distance to the eroded set <= n: exact); `iterated`, scipy's binary_erosion then binary_dilation
(the published algorithm). Then the whole box: `breast_box` against the same crop on scipy (cdt opening,
full-resolution `ndimage.label`) and `reference_breast_box`; the boxes must be identical. Measured numbers:
docs/benchmarks.md, "Breast crop opening".
"""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np
import scipy.ndimage as ndi

from mammo_ray.benchmarks.common import median_time, real_image_sets
from mammo_ray.imaging.crop import (
    Box,
    _largest_component_box_full,
    _no_breast,
    _open_packed,
    _pack,
    _unpack,
    _with_margin,
    breast_box,
    reference_breast_box,
    scaled_crop_params,
)

_COLUMNS = ("data set", "images", "Mpx/img", "packed s", "cdt s", "iterated s", "cdt/packed",
            "iter/packed", "identical")
_WIDTHS = (18, 7, 9, 10, 8, 12, 12, 13, 11)


def cdt_opening(mask: np.ndarray, iterations: int) -> np.ndarray:
    """scipy's binary_erosion then binary_dilation (`iterations` of the default cross), by two taxicab
    distance transforms. Exact: a pixel survives the erosion when its taxicab distance to the nearest
    background pixel, the zero outside the image included (one pixel of padding stands for it), is
    > iterations; it is in the dilation when its distance to the nearest eroded pixel is <= iterations
    (shortest taxicab paths between two pixels stay inside the image, as scipy's one-pixel steps do).
    """
    mask = np.asarray(mask, dtype=bool)
    inside = ndi.distance_transform_cdt(np.pad(mask, 1), metric="taxicab")[1:-1, 1:-1]
    eroded = inside > iterations
    if not eroded.any():
        return eroded
    return ndi.distance_transform_cdt(~eroded, metric="taxicab") <= iterations


def iterated_opening(mask: np.ndarray, iterations: int) -> np.ndarray:
    """The published morphology, as `reference_breast_box` runs it."""
    return ndi.binary_dilation(ndi.binary_erosion(mask, iterations=iterations), iterations=iterations)


def packed_opening(mask: np.ndarray, iterations: int) -> np.ndarray:
    """The crop's bit-packed opening, left packed as `breast_box` uses it ((H, ceil(W / 64)) uint64)."""
    return _open_packed(_pack(mask), mask.shape[0], mask.shape[1], iterations)


def scipy_breast_box(pixels: np.ndarray, *, iterations: int, margin: int) -> Box:
    """The crop's box on scipy: cdt opening, then the reference's full-resolution largest component."""
    mask = pixels > 0
    if not mask.any():
        raise _no_breast(True, iterations)
    opened = cdt_opening(mask, iterations)
    if not opened.any():
        raise _no_breast(False, iterations)
    return _with_margin(*_largest_component_box_full(opened), pixels.shape, margin)


def _row(*cells: object) -> str:
    return "".join(
        f"{cell!s:<{w}}" if i == 0 else f"{cell!s:>{w}}"
        for i, (cell, w) in enumerate(zip(cells, _WIDTHS, strict=True))
    )


def compare_image(pixels: np.ndarray, iterations: int, margin: int, repeats: int) -> dict[str, object]:
    """Median seconds of every opening and every box on one image, and whether they are all identical."""
    mask = pixels > 0
    times: dict[str, float] = {}
    times["packed"], packed = median_time(repeats, partial(packed_opening, mask, iterations))
    times["cdt"], cdt = median_time(repeats, partial(cdt_opening, mask, iterations))
    times["iterated"], iterated = median_time(repeats, partial(iterated_opening, mask, iterations))
    same_masks = np.array_equal(_unpack(packed, mask.shape[1]), cdt) and np.array_equal(cdt, iterated)
    boxes = {}
    for name, crop in (("box packed", breast_box), ("box cdt", scipy_breast_box),
                       ("box reference", reference_breast_box)):
        times[name], boxes[name] = median_time(repeats, partial(crop, pixels, iterations=iterations, margin=margin))
    same_boxes = len(set(boxes.values())) == 1
    return {"times": times, "identical": bool(same_masks and same_boxes), "box": boxes["box packed"]}


def run(args: argparse.Namespace) -> int:
    iterations, margin = scaled_crop_params(1.0)
    print(f"morphology benchmark: the crop's opening ({iterations} iterations of erosion, then of dilation) "
          f"three ways, median of {args.repeats} runs per image; identical = same opened mask and same box")
    print(_row(*_COLUMNS))
    print("-" * sum(_WIDTHS))
    box_lines = []
    all_identical = True
    for name, images in real_image_sets(args.mias).items():
        totals: dict[str, float] = {}
        count = pixels = 0
        identical = True
        for image_name, image in images:
            measured = compare_image(image, iterations, margin, args.repeats)
            for key, value in measured["times"].items():
                totals[key] = totals.get(key, 0.0) + value
            identical &= measured["identical"]
            count, pixels = count + 1, pixels + image.size
            if args.verbose:
                t = measured["times"]
                print(f"  {image_name:<24}{image.shape!s:>14}  packed {t['packed'] * 1e3:6.1f} ms  "
                      f"cdt {t['cdt'] * 1e3:7.1f} ms  iterated {t['iterated'] * 1e3:7.1f} ms  "
                      f"identical {measured['identical']}")
        if not count:
            continue
        all_identical &= identical
        print(_row(name, count, f"{pixels / count / 1e6:.1f}", f"{totals['packed']:.2f}", f"{totals['cdt']:.2f}",
                   f"{totals['iterated']:.2f}", f"{totals['cdt'] / totals['packed']:.1f}x",
                   f"{totals['iterated'] / totals['packed']:.1f}x", "yes" if identical else "NO"))
        box_lines.append(f"  {name:<18}breast_box {totals['box packed']:6.2f} s   scipy (cdt + label) "
                         f"{totals['box cdt']:6.2f} s ({totals['box cdt'] / totals['box packed']:.1f}x)   "
                         f"reference {totals['box reference']:6.2f} s "
                         f"({totals['box reference'] / totals['box packed']:.1f}x)")
    if box_lines:
        print("whole box (opening + largest component + margin), summed medians:")
        print("\n".join(box_lines))
    return 0 if all_identical else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("morphology", help="the crop's bit-packed opening vs scipy.ndimage's")
    parser.add_argument("--mias", type=int, default=322, help="how many mini-MIAS images, spread over the set")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per image and method")
    parser.add_argument("--verbose", action="store_true", help="one line per image")
    parser.set_defaults(func=run)
