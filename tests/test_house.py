"""The shape of the package: config validation stays light, stages are declared as data."""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys
import tokenize
from pathlib import Path

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


_PACKAGE = Path(__file__).resolve().parents[1] / "mammo_ray"
_DOCS = Path(__file__).resolve().parents[1] / "docs"


def _headings(document: Path) -> set[str]:
    return {line.lstrip("#").strip() for line in document.read_text().splitlines() if line.startswith("#")}


def test_every_design_and_benchmark_citation_in_the_code_names_a_heading_of_the_document():
    cited = re.compile(r'docs/(design|benchmarks)\.md,\s*"([^"]+)"')
    headings = {name: _headings(_DOCS / f"{name}.md") for name in ("design", "benchmarks")}
    citations = [(path.relative_to(_PACKAGE.parent), document, heading)
                 for path in _PACKAGE.rglob("*.py")
                 for document, heading in cited.findall(" ".join(path.read_text().split()))]
    assert citations, "no citation found: the pattern no longer matches how the code cites the documents"
    assert [c for c in citations if c[2] not in headings[c[1]]] == []
    assert not [path for path in _PACKAGE.rglob("*.py") if re.search(r"DESIGN\s*§", path.read_text())]


_TIMING = re.compile(r"\b\d+(\.\d+)?\s?(ms|µs)\b|(?<![,\d])\b\d+(\.\d+)? s\b|\b\d+(\.\d+)?x (faster|slower)\b"
                     r"|\b\d+(\.\d+)?\s?[MG]i?B/s\b|py-spy", re.IGNORECASE)


def test_no_docstring_or_comment_of_the_package_holds_a_measurement():
    """Measurements go stale in code: they live in docs/benchmarks.md beside the command that reproduces them."""
    found = []
    for path in _PACKAGE.rglob("*.py"):
        for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            is_docstring = token.type == tokenize.STRING and token.string.lstrip("rb").startswith(('"""', "'''"))
            if token.type == tokenize.COMMENT or is_docstring:
                found += [f"{path.name}:{token.start[0] + i}: {line.strip()}"
                          for i, line in enumerate(token.string.splitlines()) if _TIMING.search(line)]
    assert found == []


def test_no_module_of_the_package_is_over_450_lines():
    assert {path.name: n for path in _PACKAGE.rglob("*.py") if (n := len(path.read_text().splitlines())) > 450} == {}


def _own_imports_inside_functions() -> list[tuple[Path, int, bool]]:
    """(file, line, whether a comment on that line or the one above gives a reason) of each import of the
    package's own modules inside a function."""
    found = []
    for path in _PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("mammo_ray")) \
                        or isinstance(node, ast.Import) and node.names[0].name.startswith("mammo_ray"):
                    reason = "#" in lines[node.lineno - 1] or lines[node.lineno - 2].strip().startswith("#")
                    found.append((path, node.lineno, reason))
    return found


def test_imports_of_the_package_inside_functions_are_few_and_each_says_why():
    imports = _own_imports_inside_functions()
    assert len(imports) <= 40
    assert [f"{path.name}:{line}" for path, line, reason in imports if not reason] == []
