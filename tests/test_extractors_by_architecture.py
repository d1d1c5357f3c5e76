"""Extractors by architecture: a timm model, a torchvision model outside the built-in list and Mammo-CLIP's B2 image
encoder (its preset, from a checkpoint with the published structure) embed through the image pass from weight
files the test writes, each with its stated input convention (channels, mean, std, a non-square size)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mammo_ray.config import EmbedConfig, ExtractorConfig, IngestConfig
from mammo_ray.datasets.synthetic import SyntheticSource, generate_cohort
from mammo_ray.image_stream import read_image
from mammo_ray.models import catalogue
from mammo_ray.models.generic import build_generic_extractor
from mammo_ray.models.weights_resolver import resolve_weights
from mammo_ray.stages.embed import EmbedTask, read_embeddings
from mammo_ray.stages.inference import run_pass

pytestmark = pytest.mark.usefixtures("ray_session")


def _lively(state: dict) -> dict:
    """Weights drawn at a scale that carries the input through every layer (a fresh init's features barely depend
    on the input, so a wrong normalisation would go unseen)."""
    generator = torch.Generator().manual_seed(5)
    out = {}
    for key, value in state.items():
        if value.is_floating_point() and value.ndim > 1:
            value = torch.randn(value.shape, generator=generator) * (2.0 / value[0].numel()) ** 0.5
        out[key] = value
    return out


def _timm_file(tmp_path) -> str:
    """A timm model's weights as a published checkpoint dict: the encoder under `network`, keys prefixed."""
    import timm

    torch.manual_seed(1)
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=7, in_chans=1)
    path = tmp_path / "encoder.pth"
    torch.save({"config": {"encoder": "mobilenetv3_small_050"},
                "network": {f"encoder.{key}": value for key, value in _lively(model.state_dict()).items()}}, path)
    return str(path)


def _torchvision_file(tmp_path) -> str:
    """A torchvision model's weights as .safetensors, its 1000-class head included (the extractor drops it)."""
    from safetensors.torch import save_file

    torch.manual_seed(2)
    model = __import__("torchvision").models.get_model("shufflenet_v2_x0_5", weights=None)
    path = tmp_path / "shufflenet.safetensors"
    save_file({key: value.contiguous() for key, value in _lively(model.state_dict()).items()}, str(path))
    return str(path)


def _mammo_clip_file(tmp_path) -> str:
    """Mammo-CLIP's published checkpoint structure: {'config', 'model'}, the encoder under 'image_encoder.' in the
    efficientnet_pytorch layout, without its _fc; the text side beside it."""
    import efficientnet_pytorch

    torch.manual_seed(3)
    encoder = efficientnet_pytorch.EfficientNet.from_name("efficientnet-b2").state_dict()
    path = tmp_path / "b2-model-best-epoch-10.tar"
    torch.save({"config": {"model": {"image_encoder": {"source": "cnn", "name": "tf_efficientnetv2-detect"}}},
                "model": {**{f"image_encoder.{key}": value for key, value in _lively(encoder).items()
                             if not key.startswith("_fc.")}, "text_encoder.embeddings.weight": torch.zeros(4, 2)}},
               path)
    return str(path)


def test_a_timm_and_a_torchvision_model_embed_through_the_pass_with_their_input_conventions(tmp_path, caplog):
    manifest = generate_cohort(str(tmp_path / "cohort"), SyntheticSource(patients=1, seed=4, rows=160))
    timm_spec = ExtractorConfig(name="mammo_encoder", architecture="timm:mobilenetv3_small_050",
                                weights=_timm_file(tmp_path), checkpoint_key="network", key_prefix="encoder.",
                                channels=1, mean=(0.3089,), std=(0.2505,), input_size=96)
    vision_spec = ExtractorConfig(name="shufflenet", architecture="torchvision:shufflenet_v2_x0_5",
                                  weights=_torchvision_file(tmp_path), input_size=64)
    clip_spec = ExtractorConfig(name="mammo_clip_b2", weights=_mammo_clip_file(tmp_path), input_size=96,
                                input_width=64)
    specs = (timm_spec, vision_spec, clip_spec)
    output = str(tmp_path / "out")
    with caplog.at_level(logging.INFO, logger="mammo_ray.inference"):
        done = run_pass(manifest, output, [EmbedTask(spec) for spec in specs], EmbedConfig(batch_size=4))
    # A person sees the pass in images: its last progress line says all of them are done.
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("image pass (embed:")]
    assert progress and progress[-1].startswith(
        "image pass (embed:mammo_encoder, embed:shufflenet, embed:mammo_clip_b2): 4/4 images (100%)"), progress
    assert [done.runs[f"embed:{spec.name}"].written for spec in specs] == [4, 4, 4]

    first = manifest.sort_values("image_id").iloc[0]
    pixels = read_image(first.to_dict(), IngestConfig()).pixels
    for spec, dim in ((timm_spec, 1024), (vision_spec, 1024), (clip_spec, 1408)):
        assert catalogue.dim(spec) == dim
        rows = read_embeddings(output, manifest, spec)
        assert np.stack(rows["embedding"]).shape == (4, dim)
        # The stored vector is the network's on the input made with the stated convention, and only with it.
        transform = catalogue.transform(spec)
        convention = catalogue.input_convention(spec)
        inputs = transform(pixels, first.view, first.laterality)
        assert inputs.shape[1] == convention.channels == (1 if spec is timm_spec else 3)
        assert inputs.shape[2:] == ((96, 64) if spec is clip_spec else (spec.input_size,) * 2)
        resolved = resolve_weights(catalogue.weights_spec(spec))
        network = build_generic_extractor(spec.architecture, resolved.state_dict, channels=convention.channels,
                                          key_prefix=spec.key_prefix)
        with torch.inference_mode():
            expected = network(torch.from_numpy(inputs)).numpy()[0]
            # Another normalisation than the stated one gives another vector: the test would see it.
            misread = catalogue.transform(spec.model_copy(update={"mean": (0.5,) * convention.channels,
                                                                  "std": (0.5,) * convention.channels}))
            other = network(torch.from_numpy(misread(pixels, first.view, first.laterality))).numpy()[0]
        stored = np.asarray(rows.loc[rows["image_id"] == first.image_id, "embedding"].iloc[0])
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-4 * scale)
        assert np.abs(stored - other).max() > 1e-2 * scale
