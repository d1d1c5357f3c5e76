"""torchvision backbones as feature extractors and classifiers (random-init, small inputs)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from mammo_ray.models.backbones import BACKBONE_DIMS, build_classifier, build_feature_extractor
from mammo_ray.models.weight_loading import seeded_init
from mammo_ray.models.weights import WeightsError


def _images(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("name", "dim"), [("resnet50", 2048), ("resnet18", 512), ("squeezenet1_1", 512)])
def test_feature_extractor_dims(name: str, dim: int) -> None:
    module, reported = build_feature_extractor(name, seed=0)
    assert reported == dim == BACKBONE_DIMS[name] == module.dim
    assert isinstance(module, torch.nn.Module) and not module.training
    with torch.inference_mode():
        features = module(_images())
    assert tuple(features.shape) == (2, dim)


@pytest.mark.parametrize("name", ["resnet18", "squeezenet1_1"])
def test_feature_extractor_loads_a_torchvision_state_dict(name: str) -> None:
    with seeded_init(5):
        reference = torchvision.models.get_model(name, weights=None).eval()
    module, _ = build_feature_extractor(name, reference.state_dict(), seed=123)
    x = _images()
    with torch.inference_mode():
        if name == "resnet18":
            reference.fc = torch.nn.Identity()
            expected = reference(x)
        else:
            expected = torch.nn.functional.adaptive_avg_pool2d(reference.features(x), 1).flatten(1)
        torch.testing.assert_close(module(x), expected)


def test_classifier_heads_and_loading() -> None:
    with seeded_init(5):
        imagenet = torchvision.models.get_model("resnet18", weights=None)
    model = build_classifier("resnet18", 3, imagenet.state_dict(), seed=1)
    assert model.fc.out_features == 3
    torch.testing.assert_close(model.conv1.weight, imagenet.conv1.weight)  # body from the state dict
    again = build_classifier("resnet18", 3, imagenet.state_dict(), seed=1)
    torch.testing.assert_close(model.fc.weight, again.fc.weight)  # new head: seeded
    resumed = build_classifier("resnet18", 3, model.state_dict(), seed=2)  # matching head: loaded
    torch.testing.assert_close(resumed.fc.weight, model.fc.weight)

    squeeze = build_classifier("squeezenet1_1", 2, seed=0).eval()
    with torch.inference_mode():
        assert tuple(squeeze(_images()).shape) == (2, 2)


def test_mismatched_state_dict_is_rejected_with_keys() -> None:
    with seeded_init(0):
        state = torchvision.models.get_model("resnet18", weights=None).state_dict()
    del state["layer2.0.conv1.weight"]
    state["layer9.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError) as caught:
        build_feature_extractor("resnet18", state, source="r18.pth")
    assert caught.value.missing == ["layer2.0.conv1.weight"]
    assert caught.value.unexpected == ["layer9.weight"]
    assert "r18.pth" in str(caught.value)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_feature_extractor("vgg16")
