"""The output tables' reference (README.md, "Outputs and how to read them"): every table the study writes, where it
lives under the output and, for a table with a fixed schema, its columns with their types and meanings, generated
from `mammo_ray.tables` and the schemas' own column descriptions (the ones each Parquet file carries), so that
it cannot drift from what is written (`python -m mammo_ray.readme`; `tests/test_readme_reference.py`).
"""

from __future__ import annotations

import pyarrow as pa

from mammo_ray import tables

#: A placeholder output: a URI the storage layer joins as written (a local path would be made absolute).
_OUTPUT = "s3://output"
#: Where a column's meaning lives in a schema field's metadata.
DESCRIPTION = b"description"


def declared_tables() -> list[tables.Table]:
    """Every table `mammo_ray.tables` declares, in declaration order."""
    return [value for value in vars(tables).values() if isinstance(value, tables.Table)]


def location(table: tables.Table) -> str:
    """Its path under the output, each parameter as `<name>`."""
    return table.uri(_OUTPUT, *(f"<{param}>" for param in table.params)).removeprefix(_OUTPUT + "/")


def description(field: pa.Field) -> str:
    return ((field.metadata or {}).get(DESCRIPTION) or b"").decode()


def _type(field: pa.Field) -> str:
    return f"{field.type}" + ("" if field.nullable else ", not null")


def markdown() -> str:
    """One section per table with a fixed schema (its columns), then a list of the others (files and folders)."""
    parts, others = [], []
    for table in declared_tables():
        if table.schema is None:
            others.append(f"- `{location(table)}`")
            continue
        parts += [f"#### `{location(table)}`\n", "| column | type | meaning |", "|---|---|---|"]
        parts += [f"| `{field.name}` | {_type(field)} | {description(field).replace('|', chr(92) + '|')} |"
                  for field in table.schema]
        parts.append("")
    parts += ["#### other outputs (no fixed schema)\n", *others]
    return "\n".join(parts).strip()
