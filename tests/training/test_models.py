"""The fine-tuned networks: heads, freezing, weights in published formats, the small CNN."""

from __future__ import annotations

import pytest
import torch

from mammo_ray.models.nyu import NYUImageModel, published_state_dict
from mammo_ray.models.weight_loading import seeded_init
from mammo_ray.models.weights import WeightsError
from mammo_ray.training.models import (
    MODEL_NAMES,
    SmallCNN,
    build_model,
    count_parameters,
    freeze_batchnorm,
    head_names,
    input_family,
    set_trainable,
)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_gives_logits_and_freezes_all_but_its_head(name):
    model = build_model(name, 5, seed=1)
    shape = (2, 1, 64, 46) if input_family(name) == "nyu" else (2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(shape)).shape == (2, 5)
    trainable = set_trainable(model, name, "head")
    heads = head_names(name)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.split(".")[0] in heads for n in names)
    n_trainable = count_parameters(model, trainable_only=True)
    assert sum(p.numel() for p in trainable) == n_trainable < count_parameters(model)
    model.train()
    freeze_batchnorm(model, name, "head")
    assert all(not m.training for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d))
    set_trainable(model, name, "all")
    assert count_parameters(model, trainable_only=True) == count_parameters(model)


def test_same_seed_same_init_and_checkpoint_round_trip():
    a, b = build_model("small_cnn", 3, seed=4), build_model("small_cnn", 3, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    restored = build_model("small_cnn", 3, a.state_dict(), seed=9)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), restored.state_dict().values(), strict=True))
    assert isinstance(a, SmallCNN) and count_parameters(a) < 200_000


def test_imagenet_weights_load_the_body_and_a_new_head():
    import torchvision

    with seeded_init(11):
        source = torchvision.models.resnet18(weights=None)
    model = build_model("resnet18", 4, source.state_dict(), seed=0)
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert model.fc.out_features == 4
    # A fine-tuning checkpoint of this very model (head of 4 classes) loads whole.
    again = build_model("resnet18", 4, model.state_dict(), seed=5)
    assert torch.equal(again.fc.weight, model.fc.weight)


def test_nyu_weights_in_the_published_format_give_trunk_and_fc1():
    with seeded_init(21):
        published = NYUImageModel()
    state = {"model": published_state_dict(published, style="per_view")}["model"]
    model = build_model("nyu", 3, state, seed=0)
    assert torch.equal(model.trunk.first_conv.weight, published.cc.first_conv.weight)
    assert torch.equal(model.fc1.weight, published.fc1_lcc.weight)
    for view, trunk, fc1 in (("l_mlo", published.mlo, published.fc1_lmlo), ("r_mlo", published.mlo, published.fc1_rmlo),
                             ("r_cc", published.cc, published.fc1_rcc)):
        head = build_model("nyu", 3, state, seed=0, nyu_view=view)
        assert torch.equal(head.trunk.first_conv.weight, trunk.first_conv.weight), view
        assert torch.equal(head.fc1.weight, fc1.weight), view
    with pytest.raises(WeightsError):
        build_model("small_cnn", 3, {"conv.weight": torch.zeros(1)})


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg16", 2)
