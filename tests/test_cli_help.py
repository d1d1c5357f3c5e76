"""The command line's help says what exists: `run --help` lists every stage of the study in order with the tables
it writes, and the top-level help names only subcommands that exist."""

from __future__ import annotations

import subprocess
import sys

from mammo_ray.study import STAGE_NAMES, STAGES


def _help(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "mammo_ray.cli", *args, "--help"], capture_output=True, text=True,
                          check=True).stdout


def test_run_help_lists_every_stage_in_order_with_what_it_writes():
    listed = _help("run").split("what each writes under the output", 1)[1]
    lines = [line for line in listed.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    assert [line.split()[0] for line in lines] == list(STAGE_NAMES)
    for stage in STAGES:
        for table in stage.writes:
            assert table.pattern("s3://output").removeprefix("s3://output/") in listed, (stage.name, table.name)


def test_the_top_level_help_names_the_subcommands_that_exist():
    text = _help()
    assert "one subcommand per stage" not in text
    assert "{synth,manifest,ingest,weights,run,status,score,prune,compare}" in text
