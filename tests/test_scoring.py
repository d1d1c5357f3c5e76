"""Model packages end to end: the study exports them, `score_collection` applies them to a collection through the
study's own pass (tests/test_packages.py covers packages without Ray: refusals, cards, the shift statistic)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mammo_ray import storage, tables
from mammo_ray.config import parse_config
from mammo_ray.datasets.manifest import write_manifest
from mammo_ray.datasets.synthetic import SyntheticSource, generate_cohort
from mammo_ray.packages.files import DESCRIPTION_FILE, PackageRefused, load_package
from mammo_ray.scoring import score_collection
from mammo_ray.study import run_study

pytestmark = pytest.mark.usefixtures("ray_session")
EXTRACTOR = {"name": "imagenet_resnet18", "input_size": 64}
PACKAGE = "imagenet_resnet18-compare"


def _config(output, manifest):
    return parse_config({"name": "scoring", "output": str(output), "data": {"manifest": str(manifest)},
                         "embed": {"extractors": [EXTRACTOR]},
                         "grid": {"cv_folds": 2, "bootstrap": 20, "classifiers": ["logreg"], "permutations": 2,
                                  "smote": {"k_neighbors": 2}, "oof": {"repeats": 2}}})


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """One site's 14 patients (the study trains on 12, 2 held back) and 4 patients of another vendor's system; the
    study, and a first scoring of its own images (every test scores into that output: its vectors are reused)."""
    root = tmp_path_factory.mktemp("scoring")
    site = generate_cohort(str(root / "site"), SyntheticSource(patients=14, rows=96, seed=0))
    vendor = generate_cohort(str(root / "vendor"), SyntheticSource(patients=4, rows=96, seed=9, contrast=0.5,
                                                                   noise=0.04))
    patients = list(dict.fromkeys(site["patient_id"]))
    manifests = {}
    for name, chosen in {"train": patients[:12], "more": patients, "fewer": patients[:10],
                         "held_back": patients[12:]}.items():
        manifests[name] = root / f"{name}.parquet"
        write_manifest(site[site["patient_id"].isin(chosen)], str(manifests[name]))
    manifests["vendor"] = root / "vendor.parquet"
    write_manifest(vendor, str(manifests["vendor"]))
    odd = site[site["patient_id"].isin(patients[:2])].copy()
    odd.loc[odd.index[0], "view"] = "XCCL"  # a view the package was not trained on (normalised to 'other')
    manifests["odd_view"] = root / "odd_view.parquet"
    write_manifest(odd, str(manifests["odd_view"]))
    study = root / "study"
    result = run_study(_config(study, manifests["train"]), ["manifest", "embed", "grid", "subgroups", "export"])
    assert result.counts["models_exported"] == 2
    first = score_collection(str(study / "models" / PACKAGE), _config(root / "scored", manifests["train"]))
    return root, study, manifests, first, pd.read_parquet(first.uri)  # the table as this run wrote it


def _image_scores(table):
    frame = pd.read_parquet(table) if isinstance(table, str) else table
    return frame[frame["level"] == "image"].set_index("unit").sort_index()


def test_scores_reproduce_the_full_fit_follow_the_collection_and_check_the_shift(cohort):
    root, study, manifests, first, first_table = cohort
    package = str(study / "models" / PACKAGE)
    output = root / "scored"
    assert (first.images, first.embedded, first.errors) == (48, 48, 0)
    scored = _image_scores(first_table)
    fitted = pd.read_parquet(tables.model_predictions_uri(str(study)))
    fitted = fitted[fitted["package"] == PACKAGE].set_index("image_id").sort_index()
    # The package scores the training images exactly as the study's full fit did.
    assert list(scored.index) == list(fitted.index)
    np.testing.assert_allclose(scored["probability"], fitted["probability"], rtol=0, atol=1e-9)
    assert (scored["flag"] == fitted["flag"]).all()
    assert (first_table["package_id"] == load_package(package).package_id).all()
    levels = first_table["level"].value_counts()
    assert (levels["breast"], levels["exam"]) == (24, 12)  # 12 patients, one exam, two breasts each
    # A second run on more images embeds only the new ones; a run on fewer drops the removed from the table.
    more = score_collection(package, _config(output, manifests["more"]))
    assert (more.images, more.embedded) == (56, 8)
    np.testing.assert_allclose(_image_scores(more.uri).loc[scored.index, "probability"], scored["probability"],
                               atol=1e-9)
    fewer = score_collection(package, _config(output, manifests["fewer"]))
    assert fewer.images == 40 and fewer.embedded == 0
    assert len(_image_scores(fewer.uri)) == 40 and set(_image_scores(fewer.uri).index) < set(scored.index)
    # The shift check: another vendor's images lie beyond the training range, held-back ones of the site within.
    held_back = score_collection(package, _config(output, manifests["held_back"]))
    vendor = score_collection(package, _config(output, manifests["vendor"]))
    assert vendor.shift["mean_shift"] > held_back.shift["mean_shift"]
    assert vendor.shift["beyond_training_q95"] and not held_back.shift["beyond_training_q95"]
    assert tables.read_provenance(vendor.uri)["shift"] == vendor.shift


def test_a_moved_package_scores_identically_and_an_unscorable_view_is_an_errors_row(cohort, s3_bucket):
    root, study, manifests, _, first_table = cohort
    package = study / "models" / PACKAGE
    described = load_package(str(package)).description
    copies = [str(root / "moved" / PACKAGE), f"{s3_bucket}/packages/{PACKAGE}"]
    for copy in copies:
        for name in [DESCRIPTION_FILE, *described["files"]]:
            storage.write_bytes(storage.join(copy, name), (package / name).read_bytes())
    for copy in copies:
        moved = score_collection(copy, _config(root / "scored", manifests["train"]))
        assert moved.embedded == 0
        pd.testing.assert_frame_equal(pd.read_parquet(moved.uri), first_table)
    # No path of the study reaches the package: the copies hold only what the exporting study wrote.
    text = b"".join((package / name).read_bytes() for name in [DESCRIPTION_FILE, "card.md", "card.json"])
    assert str(root).encode() not in text and b"/tmp" not in text
    odd = score_collection(str(package), _config(root / "scored", manifests["odd_view"]))
    assert (odd.images, odd.errors, odd.embedded) == (7, 1, 0)
    (error,) = pd.read_parquet(tables.SCORE_ERRORS.uri(str(root / "scored"), PACKAGE)).to_dict("records")
    assert error["error_type"] == "UnscorableImage" and "view 'other'" in error["message"]
    assert error["image_id"] not in set(_image_scores(odd.uri).index)


def test_a_fine_tuned_network_package_scores_new_images_as_the_network_predicted_its_validation_images(cohort):
    root, _, manifests, _, _ = cohort
    study = root / "finetuned"
    config = parse_config({
        "name": "nets", "output": str(study), "data": {"manifest": str(manifests["train"])},
        "finetune": {"models": [{"name": "small_cnn"}], "tasks": ["binary"], "batch_size": 4,
                     "stages": [{"name": "all", "size": 32, "epochs": 1}], "cpus_per_worker": 0.5,
                     "data_cpus": 0.5, "augment": {"enabled": False}}})
    assert run_study(config, ["manifest", "finetune", "export_networks"]).counts["networks_exported"] == 1
    (folder,) = (study / "networks").iterdir()
    described = load_package(str(folder)).description
    assert described["kind"] == "network" and "safetensors" in " ".join(described["files"])
    card = (folder / "card.md").read_text()
    assert "Fine-tuned network small_cnn" in card and "No negative control ran for fine-tuning" in card
    scoring = parse_config({"name": "nets", "output": str(root / "scored-network"),
                            "data": {"manifest": str(manifests["train"])}})
    scored = score_collection(str(folder), scoring)
    assert (scored.images, scored.embedded) == (48, 48)
    validation = pd.read_parquet(tables.finetune_predictions_uri(str(study)))
    expected = validation.set_index("image_id")["probabilities"].map(lambda p: float(p[1])).sort_index()
    probability = _image_scores(scored.uri).loc[expected.index, "probability"]
    np.testing.assert_allclose(probability, expected, atol=1e-5)  # the network's own softmax, as validated
    again = score_collection(str(folder), scoring)
    assert again.embedded == 0 and again.images == 48
    decode = parse_config({**scoring.model_dump(mode="json"), "ingest": {"apply_voi_lut": False}})
    with pytest.raises(PackageRefused, match="preprocessing differs from the package's: the ingest settings"):
        score_collection(str(folder), decode)
