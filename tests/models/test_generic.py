"""Extractors by architecture: strict loading that names what does not fit, checkpoint keys and prefixes, and the
config's rules for names and input conventions."""

from __future__ import annotations

import io

import pytest
import torch

from mammo_ray.config import ExtractorConfig
from mammo_ray.errors import ConfigError
from mammo_ray.models.generic import build_generic_extractor, feature_dim, input_convention
from mammo_ray.models.weight_loading import load_state_dict_bytes
from mammo_ray.models.weights import WeightsError

ARCH = "timm:resnet10t"


def _state() -> dict[str, torch.Tensor]:
    import timm

    return timm.create_model("resnet10t", pretrained=False, num_classes=5).state_dict()


def test_a_missing_or_an_extra_key_is_named_and_the_classifier_is_ignored():
    state = _state()
    assert "fc.weight" in state  # the published head: ignored by the extractor
    model = build_generic_extractor(ARCH, state)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, feature_dim(ARCH))
    missing = {k: v for k, v in state.items() if k != "layer1.0.conv1.weight"}
    with pytest.raises(WeightsError, match=r"layer1\.0\.conv1\.weight"):
        build_generic_extractor(ARCH, missing)
    with pytest.raises(WeightsError, match=r"layer9\.extra\.weight"):
        build_generic_extractor(ARCH, {**state, "layer9.extra.weight": torch.zeros(1)})


def test_checkpoint_key_and_key_prefix_find_the_encoder_in_a_checkpoint_dict():
    state = _state()
    buffer = io.BytesIO()
    torch.save({"config": {"model": {"image_encoder": {"name": "resnet10t"}}},
                "model": {**{f"image_encoder.{k}": v for k, v in state.items()}, "text_encoder.w": torch.zeros(2)}},
               buffer)
    loaded = load_state_dict_bytes(buffer.getvalue(), "clip.tar", checkpoint_key="model")
    model = build_generic_extractor(ARCH, loaded, key_prefix="image_encoder.")
    torch.testing.assert_close(model.state_dict()["conv1.0.weight"], state["conv1.0.weight"])
    with pytest.raises(WeightsError, match=r"no checkpoint key 'network\.ema'"):
        load_state_dict_bytes(buffer.getvalue(), "clip.tar", checkpoint_key="network.ema")
    with pytest.raises(WeightsError, match=r"no key starting with key_prefix 'vision\.'"):
        build_generic_extractor(ARCH, loaded, key_prefix="vision.")


def test_input_conventions_default_to_the_architecture_and_one_channel_averages_them():
    assert input_convention("torchvision:resnet34") == input_convention("timm:resnet10t")  # both ImageNet's
    grey = input_convention("timm:resnet10t", 1)
    assert grey.channels == 1 and grey.mean == (pytest.approx(0.449),) and grey.std == (pytest.approx(0.226),)


@pytest.mark.parametrize(("extractor", "message"), [
    ({"name": "my_model"}, "an extractor of your own names its `architecture`"),
    ({"name": "nyu_lcc", "architecture": "timm:resnet10t"}, "give it a name of your own"),
    ({"name": "a..b", "architecture": "timm:resnet10t"}, "give it a name of your own"),
    ({"name": "grey", "architecture": "torchvision:resnet34", "channels": 1}, "torchvision models take 3 channels"),
    ({"name": "nyu_lcc", "mean": [0.5]}, r"\['mean'\] apply to extractors by `architecture` only"),
    ({"name": "x", "architecture": "keras:resnet"}, "architecture"),
])
def test_extractor_names_and_conventions_fail_before_work(extractor, message):
    from mammo_ray.config import parse_config

    with pytest.raises(ConfigError, match=message):
        parse_config({"embed": {"extractors": [extractor]}})
    assert ExtractorConfig(name="mine", architecture="timm:resnet10t", channels=1).channels == 1


def test_an_architecture_its_library_lacks_fails_before_work_naming_its_key():
    from mammo_ray import preflight
    from mammo_ray.config import parse_config

    config = parse_config({"embed": {"extractors": [
        {"name": "imagenet_resnet18"}, {"name": "typo", "architecture": "timm:resnet10tt"},
        {"name": "fine", "architecture": "torchvision:resnet18"}, {"name": "typo2", "architecture": "torchvision:x"}]}})
    problems = preflight.architectures(config)
    assert [key for key, _, _ in problems] == ["embed.extractors.1.architecture", "embed.extractors.3.architecture"]
    with pytest.raises(ConfigError, match=r"timm:resnet10tt"):
        preflight.raise_problems(problems[:1])
    assert preflight.architectures(parse_config({})) == []
