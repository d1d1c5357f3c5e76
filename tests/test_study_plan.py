"""What the next run will do, and where a study stands, judged before any work and without Ray: each stage runs,
is skipped, or is likely skipped (up to date unless a stage before it that runs writes other content), with the
reason, and `status` names who holds the output and what each stage last finished."""

from __future__ import annotations

import subprocess
import sys

from mammo_ray.config import parse_config
from mammo_ray.output_lock import hold_output
from mammo_ray.study import run_study
from mammo_ray.study_plan import LIKELY_SKIPPED, RUNS, SKIPPED, plan_study, status


def _config(tmp_path, patients: int = 2):
    return parse_config({"name": "planned", "output": str(tmp_path / "study"),
                         "data": {"synthetic": {"patients": patients, "rows": 96}}})


def _fates(config, **kwargs) -> dict[str, tuple[str, str]]:
    return {stage.name: (stage.fate, stage.reason) for stage in plan_study(config, **kwargs)}


def test_the_plan_follows_the_ledger_the_inputs_and_the_stages_before(tmp_path):
    config = _config(tmp_path)
    fresh = _fates(config)
    assert fresh["manifest"] == (RUNS, "it never finished on this output") and fresh["grid"][0] == RUNS
    run_study(config, ["manifest"])
    done = _fates(config)
    assert done["manifest"][0] == SKIPPED and done["manifest"][1].startswith("already done for these inputs")
    assert done["ingest"] == (RUNS, "it never finished on this output")
    assert _fates(config, force=True)["manifest"] == (RUNS, "--force")
    assert list(_fates(config, stages=["manifest", "ingest"])) == ["manifest", "ingest"]
    # Another cohort: the manifest runs again because its inputs changed; nothing was written by planning.
    changed = _fates(_config(tmp_path, patients=3))
    assert changed["manifest"] == (RUNS, changed["manifest"][1])
    assert changed["manifest"][1].startswith("its inputs or settings changed since it last finished")
    assert _fates(config)["manifest"][0] == SKIPPED


def test_a_stage_up_to_date_behind_one_that_runs_is_likely_skipped(tmp_path):
    config = _config(tmp_path)
    run_study(config, ["manifest"])
    # The manifest's ledger says another fingerprint: it runs, and what reads the manifest can only be judged
    # from what is stored now.
    ledger = tmp_path / "study" / "_stages" / "manifest.json"
    ledger.write_text(ledger.read_text().replace('"fingerprint": "', '"fingerprint": "x'))
    fates = _fates(config)
    assert fates["manifest"][0] == RUNS
    assert all(fate in (RUNS, LIKELY_SKIPPED) for fate, _ in fates.values())


def test_status_names_the_holder_the_finished_stages_and_the_next_run(tmp_path):
    config = _config(tmp_path)
    run_study(config, ["manifest"])
    idle = status(config)
    assert "running: no" in idle and "  manifest: finished 20" in idle and "manifest_rows 8" in idle
    assert "the next run of this config:" in idle and "ingest" in idle.split("the next run")[1]
    with hold_output(config.output):
        assert "running: yes, on " in status(config)
    # `run --plan` on the same output with the embedded demo's config: another cohort, so the manifest runs.
    shown = subprocess.run([sys.executable, "-m", "mammo_ray.cli", "run", "--plan", "--output", config.output],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert shown[0].split()[:2] == ["manifest", "runs"] and "its inputs or settings changed" in shown[0]
    assert [line.split()[0] for line in shown][-1] == "report"
