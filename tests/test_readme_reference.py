"""The README's references are the code's: every config key with its default and meaning (one table per section)
and every output table with its columns' types and meanings (the descriptions each Parquet file carries), written
by `python -m mammo_ray.readme` and compared here, so neither can drift."""

from __future__ import annotations

import re
from pathlib import Path

from mammo_ray.config import StudyConfig
from mammo_ray.config.reference import entries
from mammo_ray.readme import BLOCKS, markers, regenerate
from mammo_ray.table_reference import declared_tables, description, location

README = Path(__file__).resolve().parent.parent / "README.md"


def _keys(model: type = StudyConfig, prefix: str = "") -> set[str]:
    """Every key a YAML config can set, from the types themselves (a list's items as `[]`)."""
    keys = set()
    for name, field in model.model_fields.items():
        keys.add(prefix + name)
        annotation = field.annotation
        listed = getattr(annotation, "__origin__", None) is list
        for member in (annotation.__args__[:1] if listed else (*getattr(annotation, "__args__", ()), annotation)):
            if isinstance(member, type) and hasattr(member, "model_fields"):
                keys |= _keys(member, f"{prefix}{name}{'[]' if listed else ''}.")
    return keys


def _block(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    begin, end = markers(name)
    return text[text.index(begin) + len(begin):text.index(end)]


def test_every_config_key_has_a_meaning_and_a_default():
    rows = entries()
    assert {row.key for row in rows} == _keys()
    assert [row.key for row in rows if not row.meaning] == []
    assert next(row for row in rows if row.key == "grid.permutations").default == "`100`"
    assert next(row for row in rows if row.key == "embed.extractors[].name").default == "required"


def test_every_column_of_every_output_table_has_a_meaning():
    undescribed = [f"{location(table)}: {field.name}" for table in declared_tables() if table.schema is not None
                   for field in table.schema if not description(field)]
    assert undescribed == []


def test_the_readme_holds_what_the_code_gives_and_renders_as_tables():
    text = README.read_text(encoding="utf-8")
    assert regenerate(text) == text, "run `python -m mammo_ray.readme` and commit README.md"
    # The documented columns of each table are its schema's, in order.
    tables_block = _block("output tables")
    for table in declared_tables():
        if table.schema is None:
            continue
        section = tables_block.split(f"#### `{location(table)}`", 1)[1].split("####", 1)[0]
        assert re.findall(r"^\| `([^`]+)` \|", section, flags=re.M) == table.schema.names, location(table)
    # Every table renders: its header, its rule, then only rows (a blank line inside would end it early).
    for name in BLOCKS:
        for chunk in _block(name).split("#### ")[1:]:
            lines = [line for line in chunk.splitlines()[1:] if line.strip()]
            if lines and lines[0].startswith("|"):
                assert re.fullmatch(r"\|( [a-z]+ \|)+", lines[0]) and re.fullmatch(r"\|(---\|)+", lines[1])
                assert all(line.startswith("| `") and line.endswith(" |") for line in lines[2:]), chunk[:60]


def test_every_command_in_the_readme_runs_the_tool_one_way_from_the_repository_root():
    """The README's shell blocks name the tool as `make` installs it (.venv/bin/...), never a bare `mammo-ray` or
    `python` a newcomer's shell may not have; a cluster job is `ray job submit`."""
    text = README.read_text()
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()
             if line.strip()]
    assert lines and [line for line in lines if line.split()[0] in ("mammo-ray", "python", "python3")] == []
    commands = {line.split()[0] for line in lines}
    assert commands <= {"make", ".venv/bin/mammo-ray", ".venv/bin/python", "ray", "duckdb"}, commands
