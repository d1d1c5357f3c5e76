"""Which tables each stage touches while it runs, against what it declares (tests only).

`record_stage_access` wraps the study's stages so that every path the driver opens through `mammo_ray.storage`
while a stage (or a shared image pass) runs is recorded under that stage's name; `undeclared_access` lists those
under the output that none of the stage's declared tables holds, and `undeclared_files` the files left under the
output that no stage declares writing (part files Ray workers write are seen here).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest

from mammo_ray import storage, study, tables
from mammo_ray.stages.stage import Stage

Access = tuple[str, str]  # (stage name, or the names of a shared pass joined by ",", uri)


def record_stage_access(monkeypatch: pytest.MonkeyPatch) -> list[Access]:
    """Start recording; the returned list fills as stages run."""
    records: list[Access] = []
    running: list[str] = []

    def recorded(opener: Callable) -> Callable:
        def open_recorded(uri: str, *args: object, **kwargs: object) -> object:
            if running:
                records.append((running[-1], uri))
            return opener(uri, *args, **kwargs)
        return open_recorded

    def while_running(name: str, work: Callable) -> Callable:
        def run(*args: object, **kwargs: object) -> object:
            running.append(name)
            try:
                return work(*args, **kwargs)
            finally:
                running.pop()
        return run

    monkeypatch.setattr(storage, "filesystem", recorded(storage.filesystem))
    monkeypatch.setattr(storage, "arrow_filesystem", recorded(storage.arrow_filesystem))
    wrapped = {name: dataclasses.replace(stage, run=while_running(name, stage.run)) if stage.run else stage
               for name, stage in study._BY_NAME.items()}
    monkeypatch.setattr(study, "_BY_NAME", wrapped)
    image_pass = study._run_image_pass

    def image_pass_recorded(current: object, stages: Sequence[Stage]) -> object:
        return while_running(",".join(stage.name for stage in stages), image_pass)(current, stages)

    monkeypatch.setattr(study, "_run_image_pass", image_pass_recorded)
    return records


def _declared(stage: Stage) -> tuple[tables.Table, ...]:
    return (*stage.reads, *stage.writes)


def undeclared_access(records: Iterable[Access], output: str, stages: Sequence[Stage] = study.STAGES) -> set[Access]:
    """(stage, uri) of every path under `output` a stage touched that none of its declared tables holds."""
    by_name = {stage.name: stage for stage in stages}
    root = output.rstrip("/") + "/"
    return {(names, uri) for names, uri in records  # a shared image pass: what any of its stages declares
            if uri.startswith(root) and not _study_own(output, uri)
            and not any(table.holds(output, uri) for name in names.split(",") for table in _declared(by_name[name]))}


def _study_own(output: str, uri: str) -> bool:
    """The study's own files: the ledger of finished stages and the output's lock (checked while stages run)."""
    return uri.startswith(str(Path(tables.ledger_uri(output, "x")).parent)) or uri == tables.lock_uri(output)


def undeclared_files(output: str, stages: Sequence[Stage] = study.STAGES) -> list[str]:
    """Files under a local `output` that no stage declares writing (the study's own ledger and lock aside)."""
    written = [table for stage in stages for table in stage.writes]
    files = [str(path) for path in Path(output).rglob("*") if path.is_file()]
    return sorted(path for path in files
                  if not _study_own(output, path) and not any(table.holds(output, path) for table in written))
