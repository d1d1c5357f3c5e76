"""`mammo-ray` command line: `run` runs the study (`run --help` lists its stages and what each writes; `run --plan`
says what it would do), `status` says where one stands and `score` applies a model package the study exported to
a collection; the other subcommands make a synthetic cohort or a manifest, decode a manifest's images, fetch and
list weights, prune an output's unreachable caches and compare two outputs."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from typing import TextIO

import yaml

from mammo_ray import __version__
from mammo_ray.compare import compare_outputs, render
from mammo_ray.config import SyntheticSource
from mammo_ray.config.base import checked
from mammo_ray.datasets.adapters import ADAPTERS, build_with_adapter
from mammo_ray.datasets.manifest import read_manifest, write_manifest
from mammo_ray.datasets.synthetic import generate_cohort
from mammo_ray.errors import MammoRayError, StoreUnavailableError, declared_cause
from mammo_ray.models import registry
from mammo_ray.models.fetch import fetch_weights
from mammo_ray.models.weights_catalogue import DEFAULT_FETCH_NAMES

#: Exit codes: bad input or config (fix it, then rerun); the store failed (rerun once it is back).
EXIT_BAD_INPUT = 2
EXIT_STORE_UNAVAILABLE = 3


class _RunParser(argparse.ArgumentParser):
    """`run`'s parser: its help ends with the study's stages, read from the study only when help is asked for
    (importing the study takes seconds)."""

    def format_help(self) -> str:
        from mammo_ray.study import describe_stages  # the study's stages: heavy imports, only for this help

        self.epilog = ("stages, in study order, and what each writes under the output\n(a stage runs when its "
                       "inputs changed or its outputs are missing):\n" + describe_stages())
        return super().format_help()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mammo-ray", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mammo-ray {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write the synthetic DICOM cohort and its manifest")
    synth.add_argument("--out", required=True, help="folder URI (local path or s3://bucket/prefix)")
    synth.add_argument("--patients", type=int, default=24)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--rows", type=int, default=512, help="image height in pixels")

    manifest = commands.add_parser("manifest", help="build a manifest with a dataset adapter")
    manifest.add_argument("adapter", choices=sorted(ADAPTERS))
    manifest.add_argument("--out", required=True, help="manifest URI to write (.parquet)")
    manifest.add_argument(
        "--arg", action="append", default=[], metavar="KEY=VALUE",
        help="adapter argument (repeatable); mappings and lists in YAML, e.g. columns='{image_id: file}'"
    )

    ingest = commands.add_parser("ingest", help="decode every image of a manifest on Ray; write images + errors")
    ingest.add_argument("--manifest", required=True)
    ingest.add_argument("--output", required=True)

    weights = commands.add_parser("weights", help="pretrained weight files")
    weights_commands = weights.add_subparsers(dest="weights_command", required=True)
    fetch = weights_commands.add_parser(
        "fetch", help="download the ImageNet and NYU files once (needs internet) and copy them to a URI"
    )
    fetch.add_argument("--to", required=True, help="folder URI (local or s3://) the cluster's workers can read")
    fetch.add_argument("names", nargs="*", help="files to fetch (default: all known)")
    listed = weights_commands.add_parser(
        "list", help="the weights registry: every known file, its licence, what it was pretrained on, its input")
    listed.add_argument("--json", action="store_true", help="as JSON rows instead of blocks of text")

    commands._parser_class = _RunParser  # noqa: SLF001 - argparse offers no other way to pick one subparser's class
    run = commands.add_parser("run", help="run the study from a YAML config",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    commands._parser_class = argparse.ArgumentParser  # noqa: SLF001
    run.add_argument("--config", default=None, help="YAML config (default: the embedded demo)")
    run.add_argument("--output", default=None, help="override the config's output URI")
    run.add_argument("--stages", nargs="*", default=None,
                     help="run only these stages (in study order; the list below)")
    run.add_argument("--force", action="store_true", help="rerun stages even when their outputs are up to date")
    run.add_argument("--plan", action="store_true",
                     help="only say which stages would run or be skipped, and why; nothing is run or written")

    status = commands.add_parser(
        "status", help="where a study stands: running or not, what each stage last finished, what would run next")
    status.add_argument("--config", default=None, help="YAML config (default: the embedded demo)")
    status.add_argument("--output", default=None, help="override the config's output URI")

    score = commands.add_parser(
        "score", help="score a collection with a model package the study exported (<output>/models/<name>)")
    score.add_argument("package", help="the package's folder URI (local or s3://)")
    score.add_argument("--config", default=None,
                       help="YAML config whose data is the collection to score, and its ray/storage/ingest settings "
                            "(default: the embedded demo)")
    score.add_argument("--output", default=None, help="override the config's output URI (scores/<package>.parquet)")
    score.add_argument("--weights", default=None,
                       help="the extractor's weights (path or s3://) when the package's were a file: their sha256 "
                            "must be the package's")

    prune = commands.add_parser("prune", help="remove cached model outputs the current manifest and config cannot see")
    prune.add_argument("--config", default=None, help="YAML config (default: the embedded demo)")
    prune.add_argument("--output", default=None, help="override the config's output URI")
    prune.add_argument("--dry-run", action="store_true", help="only say what would be removed")

    compare = commands.add_parser("compare", help="are two study outputs the same numbers? (exit 1 if not)")
    compare.add_argument("left", help="one study output URI")
    compare.add_argument("right", help="the other")
    compare.add_argument("--atol", type=float, default=0.0, help="largest float difference taken as equal")
    compare.add_argument("--ignore", action="append", default=[], metavar="COLUMN",
                         help="leave this column out as well (repeatable), e.g. config_hash across versions")
    return parser.parse_args(argv)


def _adapter_args(pairs: Sequence[str]) -> dict[str, object]:
    """KEY=VALUE pairs; a value written as a YAML mapping or list (`columns={image_id: file}`) is parsed."""
    args: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MammoRayError(f"--arg {pair!r}: expected KEY=VALUE")
        if value.lstrip().startswith(("{", "[")):
            try:
                args[key] = yaml.safe_load(value)
                continue
            except yaml.YAMLError as error:
                raise MammoRayError(f"--arg {key}: {value!r} is not a YAML mapping or list: {error}") from None
        args[key] = value
    return args


def main(argv: Sequence[str] | None = None) -> int:
    # Bound to the console now: this process's own log lines stay there while Ray's output is set aside.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    console = sys.stderr
    with _RayOutput(args.command in _RAY_COMMANDS) as ray_output:
        try:
            return _command(args)
        except Exception as error:  # noqa: BLE001 - a declared error is a message and an exit code, not a traceback
            declared = declared_cause(error)
            if declared is None:
                raise  # a bug: its traceback reaches the console (sys.stderr is restored on the way out)
            ray_output.keep(error)
    print(f"mammo-ray: error: {declared}", file=console)
    if ray_output.path is not None:
        print(f"mammo-ray: the traceback and Ray's own output are in {ray_output.path}", file=console)
    return EXIT_STORE_UNAVAILABLE if isinstance(declared, StoreUnavailableError) else EXIT_BAD_INPUT


#: Commands that run Ray: its console output (progress, each failed task's traceback, retry advice) goes to a
#: log file, so that a failure reads as the declared error in a few lines.
_RAY_COMMANDS = frozenset({"run", "ingest", "score"})


class _RayOutput:
    """While active (`enabled`), sys.stderr is a log file: Ray's and Ray Data's log handlers write to whatever
    sys.stderr is when they emit (ray._private.log.PlainRayHandler), and so do warnings. The file is removed
    after a command that succeeds; kept (`path`) after one that fails, with the traceback of a declared error
    (`keep`)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.path: str | None = None
        self._file: TextIO | None = None
        self._kept = False
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _RayOutput:
        if self.enabled:
            handle, self.path = tempfile.mkstemp(prefix="mammo-ray-", suffix=".log")
            self._file = self._stack.enter_context(os.fdopen(handle, "w", buffering=1, encoding="utf-8"))
            logging.getLogger("mammo_ray").info("Ray's own output (progress, task errors) -> %s (kept if the "
                                                "command fails)", self.path)
            self._stack.enter_context(contextlib.redirect_stderr(self._file))
        return self

    def keep(self, error: BaseException) -> None:
        """Keep the log, with `error`'s whole traceback (the remote task's included) at its end."""
        if self._file is not None:
            self._file.write("".join(traceback.format_exception(error)))
            self._kept = True

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()  # sys.stderr back to the console, the file closed
        if self.path is not None and not self._kept and exc_info[0] is None:
            os.remove(self.path)
            self.path = None


def _command(args: argparse.Namespace) -> int:
    """Run the parsed command; its exit code."""
    if args.command == "synth":
        source = checked(SyntheticSource, "synth", patients=args.patients, seed=args.seed, rows=args.rows)
        frame = generate_cohort(args.out, source)
        print(json.dumps({"images": len(frame), "positives": int(frame["label"].sum()), "out": args.out}))
    elif args.command == "manifest":
        frame = write_manifest(build_with_adapter(args.adapter, _adapter_args(args.arg), "--arg"), args.out)
        print(json.dumps({"images": len(frame), "out": args.out}))
    elif args.command == "ingest":
        # Here, not at the top: keeps `mammo-ray --help` and the other commands fast (no Ray import).
        from mammo_ray.stages.ingest import run_ingest

        result = run_ingest(read_manifest(args.manifest), args.output)
        print(json.dumps(result.__dict__))
    elif args.command == "weights" and args.weights_command == "list":
        print(json.dumps(registry.rows(), indent=2) if args.json else registry.format_list())
    elif args.command == "weights":
        fetched = fetch_weights(args.to, tuple(args.names) or DEFAULT_FETCH_NAMES)
        print(json.dumps({name: {"uri": uri, "sha256": digest} for name, (uri, digest) in fetched.items()}))
    elif args.command == "run":
        # Here, not at the top: keeps `mammo-ray --help` and the other commands fast (no Ray/torch import).
        from mammo_ray.study import check_stages, run_from_cli

        check_stages(args.stages)  # `--stages` naming none is refused before the config is even read
        if args.plan:
            from mammo_ray.study_plan import plan_from_cli  # as above: the study's stages, only with --plan

            return plan_from_cli(args.config, args.output, args.stages, args.force)
        return run_from_cli(args.config, args.output, args.stages, args.force)
    elif args.command == "status":
        from mammo_ray.study_plan import status_from_cli  # heavy imports (the study's stages): only for this command

        return status_from_cli(args.config, args.output)
    elif args.command == "score":
        from mammo_ray.scoring import score_from_cli  # the study's pass: heavy imports, only for this command

        return score_from_cli(args.package, args.config, args.output, args.weights)
    elif args.command == "prune":
        # Here, not at the top: keeps `mammo-ray --help` and the other commands fast (no Ray/torch import).
        from mammo_ray.study import load_study_config, prune_output

        removed = prune_output(load_study_config(args.config, args.output), dry_run=args.dry_run)
        print(json.dumps({"dry_run": args.dry_run, "removed": removed}))
    elif args.command == "compare":
        results = compare_outputs(args.left, args.right, atol=args.atol, ignore=args.ignore)
        print(render(results))
        return 0 if all(result.equal for result in results) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
