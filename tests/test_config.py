"""The study config: typed, strict, and every error names its key path."""

from __future__ import annotations

import pytest

from mammo_ray.config import StudyConfig, load_config, parse_config
from mammo_ray.errors import ConfigError
from mammo_ray.study import check_stages


def test_defaults_are_the_embedded_demo():
    config = parse_config({})
    assert config.data.synthetic is not None and config.data.synthetic.patients == 24
    assert config.config_hash() == StudyConfig().config_hash()
    assert parse_config({"name": "other"}).config_hash() != config.config_hash()


@pytest.mark.parametrize(
    ("raw", "key_path"),
    [
        ({"ingest": {"batchsize": 4}}, "ingest.batchsize"),  # a typo is not silently ignored
        ({"ingest": {"batch_size": "four"}}, "ingest.batch_size"),
        ({"data": {"synthetic": {"patients": 0}}}, "data.synthetic.patients"),
        ({"data": {"manifest": "m.parquet", "synthetic": {}}}, "data"),
        ({"data": {"adapter": {"name": "ddsm"}}}, "data.adapter.name"),
        ({"ray": {"num_cpus": -1}}, "ray.num_cpus"),
        # typos (unknown keys) at every depth, in lists too
        ({"ouptut": "out"}, "ouptut"),
        ({"data": {"synthtic": {}}}, "data.synthtic"),
        ({"data": {"adapter": {"name": "csv", "arg": {}}}}, "data.adapter.arg"),
        ({"embed": {"extractors": [{"name": "nyu_lcc", "nyu_scael": 0.1}]}}, "embed.extractors.0.nyu_scael"),
        # wrong types
        ({"name": 5}, "name"),
        ({"data": {"manifest": 3}}, "data.manifest"),
        ({"ingest": [1, 2]}, "ingest"),
        ({"storage": {"s3": "http://127.0.0.1:9000"}}, "storage.s3"),
        ({"ingest": {"apply_voi_lut": "maybe"}}, "ingest.apply_voi_lut"),
        ({"ingest": {"max_pixels": 1.5}}, "ingest.max_pixels"),
        ({"embed": {"extractors": "imagenet_resnet50"}}, "embed.extractors"),
        ({"embed": {"extractors": [{"name": "nyu_lcc", "pool": "8x8"}]}}, "embed.extractors.0.pool"),
        ({"grid": {"cv_folds": "ten"}}, "grid.cv_folds"),
        ({"finetune": {"use_gpu": "sometimes"}}, "finetune.use_gpu"),
        ({"ingest": {"batch_size": True}}, "ingest.batch_size"),  # YAML `yes`: not the int 1
        ({"embed": {"num_gpus": False}}, "embed.num_gpus"),
    ],
)
def test_bad_values_name_their_key_path(raw, key_path):
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, source="study.yaml")
    assert caught.value.key_path == key_path
    assert "study.yaml" in str(caught.value)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"combined": [["nyu_avg", "imagenet_resnet18"]]}, "grid.combined .*imagenet_resnet18.* not among"),
        ({"combined": [["nyu_avg"]]}, "two or more different extractors"),
        ({"comparisons": [["nyu_avg", "nyu_x"]]}, r"grid.comparisons \(nyu_avg, nyu_x\): not among"),
        ({"comparisons": [["nyu_avg", "nyu_avg"]]}, "compared with itself"),
        ({"classifiers": ["logreg"], "compare": {"classifier": "svm_rbf"}}, "compare.classifier: 'svm_rbf'"),
    ],
)
def test_grid_combinations_and_comparisons_fail_before_work_naming_what_is_wrong(grid, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"grid": grid}, source="study.yaml")
    # The combined extractor is a valid comparison name, and the defaults need no extractor named.
    parse_config({"grid": {"comparisons": [["nyu_lcc", "nyu_avg+imagenet_resnet50"]]}})


def test_yaml_file_errors(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="missing.yaml.*not found"):
        load_config(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listing)


@pytest.mark.parametrize(
    ("text", "key_path"),
    [
        ("embed:\n  extractors:\n    - name: nyu_lcc\n      nyu_scael: 0.1\n", "embed.extractors.0.nyu_scael"),
        ("ingest:\n  batch_size: 4.5\n", "ingest.batch_size"),
        ("data:\n  manifest: [a.csv, b.csv]\n", "data.manifest"),
    ],
)
def test_yaml_typos_and_wrong_types_name_the_key_and_the_file(tmp_path, text, key_path):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key_path == key_path and str(path) in str(caught.value)


def test_shipped_demo_config_loads(tmp_path):
    from pathlib import Path

    config = load_config(Path(__file__).resolve().parent.parent / "jobs" / "configs" / "demo.yaml")
    assert config.name == "demo"


def test_unknown_stage_fails_before_work():
    with pytest.raises(ConfigError, match="embedd"):
        check_stages(["manifest", "embedd"])
    assert check_stages(["ingest", "manifest"]) == ["manifest", "ingest"]


@pytest.mark.parametrize("name", ["demo", "mini_mias", "inbreast", "cluster_s3"])
def test_every_shipped_config_validates(name):
    from pathlib import Path

    load_config(Path(__file__).resolve().parent.parent / "jobs" / "configs" / f"{name}.yaml")


@pytest.mark.parametrize("name", ["mini_mias", "inbreast"])
def test_pretrained_configs_fail_at_start_naming_the_missing_weights(name, tmp_path, monkeypatch):
    from pathlib import Path

    from mammo_ray.study import run_study

    config = load_config(Path(__file__).resolve().parent.parent / "jobs" / "configs" / f"{name}.yaml")
    monkeypatch.chdir(tmp_path)  # no weights/ folder here
    with pytest.raises(ConfigError) as caught:
        run_study(config.model_copy(update={"output": str(tmp_path / "out")}))
    # The first in the study's order: the heatmaps run before the extractors, which may read them.
    assert caught.value.key_path == ("heatmaps.weights" if config.heatmaps.enabled else "embed.extractors.0.weights")
    assert "resnet50-11ad3fa6.pth" in str(caught.value) and "mammo-ray weights fetch" in str(caught.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["a\\b", "c:", "site%2e%2e", "site\x00", "tab\there", "line\n", "..", "a..b",
                                  ".hidden", "-flag", "a/b", " a", "", "sité"])
def test_a_source_name_is_letters_digits_and_dot_dash_underscore_only(tmp_path, name):
    sources = {name: {"synthetic": {"patients": 2}}, "other": {"synthetic": {"patients": 2, "seed": 1}}}
    with pytest.raises(ConfigError, match="is not a source name") as raised:
        parse_config({"output": str(tmp_path), "data": {"sources": sources}})
    assert repr(name) in str(raised.value)


def test_ordinary_source_names_pass(tmp_path):
    sources = {"site_a": {"synthetic": {"patients": 2}}, "CBIS-DDSM.v2": {"synthetic": {"patients": 2, "seed": 1}}}
    assert list(parse_config({"output": str(tmp_path), "data": {"sources": sources}}).data.sources) == [
        "site_a", "CBIS-DDSM.v2"]


@pytest.mark.parametrize(("section", "named"), [
    ({"embed": {"extractors": [{"name": "nyu_lcc"}, {"name": "nyu_avg_heatmaps"}]}},
     "embed.extractors: nyu_avg_heatmaps"),
    ({"zero_shot": {"heatmaps_weights": "random-init:1"}}, "zero_shot.heatmaps_weights"),
])
def test_the_image_heatmaps_model_without_the_heatmaps_fails_before_work_naming_both(section, named):
    with pytest.raises(ConfigError, match=rf"{named}: the image\+heatmaps model reads the heatmaps; set "
                                          r"heatmaps.enabled: true"):
        parse_config(section, source="study.yaml")
    parse_config({**section, "heatmaps": {"enabled": True}})
