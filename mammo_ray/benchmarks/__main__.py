"""`python -m mammo_ray.benchmarks <name> [options]`: the same command line as `jobs/benchmark.py`."""

import sys

from mammo_ray.benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main())
