"""What a study will do before it does it, and where one stands (`mammo-ray run --plan`, `mammo-ray status`):
each stage in order, whether it runs or is skipped and why (its ledger against its current fingerprint, its
outputs, what the stages before it will change), the counts it recorded, and who holds the output now.

Read-only: no lock is taken, nothing is written, no Ray is started.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from mammo_ray import storage, tables
from mammo_ray.config import StudyConfig
from mammo_ray.current import CurrentInputs
from mammo_ray.errors import MammoRayError
from mammo_ray.output_lock import read_lock
from mammo_ray.stages import manifest
from mammo_ray.stages.stage import Stage
from mammo_ray.study import STAGES, check_stages, ledger_state, load_study_config

RUNS, SKIPPED, LIKELY_SKIPPED = "runs", "skipped", "likely skipped"


@dataclass(frozen=True)
class PlannedStage:
    """One stage's fate in the next run: `runs`, `skipped`, or `likely skipped` (up to date now, but a stage
    before it that runs may change what it reads), and why."""

    name: str
    fate: str
    reason: str


def plan_study(config: StudyConfig, stages: Sequence[str] | None = None, force: bool = False) -> list[PlannedStage]:
    """What `run_study(config, stages, force)` would run and skip, judged now from the output's ledger."""
    selected = set(check_stages(stages))
    current = CurrentInputs(config, locate=manifest.locate(config))
    planned: list[PlannedStage] = []
    changing: dict[str, str] = {}  # table name -> the stage that runs and writes it
    for stage in STAGES:
        if stage.name not in selected:
            continue
        upstream = sorted({changing[table.name] for table in stage.reads if table.name in changing})
        fate, reason = (RUNS, "--force") if force else _judged(current, stage)
        if fate == SKIPPED and upstream:
            fate, reason = LIKELY_SKIPPED, f"{reason}; it runs if {', '.join(upstream)} write(s) other content"
        planned.append(PlannedStage(stage.name, fate, reason))
        if fate == RUNS:
            changing.update({table.name: stage.name for table in stage.writes})
    return planned


def _judged(current: CurrentInputs, stage: Stage) -> tuple[str, str]:
    try:
        fingerprint = stage.fingerprint(current)
    except MammoRayError as error:
        return RUNS, f"its inputs cannot be judged yet ({error})"
    if fingerprint is None:
        return RUNS, "it runs every time (its inputs are read afresh)"
    counts, reason = ledger_state(current, stage, fingerprint)
    return (SKIPPED if counts is not None else RUNS), reason


def format_plan(planned: Sequence[PlannedStage]) -> str:
    width = max((len(stage.name) for stage in planned), default=0)
    return "\n".join(f"  {stage.name.ljust(width)}  {stage.fate:<14}  {stage.reason}" for stage in planned)


def status(config: StudyConfig) -> str:
    """Where the study on `config.output` stands: who holds it (a run in progress, its heartbeat), what each stage
    last finished with, and what the next run would do."""
    lines = [f"study {config.name} on {config.output}"]
    holder = read_lock(config.output, config.storage.s3)
    if holder is None:
        lines.append("running: no (nobody holds the output's lock)")
    else:
        beat = datetime.fromisoformat(holder.heartbeat_at)
        age = (datetime.now(UTC) - beat).total_seconds()
        lines.append(f"running: yes, on {holder.host} (pid {holder.pid}) since {holder.started_at}; last heartbeat "
                     f"{age:.0f} s ago")
    lines.append("finished stages (the ledger):")
    for stage in STAGES:
        uri = tables.ledger_uri(config.output, stage.name)
        if storage.exists(uri):
            entry = json.loads(storage.read_bytes(uri))
            counts = ", ".join(f"{key} {value}" for key, value in entry.get("counts", {}).items())
            lines.append(f"  {stage.name}: finished {entry.get('finished_at', '(time not recorded)')}; {counts}")
    lines.append("the next run of this config:")
    lines.append(format_plan(plan_study(config)))
    return "\n".join(lines)


def plan_from_cli(config_uri: str | None, output: str | None, stages: Sequence[str] | None, force: bool) -> int:
    """`mammo-ray run --plan`: the plan printed, nothing run."""
    print(format_plan(plan_study(load_study_config(config_uri, output), stages, force)))
    return 0


def status_from_cli(config_uri: str | None, output: str | None) -> int:
    """`mammo-ray status`."""
    print(status(load_study_config(config_uri, output)))
    return 0
