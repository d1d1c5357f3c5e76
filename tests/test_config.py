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
    ],
)
def test_bad_values_name_their_key_path(raw, key_path):
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, source="study.yaml")
    assert caught.value.key_path == key_path
    assert "study.yaml" in str(caught.value)


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
    assert "embed.extractors.0.weights" == caught.value.key_path
    assert "resnet50-11ad3fa6.pth" in str(caught.value) and "mammo-ray weights fetch" in str(caught.value)
    assert not (tmp_path / "out").exists()
