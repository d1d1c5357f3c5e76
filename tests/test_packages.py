"""Model packages without Ray: the fitted model, writing and loading, every refusal, the card, the shift check
(tests/test_scoring.py runs them through the study and `score_collection`)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import skops.io

from mammo_ray import storage, tables
from mammo_ray.classify.calibration import apply_calibration, calibrate, fit_calibration
from mammo_ray.classify.data import GridData
from mammo_ray.classify.engine import build_pipeline, decision_scores
from mammo_ray.config import ExtractorConfig, ScoreConfig, parse_config
from mammo_ray.config.grid import GridCell, GridConfig
from mammo_ray.errors import ConfigError
from mammo_ray.packages.card import card_files
from mammo_ray.packages.files import (
    DESCRIPTION_FILE,
    PIPELINE_FILE,
    PackageRefused,
    load_package,
    package_id,
    pipeline_files,
    sha256_hex,
    write_package,
)
from mammo_ray.packages.model import ShiftReference, fit_model, mean_shift
from mammo_ray.report.packages import packages_section
from mammo_ray.scoring import score_collection, score_view, scoring_extractor
from mammo_ray.stages.embed import embedding_key
from mammo_ray.stages.export import extractor_identity

CELL = GridCell("e", "lasso", "smote", "svm_rbf", "leak_free")


def _data(n=80, d=24, seed=0):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 4 == 0).astype(np.int8)
    X = (rng.normal(size=(n, d)) + 0.8 * y[:, None] * (np.arange(d) < 4)).astype(np.float32)
    return GridData("e", X, y, np.arange(n) // 2)


def _description(spec=None, subgroups=()):
    spec = spec or ExtractorConfig(name="imagenet_resnet18", input_size=64)
    return {"name": "e-compare", "kind": "compare", "created_by": "test",
            "extractor": extractor_identity(spec, embedding_key(spec)),
            "pipeline": {"selection": "lasso", "balancing": "smote", "classifier": "svm_rbf", "grid_settings": {},
                         "support_vectors": 31},
            "threshold": 0.0, "calibration": "platt",
            "training": {"manifest_digest": "d", "images": 80, "positives": 20, "patients": 40,
                         "unlabelled_left_out": 0, "datasets": ["inbreast"], "views": ["CC", "MLO"],
                         "lateralities": ["L", "R"], "label_definition": "BI-RADS", "study": "t"},
            "performance": {"evaluation": "leak_free out-of-fold", "auc": 0.71, "auc_ci_low": 0.6,
                            "auc_ci_high": 0.8, "interval": "patient bootstrap"},
            "control": {"permutations": 100, "permutation_p": 0.01, "null_auc_mean": 0.5},
            "subgroups": list(subgroups), "shift": {"training_median": 1.0, "training_q95": 1.4}}


def _write(uri, data=None, spec=None):
    data = data or _data()
    model = fit_model(data, CELL, GridConfig(), np.random.default_rng(1).normal(size=(2, data.n_rows)))
    description = {**_description(spec), "threshold": model.threshold,
                   "shift": {"training_median": model.shift.training_median,
                             "training_q95": model.shift.training_q95}}
    return model, write_package(str(uri), description, {**pipeline_files(model), **card_files(description)})


def test_the_fitted_model_is_the_cells_pipeline_fitted_on_everything_with_the_oof_threshold_and_calibration():
    data, config = _data(), GridConfig()
    oof = np.random.default_rng(1).normal(size=(2, data.n_rows))
    model = fit_model(data, CELL, config, oof)
    reference, _ = build_pipeline(CELL, config, data.n_rows)
    reference.fit(data.X, data.y)
    scores, probability, flag, distance = model.apply(data.X)
    np.testing.assert_array_equal(scores, decision_scores(reference, data.X))
    np.testing.assert_allclose(probability, calibrate("platt", np.tile(data.y, 2), oof.ravel(), scores))
    assert (flag == (scores >= model.threshold)).all()
    assert model.support_vectors() == len(reference.named_steps["classify"].support_vectors_) > 0
    assert 0.8 < np.mean(distance) < 1.2  # standardised training rows: RMS about 1


def test_a_package_loads_anywhere_and_scores_as_written(tmp_path, s3_bucket):
    model, written = _write(tmp_path / "pkg")
    X = _data(seed=5).X
    for copy in (tmp_path / "elsewhere", f"{s3_bucket}/pkgs/e"):
        for name in [DESCRIPTION_FILE, *written["files"]]:
            storage.write_bytes(storage.join(str(copy), name), (tmp_path / "pkg" / name).read_bytes())
        loaded = load_package(str(copy))
        assert loaded.package_id == written["package_id"]
        for ours, theirs in zip(loaded.model.apply(X), model.apply(X), strict=True):
            np.testing.assert_array_equal(ours, theirs)


def test_a_changed_or_foreign_package_is_refused_by_name(tmp_path):
    _, written = _write(tmp_path / "pkg")
    pipeline = tmp_path / "pkg" / PIPELINE_FILE
    original = pipeline.read_bytes()
    pipeline.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(PackageRefused, match=f"{PIPELINE_FILE} was changed after export"):
        load_package(str(tmp_path / "pkg"))
    pipeline.write_bytes(original)
    described = tmp_path / "pkg" / DESCRIPTION_FILE
    edited = {**json.loads(described.read_text()), "threshold": -5.0}
    described.write_text(json.dumps(edited))
    with pytest.raises(PackageRefused, match=f"{DESCRIPTION_FILE} was changed after export"):
        load_package(str(tmp_path / "pkg"))
    # A package whose digests were rewritten around a foreign type: refused before anything is built.
    foreign = skops.io.dumps({"pipeline": _Foreign(), "calibration": 0.5})
    forged = {**written, "files": {**written["files"], PIPELINE_FILE: sha256_hex(foreign)}}
    pipeline.write_bytes(foreign)
    described.write_text(json.dumps({**forged, "package_id": package_id(forged)}))
    with pytest.raises(PackageRefused, match="holds types a mammo-ray package does not.*_Foreign"):
        load_package(str(tmp_path / "pkg"))
    with pytest.raises(PackageRefused, match="not a mammo-ray model package"):
        load_package(str(tmp_path / "nothing-here"))


class _Foreign:
    """A type no package holds."""


def test_scoring_weights_or_preprocessing_other_than_the_packages_are_refused_by_name(tmp_path):
    _write(tmp_path / "pkg")
    package = load_package(str(tmp_path / "pkg"))

    def config(**extractor):
        return parse_config({"output": str(tmp_path / "out"),
                             "embed": {"extractors": [{"name": "imagenet_resnet18", **extractor}]}})

    assert scoring_extractor(package, config(input_size=64), None).input_size == 64
    with pytest.raises(PackageRefused, match=r"weights differ: .* has weights random-init:0, .* random-init:1"):
        scoring_extractor(package, config(input_size=64, weights="random-init:1"), None)
    with pytest.raises(PackageRefused, match=r"preprocessing differs from the package's: input_size 96 \(package: 64"):
        scoring_extractor(package, config(input_size=96), None)
    decode = parse_config({"output": str(tmp_path / "out"), "ingest": {"apply_voi_lut": False},
                           "embed": {"extractors": [{"name": "imagenet_resnet18", "input_size": 64}]}})
    with pytest.raises(PackageRefused, match="preprocessing differs from the package's: the ingest settings"):
        scoring_extractor(package, decode, None)
    # A config naming no such extractor scores with the package's own settings.
    other = parse_config({"output": str(tmp_path / "out"), "embed": {"extractors": [{"name": "nyu_lcc"}]}})
    assert scoring_extractor(package, other, None).input_size == 64


def test_a_package_fitted_on_a_weights_file_records_its_sha256_never_its_path(tmp_path):
    weights = tmp_path / "secret-hospital-folder" / "w.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"not really weights")
    spec = ExtractorConfig(name="imagenet_resnet18", weights=str(weights))
    identity = extractor_identity(spec, embedding_key(spec).__class__("m", "sha-of-w", "p", False))
    assert identity["weights"] is None and "secret-hospital-folder" not in json.dumps(identity)


def test_the_card_states_use_data_pretraining_performance_control_subgroups_and_limits():
    groups = [{"subgroup": "view", "value": "CC", "n_images": 40, "n_patients": 40, "n_positive": 10, "auc": 0.7,
               "ci_low": 0.6, "ci_high": 0.8, "small": False},
              {"subgroup": "site", "value": "x", "n_images": 2, "n_patients": 1, "n_positive": 1, "auc": 1.0,
               "ci_low": 1.0, "ci_high": 1.0, "small": True}]
    files = card_files(_description(subgroups=groups))
    card, markdown = json.loads(files["card.json"]), files["card.md"].decode()
    assert {"intended_use", "training_data", "extractor", "performance", "negative_control", "subgroups",
            "limitations", "citation"} <= set(card)
    for heading in ("Intended use", "Model", "Training data", "Performance", "Subgroups",
                    "Limitations", "How to cite"):
        assert f"## {heading}" in markdown
    assert "Research only" in markdown and "AUC 0.710 (patient bootstrap 0.600 to 0.800)" in markdown
    assert "permutation p 0.01" in markdown and "Pretrained on: nothing" in markdown
    assert "random-init" in markdown and "BI-RADS proxies" in markdown
    assert "keeps 31 support vectors: standardised embeddings of training images" in markdown
    assert "| site | x | 2 | 1 | 1.000 | too few patients (1) (small) |" in markdown


def test_the_shift_statistic_is_about_one_for_training_like_images_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(200, 50))
    mean, sd = raw.mean(axis=0), raw.std(axis=0)
    reference = ShiftReference.fit((raw - mean) / sd, np.arange(200) // 2, seed=0)  # standardised, as scoring sees it
    assert 0.8 < reference.training_median < reference.training_q95 < 1.5
    alike = (rng.normal(size=(30, 50)) - mean) / sd
    shifted = (rng.normal(size=(30, 50)) + 0.5 - mean) / sd
    assert not reference.summary(alike)["beyond_training_q95"]
    assert reference.summary(shifted)["beyond_training_q95"] and mean_shift(shifted) > 2 * mean_shift(alike)


def test_calibration_kept_for_scoring_maps_as_in_fold_calibration_did():
    rng = np.random.default_rng(3)
    y, scores, new = (rng.random(50) < 0.3).astype(int), rng.normal(size=50), rng.normal(size=9)
    for method in ("platt", "isotonic"):
        np.testing.assert_array_equal(apply_calibration(fit_calibration(method, y, scores), new),
                                      calibrate(method, y, scores, new))
    assert apply_calibration(fit_calibration("platt", np.ones(5), scores[:5]), new).tolist() == [1.0] * 9


def test_the_reports_packages_section_shows_each_package_from_its_own_description(tmp_path):
    _, written = _write(tmp_path / "pkg")
    section = packages_section([written])
    (caption, table), = section.tables
    row = table.iloc[0]
    assert (row["package"], row["model"], row["auc"]) == ("e-compare", "lasso/smote/svm_rbf", 0.71)
    assert row["package id"] == written["package_id"][:12] and row["pretrained on"] == "none"
    assert "No model packages" in packages_section([]).paragraphs[0]


def test_scoring_into_a_studys_own_output_is_refused_before_any_work(tmp_path):
    _write(tmp_path / "pkg")
    storage.write_bytes(tables.ledger_uri(str(tmp_path / "study"), "grid"), b"{}")
    with pytest.raises(ConfigError, match="holds a study: score into an output of its own"):
        score_collection(str(tmp_path / "pkg"), parse_config({"output": str(tmp_path / "study")}))
    assert sorted(p.name for p in (tmp_path / "study").iterdir()) == ["_stages"]


def test_score_view_scores_images_breasts_and_exams_and_makes_other_views_errors_rows(tmp_path):
    model, _ = _write(tmp_path / "pkg")
    package = load_package(str(tmp_path / "pkg"))
    X = _data(n=8, seed=7).X
    view = pd.DataFrame({"image_id": [f"i{k}" for k in range(8)], "uri": [f"u{k}" for k in range(8)],
                         "patient_id": ["p1"] * 4 + ["p2"] * 4, "exam_id": [None] * 8,
                         "laterality": ["L", "R", "L", "R", "L", "R", None, "R"],
                         "view": ["CC", "CC", "MLO", "MLO", "CC", "CC", "MLO", "other"],
                         "embedding": list(X)})
    table, errors, shift = score_view(package, view)
    frame = table.to_pandas()
    images = frame[frame["level"] == "image"].set_index("unit")
    assert list(images.index) == [f"i{k}" for k in range(7)]
    np.testing.assert_array_equal(images["probability"], model.apply(X[:7])[1])
    breasts = frame[frame["level"] == "breast"].set_index("unit")
    assert sorted(breasts.index) == ["p1/p1/L", "p1/p1/R", "p2/p2/L", "p2/p2/R"]
    assert breasts.loc["p1/p1/L", "probability"] == pytest.approx(images.loc[["i0", "i2"], "probability"].mean())
    exams = frame[frame["level"] == "exam"].set_index("unit")
    assert exams.loc["p1/p1", "score"] == breasts.loc[["p1/p1/L", "p1/p1/R"], "score"].max()
    (error,) = errors.to_dict("records")
    assert (error["image_id"], error["error_type"]) == ("i7", "UnscorableImage") and "view 'other'" in error["message"]
    assert shift["images"] == 7
    table, _, _ = score_view(package, view, ScoreConfig(breast="max", exam="mean"))
    frame = table.to_pandas()
    breasts = frame[frame["level"] == "breast"].set_index("unit")
    assert breasts.loc["p1/p1/L", "probability"] == images.loc[["i0", "i2"], "probability"].max()
    exam = frame[frame["level"] == "exam"].set_index("unit").loc["p1/p1", "score"]
    assert exam == pytest.approx(breasts.loc[["p1/p1/L", "p1/p1/R"], "score"].mean())
