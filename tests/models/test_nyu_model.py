"""The NYU ResNet-22 image-wise model: architecture facts, batching, published checkpoints."""

from __future__ import annotations

import hashlib
import io
import time
import warnings

import pytest
import torch

from mammo_ray import storage
from mammo_ray.models.nyu import (
    CC_WINDOW,
    MLO_WINDOW,
    VIEWS,
    NYUImageModel,
    NYUTrunk,
    PreActBlock,
    build_nyu_model,
    count_parameters,
    load_nyu_checkpoint,
    normalise_view,
    pool_features,
    published_state_dict,
    view_key,
)
from mammo_ray.models.weights import WeightsError, WeightsSpec
from mammo_ray.models.weights_resolver import check_weights_available, resolve_weights

TRUNK_PARAMETERS = 2_799_536


def _randomised_model(seed: int) -> NYUImageModel:
    """A seeded model whose BatchNorm statistics are not the defaults, in eval mode."""
    model = build_nyu_model(seed=seed)
    generator = torch.Generator().manual_seed(seed + 1000)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return model.eval()


def _inputs(batch: int, seed: int = 0, size: int = 96) -> torch.Tensor:
    return torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))


def _outputs(model: NYUImageModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        result = {view: model(x, view) for view in VIEWS}
        result["cc"] = model.features(x, "cc", "4x4")
        result["mlo"] = model.features(x, "mlo", "global")
    return result


def _assert_same_outputs(a: NYUImageModel, b: NYUImageModel, x: torch.Tensor) -> None:
    out_a, out_b = _outputs(a, x), _outputs(b, x)
    for key in out_a:
        torch.testing.assert_close(out_a[key], out_b[key], rtol=0, atol=0, msg=key)


def _save(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# --- architecture ---------------------------------------------------------------------------------


def test_trunk_parameter_count_is_about_2_8_million() -> None:
    trunk = NYUTrunk()
    assert count_parameters(trunk) == TRUNK_PARAMETERS
    assert 2_700_000 <= TRUNK_PARAMETERS <= 2_900_000
    heads = 4 * (256 * 256 + 256) + 4 * (256 * 4 + 4)
    assert count_parameters(NYUImageModel()) == 2 * TRUNK_PARAMETERS + heads


def test_trunk_layers_follow_the_published_architecture() -> None:
    trunk = NYUTrunk()
    conv = trunk.first_conv
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.bias) == (
        1, 16, (7, 7), (2, 2), (0, 0), None)
    assert (trunk.first_pool.kernel_size, trunk.first_pool.stride) == (3, 2)
    assert len(trunk.layer_list) == 5
    for stage, (channels, stride) in enumerate(zip((16, 32, 64, 128, 256), (1, 2, 2, 2, 2), strict=True)):
        first, second = trunk.layer_list[stage]
        assert first.conv1.out_channels == channels and first.conv1.stride == (stride, stride)
        assert first.conv1.padding == (1, 1) and first.conv1.bias is None
        (shortcut,) = first.downsample  # a 1x1 conv, no BN, in every stage (stage 1 too)
        assert shortcut.kernel_size == (1, 1) and shortcut.bias is None and shortcut.out_channels == channels
        assert second.downsample is None
    assert trunk.final_bn.num_features == 256


def test_state_dict_keys_are_the_published_ones() -> None:
    keys = set(NYUImageModel().state_dict())
    for trunk in ("cc", "mlo"):
        prefix = f"four_view_resnet.{trunk}."
        assert prefix + "first_conv.weight" in keys
        assert prefix + "layer_list.0.0.downsample.0.weight" in keys
        assert prefix + "layer_list.4.1.conv2.weight" in keys
        assert prefix + "layer_list.2.1.bn1.running_var" in keys
        assert prefix + "final_bn.weight" in keys
        assert prefix + "layer_list.0.1.downsample.0.weight" not in keys
    for view in VIEWS:
        assert {f"fc1_{view}.weight", f"output_layer_{view}.fc_layer.bias"} <= keys
    assert not any(key.startswith(("cc.", "mlo.")) for key in keys)


def test_native_window_feature_maps() -> None:
    trunk = NYUTrunk().eval()
    timings = {}
    with torch.inference_mode():
        cases = (("CC", CC_WINDOW, (1, 256, 42, 31)), ("MLO", MLO_WINDOW, (1, 256, 47, 28)))
        for name, window, expected in cases:
            start = time.perf_counter()
            features = trunk(torch.randn(1, 1, *window))
            timings[name] = time.perf_counter() - start
            assert tuple(features.shape) == expected
            assert bool((features >= 0).all())  # the final BN + ReLU
    print(f"native forward times (s): {timings}")


def test_256_input_gives_a_4x4_map_and_4096_features() -> None:
    model = build_nyu_model(seed=0)
    x = _inputs(2, size=256)
    with torch.inference_mode():
        feature_map = model.cc(x)
        assert tuple(feature_map.shape) == (2, 256, 4, 4)
        paper = model.features(x, "cc", "4x4")
        assert tuple(paper.shape) == (2, 4096)
        torch.testing.assert_close(paper, feature_map.flatten(1))  # 4x4 map: pooling is the identity
        pooled = model.features(x, "mlo", "global")
        assert tuple(pooled.shape) == (2, 256)
        torch.testing.assert_close(pooled, model.mlo(x).mean(dim=(2, 3)))
        for pool in ("global", "4x4"):
            torch.testing.assert_close(model.extract(x, "lcc", pool), model.features(x, "cc", pool))
            torch.testing.assert_close(
                model.extract(x, "avg", pool),
                (model.features(x, "cc", pool) + model.features(x, "mlo", pool)) / 2,
            )
    with pytest.raises(ValueError, match="pool"):
        pool_features(feature_map, "8x8")
    with pytest.raises(ValueError, match="extractor"):
        model.extract(x, "rmlo")


def test_predict_proba_processes_every_sample_of_a_batch() -> None:
    model = _randomised_model(1)
    x = _inputs(5, seed=3)
    with torch.inference_mode():
        for view in VIEWS:
            log_probabilities = model(x, view)
            assert tuple(log_probabilities.shape) == (5, 2, 2)
            torch.testing.assert_close(log_probabilities.exp().sum(-1), torch.ones(5, 2))
            p_benign, p_malignant = model.predict_proba(x, view)
            assert tuple(p_benign.shape) == (5,) and tuple(p_malignant.shape) == (5,)
            torch.testing.assert_close(p_benign, log_probabilities[:, 0, 1].exp())
            torch.testing.assert_close(p_malignant, log_probabilities[:, 1, 1].exp())
            for i in range(5):
                alone_benign, alone_malignant = model.predict_proba(x[i : i + 1], view)
                torch.testing.assert_close(p_benign[i : i + 1], alone_benign, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(p_malignant[i : i + 1], alone_malignant, rtol=1e-5, atol=1e-6)
        # views sharing a trunk differ only by their heads; different inputs give different outputs
        assert not torch.equal(model(x, "lcc"), model(x, "rcc"))
        assert not torch.allclose(model(x[:1], "lcc"), model(x[1:2], "lcc"))


def test_view_names() -> None:
    assert normalise_view("L-CC") == "lcc" and normalise_view("r_mlo") == "rmlo"
    assert view_key("R", "CC") == "rcc" and view_key("L", "MLO") == "lmlo"
    with pytest.raises(ValueError, match="view"):
        normalise_view("L-FB")


def test_identity_shortcut_is_the_input_and_projection_takes_the_preactivated_input() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 16, 9, 9)  # negative values: a ReLU'd shortcut would differ
    identity = PreActBlock(16, 16, 1, projection=False).eval()
    projection = PreActBlock(16, 32, 2, projection=True).eval()
    for block in (identity, projection):
        torch.nn.init.zeros_(block.conv2.weight)  # residual branch contributes nothing
    with torch.no_grad():
        torch.testing.assert_close(identity(x), x)
        expected = projection.downsample(torch.relu(projection.bn1(x)))
        torch.testing.assert_close(projection(x), expected)
        assert tuple(expected.shape) == (2, 32, 5, 5)


def test_input_noise_is_applied_in_training_mode_only() -> None:
    model = _randomised_model(2)
    quiet = build_nyu_model(seed=0, input_noise_std=0.0)
    quiet.load_state_dict(model.state_dict())
    x = _inputs(2, seed=5, size=64)
    with torch.no_grad():
        torch.testing.assert_close(model.cc(x), model.cc(x), rtol=0, atol=0)
        torch.testing.assert_close(model.cc(x), quiet.cc(x), rtol=0, atol=0)  # noise never in eval
        model.train()
        quiet.train()
        assert not torch.equal(model.cc(x), model.cc(x))
        torch.testing.assert_close(quiet.cc(x), quiet.cc(x), rtol=0, atol=0)
    assert model.cc.input_noise_std == 0.01


# --- published checkpoints ------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["shared", "per_view"])
def test_published_checkpoint_round_trip_from_a_local_file(tmp_path, style: str) -> None:
    original = _randomised_model(7)
    path = tmp_path / "ImageOnly__ModeImage_weights.p"
    data = _save({"model": published_state_dict(original, style)})
    path.write_bytes(data)
    resolved = resolve_weights(str(path))
    assert resolved.weights_id == hashlib.sha256(data).hexdigest()
    prefixes = {key.split(".")[1] for key in resolved.state_dict if key.startswith("four_view_resnet.")}
    assert prefixes == ({"cc", "mlo"} if style == "shared" else {"l_cc", "r_cc", "l_mlo", "r_mlo"})

    fresh = build_nyu_model(seed=99)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # identical per-view copies: no warning
        report = load_nyu_checkpoint(fresh, torch.load(io.BytesIO(data), weights_only=True), source=str(path))
    assert report.trunk_sources == ({"cc": "cc", "mlo": "mlo"} if style == "shared"
                                    else {"cc": "l_cc", "mlo": "l_mlo"})
    _assert_same_outputs(original, fresh.eval(), _inputs(2, seed=11))
    _assert_same_outputs(original, build_nyu_model(resolved.state_dict), _inputs(1, seed=12))


def test_published_checkpoint_from_s3_with_sha256(s3_bucket: str) -> None:
    original = _randomised_model(8)
    data = _save({"model": published_state_dict(original, "shared")})
    digest = hashlib.sha256(data).hexdigest()
    uri = f"{s3_bucket}/weights/ImageOnly__ModeImage_weights.p"
    storage.write_bytes(uri, data)

    spec = WeightsSpec(uri, sha256=digest.upper())
    check_weights_available(spec)
    resolved = resolve_weights(spec)
    assert (resolved.weights_id, resolved.location, resolved.source) == (digest, uri, uri)
    _assert_same_outputs(original, build_nyu_model(resolved.state_dict, source=uri), _inputs(2, seed=13))

    wrong = "0" * 64
    for call in (resolve_weights, check_weights_available):
        with pytest.raises(WeightsError) as caught:
            call(WeightsSpec(uri, sha256=wrong))
        message = str(caught.value)
        assert uri in message and digest in message and wrong in message and "sha256" in message


def test_strict_loading_lists_missing_and_unexpected_keys() -> None:
    state = published_state_dict(_randomised_model(3))
    del state["four_view_resnet.mlo.layer_list.3.1.conv2.weight"]
    state["fc1_extra.weight"] = torch.zeros(2, 2)
    state["fc1_lcc.weight"] = torch.zeros(128, 256)
    with pytest.raises(WeightsError) as caught:
        load_nyu_checkpoint(NYUImageModel(), {"model": state}, source="broken.p")
    error = caught.value
    assert error.missing == ["four_view_resnet.mlo.layer_list.3.1.conv2.weight"]
    assert error.unexpected == ["fc1_extra.weight"]
    assert len(error.mismatched) == 1 and error.mismatched[0].startswith("fc1_lcc.weight")
    message = str(error)
    for text in ("broken.p", "missing keys (1)", "unexpected keys (1)", "layer_list.3.1.conv2.weight",
                 "fc1_extra.weight", "(128, 256)"):
        assert text in message

    with pytest.raises(WeightsError, match="not a state dict"):
        load_nyu_checkpoint(NYUImageModel(), {"epoch": 3})


def test_wider_output_layers_are_cut_to_their_first_four_rows() -> None:
    original = _randomised_model(4)
    state = published_state_dict(original, "shared")
    for view in VIEWS:
        weight = state[f"output_layer_{view}.fc_layer.weight"]
        bias = state[f"output_layer_{view}.fc_layer.bias"]
        state[f"output_layer_{view}.fc_layer.weight"] = torch.cat([weight, torch.randn(2, 256)])
        state[f"output_layer_{view}.fc_layer.bias"] = torch.cat([bias, torch.randn(2)])
    fresh = NYUImageModel()
    report = load_nyu_checkpoint(fresh, {"model": state})
    assert len(report.sliced) == 8
    _assert_same_outputs(original, fresh.eval(), _inputs(1, seed=14))

    state["output_layer_rcc.fc_layer.weight"] = torch.zeros(3, 256)
    with pytest.raises(WeightsError, match="output_layer_rcc.fc_layer.weight"):
        load_nyu_checkpoint(NYUImageModel(), state)


def test_differing_per_view_copies_keep_the_left_one() -> None:
    left = _randomised_model(5)
    state = published_state_dict(left, "per_view")
    key = "four_view_resnet.r_cc.first_conv.weight"
    state[key] = torch.zeros_like(state[key])
    fresh = NYUImageModel()
    with pytest.warns(UserWarning, match="left-view"):
        report = load_nyu_checkpoint(fresh, state, source="mixed.p")
    assert report.differing_copies == ["four_view_resnet.r_cc.first_conv.weight: differs from the l_cc copy"]
    _assert_same_outputs(left, fresh.eval(), _inputs(1, seed=15))
    with pytest.raises(WeightsError, match="r_cc.first_conv.weight"):
        load_nyu_checkpoint(NYUImageModel(), state, view_copies="require_identical")


def test_trunks_only_and_old_files_without_num_batches_tracked() -> None:
    original = _randomised_model(6)
    state = {k: v for k, v in published_state_dict(original).items()
             if k.startswith("four_view_resnet.") and not k.endswith("num_batches_tracked")}
    state["fc1_cc.weight"] = torch.zeros(256, 512)  # a view-wise model's head: skipped
    with pytest.raises(WeightsError) as caught:
        load_nyu_checkpoint(NYUImageModel(), state)
    assert "fc1_cc.weight" in caught.value.unexpected and "fc1_lcc.weight" in caught.value.missing
    fresh = NYUImageModel()
    report = load_nyu_checkpoint(fresh, state, trunks_only=True)
    assert report.ignored == ["fc1_cc.weight"] and report.filled
    x = _inputs(1, seed=16)
    with torch.inference_mode():
        fresh.eval()
        for trunk in ("cc", "mlo"):
            torch.testing.assert_close(fresh.features(x, trunk, "4x4"), original.features(x, trunk, "4x4"),
                                       rtol=0, atol=0)


@pytest.mark.parametrize("style", ["shared", "per_view"])
def test_the_image_heatmaps_model_loads_its_published_layout_with_a_three_channel_first_conv(style: str) -> None:
    published = build_nyu_model(seed=5, in_channels=3)
    state = published_state_dict(published, style)
    assert tuple(state[f"four_view_resnet.{'cc' if style == 'shared' else 'l_cc'}.first_conv.weight"].shape) == (
        16, 3, 7, 7)
    buffer = io.BytesIO()
    torch.save({"model": state}, buffer)  # ImageHeatmaps__ModeImage_weights.p: the image-only file's keys
    loaded = build_nyu_model(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True), in_channels=3)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(loaded.extract(x, "avg"), published.extract(x, "avg"))
    with pytest.raises(ValueError, match=r"expects \(B, 3, H, W\)"):
        loaded.extract(torch.zeros(1, 1, 256, 256))


def test_an_image_only_file_in_the_heatmaps_model_is_refused_naming_the_first_conv() -> None:
    image_only = published_state_dict(build_nyu_model(seed=1))
    with pytest.raises(WeightsError, match=r"first_conv\.weight: checkpoint \(16, 1, 7, 7\) vs model \(16, 3, 7, 7\)"
                       r"(?s:.*)ImageHeatmaps__ModeImage_weights\.p"):
        build_nyu_model({"model": image_only}, in_channels=3, source="ImageOnly__ModeImage_weights.p")


def test_the_image_heatmaps_extractors_load_the_image_heatmaps_file_by_their_name(tmp_path) -> None:
    from mammo_ray.config import ExtractorConfig
    from mammo_ray.models.extractors import LoadedExtractor

    published = build_nyu_model(seed=6, in_channels=3)
    path = tmp_path / "ImageHeatmaps__ModeImage_weights.p"
    path.write_bytes(_save({"model": published_state_dict(published)}))
    x = torch.randn(2, 3, 256, 256)
    for name, member in (("nyu_lcc_heatmaps", "lcc"), ("nyu_avg_heatmaps", "avg")):
        extractor = LoadedExtractor(ExtractorConfig(name=name, weights=str(path), pool="4x4"))
        with torch.no_grad():
            torch.testing.assert_close(extractor(x), published.extract(x, member, "4x4"), rtol=0, atol=0)
    # The image-only extractors' file in an image+heatmaps extractor: refused, naming the file it expects.
    image_only = tmp_path / "ImageOnly__ModeImage_weights.p"
    image_only.write_bytes(_save({"model": published_state_dict(build_nyu_model(seed=1))}))
    with pytest.raises(WeightsError, match=r"ImageHeatmaps__ModeImage_weights\.p"):
        LoadedExtractor(ExtractorConfig(name="nyu_lcc_heatmaps", weights=str(image_only)))
