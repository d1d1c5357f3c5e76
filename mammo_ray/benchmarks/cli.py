"""The benchmarks' command line: one subcommand per module of this package (see the package docstring)."""

from __future__ import annotations

import argparse
from types import ModuleType

from mammo_ray import benchmarks
from mammo_ray.benchmarks import (
    crop,
    embed,
    engine,
    gpu_check,
    grid,
    heatmaps,
    join,
    manifest,
    memory,
    morphology,
    scale,
    score,
    study_images,
    train,
)

#: One module per subcommand, in the order `--help` lists them.
BENCHMARKS: list[ModuleType] = [crop, grid, train, memory, join, manifest, morphology, engine, embed, study_images,
                                  scale, heatmaps, gpu_check, score]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmark.py", description=benchmarks.__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")
    for module in BENCHMARKS:
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
