"""`mammo-ray compare`: two study outputs, table by table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from mammo_ray import storage, tables
from mammo_ray.cli import main
from mammo_ray.compare import compare_outputs


def _write_output(root: str, *, auc: float = 0.75, reverse: bool = False, seconds: float = 1.0,
                  extra: bool = False) -> str:
    manifest = pd.DataFrame({"image_id": ["a", "b"], "uri": [f"{root}/cohort/a.dcm", f"{root}/cohort/b.dcm"],
                             "label": [0, 1]})
    grid = pd.DataFrame({"extractor": ["x", "y"], "auc": [auc, 0.5], "classifier_seconds": [seconds, 2 * seconds],
                         "control_seconds": [3 * seconds, seconds],
                         "config_hash": ["h1", "h1"]})
    vectors = pa.table({"content_sha256": ["c1", "c2"],
                        "embedding": pa.array([[0.0, 1.0], [2.0, 3.0]], pa.list_(pa.float32(), 2))})
    if reverse:
        manifest, grid, vectors = manifest[::-1], grid[::-1], vectors.take([1, 0])
    storage.write_table(pa.Table.from_pandas(manifest, preserve_index=False), tables.manifest_uri(root))
    storage.write_table(pa.Table.from_pandas(grid, preserve_index=False), tables.grid_uri(root))
    storage.write_table(vectors, storage.join(tables.embeddings_uri(root, "e"), "features", "key-1", "part-0.parquet"))
    if extra:
        storage.write_table(pa.table({"x": [1]}), tables.finetune_uri(root))
    # A checkpoint folder is named by the time it was written: a run artefact, not a result.
    storage.write_table(pa.table({"x": [seconds]}), storage.join(root, "checkpoints", f"run-{seconds}", "p.parquet"))
    return root


def test_outputs_with_the_same_numbers_are_the_same_whatever_their_roots_row_order_and_timings(tmp_path):
    left = _write_output(str(tmp_path / "a"))
    right = _write_output(str(tmp_path / "b"), reverse=True, seconds=9.0)
    results = compare_outputs(left, right)
    assert [r.table for r in results] == ["embeddings/e/features/key-1", "manifest.parquet", "results/grid.parquet"]
    assert all(r.equal for r in results), [r.problems for r in results]
    assert main(["compare", left, right]) == 0


def test_a_float_one_ulp_away_differs_unless_a_tolerance_is_given(tmp_path):
    left = _write_output(str(tmp_path / "a"))
    right = _write_output(str(tmp_path / "b"), auc=np.nextafter(0.75, 1.0))
    (grid,) = [r for r in compare_outputs(left, right) if r.table == "results/grid.parquet"]
    assert not grid.equal and grid.problems == ["auc: largest difference 1.11e-16"]
    assert grid.max_abs_diff["auc"] == np.nextafter(0.75, 1.0) - 0.75
    assert all(r.equal for r in compare_outputs(left, right, atol=1e-12))
    assert main(["compare", left, right]) == 1
    assert main(["compare", left, right, "--atol", "1e-12"]) == 0


def test_a_table_only_one_output_has_and_a_changed_label_are_differences(tmp_path, capsys):
    left = _write_output(str(tmp_path / "a"))
    right = _write_output(str(tmp_path / "b"), extra=True)
    manifest = storage.read_table(tables.manifest_uri(right)).to_pandas().assign(label=[1, 1])
    storage.write_table(pa.Table.from_pandas(manifest, preserve_index=False), tables.manifest_uri(right))
    by_table = {r.table: r for r in compare_outputs(left, right)}
    assert by_table["results/finetune.parquet"].problems == [f"not in {left}"]
    assert by_table["manifest.parquet"].problems == ["label: 1 of 2 values differ"]
    assert main(["compare", left, right, "--ignore", "label"]) == 1
    assert "DIFFERENT results/finetune.parquet" in capsys.readouterr().out


def test_an_ignored_column_is_left_out(tmp_path):
    left = _write_output(str(tmp_path / "a"))
    right = _write_output(str(tmp_path / "b"))
    grid = storage.read_table(tables.grid_uri(right)).to_pandas().assign(config_hash="h2")
    storage.write_table(pa.Table.from_pandas(grid, preserve_index=False), tables.grid_uri(right))
    assert not all(r.equal for r in compare_outputs(left, right))
    assert all(r.equal for r in compare_outputs(left, right, ignore=["config_hash"]))


def _write_curves(root: str, second: list[float]) -> str:
    """A table whose float-list cells differ in length from row to row, as an ROC curve's points do."""
    curves = pa.table({"model": ["m1", "m2"], "fpr": pa.array([[0.0, 0.5, 1.0], second], pa.list_(pa.float64()))})
    storage.write_table(curves, storage.join(root, "results", "curves.parquet"))
    return root


def test_float_lists_of_different_lengths_are_compared_row_by_row(tmp_path):
    left = _write_curves(str(tmp_path / "a"), [0.0, 1.0])
    (same,) = compare_outputs(left, _write_curves(str(tmp_path / "b"), [0.0, 1.0]))
    assert same.equal, same.problems
    (moved,) = compare_outputs(left, _write_curves(str(tmp_path / "c"), [0.0, 0.9]))
    assert moved.problems == ["fpr: largest difference 0.1"]
    (longer,) = compare_outputs(left, _write_curves(str(tmp_path / "d"), [0.0, 0.5, 1.0]))
    assert longer.problems == ["fpr: 1 of 2 rows hold a different count of values"]
