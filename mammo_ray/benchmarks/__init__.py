"""Benchmarks, one subcommand each: `python jobs/benchmark.py <name> [options]` (`--help` lists them).

`cli` holds the parser and the list of subcommands (`cli.BENCHMARKS`), `common` and `listing_store` what
several benchmarks share; every other module is one benchmark, with `add_parser(subparsers)` (which sets
`func`) and `run(args) -> int`, and says in its docstring what it measures. Nothing here starts Ray at
import. `python -m mammo_ray.benchmarks` is the same command line; measured numbers are in docs/benchmarks.md.
"""
