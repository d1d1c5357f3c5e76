"""Every table describes the current manifest and config, whatever ran before on the same output.

The cases a new user met on one output: switching weights, correcting labels, removing images, a copy of
an image under another id, two extractors of one name; and Table 1 / Table 2 of one report computed on
different labelled images.
"""

from __future__ import annotations

import pandas as pd
import pytest

from mammo_ray import feature_store, storage, tables
from mammo_ray.config import ExtractorConfig, parse_config
from mammo_ray.datasets.manifest import read_manifest, write_manifest
from mammo_ray.datasets.synthetic import SyntheticSource, generate_cohort
from mammo_ray.errors import ConfigError, StaleTableError
from mammo_ray.stages.embed import read_embeddings
from mammo_ray.study import prune_output, run_study

SMALL_GRID = {"cv_folds": 2, "bootstrap": 10, "classifiers": ["logreg"], "selection": ["none"],
              "balancing": ["none"], "protocols": ["leak_free"], "permutations": 2, "oof": {"repeats": 1}}


def _config(tmp_path, manifest_uri: str, weights: str = "random-init:0", **sections):
    return parse_config({
        "name": "current", "output": str(tmp_path / "study"), "data": {"manifest": manifest_uri},
        "embed": {"extractors": [{"name": "imagenet_resnet18", "input_size": 32, "weights": weights}]},
        "grid": SMALL_GRID, **sections,
    })


def _grid(config) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (storage.read_table(tables.grid_uri(config.output)).to_pandas(),
            storage.read_table(tables.grid_predictions_uri(config.output)).to_pandas())


def _assert_grid_describes(config, manifest: pd.DataFrame, weights: str) -> None:
    grid, predictions = _grid(config)
    labelled = manifest[manifest["label"].notna()]
    assert (grid["status"] == "ok").all(), grid["error"].tolist()
    assert set(grid["n_rows"]) == {len(labelled)}
    assert set(grid["n_positive"]) == {int(labelled["label"].sum())}
    assert set(grid["weights_ids"].map(tuple)) == {(weights,)}
    assert set(predictions["image_id"]) <= set(labelled["image_id"])
    truth = labelled.set_index("image_id")["label"].astype(int)
    assert (predictions["target"].to_numpy() == truth.loc[predictions["image_id"]].to_numpy()).all()
    assert tables.read_provenance(tables.grid_uri(config.output))["inputs"]["manifest"] == \
        tables.manifest_digest(manifest)


def _cohort_manifest(tmp_path, patients: int):
    """A synthetic cohort and its manifest file (the study's `data.manifest`)."""
    cohort = generate_cohort(str(tmp_path / "cohort"),
                             SyntheticSource(patients=patients, rows=96, positive_fraction=0.5))
    manifest_uri = str(tmp_path / "manifest.parquet")
    write_manifest(cohort, manifest_uri)
    return cohort, manifest_uri


@pytest.mark.usefixtures("ray_session")
def test_weights_labels_and_images_changed_on_one_output_give_tables_of_the_current_inputs(tmp_path):
    cohort, manifest_uri = _cohort_manifest(tmp_path, patients=8)
    stages = ["manifest", "ingest", "embed", "grid"]

    config = _config(tmp_path, manifest_uri)
    assert run_study(config, stages).ran == stages
    _assert_grid_describes(config, cohort, "random-init:0")

    # Other weights on the same output: readers refuse to answer with the old vectors until the embedding
    # ran; then the grid sees the new vectors only, once per image.
    spec = ExtractorConfig(name="imagenet_resnet18", input_size=32, weights="random-init:1")
    with pytest.raises(StaleTableError, match="random-init:0.*the config asks for weights random-init:1"):
        read_embeddings(config.output, cohort, spec)
    switched = _config(tmp_path, manifest_uri, weights="random-init:1")
    result = run_study(switched, stages)
    assert result.ran == ["manifest", "embed", "grid"] and result.counts["embedded:imagenet_resnet18"] == 32
    _assert_grid_describes(switched, cohort, "random-init:1")

    # Labels corrected in the manifest file: nothing image-related reruns, the grid does, on the new labels.
    corrected = cohort.copy()
    corrected["label"] = pd.array([int(i % 3 == 0) for i in range(len(corrected))], dtype="Int8")
    assert (corrected["label"] != cohort["label"]).any()
    write_manifest(corrected, manifest_uri)
    result = run_study(switched, stages)
    assert result.ran == ["manifest", "grid"] and result.skipped == ["ingest", "embed"]
    _assert_grid_describes(switched, corrected, "random-init:1")
    assert run_study(switched, ["grid"], force=True).ran == ["grid"]
    _assert_grid_describes(switched, corrected, "random-init:1")

    # Images removed: gone from the grid and its predictions; nothing is recomputed.
    fewer = corrected[~corrected["patient_id"].isin(["synth/P0006", "synth/P0007"])]
    with pytest.raises(StaleTableError, match="another manifest"):
        read_embeddings(switched.output, fewer, spec)
    write_manifest(fewer, manifest_uri)
    result = run_study(switched, stages)
    assert result.counts["embedded:imagenet_resnet18"] == 0 and result.counts["skipped:imagenet_resnet18"] == 24
    _assert_grid_describes(switched, fewer, "random-init:1")
    assert read_embeddings(switched.output, fewer, spec)["image_id"].tolist() == sorted(fewer["image_id"])

    # A copy of an image under another id (a re-export): its own row, the same vector, no errors row.
    copy = fewer.iloc[[0]].assign(image_id="export/copy-of-first", patient_id="export/p1")
    with_copy = pd.concat([fewer, copy], ignore_index=True)
    write_manifest(with_copy, manifest_uri)
    result = run_study(switched, stages)
    assert result.counts["embedded:imagenet_resnet18"] == 0 and result.counts["embed_errors:imagenet_resnet18"] == 0
    _assert_grid_describes(switched, read_manifest(manifest_uri), "random-init:1")
    view = read_embeddings(switched.output, read_manifest(manifest_uri), spec).set_index("image_id")
    assert len(view) == len(with_copy)
    assert list(view.loc["export/copy-of-first", "embedding"]) == list(view.loc[fewer.iloc[0]["image_id"], "embedding"])

    # The cache of other weights and removed images is invisible, and `prune` removes it.
    table = tables.embeddings_uri(switched.output, "imagenet_resnet18")
    assert len(feature_store.subfolders(tables.features_uri(table))) == 2  # random-init:0 and :1
    planned = prune_output(switched, dry_run=True)
    assert planned["embeddings/imagenet_resnet18"] == {"folders": 1, "rows": 8}  # other weights; two patients gone
    assert len(feature_store.subfolders(tables.features_uri(table))) == 2  # a dry run removes nothing
    assert prune_output(switched) == planned
    current_key = feature_store.ModelKey(**tables.read_provenance(tables.index_uri(table))["key"])
    assert feature_store.subfolders(tables.features_uri(table)) == [current_key.folder]
    assert storage.read_table(feature_store.key_uri(table, current_key)).num_rows == 24
    assert len(read_embeddings(switched.output, read_manifest(manifest_uri), spec)) == len(with_copy)
    assert prune_output(switched)["embeddings/imagenet_resnet18"] == {"folders": 0, "rows": 0}


@pytest.mark.usefixtures("ray_session")
def test_a_stage_whose_outputs_were_pruned_or_deleted_runs_again(tmp_path):
    cohort, manifest_uri = _cohort_manifest(tmp_path, patients=6)
    stages = ["manifest", "ingest", "embed", "grid"]
    config, edited = _config(tmp_path, manifest_uri), _config(tmp_path, manifest_uri, weights="random-init:1")
    assert run_study(config, stages).ran == stages

    # `prune` under an edited config (never run) removes the first config's vectors as other weights'.
    assert prune_output(edited)["embeddings/imagenet_resnet18"] == {"folders": 1, "rows": 0}
    back = run_study(config, stages)
    assert back.ran == ["manifest", "embed"] and back.skipped == ["ingest", "grid"]
    assert back.counts["embedded:imagenet_resnet18"] == len(cohort)  # recomputed, not taken as done
    spec = ExtractorConfig(name="imagenet_resnet18", input_size=32, weights="random-init:0")
    assert read_embeddings(config.output, cohort, spec)["image_id"].tolist() == sorted(cohort["image_id"])

    # A table deleted by hand: its stage runs again, the others stay done.
    storage.remove(tables.grid_uri(config.output))
    again = run_study(config, stages)
    assert again.ran == ["manifest", "grid"] and again.skipped == ["ingest", "embed"]
    _assert_grid_describes(config, cohort, "random-init:0")


def test_two_extractors_of_one_name_are_refused_at_start(tmp_path):
    with pytest.raises(ConfigError, match=r"embed: .*names must be unique, nyu_lcc"):
        parse_config({"output": str(tmp_path), "embed": {"extractors": [
            {"name": "nyu_lcc", "pool": "global"}, {"name": "nyu_lcc", "pool": "4x4"}]}})
    with pytest.raises(ConfigError, match=r"grid\.extractors \['nyu_avg'\] are not in embed\.extractors"):
        parse_config({"output": str(tmp_path), "embed": {"extractors": [{"name": "nyu_lcc"}]},
                      "grid": {"extractors": ["nyu_avg"]}})


def test_an_output_that_is_a_file_is_refused_before_any_work(tmp_path):
    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"^config output: .*a-file"):
        run_study(parse_config({"output": str(taken)}), ["manifest"])
    assert taken.read_text() == "not a folder"


def test_the_shipped_cluster_config_passes_the_job_path_check_and_the_demo_does_not(monkeypatch):
    from mammo_ray.config import load_config
    from mammo_ray.preflight import check_job_paths
    from mammo_ray.study import demo_config

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {"working_dir": "gcs://_ray_pkg_abc.zip"}}')
    check_job_paths(load_config("jobs/configs/cluster_s3.yaml"))  # what the README's job command runs
    with pytest.raises(ConfigError, match=r"output = 'output/demo'.*uploaded as gcs://_ray_pkg_abc.zip"):
        check_job_paths(demo_config())
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    check_job_paths(demo_config())  # outside a job a relative path is the user's own folder
