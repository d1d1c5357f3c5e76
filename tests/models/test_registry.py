"""The weights registry: every entry complete, `mammo-ray weights list` shows them all, and an extractor pretrained
on a collection the study tests on is refused before any work unless acknowledged (then the report says so)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest

from mammo_ray import preflight
from mammo_ray.config import parse_config
from mammo_ray.errors import ConfigError
from mammo_ray.models import registry
from mammo_ray.vocabulary import PRETRAINING_GROUPS


@pytest.mark.parametrize("entry", registry.REGISTRY, ids=lambda entry: entry.name)
def test_every_registry_entry_is_complete(entry):
    for field in fields(entry):
        if field.name not in ("sha256", "pretraining"):
            assert str(getattr(entry, field.name)).strip(), f"{entry.name}: {field.name} is empty"
    assert entry.pretraining.group in PRETRAINING_GROUPS and entry.pretraining.modality and entry.pretraining.size
    assert entry.layout.startswith(("confirmed:", "unconfirmed:"))
    assert entry.sha256 is None or len(entry.sha256) == 64


def test_weights_list_prints_every_entry_with_its_pretraining_and_licence():
    listed = subprocess.run([sys.executable, "-m", "mammo_ray.cli", "weights", "list"], capture_output=True, text=True,
                            check=True).stdout
    for entry in registry.REGISTRY:
        assert f"name           {entry.name}\n" in listed and entry.licence in listed
    assert "CC BY-NC-SA 4.0" in listed and "group          natural images" in listed


def _config(**extractor):
    return parse_config({"data": {"adapter": {"name": "vindr", "args": {}}},
                         "embed": {"extractors": [{"name": "imagenet_resnet18"}, extractor]}})


def test_an_extractor_pretrained_on_the_test_collection_is_refused_naming_both_unless_acknowledged():
    clip = {"name": "mammo_clip_b2", "weights": "s3://models/mammo-clip-b2.tar"}  # the preset names the entry
    problems = preflight.contamination(_config(**clip))
    with pytest.raises(ConfigError, match=r"mammo_clip_b2 was pretrained on vindr .* and the study tests on it "
                                          r"\(data\.adapter\)(?s:.*)pretraining_acknowledged: true") as raised:
        preflight.raise_problems(problems)
    assert raised.value.key_path == "embed.extractors.1"
    assert preflight.contamination(_config(**clip, pretraining_acknowledged=True)) == []
    # A file the registry does not know says what it was pretrained on in the config.
    declared = {"name": "mine", "architecture": "timm:resnet10t", "weights": "w.pth", "pretrained_on": ["VinDr"],
                "pretraining_group": "mammography"}
    assert [key for key, _, _ in preflight.contamination(_config(**declared))] == ["embed.extractors.1"]
    from mammo_ray.stages import embed

    assert embed.STAGE.check is preflight.extractors  # the study runs this before any work


def test_pretraining_of_reads_the_registry_then_the_config():
    from mammo_ray.config import ExtractorConfig

    pretraining, licence = registry.pretraining_of(ExtractorConfig(name="nyu_lcc",
                                                                    weights="weights/ImageOnly__ModeImage_weights.p"))
    assert pretraining.group == "mammography" and "AGPL" in licence
    assert registry.pretraining_of(ExtractorConfig(name="nyu_lcc"))[0].group == "none"  # random-init
    unknown = ExtractorConfig(name="x", architecture="timm:resnet10t", weights="my.pth")
    assert registry.pretraining_of(unknown)[0].group == "unknown"
    assert registry.pretraining_of(unknown.model_copy(update={"pretraining_group": "other medical"}))[0].group == (
        "other medical")


def test_the_pretraining_groups_config_names_three_groups_from_the_registry_and_the_config():
    from mammo_ray.config import load_config
    from mammo_ray.models.registry import pretraining_of

    config = load_config("jobs/configs/pretraining_groups.yaml")
    groups = {spec.name: pretraining_of(spec)[0].group for spec in config.embed.extractors}
    assert groups == {"nyu_lcc": "mammography", "mammo_clip_b5": "mammography",
                      "radimagenet_resnet50": "other medical", "imagenet_resnet50": "natural images"}
    assert pretraining_of(config.embed.extractors[1])[1] == "CC BY-NC-SA 4.0 (non-commercial)"
