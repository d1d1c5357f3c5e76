"""The grid stage on Ray Tune: embeddings tables in, results/grid.parquet out (local and moto S3)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from mammo_ray import storage, tables
from mammo_ray.classify import GridData
from mammo_ray.classify.cells import grid_cells
from mammo_ray.classify.synthetic import embedding_table, noise_table, read_synthetic, write_embeddings
from mammo_ray.config import EmbedConfig, ExtractorConfig, GridConfig
from mammo_ray.stages.grid import GRID_SCHEMA, grid_uri, run_grid, tune_grid
from mammo_ray.stages.grid_units import plan_units, unit_key

pytestmark = pytest.mark.usefixtures("ray_session")

SMALL = {"bootstrap": 200, "cv_folds": 5, "permutations": 5, "oof": {"repeats": 2}}


def _check_table(output: str, expected_cells: int):
    table = storage.read_table(grid_uri(output))
    assert table.schema.equals(GRID_SCHEMA, check_metadata=False)
    assert table.num_rows == expected_cells
    return table.to_pandas(), tables.read_provenance(grid_uri(output))


def _through_the_store(output: str, data: GridData, unlabelled: int = 0) -> GridData:
    """`data` written as an extractor's feature store and read back joined to its manifest, as the study does."""
    manifest, key = write_embeddings(output, data, unlabelled=unlabelled)
    return read_synthetic(output, data.extractor, manifest, key)


def test_grid_writes_every_cell_with_its_settings_and_provenance(tmp_path, caplog):
    output = str(tmp_path / "study")
    signal = _through_the_store(output, embedding_table(160, 64, seed=1, extractor="signal"), unlabelled=7)
    noise = _through_the_store(output, noise_table(120, 48, 30, seed=2, extractor="noise"))
    config = GridConfig(**SMALL)
    inputs = {"manifest": "digest-of-the-manifest", "embeddings": {"signal": {"index": "i1"}}}
    with caplog.at_level(logging.INFO, logger="mammo_ray.grid"):
        result = run_grid(output, config, {"signal": signal, "noise": noise}, inputs)
    # A person sees the grid in cells as its trials finish: the last line has them all.
    progress = [r.getMessage() for r in caplog.records if "/48 cells" in r.getMessage()]
    assert progress and progress[-1].startswith("grid: 48/48 cells (100%)"), progress

    frame, provenance = _check_table(output, 2 * 24 + 2)  # + each extractor's best, chosen inside the folds
    assert result.n_ok == 50 and result.n_failed == 0
    selected = frame[frame["selection"] == "selected"]
    assert sorted(selected["extractor"]) == ["noise", "signal"] and (selected["evaluation"] == "oof").all()
    frame = frame[frame["selection"] != "selected"]
    assert result.dropped_unlabelled == {"signal": 7, "noise": 0}
    ok = frame[frame["status"] == "ok"]
    assert ok["error"].isna().all() and (ok["scale_path"] == "exact").all()
    folds = ok["cv_fold_scores"].map(len)  # paper: cv_folds; leak_free out-of-fold: 5 folds x 2 repeats
    assert folds[ok["protocol"] == "paper"].eq(5).all() and folds[ok["protocol"] == "leak_free"].eq(10).all()
    assert (ok["permutations"] == 5).all() and ok["null_auc_mean"].notna().all()
    assert ok[["accuracy", "auc", "auc_ci_low", "auc_ci_high", "precision", "recall"]].notna().all().all()
    by_extractor = ok[ok["extractor"] == "signal"]
    assert (by_extractor["n_rows"] == 160).all() and (by_extractor["n_dropped_unlabelled"] == 7).all()
    assert set(by_extractor["weights_ids"].map(tuple)) == {("synthetic:embedding",)}
    lasso = ok[ok["selection"] == "lasso"]
    assert (lasso["n_features"] < lasso["n_features_in"]).all()
    # Every cell's settings travel with its row; the grid's config, inputs and provenance with the file.
    settings = json.loads(frame["cell_config"].iloc[0])
    assert settings["cv_folds"] == 5 and settings["extractor"] == frame["extractor"].iloc[0]
    assert set(frame["config_hash"]) == {config.config_hash()} == {provenance["config_hash"]}
    assert provenance["grid_config"]["cv_folds"] == 5 and provenance["inputs"] == inputs
    assert provenance["weights_by_extractor"] == {"signal": ["synthetic:embedding"], "noise": ["synthetic:noise"]}
    assert provenance["package_version"] and provenance["stage"] == "grid"
    assert tables.read_provenance(tables.grid_predictions_uri(output))["inputs"] == inputs
    # The leak, visible side by side: noise under the paper protocol with SMOTE "works".
    noise_rows = ok[(ok["extractor"] == "noise") & (ok["selection"] == "none") & (ok["classifier"] == "svm_linear")]
    by = noise_rows.set_index(["protocol", "balancing"])["cv_balanced_accuracy_mean"]
    assert by[("paper", "smote")] > by[("leak_free", "smote")] + 0.2


def test_tune_results_equal_the_sequential_loop_and_a_crashed_trial_fails_only_its_cells(tmp_path):
    good = noise_table(100, 16, 30, seed=3, extractor="good")
    broken = GridData("broken", good.X[:50], good.y, good.groups)  # X shorter than y: the trial crashes
    config = GridConfig(extractors=["good", "broken"], protocols=["leak_free"], selection=["none"],
                        classifiers=["logreg", "svm_linear"], trial_grouping="preprocessing", **SMALL)
    cells = grid_cells(config)
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
    cells = grid_cells(GridConfig(), ["a", "b"])
    sizes = {
        grouping: len(plan_units(cells, data, GridConfig(trial_grouping=grouping)))
        for grouping in ("cell", "preprocessing", "selection", "protocol")
    }
    assert sizes == {"cell": 48, "preprocessing": 16, "selection": 8, "protocol": 4}
    units = plan_units(cells, data, GridConfig())
    assert sorted(c for u in units for c in u.cells) == sorted(cells)
    assert [u.cost for u in units] == sorted((u.cost for u in units), reverse=True)


def test_trial_cost_counts_the_control_and_the_width():
    """The longest trials start first: the permutation control's reruns and wide tables are counted."""
    data = {"wide": noise_table(100, 512, 25, extractor="wide"), "narrow": noise_table(100, 16, 25, extractor="narrow")}
    cells = grid_cells(GridConfig(selection=["none"]), ["wide", "narrow"])

    def costs(config: GridConfig) -> dict[tuple[str, str], float]:
        return {(u.extractor, u.cells[0].protocol): u.cost for u in plan_units(cells, data, config)}

    quiet, controlled = costs(GridConfig(permutations=0)), costs(GridConfig(permutations=200))
    assert all(controlled[key] > quiet[key] for key in quiet)
    assert controlled[("wide", "leak_free")] > controlled[("narrow", "leak_free")]
    # oof reruns five outer folds per permutation, the paper protocol one held-out fit
    assert controlled[("wide", "leak_free")] > controlled[("wide", "paper")]


def test_mini_mias_grid_from_moto_s3(mini_mias_dir, s3_bucket):
    """Real mammograms: benign + malignant (abnormal) vs normal, embedded by a small random-init
    ImageNet ResNet-18 at 64 px, the whole default grid, everything read from and written to S3.

    A patient-stratified subset of 48 of the 161 women (96 films) keeps the test fast on 2 cores.
    """
    from mammo_ray.datasets.mias import build_manifest
    from mammo_ray.stages.embed import read_embeddings, run_embed
    from mammo_ray.stages.grid import grid_data

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
    spec = ExtractorConfig(name="imagenet_resnet18", weights="random-init:0", input_size=64)
    embedded = run_embed(manifest, output, spec, EmbedConfig(batch_size=16))
    assert (embedded.embedded, embedded.errors) == (96, 0)

    data = grid_data(read_embeddings(output, manifest, spec), spec.name)
    # Every default cell, folds and repeats; the null and the interval only as many times as they need to show
    # that they ran (their size changes no cell).
    result = run_grid(output, GridConfig(bootstrap=50, permutations=2), {spec.name: data})
    assert result.uri == output + "/results/grid.parquet" and storage.exists(result.uri)
    frame, _ = _check_table(output, 24 + 1)
    frame = frame[frame["selection"] != "selected"]
    assert (frame["status"] == "ok").all(), frame.loc[frame["status"] != "ok", "error"].tolist()
    assert (frame["n_rows"] == 96).all() and (frame["n_positive"] == int(manifest["label"].sum())).all()
    assert set(frame["weights_ids"].map(tuple)) == {("random-init:0",)}
    leak_free = frame[frame["protocol"] == "leak_free"]
    assert frame.loc[frame["protocol"] == "paper", "cv_fold_scores"].map(len).eq(10).all()
    assert (leak_free["cv_fold_scores"].map(len).eq(25).all() and (leak_free["evaluation"] == "oof").all()
            and (leak_free["n_test"] == 96).all())  # out-of-fold: 5 x 5, every image scored
    assert (frame["permutations"] == 2).all() and (leak_free["interval"] == "patient bootstrap").all()
    print(frame[["protocol", "selection", "balancing", "classifier", "n_features",
                 "cv_balanced_accuracy_mean", "auc"]].to_string())


def test_held_out_scores_of_every_cell_land_in_grid_predictions(tmp_path):
    from sklearn.metrics import roc_auc_score

    from mammo_ray.stages.grid import GRID_PREDICTIONS_SCHEMA, read_grid_predictions

    output = str(tmp_path / "study")
    signal = _through_the_store(output, embedding_table(120, 16, seed=4, extractor="signal"))
    result = run_grid(output, GridConfig(classifiers=["logreg"], selection=["none"], **SMALL), {"signal": signal})
    predictions = read_grid_predictions(output)
    assert storage.read_table(storage.join(output, "results", "grid_predictions.parquet")).schema.equals(
        GRID_PREDICTIONS_SCHEMA, check_metadata=False)
    cells = ["extractor", "protocol", "selection", "balancing", "classifier"]
    for row in result.frame.itertuples():
        mine = predictions.set_index(cells).loc[tuple(getattr(row, c) for c in cells)]
        repeats = int(row.oof_repeats) if row.evaluation == "oof" else 1
        assert len(mine) == row.n_test * repeats and not mine.duplicated(["repeat", "row"]).any()
        aucs = [roc_auc_score(rows["target"], rows["score"]) for _, rows in mine.groupby("repeat")]
        assert len(aucs) == repeats and np.mean(aucs) == pytest.approx(row.auc)
        synthetic = mine["image_id"].isna()
        if row.protocol == "paper" and row.balancing == "smote":  # synthetic SMOTE rows sit in the test split
            assert synthetic.any() and (mine.loc[synthetic, "row"] >= row.n_rows).all()
        else:
            assert not synthetic.any()


def test_a_grid_started_again_runs_only_the_units_not_in_its_journal(tmp_path):
    output = str(tmp_path / "study")
    data = _through_the_store(output, embedding_table(100, 8, seed=6, extractor="signal"))
    config = GridConfig(classifiers=["logreg"], selection=["none"], balancing=["none"], **SMALL)
    first = run_grid(output, config, {"signal": data})
    assert not storage.exists(tables.grid_units_uri(output))  # the journal is gone once the table is written
    # Journal one unit as an interrupted run would have left it, with a value no fit would give.
    (unit,) = [u for u in plan_units(grid_cells(config, ["signal"]), {"signal": data}, config)
               if u.cells[0].protocol == "paper"]
    row = first.frame[first.frame["protocol"] == "paper"].iloc[0]
    journaled = {**{k: row[k] for k in ("extractor", "protocol", "selection", "balancing", "classifier")},
                 "cv_balanced_accuracy_mean": 0.123, "cell_hash": row["cell_hash"]}
    unit_uri = storage.join(tables.grid_units_uri(output), f"unit-{unit_key(unit, data.content_hash(), config)}.json")
    storage.write_bytes(unit_uri, json.dumps([journaled]).encode())

    again = run_grid(output, config, {"signal": data}).frame.set_index("protocol")
    assert again.loc["paper", "cv_balanced_accuracy_mean"] == 0.123  # read from the journal, not refit
    assert again.loc["leak_free", "cv_balanced_accuracy_mean"] == pytest.approx(
        first.frame.set_index("protocol").loc["leak_free", "cv_balanced_accuracy_mean"])
    unit_uri = storage.join(tables.grid_units_uri(output), f"unit-{unit_key(unit, data.content_hash(), config)}.json")
    storage.write_bytes(unit_uri, json.dumps([journaled]).encode())
    relabelled = GridData("signal", data.X, 1 - data.y, data.groups, image_ids=data.image_ids)  # other labels
    assert run_grid(output, config, {"signal": relabelled}).frame.set_index("protocol").loc[
        "paper", "cv_balanced_accuracy_mean"] != 0.123  # other data: other keys, the journal is not used
