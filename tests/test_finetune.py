"""The fine-tuning stage on Ray Train: S3 checkpoints and resume, splits, metrics, real mini-MIAS."""

from __future__ import annotations

import json
import logging
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from mammo_ray import storage, tables
from mammo_ray.config import FinetuneConfig
from mammo_ray.datasets.synthetic import SyntheticSource, generate_cohort
from mammo_ray.errors import ConfigError
from mammo_ray.models.catalogue import finetune_transform
from mammo_ray.models.weight_loading import seeded_init
from mammo_ray.models.weights import WeightsError
from mammo_ray.schemas import FINETUNE_PREDICTIONS_SCHEMA, FINETUNE_SCHEMA
from mammo_ray.stages.finetune import finetune_uri, predictions_uri, run_finetune
from mammo_ray.training.data import task_frame
from mammo_ray.training.splits import make_split

# Every image's patient has one suspicious and one negative breast: both classes in every split.
COHORT = SyntheticSource(patients=6, seed=5, rows=128, positive_fraction=0.5)


def _config(**overrides) -> FinetuneConfig:
    settings = {
        "name": "t",
        "models": [{"name": "small_cnn"}],
        "tasks": ["binary"],
        "stages": [{"name": "all", "train": "all", "size": 64, "epochs": 1, "lr": 1e-3}],
        "batch_size": 4,
        "num_workers": 1,
        "cpus_per_worker": 0.5,
        "data_cpus": 0.5,
        "keep_checkpoints": 1,
    }
    settings.update(overrides)
    return FinetuneConfig.model_validate(settings)


@pytest.fixture(scope="module")
def s3_cohort(s3_endpoint) -> pd.DataFrame:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="finetune-cohort")
    return generate_cohort("s3://finetune-cohort/cohort", COHORT)


def _predictions(output: str) -> pd.DataFrame:
    return storage.read_table(predictions_uri(output)).to_pandas()


def _check_metrics_match_sklearn(rows: pd.DataFrame, predictions: pd.DataFrame) -> None:
    from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score

    for row in rows.itertuples(index=False):
        mine = predictions[(predictions["model"] == row.model) & (predictions["task"] == row.task)
                           & (predictions["stage"] == row.stage)]
        y = mine["target"].to_numpy()
        proba = np.stack(mine["probabilities"].to_numpy())
        pred = proba.argmax(axis=1)
        assert len(mine) == row.n_val
        assert np.array_equal(pred, mine["prediction"].to_numpy())
        average = "binary" if proba.shape[1] == 2 else "macro"
        assert row.accuracy == pytest.approx(accuracy_score(y, pred))
        assert row.precision == pytest.approx(precision_score(y, pred, average=average, zero_division=0))
        assert row.recall == pytest.approx(recall_score(y, pred, average=average, zero_division=0))
        if proba.shape[1] == 2:
            assert row.auroc == pytest.approx(roc_auc_score(y, proba[:, 1]))
        elif len(set(y)) == proba.shape[1]:
            labels = list(range(proba.shape[1]))
            assert row.auroc == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", labels=labels))


@pytest.fixture(scope="module")
def imagenet_format_weights(tmp_path_factory) -> tuple[str, dict]:
    """A SqueezeNet 1.1 state dict in torchvision's published format (1000 classes), as a .pth file."""
    import torchvision

    with seeded_init(3):
        published = torchvision.models.squeezenet1_1(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "squeezenet1_1-imagenet.pth"
    torch.save(published, path)
    return str(path), published


@pytest.mark.usefixtures("ray_session")
def test_two_workers_on_s3_head_then_all_with_resizing_and_a_rerun_resumes(
    s3_cohort, s3_bucket, imagenet_format_weights
):
    weights, published = imagenet_format_weights
    output = s3_bucket + "/study"
    head = {"name": "head", "train": "head", "size": 32, "epochs": 1, "lr": 1e-2}
    config = _config(
        models=[{"name": "squeezenet1_1", "weights": weights}], tasks=["birads"], num_workers=2,
        stages=[head, {"name": "all-48", "train": "all", "size": 48, "epochs": 1, "lr": 1e-3}],
    )
    first = run_finetune(s3_cohort, output, config)

    assert [(r.stage, r.start_epoch, r.epoch, r.trained, r.world_size) for r in first.runs] == [
        ("head", 0, 1, 1, 2), ("all-48", 0, 1, 1, 2)]
    assert all(r.images_per_s > 0 for r in first.runs)
    prefix = s3_bucket + "/study/checkpoints/t-squeezenet1_1-imagenet-birads-patient-"
    assert first.runs[0].checkpoint_uri.startswith(prefix + "head/checkpoint_")
    for run in first.runs:
        assert storage.exists(run.checkpoint_uri + "/model.pt")
        assert storage.exists(run.checkpoint_uri + "/state.json")
    table = storage.read_table(finetune_uri(output))
    assert table.schema.equals(FINETUNE_SCHEMA, check_metadata=False)
    assert tables.read_provenance(finetune_uri(output))["config_hash"] == config.config_hash()
    rows = table.to_pandas().sort_values("stage_index")
    assert list(rows["stage"]) == ["head", "all-48"] and list(rows["image_size"]) == [32, 48]
    assert set(rows["pretrained_on"]) == {"imagenet"} and set(rows["epochs"]) == {1}
    assert list(rows["checkpoint_uri"]) == [r.checkpoint_uri for r in first.runs]
    frame, classes = task_frame(s3_cohort, "birads")
    assert len(classes) > 2 and all(list(c) == classes for c in rows["classes"])

    # The validation images are exactly the held-out patients' images; no patient is on both sides.
    split = make_split(frame, "patient", seed=config.seed)
    predictions = _predictions(output)
    for stage in ("head", "all-48"):
        mine = predictions[predictions["stage"] == stage]
        assert sorted(mine["image_id"]) == sorted(frame["image_id"].iloc[split.val])
        assert set(mine["patient_id"]).isdisjoint(frame["patient_id"].iloc[split.train])
    assert set(rows["n_train"]) == {len(split.train)} and set(rows["n_val"]) == {len(split.val)}
    _check_metrics_match_sklearn(rows, predictions)

    # The head stage changed the new head only (the body stayed frozen); the next stage trained it all.
    head_state = _load_state(first.runs[0].checkpoint_uri)
    whole_state = _load_state(first.runs[1].checkpoint_uri)
    assert all(torch.equal(head_state[k], v) for k, v in published.items() if not k.startswith("classifier."))
    assert head_state["classifier.1.weight"].shape[0] == len(classes)
    assert not torch.equal(head_state["classifier.1.weight"], whole_state["classifier.1.weight"])
    assert not torch.equal(whole_state["features.0.weight"], published["features.0.weight"])

    # Same name, one more epoch for the last stage: it resumes from its epoch-1 checkpoint in the bucket.
    again = _config(models=config.models, tasks=["birads"], num_workers=2,
                    stages=[{"name": "all-48", "train": "all", "size": 48, "epochs": 2, "lr": 1e-3}])
    (resumed,) = run_finetune(s3_cohort, output, again).runs
    assert (resumed.stage, resumed.start_epoch, resumed.epoch, resumed.trained) == ("all-48", 1, 2, 1)
    assert resumed.checkpoint_uri != first.runs[1].checkpoint_uri
    rows = storage.read_table(finetune_uri(output)).to_pandas().set_index("stage")
    # The table describes the current config: the head stage it no longer names is not left beside it.
    assert list(rows.index) == ["all-48"] and rows.loc["all-48", "epochs"] == 2
    assert rows.loc["all-48", "checkpoint_uri"] == resumed.checkpoint_uri
    assert not storage.exists(first.runs[1].checkpoint_uri + "/model.pt")  # keep_checkpoints=1
    _check_metrics_match_sklearn(rows.reset_index(), _predictions(output))


def _load_state(uri: str) -> dict:
    import io

    return torch.load(io.BytesIO(storage.read_bytes(uri + "/model.pt")), weights_only=True)


@pytest.mark.usefixtures("ray_session")
def test_mini_mias_from_scratch_writes_every_metric(mini_mias_dir, tmp_path, caplog):
    from mammo_ray.datasets.mias import build_manifest

    manifest = build_manifest(str(mini_mias_dir / "Info.txt"), str(mini_mias_dir), positive="malignant")
    # A cheap, real subset: 12 women with a malignant film and 12 without (48 films of 1024 x 1024).
    by_patient = manifest.groupby("patient_id")["label"].max()
    chosen = list(by_patient[by_patient == 1].index[:12]) + list(by_patient[by_patient == 0].index[:12])
    subset = manifest[manifest["patient_id"].isin(chosen)].reset_index(drop=True)
    # One unreadable film: it becomes an errors-table row, not a crash and not a silent gap.
    broken = tmp_path / "mdb999.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    bad = subset.iloc[[0]].assign(image_id="mias/mdb999", uri=str(broken), patient_id="mias/p999",
                                  exam_id="mias/p999", label=0, pathology="normal")
    subset = pd.concat([subset, bad], ignore_index=True)
    output = str(tmp_path / "mias")
    config = _config(name="mias", stages=[{"name": "all", "size": 48, "epochs": 1, "lr": 1e-3}],
                     cpus_per_worker=1.0, batch_size=8)
    with caplog.at_level(logging.INFO, logger="mammo_ray.finetune"):
        result = run_finetune(subset, output, config)
    # The workers' progress reaches the driver's console: the epoch's end, with its numbers; its file is gone.
    echoed = [r.getMessage() for r in caplog.records if r.name == "mammo_ray.finetune" and "epoch 1/1 done" in
              r.getMessage()]
    assert echoed and re.search(r": epoch 1/1 done, \d+ images in \d+ s, loss \d\.\d{4}, validation AUROC", echoed[-1])
    assert not list((tmp_path / "mias" / "checkpoints").glob("*.progress"))

    table = storage.read_table(finetune_uri(output))
    assert table.schema.equals(FINETUNE_SCHEMA, check_metadata=False)
    predictions = _predictions(output)
    assert storage.read_table(predictions_uri(output)).schema.equals(FINETUNE_PREDICTIONS_SCHEMA, check_metadata=False)
    (row,) = table.to_pylist()
    assert (row["model"], row["variant"], row["pretrained_on"], row["weights_id"]) == (
        "small_cnn", "", "none", "random-init:0")
    for metric in ("accuracy", "auroc", "precision", "recall"):
        assert row[metric] is not None and 0.0 <= row[metric] <= 1.0 and math.isfinite(row[metric]), metric
        assert row[f"{metric}_ci_low"] <= row[metric] <= row[f"{metric}_ci_high"], metric  # patients resampled
    assert row["auroc_ci_high"] - row["auroc_ci_low"] > 0
    frame, _ = task_frame(subset, "binary")
    split = make_split(frame, "patient", seed=config.seed)
    assert row["n_train"] == len(split.train) and row["n_val"] == len(predictions) and row["epochs"] == 1
    assert "mias/mdb999" not in set(predictions["image_id"])
    assert len(predictions) == len(split.val) - int("mias/mdb999" in set(frame["image_id"].iloc[split.val]))
    assert storage.exists(row["checkpoint_uri"] + "/model.pt")
    assert result.runs[0].images_per_s > 0
    # One worker on a 2-CPU node trains on both cores (it reserves one CPU for scheduling).
    assert result.runs[0].metrics["torch_threads"] == 2
    _check_metrics_match_sklearn(result.rows, predictions)
    errors = storage.read_table(storage.join(output, "errors", "finetune-imagenet-48")).to_pandas()
    assert set(errors["image_id"]) == {"mias/mdb999"} and set(errors["stage"]) == {"finetune:imagenet:48"}
    assert str(broken) in errors["message"].iloc[0]


@pytest.mark.usefixtures("ray_session")
def test_the_nyu_model_fine_tunes_from_the_view_head_it_is_given(tmp_path):
    """The published NYU file fine-tuned from its L-MLO head: the run starts from that head's trunk and fc1 (a
    head-only stage leaves them as published), sees every image in the MLO window, and its rows say so."""
    from mammo_ray.models.nyu import build_nyu_model, published_state_dict

    published = build_nyu_model(seed=21)
    weights = tmp_path / "ImageOnly__ModeImage_weights.p"
    torch.save({"model": published_state_dict(published)}, str(weights))
    cohort = generate_cohort(str(tmp_path / "cohort"), COHORT)
    config = _config(models=[{"name": "nyu", "weights": str(weights), "view": "l_mlo"}],
                     stages=[{"name": "head", "train": "head", "size": 64, "epochs": 1, "lr": 1e-3}],
                     bootstrap=200)
    output = str(tmp_path / "out")
    result = run_finetune(cohort, output, config)

    (row,) = storage.read_table(finetune_uri(output)).to_pylist()
    assert (row["model"], row["variant"], row["run_name"]) == ("nyu", "l_mlo", "t-nyu-l_mlo-nyu-binary-patient-head")
    assert row["auroc_ci_low"] <= row["auroc"] <= row["auroc_ci_high"]
    state = _load_state(row["checkpoint_uri"])
    assert torch.equal(state["fc1.weight"], published.fc1_lmlo.weight)  # not fc1_lcc, the default head
    assert torch.equal(state["trunk.first_conv.weight"], published.mlo.first_conv.weight)
    recorded = json.loads(storage.read_bytes(row["checkpoint_uri"] + "/state.json"))
    l_mlo, l_cc = finetune_transform(config, "nyu", 64, "l_mlo"), finetune_transform(config, "nyu", 64)
    assert recorded["preprocess_id"] == l_mlo.id != l_cc.id
    assert [run.variant for run in result.runs] == ["l_mlo"]
    assert set(_predictions(output)["variant"]) == {"l_mlo"}


def test_each_nyu_view_head_is_a_run_of_its_own_with_its_window():
    from mammo_ray.imaging.nyu import window_size
    from mammo_ray.models.finetune_models import resolve_models
    from mammo_ray.stages.finetune import run_name

    config = _config(models=[{"name": "nyu", "weights": "random-init:0", "view": view} for view in ("l_mlo", "r_cc")]
                     + [{"name": "nyu", "weights": "random-init:0"}, {"name": "small_cnn"}],
                     stages=[{"name": "all", "size": 64}])
    models = resolve_models(config)
    assert [m.variant for m in models] == ["l_mlo", "r_cc", "l_cc", ""]  # the default head: l_cc
    assert [run_name(config, m, "binary", config.stages[0]) for m in models] == [
        "t-nyu-l_mlo-none-binary-patient-all", "t-nyu-r_cc-none-binary-patient-all",
        "t-nyu-l_cc-none-binary-patient-all", "t-small_cnn-none-binary-patient-all"]
    windows = {view: finetune_transform(config, "nyu", 64, view).shape for view in ("l_mlo", "r_mlo", "l_cc", "r_cc")}
    assert windows["l_mlo"] == windows["r_mlo"] == (1, *window_size("MLO", 64 / 2974))
    assert windows["l_cc"] == windows["r_cc"] == (1, *window_size("CC", 64 / 2677))
    twice = [{"name": "nyu", "weights": "random-init:0", "view": "r_cc"}] * 2
    with pytest.raises(ConfigError, match=r"finetune\.models.*share \(model, view, pretrained_on\)"):
        resolve_models(_config(models=twice))
    with pytest.raises(ValueError, match="view 'l_cc' is a NYU view head; resnet18 has none"):
        _config(models=[{"name": "resnet18", "view": "l_cc"}])


def test_missing_pretrained_weights_fail_at_start_with_the_weights_error(tmp_path):
    manifest = pd.DataFrame(
        {"image_id": ["a", "b"], "uri": ["/x/a.dcm", "/x/b.dcm"], "dataset": "d", "patient_id": ["p1", "p2"],
         "label": [0, 1]}
    )
    output = tmp_path / "out"
    missing = tmp_path / "resnet18-imagenet.pth"
    with pytest.raises(WeightsError, match="resnet18-imagenet.pth") as caught:
        run_finetune(manifest, str(output), _config(models=[{"name": "resnet18", "weights": str(missing)}]))
    assert "not found" in str(caught.value) and "how to fix" in str(caught.value)
    with pytest.raises(WeightsError, match="NYU model needs its published weights"):
        run_finetune(manifest, str(output), _config(models=[{"name": "nyu"}]))
    assert not output.exists()  # nothing ran


def test_config_errors_name_their_key():
    with pytest.raises(ValueError, match="small_cnn is the from-scratch baseline"):
        _config(models=[{"name": "small_cnn", "weights": "torchvision:resnet18:IMAGENET1K_V1"}])
    with pytest.raises(ValueError, match="stage names must be unique"):
        _config(stages=[{"name": "a", "size": 32}, {"name": "a", "size": 64}])
    with pytest.raises(ValueError, match="extra"):
        _config(epochs=3)
    manifest = pd.DataFrame({"image_id": ["a", "b"], "uri": ["/x/a", "/x/b"], "dataset": "d",
                             "patient_id": ["p1", "p2"], "label": [0, 0]})
    with pytest.raises(ConfigError, match="at least 2 classes"):
        run_finetune(manifest, "/nonexistent/out", _config(tasks=["birads"]))
