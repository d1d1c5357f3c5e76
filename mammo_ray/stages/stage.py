"""What a stage is: one step of the study, declared as data beside its code (docs/design.md, "Stages").

Each stage module ends with its `STAGE`: the tables it reads and writes (tables.Table objects), the config
sections its outputs depend on, what must hold before any work (`check`), and how it runs. An image stage
does not run alone: it names the inference tasks it adds to the study's one pass over the images and reads
its counts from that pass by output name. The study's order is derived from the tables (`stage_order`).
"""

from __future__ import annotations

import graphlib
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mammo_ray import feature_store, preflight, storage
from mammo_ray.feature_store import ModelKey
from mammo_ray.tables import Table

if TYPE_CHECKING:  # pragma: no cover - types only (CurrentInputs reads the stages' model keys: a circle)
    import pandas as pd

    from mammo_ray.current import CurrentInputs
    from mammo_ray.stages.inference import PassResult
    from mammo_ray.stages.inference_task import InferenceTask

Counts = dict[str, int]


@dataclass(frozen=True)
class ImageOutputs:
    """What an image stage adds to the shared pass over the images: its inference tasks for the current config
    (none for ingest, which `ingest` asks for), and its counts read from the pass (`PassResult.runs` is keyed by
    each task's output name)."""

    tasks: Callable[[CurrentInputs], Sequence[InferenceTask]]
    counts: Callable[[CurrentInputs, PassResult], Counts]
    ingest: bool = False
    #: What a person should know before the pass starts (e.g. what the stage will cost), logged by the stage.
    announce: Callable[[CurrentInputs], None] | None = None
    #: The pass's rows with this stage's stored outputs as inputs of other outputs (the tasks whose `after` names
    #: this stage), which then run in a second pass once these outputs are stored.
    inputs_for_later: Callable[[CurrentInputs, pd.DataFrame], pd.DataFrame] | None = None


@dataclass(frozen=True)
class Stage:
    """One step of the study.

    `run` does the work and returns its counts; an image stage has `image_outputs` instead, and the study runs
    every image stage that must run in one pass. `depends_on` names what its outputs depend on besides its
    config `sections` (digests of content, never file names); None, or a `depends_on` that returns None, means
    the stage always runs. `check` returns the problems that stop the study before any work. `reads` and
    `writes` are its tables: a stage reads only what the manifest's source or an earlier stage writes.
    `outputs_missing` says what of the outputs its fingerprint vouches for is gone (pruned, deleted by hand),
    None when all are there (default: any written table missing): a finished stage whose outputs are gone
    runs again.
    """

    name: str
    depends_on: Callable[[CurrentInputs], object] | None
    run: Callable[[CurrentInputs], Counts] | None = None
    image_outputs: ImageOutputs | None = None
    sections: tuple[str, ...] = ()
    needs_ray: bool = False
    check: Callable[..., list[preflight.Problem]] | None = None
    reads: tuple[Table, ...] = ()
    writes: tuple[Table, ...] = ()
    outputs_missing: Callable[[CurrentInputs], str | None] | None = None

    def __post_init__(self) -> None:
        if (self.run is None) == (self.image_outputs is None):
            raise ValueError(f"stage {self.name!r}: give exactly one of run and image_outputs")

    def fingerprint(self, current: CurrentInputs) -> str | None:
        """What this stage's outputs depend on, as one digest; None when it must always run."""
        inputs = None if self.depends_on is None else self.depends_on(current)
        if inputs is None:
            return None
        sections = [getattr(current.config, name).model_dump(mode="json") for name in self.sections]
        encoded = json.dumps([self.name, inputs, sections], sort_keys=True, default=str).encode()
        return hashlib.sha256(encoded).hexdigest()[:16]

    def missing(self, current: CurrentInputs) -> str | None:
        """What of its finished outputs is gone, or None."""
        if self.outputs_missing is not None:
            return self.outputs_missing(current)
        return tables_missing(*self.writes)(current)


def tables_missing(*declared: Table) -> Callable[[CurrentInputs], str | None]:
    """An `outputs_missing` for tables named without parameters: which of them under the output are gone."""
    def missing(current: CurrentInputs) -> str | None:
        output = current.config.output
        gone = [table.uri(output) for table in declared if not table.params and not storage.exists(table.uri(output))]
        return f"{', '.join(gone)} missing" if gone else None
    return missing


def stage_order(stages: Sequence[Stage]) -> tuple[Stage, ...]:
    """The stages in an order where each table is written before it is read (`graphlib`; ties keep the listed
    order). Raises ValueError when names repeat, two stages write one table, a table is read that no stage
    writes, or the reads form a cycle."""
    names = [stage.name for stage in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names repeat: {names}")
    writer: dict[str, Stage] = {}
    for stage in stages:
        for table in stage.writes:
            if table.name in writer:
                raise ValueError(f"stage {stage.name!r} writes {table.name!r}, which stage "
                                 f"{writer[table.name].name!r} writes too")
            writer[table.name] = stage
    graph: dict[str, list[str]] = {}
    for stage in stages:
        unknown = [table.name for table in stage.reads if table.name not in writer]
        if unknown:
            raise ValueError(f"stage {stage.name!r} reads {unknown}, which no stage writes")
        graph[stage.name] = [writer[table.name].name for table in stage.reads if writer[table.name] is not stage]
    sorter = graphlib.TopologicalSorter(graph)
    try:
        sorter.prepare()
    except graphlib.CycleError as error:
        raise ValueError(f"the stages' reads form a cycle: {error.args[1]}") from error
    position = {name: index for index, name in enumerate(names)}
    ordered: list[str] = []
    ready: list[str] = []
    while sorter.is_active():
        ready = sorted([*ready, *sorter.get_ready()], key=position.__getitem__)
        ordered.append(ready.pop(0))  # one at a time: the earliest listed of those ready
        sorter.done(ordered[-1])
    by_name = {stage.name: stage for stage in stages}
    return tuple(by_name[name] for name in ordered)


def model_output_missing(current: CurrentInputs, table_uri: str, errors_uri: str, key: ModelKey) -> str | None:
    """What of one model output (its feature store for the current manifest and key, its errors table) is gone."""
    problem = feature_store.outputs_problem(table_uri, current.manifest(), key)
    if problem is None and not storage.exists(errors_uri):
        problem = f"{errors_uri} missing"
    return None if problem is None else f"{table_uri}: {problem}"
