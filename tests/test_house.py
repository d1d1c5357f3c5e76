"""The shape of the package: config validation stays light, stages are declared as data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mammo_ray import tables
from mammo_ray.stages.stage import Stage, stage_order
from mammo_ray.study import STAGES
from tests.table_access import undeclared_access


def test_validating_a_config_imports_no_ray_and_no_torch():
    code = ("import sys, json; import mammo_ray.config as c; c.parse_config({}); "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'torchvision'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


def test_the_study_order_is_derived_from_what_each_stage_reads_and_writes():
    assert stage_order(STAGES) == STAGES
    names = [stage.name for stage in STAGES]
    assert names[:2] == ["manifest", "ingest"] and names[-1] == "report"
    reordered = stage_order(list(reversed(STAGES)))  # listed backwards: still each writer before its readers
    position = {stage.name: index for index, stage in enumerate(reordered)}
    writers = {table.name: stage.name for stage in STAGES for table in stage.writes}
    for stage in STAGES:
        assert all(position[writers[table.name]] <= position[stage.name] for table in stage.reads), stage.name


def _stage(name: str, reads: tuple[tables.Table, ...] = (), writes: tuple[tables.Table, ...] = ()) -> Stage:
    return Stage(name, None, run=lambda current: {}, reads=reads, writes=writes)


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([_stage("grid", reads=(tables.EMBEDDINGS,))], "stage 'grid' reads ['embeddings/<extractor>'], which no stage"),
        ([_stage("a", writes=(tables.GRID,)), _stage("b", writes=(tables.GRID,))],
         "stage 'b' writes 'results/grid', which stage 'a' writes too"),
        ([_stage("a"), _stage("a")], "stage names repeat"),
        ([_stage("a", reads=(tables.GRID,), writes=(tables.FINETUNE,)),
          _stage("b", reads=(tables.FINETUNE,), writes=(tables.GRID,))], "the stages' reads form a cycle"),
    ],
    ids=["read-never-written", "two-writers", "same-name", "cycle"],
)
def test_a_stage_list_that_has_no_order_is_refused(stages: list[Stage], message: str):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        stage_order(stages)


def test_a_stage_that_touches_a_table_it_does_not_declare_is_caught():
    grid = next(stage for stage in STAGES if stage.name == "grid")
    output = "/out"
    declared = [("grid", tables.grid_uri(output)), ("grid", tables.embeddings_uri(output, "x") + "/_index.parquet")]
    assert not undeclared_access(declared, output, [grid])
    stray = [("grid", tables.finetune_uri(output)), ("grid", output + "/results/other.parquet")]
    assert undeclared_access([*declared, *stray], output, [grid]) == set(stray)


def test_the_config_names_exactly_the_registered_adapters():
    from typing import get_args

    from mammo_ray.config import AdapterSource
    from mammo_ray.datasets.adapters import ADAPTERS

    assert set(get_args(AdapterSource.model_fields["name"].annotation)) == set(ADAPTERS)


def test_the_config_names_exactly_the_catalogued_extractors():
    from typing import get_args

    from mammo_ray.config.sections import ExtractorName
    from mammo_ray.models.catalogue import EXTRACTORS

    assert set(get_args(ExtractorName)) == set(EXTRACTORS)


def test_storage_imports_no_config():
    code = "import sys, mammo_ray.storage; print(sorted(m for m in sys.modules if m.startswith('mammo_ray.config')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
