"""Benchmarks, one subcommand each: `python jobs/benchmark.py crop|grid|train|memory|join|morphology|engine [options]`.

Thin on purpose: the benchmarks live in mammo_ray.benchmarks, one module each (its docstring lists them).
"""

import sys

from mammo_ray.benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main())
