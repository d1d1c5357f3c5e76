"""The benchmarks package: its command line, and the candidates it measures give the numbers they replace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mammo_ray.benchmarks import cli
from mammo_ray.benchmarks.morphology import (
    cdt_opening,
    compare_image,
    iterated_opening,
    packed_opening,
)
from mammo_ray.classify.cells import grid_cells
from mammo_ray.imaging.crop import _unpack, reference_breast_box
from tests.random_data import blob_mask

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ["crop", "grid", "train", "memory", "join", "manifest", "morphology", "engine", "embed", "study-images",
            "scale", "heatmaps", "gpu-check", "score"]


def test_every_benchmark_is_a_subcommand_of_the_thin_entry_point() -> None:
    parser = cli.build_parser()
    for command in COMMANDS:
        assert parser.parse_args([command]).func.__module__ == f"mammo_ray.benchmarks.{command.replace('-', '_')}"
    completed = subprocess.run([sys.executable, "jobs/benchmark.py", "--help"], cwd=REPO, capture_output=True,
                               text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    assert all(command in completed.stdout for command in COMMANDS)


def _random_masks(count: int, seed: int) -> list[tuple[np.ndarray, int]]:
    """Blobs touching the edges, near-touching components and thin bridges, with radii 1..30."""
    rng = np.random.default_rng(seed)
    masks = []
    for trial in range(count):
        mask = blob_mask(rng, (120, 170), (8, 60), (20, 150, 2) if trial % 3 == 0 else None)
        masks.append((mask, int(rng.integers(1, 31))))
    return masks


def test_the_three_openings_are_identical() -> None:
    for mask, iterations in _random_masks(30, seed=11):
        expected = iterated_opening(mask, iterations)
        assert np.array_equal(cdt_opening(mask, iterations), expected), iterations
        assert np.array_equal(_unpack(packed_opening(mask, iterations), mask.shape[1]), expected), iterations
    full = np.ones((40, 50), bool)  # the image edge is background for the erosion
    assert np.array_equal(cdt_opening(full, 30), iterated_opening(full, 30))
    assert not cdt_opening(full, 30).any()



def test_compare_image_times_every_method_and_checks_them() -> None:
    rows, cols = np.ogrid[:300, :240]
    pixels = np.where(((rows - 150) / 120.0) ** 2 + (cols / 180.0) ** 2 <= 1.0, 100, 0).astype(np.uint16)
    measured = compare_image(pixels, iterations=20, margin=5, repeats=1)
    assert measured["identical"] is True
    assert set(measured["times"]) == {"packed", "cdt", "iterated", "box packed", "box cdt", "box reference"}
    assert measured["box"] == reference_breast_box(pixels, iterations=20, margin=5)


def test_cached_pipelines_give_the_engine_numbers_bit_for_bit() -> None:
    from mammo_ray.benchmarks.engine import _same, cached_pipelines, differences
    from mammo_ray.classify import evaluate_cells
    from mammo_ray.classify.synthetic import embedding_table
    from mammo_ray.config import GridConfig

    data = embedding_table(96, 24, seed=2, extractor="bench")
    config = GridConfig(extractors=["bench"], protocols=["leak_free"], bootstrap=20, cv_folds=3,
                        evaluation="holdout", permutations=0)
    cells = grid_cells(config)
    cached = cached_pipelines(data, cells, config)
    unkernelled = evaluate_cells(data, cells, config, precomputed_kernels=False)
    assert all(_same(result, numbers) for result, numbers in zip(unkernelled, cached, strict=True))
    # With precomputed kernels libsvm walks another path to the same optimum (its tolerance is 1e-3): the
    # decisions, folds and AUC are the same, the decision values agree to the solver's tolerance.
    worst = differences(evaluate_cells(data, cells, config), cached)
    assert worst["fold score"] == 0.0 and worst["auc"] == 0.0 and worst["test score"] < 1e-3, worst


def test_the_engine_benchmark_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["engine", "--tables", "noise", "--rows", "80", "--features", "12", "--cv-folds", "3",
            "--bootstrap", "10", "--repeats", "1", "--no-plain"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "bit for bit: yes" in out and "cached/engine" in out


def test_the_scale_collection_is_valid_distinct_and_holds_its_share_of_dicoms(tmp_path) -> None:
    import hashlib

    from mammo_ray.benchmarks.scale import write_collection
    from mammo_ray.imaging.decode import decode_image

    manifest = write_collection(tmp_path / "images", images=40, size=64, dicom_every=10, workers=2)
    assert len(manifest) == 40 and manifest["patient_id"].nunique() == 10
    contents = [Path(uri).read_bytes() for uri in manifest["uri"]]
    assert len({hashlib.sha256(data).hexdigest() for data in contents}) == 40  # no two files alike
    assert sum(uri.endswith(".dcm") for uri in manifest["uri"]) == 4
    for uri, data in zip(manifest["uri"], contents, strict=True):
        pixels = decode_image(data, uri).pixels
        assert pixels.shape == (64, 64) and pixels[:, -1].max() == 0 and pixels[32, :8].min() > 0  # breast left


def test_the_fixed_round_trip_store_lists_as_s3_does(monkeypatch) -> None:
    """The listing benchmark's store pages, delimits and continues as S3 does: the key-range listing and
    s3fs's one listing both read every key from it, once, over pages of 3 keys (S3's are 1,000)."""
    from mammo_ray import s3_listing, storage
    from mammo_ray.benchmarks.listing_store import ListingStore
    from mammo_ray.benchmarks.manifest import _s3_endpoint, rsna_rows

    monkeypatch.setattr(s3_listing, "PAGE_KEYS", 3)
    keys = ["rsna/train.csv", *(f"rsna/train_images/{relative}" for _, relative in rsna_rows(200))]
    with ListingStore("bench", keys, latency=0.0) as store, _s3_endpoint(store.endpoint):
        listed = storage.list_files("s3://bench/rsna")
        fs, path = storage.filesystem("s3://bench/rsna")
        found = fs.find(path)
        assert store.requests > s3_listing.SHARDS  # the ranges were listed
    assert listed == [f"s3://bench/{key}" for key in sorted(keys)]
    assert sorted(found) == [f"bench/{key}" for key in sorted(keys)]


def test_the_gpu_check_runs_until_it_needs_cuda_and_says_so(tmp_path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the whole check would run")
    run = subprocess.run([str(REPO / "jobs" / "gpu_check.sh"), "--output", str(tmp_path)], capture_output=True,
                         text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert run.returncode == 3, run.stderr[-2000:]
    assert "[1] ok" in run.stdout  # the config of the GPU study was validated
    assert "no CUDA device here" in run.stdout and "the steps from here need a GPU" in run.stdout
    assert "[3]" not in run.stdout
