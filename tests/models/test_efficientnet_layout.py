"""EfficientNets in the efficientnet_pytorch key layout (Mammo-CLIP's image encoders): a checkpoint with the published
dict structure loads strictly through the weights path, names what does not fit in the file's own key names, and
gives the features efficientnet_pytorch itself computes, on the nominal size and on others (its padding is fixed at
the nominal size; timm's recomputes it per input and differs)."""

from __future__ import annotations

import io

import efficientnet_pytorch
import pytest
import timm
import torch

from mammo_ray.config import ExtractorConfig
from mammo_ray.errors import ConfigError
from mammo_ray.models import efficientnet_layout
from mammo_ray.models.catalogue import dim, family, transform
from mammo_ray.models.generic import build_generic_extractor
from mammo_ray.models.weight_loading import load_state_dict_bytes
from mammo_ray.models.weights import WeightsError

ARCH = "efficientnet_pytorch:efficientnet-b2"


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    """efficientnet_pytorch's B2 with random weights and batch statistics (default statistics hide BN errors)."""
    torch.manual_seed(0)
    model = efficientnet_pytorch.EfficientNet.from_name("efficientnet-b2")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _mammo_clip_checkpoint(encoder: dict[str, torch.Tensor]) -> bytes:
    """The published structure: {'config': {...}, 'model': {'image_encoder.*', 'text_encoder.*', ...}}, no _fc."""
    buffer = io.BytesIO()
    torch.save({"config": {"model": {"image_encoder": {"source": "cnn", "name": "tf_efficientnetv2-detect",
                                                       "model_type": "cnn"}}},
                "model": {**{f"image_encoder.{key}": value for key, value in encoder.items()},
                          "text_encoder.embeddings.weight": torch.zeros(4, 2),
                          "image_projection.projection.weight": torch.zeros(2, 1408)}}, buffer)
    return buffer.getvalue()


def _features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model._avg_pooling(model.extract_features(x)).flatten(1)


def test_a_mammo_clip_layout_checkpoint_gives_efficientnet_pytorchs_features_on_any_size(reference):
    encoder = {key: value for key, value in reference.state_dict().items() if not key.startswith("_fc.")}
    state = load_state_dict_bytes(_mammo_clip_checkpoint(encoder), "b2-model-best-epoch-10.tar", checkpoint_key="model")
    ours = build_generic_extractor(ARCH, state, key_prefix="image_encoder.")
    plain = timm.create_model("tf_efficientnet_b2", num_classes=0).eval()  # timm's own padding, recomputed per input
    plain.load_state_dict(efficientnet_layout.to_timm_keys(encoder, efficientnet_layout.layout_names(ours)))
    for rows, cols in ((260, 260), (190, 114), (153, 97)):  # the nominal size, a mammogram's aspect, odd sizes
        x = torch.randn(2, 3, rows, cols)
        with torch.no_grad():
            got, timm_padding = ours(x), plain(x)
        expected = _features(reference, x)
        assert got.shape == (2, 1408)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
        if (rows, cols) != (260, 260):
            assert (timm_padding - expected).abs().max() > 1e-5  # what the fixed padding is for


def test_a_missing_or_an_extra_key_is_named_as_the_file_names_it(reference):
    encoder = dict(reference.state_dict())  # with _fc: the classifier is ignored
    missing = {key: value for key, value in encoder.items() if key != "_blocks.3._expand_conv.weight"}
    with pytest.raises(WeightsError, match=r"missing keys \(1\):\s+_blocks\.3\._expand_conv\.weight"):
        build_generic_extractor(ARCH, missing)
    with pytest.raises(WeightsError, match=r"_blocks\.99\._bn0\.weight"):
        build_generic_extractor(ARCH, {**encoder, "_blocks.99._bn0.weight": torch.zeros(1)})
    shrunk = {**encoder, "_conv_head.weight": torch.zeros(8, 352, 1, 1)}
    with pytest.raises(WeightsError, match=r"_conv_head\.weight: state dict \(8, 352, 1, 1\) vs model"):
        build_generic_extractor(ARCH, shrunk)


def test_the_b5_layout_loads_strictly_and_gives_2048_features():
    with torch.device("meta"):  # keys and shapes only
        b5 = efficientnet_pytorch.EfficientNet.from_name("efficientnet-b5").state_dict()
        model = efficientnet_layout.build("efficientnet-b5", 3)
    names = efficientnet_layout.layout_names(model)
    assert set(names.values()) == {key for key in b5 if not key.startswith("_fc.")}
    renamed = efficientnet_layout.to_timm_keys(b5, names)
    assert {key: tuple(value.shape) for key, value in renamed.items()} == {
        key: tuple(value.shape) for key, value in model.state_dict().items()}


def test_the_mammo_clip_presets_state_the_published_convention_and_refuse_another_architecture():
    b5 = ExtractorConfig(name="mammo_clip_b5", weights="s3://models/b5-model-best-epoch-7.tar")
    assert (b5.architecture, b5.checkpoint_key, b5.key_prefix) == (
        "efficientnet_pytorch:efficientnet-b5", "model", "image_encoder.")
    assert family(b5) == "architecture" and dim(b5) == 2048
    assert dim(ExtractorConfig(name="mammo_clip_b2")) == 1408
    prepared = transform(b5)
    assert prepared.shape == (3, 1520, 912) and prepared.mean == (0.3089,) * 3 and prepared.std == (0.2505,) * 3
    smaller = ExtractorConfig(name="mammo_clip_b5", input_size=380, input_width=228)  # the config's own size wins
    assert transform(smaller).shape == (3, 380, 228) and transform(smaller).id != prepared.id
    with pytest.raises((ConfigError, ValueError), match="takes a name of its own"):
        ExtractorConfig(name="mammo_clip_b5", architecture="timm:tf_efficientnet_b5")
    with pytest.raises(ValueError, match=r"efficientnet_pytorch:efficientnet-b9: one of \['efficientnet-b0'"):
        dim(ExtractorConfig(name="mine", architecture="efficientnet_pytorch:efficientnet-b9"))
    with pytest.raises((ConfigError, ValueError), match="input_width"):
        ExtractorConfig(name="imagenet_resnet50", input_width=300)
