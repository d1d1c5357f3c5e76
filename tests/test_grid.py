"""The grid stage on Ray Tune: embeddings tables in, results/grid.parquet out (local and moto S3)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mammo_ray import storage
from mammo_ray.classify import GridCell, GridConfig, GridData
from mammo_ray.classify.synthetic import embedding_table, noise_table, write_embeddings
from mammo_ray.stages.grid import GRID_SCHEMA, available_extractors, grid_uri, plan_units, run_grid, tune_grid

pytestmark = pytest.mark.usefixtures("ray_session")

SMALL = {"bootstrap": 200, "cv_folds": 5}


def _check_table(output: str, expected_cells: int):
    table = storage.read_table(grid_uri(output))
    assert table.schema.equals(GRID_SCHEMA, check_metadata=False)
    assert table.num_rows == expected_cells
    metadata = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    return table.to_pandas(), metadata


def test_grid_on_local_tables_writes_every_cell_with_failures_as_rows(tmp_path):
    output = str(tmp_path / "study")
    write_embeddings(output, embedding_table(160, 64, seed=1, extractor="signal"), unlabelled=7)
    write_embeddings(output, noise_table(120, 48, 30, seed=2, extractor="noise"))
    assert available_extractors(output) == ["noise", "signal"]
    config = GridConfig(extractors=["signal", "noise", "absent"], **SMALL)
    result = run_grid(output, config)

    frame, metadata = _check_table(output, 3 * 24)
    assert result.n_ok == 48 and result.n_failed == 24
    assert result.dropped_unlabelled == {"signal": 7, "noise": 0}
    absent = frame[frame["extractor"] == "absent"]
    assert (absent["status"] == "failed").all() and absent["error"].str.contains("no embeddings table").all()
    ok = frame[frame["status"] == "ok"]
    assert ok["error"].isna().all() and (ok["scale_path"] == "exact").all()
    assert ok["cv_fold_scores"].map(len).eq(5).all()
    assert ok[["accuracy", "auc", "auc_ci_low", "auc_ci_high", "precision", "recall"]].notna().all().all()
    signal = ok[ok["extractor"] == "signal"]
    assert (signal["n_rows"] == 160).all() and (signal["n_dropped_unlabelled"] == 7).all()
    assert set(signal["weights_ids"].map(tuple)) == {("synthetic:embedding",)}
    lasso = ok[ok["selection"] == "lasso"]
    assert (lasso["n_features"] < lasso["n_features_in"]).all()
    # Every cell's settings travel with its row; the grid's config and provenance with the file.
    settings = json.loads(frame["cell_config"].iloc[0])
    assert settings["cv_folds"] == 5 and settings["extractor"] == frame["extractor"].iloc[0]
    assert set(frame["config_hash"]) == {config.config_hash()} == {metadata["mammo_ray.config_hash"]}
    assert json.loads(metadata["mammo_ray.grid_config"])["cv_folds"] == 5
    assert json.loads(metadata["mammo_ray.weights_ids"]) == {"signal": ["synthetic:embedding"],
                                                              "noise": ["synthetic:noise"]}
    assert metadata["mammo_ray.version"] and metadata["mammo_ray.stage"] == "grid"
    # The leak, visible side by side: noise under the paper protocol with SMOTE "works".
    noise = ok[(ok["extractor"] == "noise") & (ok["selection"] == "none") & (ok["classifier"] == "svm_linear")]
    by = noise.set_index(["protocol", "balancing"])["cv_balanced_accuracy_mean"]
    assert by[("paper", "smote")] > by[("leak_free", "smote")] + 0.2


def test_tune_results_equal_the_sequential_loop_and_a_crashed_trial_fails_only_its_cells(tmp_path):
    good = noise_table(100, 16, 30, seed=3, extractor="good")
    broken = GridData("broken", good.X[:50], good.y, good.groups)  # X shorter than y: the trial crashes
    config = GridConfig(extractors=["good", "broken"], protocols=["leak_free"], selection=["none"],
                        classifiers=["logreg", "svm_linear"], trial_grouping="preprocessing", **SMALL)
    cells = config.cells()
    results = tune_grid({"good": good, "broken": broken}, cells, config, str(tmp_path / "tune"))
    assert [r.cell for r in results] == cells
    from mammo_ray.classify import evaluate_cell

    for result in results:
        if result.extractor == "broken":
            assert result.status == "failed" and result.error.startswith("TrialError")
            assert "IndexError" in result.error or "index" in result.error
        else:
            expected = evaluate_cell(good, result.cell, config)
            assert result.status == "ok" and result.cv_fold_scores == expected.cv_fold_scores
            assert result.auc == expected.auc


def test_trials_group_cells_that_share_fits():
    data = {"a": noise_table(100, 4, 25, extractor="a"), "b": noise_table(100, 4, 25, extractor="b")}
    cells = GridConfig().cells(["a", "b"])
    sizes = {
        grouping: len(plan_units(cells, data, GridConfig(trial_grouping=grouping)))
        for grouping in ("cell", "preprocessing", "selection", "protocol")
    }
    assert sizes == {"cell": 48, "preprocessing": 16, "selection": 8, "protocol": 4}
    units = plan_units(cells, data, GridConfig())
    assert sorted(c for u in units for c in map(tuple, u["cells"])) == sorted(
        tuple(c.as_dict().values()) for c in cells)
    assert [u["cost"] for u in units] == sorted((u["cost"] for u in units), reverse=True)


def test_mini_mias_grid_from_moto_s3(mini_mias_dir, s3_bucket):
    """Real mammograms: benign + malignant (abnormal) vs normal, embedded by a small random-init
    ImageNet ResNet-18 at 64 px, the whole default grid, everything read from and written to S3.

    A patient-stratified subset of 48 of the 161 women (96 films) keeps the test fast on 2 cores.
    """
    from mammo_ray.datasets.mias import build_manifest
    from mammo_ray.models.extractors import ExtractorSpec
    from mammo_ray.stages.embed import EmbedOptions, run_embed

    full = build_manifest(str(mini_mias_dir / "Info.txt"), str(mini_mias_dir), positive="abnormal")
    assert (len(full), full["patient_id"].nunique(), int(full["label"].sum())) == (322, 161, 115)
    patient_label = full.groupby("patient_id")["label"].max()
    rng = np.random.default_rng(0)
    chosen = []
    for label in (0, 1):  # stratified by whether the woman has an abnormal film
        ids = sorted(patient_label[patient_label == label].index)
        chosen += list(rng.choice(ids, size=24, replace=False))
    subset = full[full["patient_id"].isin(chosen)]
    assert len(subset) == 96

    root = s3_bucket + "/mias"
    storage.write_bytes(root + "/Info.txt", (mini_mias_dir / "Info.txt").read_bytes())
    for uri in subset["uri"]:
        name = uri.rsplit("/", 1)[1]
        storage.write_bytes(f"{root}/images/{name}", (mini_mias_dir / name).read_bytes())
    manifest = build_manifest(root + "/Info.txt", root + "/images", positive="abnormal", missing="skip")
    assert len(manifest) == 96 and manifest["uri"].str.startswith("s3://").all()

    output = s3_bucket + "/study"
    spec = ExtractorSpec(name="imagenet_resnet18", weights="random-init:0", input_size=64)
    embedded = run_embed(manifest, output, spec, EmbedOptions(batch_size=16))
    assert (embedded.embedded, embedded.errors) == (96, 0)

    result = run_grid(output, GridConfig(bootstrap=200))  # extractors: every table present
    assert result.uri == output + "/results/grid.parquet" and storage.exists(result.uri)
    frame, metadata = _check_table(output, 24)
    assert (frame["status"] == "ok").all(), frame.loc[frame["status"] != "ok", "error"].tolist()
    assert (frame["n_rows"] == 96).all() and (frame["n_positive"] == int(manifest["label"].sum())).all()
    assert set(frame["weights_ids"].map(tuple)) == {("random-init:0",)}
    assert frame["cv_fold_scores"].map(len).eq(10).all()
    leak_free = frame[frame["protocol"] == "leak_free"]
    # Patient-grouped held-out split: one woman's two films stay together, so n_test is even.
    assert (leak_free["n_test"] % 2 == 0).all()
    print(frame[["protocol", "selection", "balancing", "classifier", "n_features",
                 "cv_balanced_accuracy_mean", "auc"]].to_string())


def test_held_out_scores_of_every_cell_land_in_grid_predictions(tmp_path):
    from sklearn.metrics import roc_auc_score

    from mammo_ray.stages.grid import GRID_PREDICTIONS_SCHEMA, read_grid_predictions

    output = str(tmp_path / "study")
    write_embeddings(output, embedding_table(120, 16, seed=4, extractor="signal"))
    result = run_grid(output, GridConfig(classifiers=["logreg"], selection=["none"], **SMALL))
    predictions = read_grid_predictions(output)
    assert storage.read_table(storage.join(output, "results", "grid_predictions.parquet")).schema.equals(
        GRID_PREDICTIONS_SCHEMA, check_metadata=False)
    cells = ["extractor", "protocol", "selection", "balancing", "classifier"]
    for row in result.frame.itertuples():
        mine = predictions.set_index(cells).loc[tuple(getattr(row, c) for c in cells)]
        assert len(mine) == row.n_test and mine["row"].is_unique
        assert roc_auc_score(mine["target"], mine["score"]) == pytest.approx(row.auc)
        synthetic = mine["image_id"].isna()
        if row.protocol == "paper" and row.balancing == "smote":  # synthetic SMOTE rows sit in the test split
            assert synthetic.any() and (mine.loc[synthetic, "row"] >= row.n_rows).all()
        else:
            assert not synthetic.any()


def test_a_grid_started_again_runs_only_the_units_not_in_its_journal(tmp_path):
    from mammo_ray import layout
    from mammo_ray.classify import GridData as Data
    from mammo_ray.stages.grid import unit_key

    output = str(tmp_path / "study")
    write_embeddings(output, embedding_table(100, 8, seed=6, extractor="signal"))
    config = GridConfig(classifiers=["logreg"], selection=["none"], balancing=["none"], **SMALL)
    first = run_grid(output, config)
    assert not storage.exists(layout.grid_units_uri(output))  # the journal is gone once the table is written
    # Journal one unit as an interrupted run would have left it, with a value no fit would give.
    from mammo_ray.stages.grid import load_grid_data

    data: Data = load_grid_data(output, "signal")
    (unit,) = [u for u in plan_units(config.cells(["signal"]), {"signal": data}, config)
               if u["cells"][0][-1] == "paper"]
    row = first.frame[first.frame["protocol"] == "paper"].iloc[0]
    journaled = {**{k: row[k] for k in ("extractor", "protocol", "selection", "balancing", "classifier")},
                 "cv_balanced_accuracy_mean": 0.123, "cell_hash": row["cell_hash"]}
    storage.write_bytes(storage.join(layout.grid_units_uri(output), f"unit-{unit_key(unit, data.content_hash(), config)}.json"),
                        json.dumps([journaled]).encode())

    again = run_grid(output, config).frame.set_index("protocol")
    assert again.loc["paper", "cv_balanced_accuracy_mean"] == 0.123  # read from the journal, not refit
    assert again.loc["leak_free", "cv_balanced_accuracy_mean"] == pytest.approx(
        first.frame.set_index("protocol").loc["leak_free", "cv_balanced_accuracy_mean"])
    write_embeddings(output, embedding_table(100, 8, seed=7, extractor="signal"))  # other data: other keys
    assert run_grid(output, config).frame.set_index("protocol").loc["paper", "cv_balanced_accuracy_mean"] != 0.123
