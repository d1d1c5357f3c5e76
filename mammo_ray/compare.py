"""Two study outputs, table by table: the same numbers? (`mammo-ray compare A B`)

A reproducibility check: the same manifest, config and seeds must give the same tables on another machine,
after an upgrade or after a refactor. Every Parquet table under either output is compared (a folder of parts
is one table). Left out are the columns that describe the run rather than its results (wall times, speeds,
checkpoint locations) and the checkpoints themselves; each output's own root in text is read as `<output>`,
so a cohort written under the output compares equal; rows are put in one order by their non-float columns
first. Floats compare exactly unless `atol` is given; the largest difference of each float column is reported.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from mammo_ray import storage

#: Columns that describe how a run went, not what it found.
RUN_COLUMNS: frozenset[str] = frozenset({"checkpoint_uri", "classifier_seconds", "control_seconds", "images_per_s",
                                       "seconds"})
#: Folders of run artefacts named by time (Ray Train's checkpoints): their results are in results/ too.
RUN_FOLDERS: tuple[str, ...] = ("checkpoints",)


@dataclass
class TableDifference:
    """One table of the two outputs: equal or not, and why."""

    table: str
    equal: bool
    rows: tuple[int, int] = (0, 0)
    problems: list[str] = field(default_factory=list)
    max_abs_diff: dict[str, float] = field(default_factory=dict)


def _tables(output_uri: str) -> dict[str, str]:
    """Relative table name -> URI: a single Parquet file, or a folder holding `part-*.parquet` files."""
    found: dict[str, str] = {}
    root = output_uri.rstrip("/")
    for uri in storage.list_files(root, [".parquet"]):
        relative = uri[len(root) + 1:]
        if relative.split("/", 1)[0] in RUN_FOLDERS:
            continue
        folder, _, name = relative.rpartition("/")
        if name.startswith("part-") and folder:
            found[folder] = storage.join(root, folder)
        else:
            found[relative] = uri
    return found


def _is_float(column: pd.Series) -> bool:
    if pd.api.types.is_float_dtype(column):
        return True
    sample = column.dropna()
    return len(sample) > 0 and isinstance(sample.iloc[0], np.ndarray) and sample.iloc[0].dtype.kind == "f"


def _normalised(table: pa.Table, output_uri: str, ignore: Collection[str] = ()) -> pd.DataFrame:
    frame = table.to_pandas().drop(columns=[c for c in table.column_names if c in RUN_COLUMNS or c in ignore])
    root = output_uri.rstrip("/")
    for name in frame.columns:
        if frame[name].dtype == object and not _is_float(frame[name]):
            frame[name] = frame[name].map(lambda v: v.replace(root, "<output>") if isinstance(v, str) else
                                          (repr(list(v)) if isinstance(v, np.ndarray) else v))
    keys = [c for c in frame.columns if not _is_float(frame[c])]
    if keys:
        frame = frame.sort_values(keys, key=lambda c: c.astype(str), kind="stable")
    return frame.reset_index(drop=True)


def _float_values(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Every float of the column in row order, and each row's count (list cells may differ in length)."""
    if pd.api.types.is_float_dtype(column):
        return column.to_numpy(np.float64), np.ones(len(column), np.int64)
    rows = [np.asarray(v if v is not None else np.nan, np.float64).ravel() for v in column]
    return (np.concatenate(rows) if rows else np.empty(0)), np.array([row.size for row in rows], np.int64)


def compare_tables(name: str, left: pd.DataFrame, right: pd.DataFrame, atol: float = 0.0) -> TableDifference:
    """Two normalised tables of one name: same columns, same rows, floats within `atol`."""
    result = TableDifference(name, equal=True, rows=(len(left), len(right)))
    if list(left.columns) != list(right.columns):
        result.problems.append(f"columns differ: {sorted(set(left.columns) ^ set(right.columns))}")
    elif len(left) != len(right):
        result.problems.append(f"{len(left)} rows vs {len(right)}")
    else:
        for column in left.columns:
            if _is_float(left[column]) and _is_float(right[column]):
                (a, a_counts), (b, b_counts) = _float_values(left[column]), _float_values(right[column])
                if not np.array_equal(a_counts, b_counts):
                    differing = int((a_counts != b_counts).sum())
                    result.problems.append(
                        f"{column}: {differing} of {len(left)} rows hold a different count of values")
                    continue
                nan_a, nan_b = np.isnan(a), np.isnan(b)
                gap = float(np.max(np.abs(a - b), initial=0.0, where=~(nan_a | nan_b)))
                result.max_abs_diff[column] = gap
                if (nan_a != nan_b).any() or gap > atol:
                    result.problems.append(f"{column}: largest difference {gap:.3g}"
                                           + (" (and nulls differ)" if (nan_a != nan_b).any() else ""))
            elif not left[column].equals(right[column]):
                differing = int((left[column].astype(str) != right[column].astype(str)).sum())
                result.problems.append(f"{column}: {differing} of {len(left)} values differ")
    result.equal = not result.problems
    return result


def compare_outputs(left_uri: str, right_uri: str, atol: float = 0.0,
                    ignore: Collection[str] = ()) -> list[TableDifference]:
    """Every table of either output, compared (less the `ignore` columns); a table only one output has is a
    difference."""
    left, right = _tables(left_uri), _tables(right_uri)
    results = []
    for name in sorted(set(left) | set(right)):
        if name not in left or name not in right:
            missing = left_uri if name not in left else right_uri
            results.append(TableDifference(name, equal=False, problems=[f"not in {missing}"]))
            continue
        results.append(compare_tables(name, _normalised(storage.read_table(left[name]), left_uri, ignore),
                                      _normalised(storage.read_table(right[name]), right_uri, ignore), atol))
    return results


def render(results: list[TableDifference]) -> str:
    """One line per table; the problems of a table that differs below it."""
    lines = []
    for result in results:
        worst = max(result.max_abs_diff.values(), default=0.0)
        verdict = "same" if result.equal else "DIFFERENT"
        lines.append(f"{verdict:9} {result.table}  ({result.rows[0]} rows; largest float difference {worst:.3g})")
        lines += [f"          - {problem}" for problem in result.problems]
    same = sum(r.equal for r in results)
    lines.append(f"{same} of {len(results)} tables the same")
    return "\n".join(lines)
