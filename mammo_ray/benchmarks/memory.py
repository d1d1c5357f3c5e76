"""`memory`: peak memory (PSS of the whole process tree) of the study's image stages (manifest, ingest,
embed) on a synthetic cohort and on one --factor times larger, each in its own study process with its
own local Ray, as `ray job submit` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

from mammo_ray.benchmarks.common import REPO_ROOT
from mammo_ray.memory import run_measured


def _embed_peak(patients: int, args: argparse.Namespace, folder: Path) -> tuple[int, int, float]:
    """(images, peak PSS bytes, seconds) of one study process with its own local Ray (as `ray job submit`
    runs it) that makes a synthetic cohort, ingests and embeds it."""
    output = folder / f"study-{patients}"
    config = folder / f"memory-{patients}.yaml"
    config.write_text(yaml.safe_dump({
        "name": f"memory-{patients}", "output": str(output),
        "data": {"synthetic": {"patients": patients, "rows": args.rows}},
        "ray": {"num_cpus": args.cpus},
        "embed": {"batch_size": 4, "extractors": [{"name": "nyu_lcc", "nyu_scale": 0.125}]},
    }))
    study = [sys.executable, str(REPO_ROOT / "jobs" / "full_study.py"), "--config", str(config), "--stages"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    measured = run_measured([*study, "manifest", "ingest", "embed"], env=env, cwd=REPO_ROOT)
    if measured.returncode != 0:
        raise RuntimeError(f"embedding {patients} patients failed:\n{measured.output[-3000:]}")
    summary = json.loads(measured.output.strip().splitlines()[-1])
    return summary["counts"]["embedded:nyu_lcc"], measured.peak_bytes, measured.seconds


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="mammo-ray-bench-") as folder:
        small = _embed_peak(args.patients, args, Path(folder))
        large = _embed_peak(args.patients * args.factor, args, Path(folder))
    ratio = large[1] / small[1]
    if args.json:
        print(json.dumps({"small": small, "large": large, "ratio": ratio}))
        return 0
    print(f"memory benchmark: manifest + ingest + embed (nyu_lcc at nyu_scale 0.125, {args.rows}-row synthetic "
          f"DICOMs), peak PSS of the study process and the local Ray it starts ({args.cpus} CPUs)")
    print(f"{'images':>8}{'peak MiB':>10}{'seconds':>9}")
    for images, peak, seconds in (small, large):
        print(f"{images:>8}{peak / 2**20:>10.0f}{seconds:>9.1f}")
    print(f"{args.factor}x the images: {ratio:.2f}x the peak memory")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("memory", help="peak memory of embedding a collection and one N times larger")
    parser.add_argument("--patients", type=int, default=4, help="small cohort (4 images per patient)")
    parser.add_argument("--factor", type=int, default=10, help="the large cohort is this many times larger")
    parser.add_argument("--rows", type=int, default=256, help="synthetic image height")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    parser.set_defaults(func=run)
