"""Weight resolution (random-init, torchvision cache, files, sha256) and fetching over HTTP into S3."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision

from mammo_ray import storage
from mammo_ray.models.backbones import build_feature_extractor
from mammo_ray.models.fetch import fetch_weights
from mammo_ray.models.nyu import build_nyu_model, published_state_dict
from mammo_ray.models.weight_loading import load_state_dict_strict, seeded_init
from mammo_ray.models.weights import WeightsError, WeightsSpec
from mammo_ray.models.weights_catalogue import DEFAULT_FETCH_NAMES, NYU_IMAGE_WISE_URL, known_weights_file
from mammo_ray.models.weights_resolver import check_weights_available, resolve_weights

RESNET18_FILE = "resnet18-f37072fd.pth"


def _save(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.fixture()
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch-home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


# --- specs and random-init ------------------------------------------------------------------------


def test_spec_parsing() -> None:
    assert WeightsSpec.parse("random-init:3").kind == "random-init"
    assert WeightsSpec.parse("random-init:3").seed == 3
    assert WeightsSpec.parse("torchvision:resnet50:DEFAULT").kind == "torchvision"
    assert WeightsSpec.parse("s3://b/w.p").kind == "file"
    spec = WeightsSpec.parse({"source": "/w.p", "sha256": "AB" * 32})
    assert spec == WeightsSpec("/w.p", "ab" * 32)
    with pytest.raises(WeightsError, match="64 hex"):
        WeightsSpec("/w.p", "abc")
    with pytest.raises(WeightsError, match="integer seed"):
        resolve_weights("random-init:x")
    with pytest.raises(WeightsError, match="takes `source`"):
        WeightsSpec.parse({"path": "/w.p"})


def test_random_init_is_deterministic_per_seed() -> None:
    resolved = resolve_weights("random-init:3")
    assert (resolved.state_dict, resolved.weights_id, resolved.seed) == (None, "random-init:3", 3)
    check_weights_available("random-init:3")
    with pytest.raises(WeightsError, match="sha256"):
        resolve_weights(WeightsSpec("random-init:3", "0" * 64))

    before = torch.random.get_rng_state()
    a = build_nyu_model(seed=resolved.seed).state_dict()
    b = build_nyu_model(seed=3).state_dict()
    c = build_nyu_model(seed=4).state_dict()
    assert torch.equal(before, torch.random.get_rng_state())  # the global generator is left alone
    assert all(torch.equal(a[k], b[k]) for k in a)
    key = "four_view_resnet.cc.first_conv.weight"
    assert not torch.equal(a[key], c[key])
    r1, _ = build_feature_extractor("resnet18", seed=3)
    r2, _ = build_feature_extractor("resnet18", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(r1.state_dict().values(), r2.state_dict().values(), strict=True))


# --- torchvision cache ----------------------------------------------------------------------------


def test_uncached_torchvision_weights_fail_naming_the_file_and_the_fetch_command(torch_home: Path) -> None:
    for source, file_name in (("torchvision:resnet50:IMAGENET1K_V2", "resnet50-11ad3fa6.pth"),
                              ("torchvision:resnet50:DEFAULT", "resnet50-11ad3fa6.pth"),
                              ("torchvision:squeezenet1_1:IMAGENET1K_V1", "squeezenet1_1-b8a52dc0.pth")):
        for call in (resolve_weights, check_weights_available):
            with pytest.raises(WeightsError) as caught:
                call(source)
            message = str(caught.value)
            assert file_name in message and "mammo-ray weights fetch" in message
            assert f"https://download.pytorch.org/models/{file_name}" in message
            assert str(torch_home) in message
    with pytest.raises(WeightsError, match="no model"):
        resolve_weights("torchvision:resnet51:DEFAULT")
    with pytest.raises(WeightsError, match="IMAGENET1K_V1"):
        resolve_weights("torchvision:resnet18:IMAGENET1K_V2")
    with pytest.raises(WeightsError, match="expected torchvision"):
        resolve_weights("torchvision:resnet18")


def test_cached_torchvision_weights_resolve_with_their_sha256(torch_home: Path) -> None:
    with seeded_init(11):
        reference = torchvision.models.get_model("resnet18", weights=None).eval()
    data = _save(reference.state_dict())
    digest = hashlib.sha256(data).hexdigest()
    cached = torch_home / "hub" / "checkpoints" / RESNET18_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data)

    check_weights_available("torchvision:resnet18:DEFAULT")
    resolved = resolve_weights(WeightsSpec("torchvision:resnet18:IMAGENET1K_V1", digest))
    assert resolved.weights_id == digest
    assert resolved.location == str(cached) and resolved.source == "torchvision:resnet18:IMAGENET1K_V1"
    module, dim = build_feature_extractor("resnet18", resolved.state_dict)
    x = torch.randn(1, 3, 64, 64)
    reference.fc = torch.nn.Identity()
    with torch.inference_mode():
        torch.testing.assert_close(module(x), reference(x))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        check_weights_available(WeightsSpec("torchvision:resnet18:DEFAULT", "1" * 64))


# --- files ----------------------------------------------------------------------------------------


def test_missing_and_unusable_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "ImageOnly__ModeImage_weights.p")
    for call in (resolve_weights, check_weights_available):
        with pytest.raises(WeightsError) as caught:
            call(missing)
        assert "ImageOnly__ModeImage_weights.p" in str(caught.value)
        assert "mammo-ray weights fetch" in str(caught.value)
    with pytest.raises(WeightsError, match="mammo-ray weights fetch"):
        resolve_weights(NYU_IMAGE_WISE_URL)  # no implicit downloads from a config

    garbage = tmp_path / "garbage.p"
    garbage.write_bytes(b"<html>not weights</html>")
    with pytest.raises(WeightsError, match="cannot be loaded"):
        resolve_weights(f"file://{garbage}")
    not_a_state_dict = tmp_path / "list.p"
    not_a_state_dict.write_bytes(_save([1, 2, 3]))
    with pytest.raises(WeightsError, match="not a state dict"):
        resolve_weights(str(not_a_state_dict))


# --- fetching -------------------------------------------------------------------------------------


class _Recorder(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def weights_server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A local HTTP server (127.0.0.1, a free port) serving tmp_path/www; stopped afterwards."""
    root = tmp_path / "www"
    root.mkdir()
    handler = type("Handler", (_Recorder,), {"requests": []})
    serve = functools.partial(handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), serve)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, handler.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_fetch_weights_over_http_into_s3(weights_server, s3_bucket: str) -> None:
    base, root, requests = weights_server
    (root / "nyu").mkdir()
    (root / "tv").mkdir()
    files = {
        "ImageOnly__ModeImage_weights.p": _save({"model": published_state_dict(build_nyu_model(seed=1))}),
        "sample_image_model.p": _save({"model": {"fc1_cc.weight": torch.ones(2, 2)}}),
    }
    for name, data in files.items():
        (root / "nyu" / name).write_bytes(data)
    with seeded_init(2):
        files[RESNET18_FILE] = _save(torchvision.models.get_model("resnet18", weights=None).state_dict())
    (root / "tv" / RESNET18_FILE).write_bytes(files[RESNET18_FILE])
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}

    target = f"{s3_bucket}/weights"
    names = ("nyu-image-wise", "nyu-view-wise")
    names += ("torchvision:resnet18:IMAGENET1K_V1", "torchvision:resnet18:DEFAULT")
    printed: list[str] = []
    # not the real file: its sha256 does not start with the hash prefix in its name
    with pytest.warns(UserWarning, match="f37072fd"):
        result = fetch_weights(target, names, nyu_base_url=f"{base}/nyu", torchvision_base_url=f"{base}/tv",
                               timeout_s=10, echo=printed.append)
    nyu_file = "ImageOnly__ModeImage_weights.p"
    expected = {
        "nyu-image-wise": (f"{target}/{nyu_file}", digests[nyu_file]),
        "nyu-view-wise": (f"{target}/sample_image_model.p", digests["sample_image_model.p"]),
        "torchvision:resnet18:IMAGENET1K_V1": (f"{target}/{RESNET18_FILE}", digests[RESNET18_FILE]),
        "torchvision:resnet18:DEFAULT": (f"{target}/{RESNET18_FILE}", digests[RESNET18_FILE]),
    }
    assert result == expected
    assert sorted(requests) == sorted(["/nyu/ImageOnly__ModeImage_weights.p", "/nyu/sample_image_model.p",
                                       f"/tv/{RESNET18_FILE}"])  # each file once
    assert len(printed) == 3 and all(line.split()[0] in digests.values() for line in printed)
    for uri, digest in result.values():
        assert hashlib.sha256(storage.read_bytes(uri)).hexdigest() == digest

    # the copy is what a worker without internet resolves, sha256 pinned
    uri, digest = result["nyu-image-wise"]
    assert resolve_weights(WeightsSpec(uri, digest)).weights_id == digest

    # files already there are hashed, not downloaded again
    again = fetch_weights(target, names[:2], nyu_base_url=f"{base}/nyu", echo=None)
    assert again == {k: expected[k] for k in names[:2]} and len(requests) == 3

    with pytest.raises(WeightsError, match="download failed"):
        fetch_weights(f"{s3_bucket}/other", ["nyu-image-wise"], nyu_base_url=f"{base}/missing", timeout_s=10,
                      echo=None)
    (root / "html").mkdir()
    (root / "html" / "sample_image_model.p").write_text("<html>Git LFS pointer</html>")
    with pytest.raises(WeightsError, match="not a PyTorch weight file"):
        fetch_weights(f"{s3_bucket}/other", ["nyu-view-wise"], nyu_base_url=f"{base}/html", timeout_s=10,
                      echo=None)
    assert not storage.exists(f"{s3_bucket}/other/sample_image_model.p")


def test_known_files() -> None:
    assert NYU_IMAGE_WISE_URL == (
        "https://github.com/nyukat/breast_cancer_classifier/raw/master/models/ImageOnly__ModeImage_weights.p")
    assert known_weights_file("nyu-view-wise").url.endswith("/models/sample_image_model.p")
    assert known_weights_file("nyu-patch").url.endswith("/models/sample_patch_model.p")
    assert known_weights_file("nyu-image-heatmaps").url.endswith("/models/ImageHeatmaps__ModeImage_weights.p")
    assert known_weights_file("torchvision:resnet50:IMAGENET1K_V2").url == (
        "https://download.pytorch.org/models/resnet50-11ad3fa6.pth")
    assert {known_weights_file(name).file_name for name in DEFAULT_FETCH_NAMES} >= {
        "ImageOnly__ModeImage_weights.p", "sample_image_model.p", "resnet50-0676ba61.pth",
        "resnet50-11ad3fa6.pth", RESNET18_FILE, "squeezenet1_1-b8a52dc0.pth"}
    with pytest.raises(WeightsError, match="unknown published weights name"):
        known_weights_file("nyu-three-view")


class _RunsCodeWhenUnpickled:
    """A weight file's payload that would create a file if unpickled by a plain torch.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_weight_file_that_runs_code_when_unpickled_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    hostile = tmp_path / "ImageOnly__ModeImage_weights.p"
    torch.save({"model": _RunsCodeWhenUnpickled(marker)}, hostile)
    with pytest.raises(WeightsError, match="weights_only"):
        resolve_weights(str(hostile))
    assert not marker.exists()
    torch.load(hostile, weights_only=False)  # the payload is real: a plain load runs it
    assert marker.exists()


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(3, 4)
        self.norm = torch.nn.BatchNorm1d(4)
        self.head = torch.nn.Linear(4, 2)


def test_strict_loader_lists_every_mismatch_and_loads_nothing_then() -> None:
    with seeded_init(0):
        model, donor = _Tiny(), _Tiny()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    state = donor.state_dict()
    del state["body.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["head.weight"] = torch.zeros(5, 4)
    with pytest.raises(WeightsError) as caught:
        load_state_dict_strict(model, state, "tiny.pt", "state dict does not match the _Tiny",
                               given_as="checkpoint", names={"extra.weight": "old.extra"},
                               hint="use another file")
    error = caught.value
    assert (error.source, error.reason, error.hint) == ("tiny.pt", "state dict does not match the _Tiny",
                                                         "use another file")
    assert error.missing == ["body.bias"] and error.unexpected == ["old.extra"]
    assert error.mismatched == ["head.weight: checkpoint (5, 4) vs model (2, 4)"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])  # a refused state dict changes nothing

    assert load_state_dict_strict(model, donor.state_dict(), "tiny.pt", "r") == []
    torch.testing.assert_close(model.head.weight, donor.head.weight)


def test_strict_loader_keep_and_optional_keys() -> None:
    with seeded_init(0):
        model = _Tiny()
    with seeded_init(1):
        donor = _Tiny()
    own_head = model.head.weight.detach().clone()
    body = {k: v for k, v in donor.state_dict().items() if not k.startswith("head.")}
    del body["norm.num_batches_tracked"]
    body["head.weight"] = torch.zeros(9, 9)  # outside `keep`: ignored, however wrong
    filled = load_state_dict_strict(model, body, "s", "r", keep=lambda key: not key.startswith("head."),
                                    optional=lambda key: key.endswith(".num_batches_tracked"))
    assert filled == ["norm.num_batches_tracked"]
    torch.testing.assert_close(model.body.weight, donor.body.weight)
    torch.testing.assert_close(model.head.weight, own_head)  # not loaded: keeps its own init
    with pytest.raises(WeightsError) as caught:  # without `optional` the absent buffer is missing
        load_state_dict_strict(model, body, "s", "r", keep=lambda key: not key.startswith("head."))
    assert caught.value.missing == ["norm.num_batches_tracked"] and not caught.value.unexpected
