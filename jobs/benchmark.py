"""Benchmarks, one subcommand each: `python jobs/benchmark.py <name> [options]` (`--help` lists them).

Thin on purpose: the benchmarks live in mammo_ray.benchmarks, one module each (its docstring lists them).
"""

import sys

from mammo_ray.benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main())
