"""The shape of the package: config validation stays light, stages are declared as data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mammo_ray.study import STAGES, Stage, check_stage_order


def test_validating_a_config_imports_no_ray_and_no_torch():
    code = ("import sys, json; import mammo_ray.config as c; c.parse_config({}); "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'torchvision'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


def test_the_stage_list_is_in_an_order_where_every_table_is_written_before_it_is_read():
    check_stage_order(STAGES)  # also checked at import
    assert [stage.name for stage in STAGES][:2] == ["manifest", "ingest"] and STAGES[-1].name == "report"


def _stage(name: str, reads: tuple[str, ...] = (), writes: tuple[str, ...] = ()) -> Stage:
    return Stage(name, lambda current: {}, None, reads=reads, writes=writes)


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([_stage("grid", reads=("embeddings/<extractor>",)), _stage("embed", writes=("embeddings/<extractor>",))],
         "stage 'grid' reads ['embeddings/<extractor>'], which no earlier stage writes"),
        ([_stage("a", writes=("t",)), _stage("b", writes=("t",))], "stage 'b' writes ['t'], which an earlier"),
        ([_stage("a"), _stage("a")], "stage names repeat"),
    ],
    ids=["read-before-written", "two-writers", "same-name"],
)
def test_a_stage_list_out_of_order_is_refused(stages: list[Stage], message: str):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_stage_order(stages)


def test_the_config_names_exactly_the_registered_adapters():
    from typing import get_args

    from mammo_ray.config import AdapterSource
    from mammo_ray.datasets.adapters import ADAPTERS

    assert set(get_args(AdapterSource.model_fields["name"].annotation)) == set(ADAPTERS)
