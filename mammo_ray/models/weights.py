"""Weight resolution: a spec string -> a state dict and the `weights_id` every output row records.

A spec (`WeightsSpec.source`) is one of

- ``random-init:<seed>``: no file; the model is initialised deterministically from the seed
  (build it inside :func:`seeded_init`). ``weights_id`` is ``random-init:<seed>``. Only ever used when
  asked for explicitly: nothing here substitutes random weights for missing ones.
- ``torchvision:<ARCH>:<WEIGHTS_ENUM_NAME>``, e.g. ``torchvision:resnet50:IMAGENET1K_V2`` or
  ``torchvision:resnet50:DEFAULT``: the file of that torchvision weights enum, read from the torch hub
  cache (``$TORCH_HOME/hub/checkpoints/<basename of its URL>``). Nothing is downloaded unless
  ``allow_download=True``; when the file is absent the error names the file, its URL and how to get
  it onto a machine without internet (``mammo-ray weights fetch --to URI``, then point the config at
  the copy).
- a local path, ``file://`` or ``s3://`` URI of a weight file (read through :mod:`mammo_ray.storage`).

An optional expected sha256 is verified before the bytes are unpickled. ``weights_id`` of a file is
the sha256 of its bytes. Files are always loaded with
``torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")``: no arbitrary pickles.

torch / torchvision are imported lazily so that importing this module (e.g. to check a config) is cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from mammo_ray import storage
from mammo_ray.errors import MammoRayError, StorageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

# --- known published files -------------------------------------------------------------------------

NYU_BASE_URL = "https://github.com/nyukat/breast_cancer_classifier/raw/master/models"
NYU_IMAGE_WISE_FILE = "ImageOnly__ModeImage_weights.p"
NYU_VIEW_WISE_FILE = "sample_image_model.p"
NYU_IMAGE_WISE_URL = f"{NYU_BASE_URL}/{NYU_IMAGE_WISE_FILE}"
NYU_VIEW_WISE_URL = f"{NYU_BASE_URL}/{NYU_VIEW_WISE_FILE}"
#: Fetch names of the NYU files -> file name in the repository's models/ folder.
NYU_FILES: dict[str, str] = {
    "nyu-image-wise": NYU_IMAGE_WISE_FILE,
    "nyu-view-wise": NYU_VIEW_WISE_FILE,
}
#: Where torchvision's ImageNet files live (the weights enums' URLs all start with this).
TORCHVISION_BASE_URL = "https://download.pytorch.org/models"
#: The torchvision specs a study may use (fetch names are the spec strings themselves).
TORCHVISION_SPECS: tuple[str, ...] = (
    "torchvision:resnet50:IMAGENET1K_V1",
    "torchvision:resnet50:IMAGENET1K_V2",
    "torchvision:resnet18:IMAGENET1K_V1",
    "torchvision:squeezenet1_1:IMAGENET1K_V1",
)
#: What `mammo-ray weights fetch` downloads when no names are given.
DEFAULT_FETCH_NAMES: tuple[str, ...] = (*NYU_FILES, *TORCHVISION_SPECS)

RANDOM_INIT_PREFIX = "random-init:"
TORCHVISION_PREFIX = "torchvision:"
FETCH_HINT = "mammo-ray weights fetch --to URI"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_LISTED = 50


class WeightsError(MammoRayError):
    """Weights could not be found, verified or loaded, or do not fit the model.

    `source` names the spec, file or URI; `missing` / `unexpected` / `mismatched` list state-dict keys
    (all shown in the message, up to 50 each), `hint` says how to fix it.
    """

    def __init__(
        self,
        source: str,
        reason: str,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[str] = (),
        hint: str | None = None,
    ) -> None:
        self.source = source
        self.reason = reason
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        self.hint = hint
        lines = [f"weights {source}: {reason}"]
        for title, keys in (
            ("missing keys", self.missing),
            ("unexpected keys", self.unexpected),
            ("shape mismatches", self.mismatched),
        ):
            if keys:
                lines.append(f"  {title} ({len(keys)}):")
                lines.extend(f"    {key}" for key in keys[:_MAX_LISTED])
                if len(keys) > _MAX_LISTED:
                    lines.append(f"    ... and {len(keys) - _MAX_LISTED} more")
        if hint:
            lines.append(f"  how to fix: {hint}")
        super().__init__("\n".join(lines))


# --- specs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsSpec:
    """Where weights come from (`source`, see the module doc) and, optionally, their sha256."""

    source: str
    sha256: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise WeightsError(repr(self.source), "empty weights source")
        if self.sha256 is not None:
            digest = str(self.sha256).strip().lower()
            if not _SHA256.match(digest):
                raise WeightsError(self.source, f"expected sha256 {self.sha256!r} is not 64 hex digits")
            object.__setattr__(self, "sha256", digest)

    @classmethod
    def parse(cls, value: WeightsSpec | str | Mapping[str, Any]) -> WeightsSpec:
        """A spec from a spec, a source string, or a mapping {source, sha256?} (a config section)."""
        if isinstance(value, WeightsSpec):
            return value
        if isinstance(value, str):
            return cls(value.strip())
        if isinstance(value, Mapping):
            extra = set(value) - {"source", "sha256"}
            if extra or "source" not in value:
                reason = "a weights spec mapping takes `source` and optional `sha256`"
                raise WeightsError(str(dict(value)), reason)
            return cls(str(value["source"]).strip(), value.get("sha256"))
        raise WeightsError(repr(value), f"cannot read a weights spec from {type(value).__name__}")

    @property
    def kind(self) -> str:
        """'random-init', 'torchvision' or 'file'."""
        if self.source.startswith(RANDOM_INIT_PREFIX) or self.source == "random-init":
            return "random-init"
        if self.source.startswith(TORCHVISION_PREFIX):
            return "torchvision"
        return "file"

    @property
    def seed(self) -> int | None:
        """The seed of a random-init spec (None for the others)."""
        if self.kind != "random-init":
            return None
        text = self.source[len(RANDOM_INIT_PREFIX):] if self.source.startswith(RANDOM_INIT_PREFIX) else ""
        try:
            return int(text, 10)
        except ValueError:
            raise WeightsError(
                self.source, "random-init needs an integer seed", hint="write e.g. `random-init:0`"
            ) from None


@dataclass(frozen=True)
class ResolvedWeights:
    """A resolved spec.

    `state_dict` is a flat mapping name -> tensor (a published {"model": state_dict} wrapper is
    unwrapped), or None for random-init; `weights_id` is the sha256 of the file bytes or
    ``random-init:<seed>``; `source` is the spec's source as given; `location` the file actually read;
    `seed` the random-init seed.
    """

    state_dict: dict[str, torch.Tensor] | None
    weights_id: str
    source: str
    location: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class KnownWeightsFile:
    """A published weight file: fetch name, file name and download URL."""

    name: str
    file_name: str
    url: str


def known_weights_file(
    name: str, *, nyu_base_url: str = NYU_BASE_URL, torchvision_base_url: str | None = None
) -> KnownWeightsFile:
    """The published file behind a fetch name: ``nyu-image-wise``, ``nyu-view-wise`` or a torchvision spec.

    The base URLs can be replaced (a mirror, or a test server); a torchvision file keeps its file name.
    """
    if name in NYU_FILES:
        file_name = NYU_FILES[name]
        return KnownWeightsFile(name, file_name, f"{nyu_base_url.rstrip('/')}/{file_name}")
    if name.startswith(TORCHVISION_PREFIX):
        _arch, _enum, url, file_name = _torchvision_entry(name)
        if torchvision_base_url is not None:
            url = f"{torchvision_base_url.rstrip('/')}/{file_name}"
        return KnownWeightsFile(name, file_name, url)
    known = ", ".join((*NYU_FILES, "torchvision:<ARCH>:<WEIGHTS>"))
    raise WeightsError(name, f"unknown published weights name (known: {known})")


# --- helpers --------------------------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def seeded_init(seed: int | None) -> Iterator[None]:
    """Within the block, torch's CPU generator starts from `seed` (restored afterwards).

    Build a model inside it to get the same random initialisation for the same seed. None: no-op.
    """
    if seed is None:
        yield
        return
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def as_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a loaded object: a state dict, or one under "model"/"state_dict"."""
    import torch

    def is_flat(candidate: Any) -> bool:
        return (
            isinstance(candidate, Mapping)
            and len(candidate) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in candidate.items())
        )

    if is_flat(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and is_flat(obj[key]):
                return dict(obj[key])
    raise WeightsError(
        source,
        f"holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors, "
        "or one stored under the key 'model' or 'state_dict')",
    )


def load_state_dict_bytes(data: bytes, source: str) -> dict[str, torch.Tensor]:
    """Unpickle weight-file bytes safely (weights_only, on CPU) into a flat state dict."""
    import torch

    try:
        obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as error:  # noqa: BLE001 - any unpickling failure is one declared error
        raise WeightsError(
            source, f"cannot be loaded as PyTorch weights (weights_only): {type(error).__name__}: {error}"
        ) from error
    return as_state_dict(obj, source)


def load_state_dict_strict(
    model: torch.nn.Module,
    state_dict: Mapping[str, Any],
    source: str,
    reason: str,
    *,
    keep: Callable[[str], bool] | None = None,
    optional: Callable[[str], bool] | None = None,
    names: Mapping[str, str] | None = None,
    given_as: str = "state dict",
    hint: str | None = None,
) -> list[str]:
    """Load `state_dict` into `model` only if it fits exactly; else WeightsError(source, reason, hint)
    listing every missing key, unexpected key and shape mismatch at once.

    keep: the keys that count, of the model and of the state dict alike (the others are neither required
    nor loaded: the model keeps its own values); None: every key (torch's strict load).
    optional: model keys the state dict may lack; they keep the model's own values. Returns those, sorted.
    names: a state-dict key -> the name the error shows for it (e.g. its name in the original file).
    given_as: what a shape mismatch calls the state dict ("<key>: <given_as> (shape) vs model (shape)").
    """
    expected = model.state_dict()
    wanted = {key for key in expected if keep is None or keep(key)}
    given = {key: value for key, value in state_dict.items() if keep is None or keep(key)}
    shown = names or {}
    absent = wanted - given.keys()
    filled = sorted(key for key in absent if optional is not None and optional(key))
    missing = sorted(absent - set(filled))
    unexpected = sorted(shown.get(key, key) for key in given.keys() - wanted)
    mismatched = sorted(
        f"{shown.get(key, key)}: {given_as} {tuple(given[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in wanted & given.keys()
        if tuple(given[key].shape) != tuple(expected[key].shape)
    )
    if missing or unexpected or mismatched:
        raise WeightsError(source, reason, missing=missing, unexpected=unexpected, mismatched=mismatched,
                           hint=hint)
    model.load_state_dict({**given, **{key: expected[key] for key in filled}}, strict=keep is None)
    return filled


def _verify_sha256(spec: WeightsSpec, location: str, digest: str) -> None:
    if spec.sha256 is not None and digest != spec.sha256:
        raise WeightsError(
            location,
            f"sha256 mismatch: expected {spec.sha256}, the file has {digest}",
            hint="the file changed or is not the one the config names; fix the file or the expected sha256",
        )


def _torchvision_entry(source: str) -> tuple[str, str, str, str]:
    """'torchvision:ARCH:NAME' -> (arch, enum name, url, file name), validated against torchvision."""
    parts = source.split(":")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise WeightsError(
            source, "expected torchvision:<ARCH>:<WEIGHTS>, e.g. torchvision:resnet50:IMAGENET1K_V2"
        )
    _, arch, enum_name = parts
    from torchvision.models import get_model_weights

    try:
        enum_cls = get_model_weights(arch)
    except (ValueError, KeyError) as error:
        raise WeightsError(source, f"torchvision has no model {arch!r}") from error
    try:
        entry = enum_cls[enum_name]
    except KeyError:
        names = ", ".join(enum_cls.__members__)
        raise WeightsError(source, f"{enum_cls.__name__} has no {enum_name!r} (available: {names})") from None
    file_name = posixpath.basename(urlparse(entry.url).path)
    return arch, enum_name, entry.url, file_name


def torchvision_cache_path(file_name: str) -> str:
    """Where torch hub keeps a downloaded file: $TORCH_HOME/hub/checkpoints/<file_name>."""
    import torch.hub

    return os.path.join(torch.hub.get_dir(), "checkpoints", file_name)


#: The end of every missing-file hint: a study can always run without the file, from a seeded init.
RANDOM_INIT_HINT = (
    "or write `random-init:<seed>` (e.g. random-init:0) to run offline from a seeded random init: no file needed"
)


def fetch_name_for(file_name: str) -> str | None:
    """The name `mammo-ray weights fetch` takes to download `file_name` (e.g. ImageOnly__ModeImage_weights.p
    -> nyu-image-wise), or None for a file it does not know: the command refuses file names."""
    for name, nyu_file in NYU_FILES.items():
        if nyu_file == file_name:
            return name
    for spec in TORCHVISION_SPECS:
        try:
            if _torchvision_entry(spec)[3] == file_name:
                return spec
        except (WeightsError, ImportError):  # no torchvision here: no torchvision name to suggest
            return None
    return None


def weights_file_of(source: str) -> tuple[str, str | None]:
    """(file name, fetch name or None) of a weights source: a torchvision spec or a file path/URI."""
    if source.startswith(TORCHVISION_PREFIX):
        try:
            return _torchvision_entry(source)[3], source
        except (WeightsError, ImportError):
            return source, None
    file_name = posixpath.basename(urlparse(source).path if "://" in source else source) or source
    return file_name, fetch_name_for(file_name)


def missing_files_hint(files: Mapping[str, str | None], url: str | None = None) -> str:
    """How to get missing weight files, given file name -> its fetch name (None: not a published file).

    One `mammo-ray weights fetch` command names every fetchable file (the command takes fetch names,
    not file names); the random-init alternative, which needs no file, is always offered.
    """
    fetchable = {file_name: name for file_name, name in files.items() if name}
    unknown = [file_name for file_name, name in files.items() if not name]
    parts = []
    if fetchable:
        names = " ".join(dict.fromkeys(fetchable.values()))
        first = next(iter(fetchable))
        source = f" from {url}" if url else ""
        written = f"writes it to URI/{first}" if len(fetchable) == 1 else "writes each to URI/<file name>"
        parts.append(
            f"on a machine with internet run `{FETCH_HINT} {names}` (it downloads {', '.join(fetchable)}{source} "
            f"once and {written}), then point the config's weights at "
            f"{'that copy' if len(fetchable) == 1 else 'the copies'} "
            f"(e.g. s3://bucket/weights/{first})"
        )
    if unknown:
        parts.append(
            f"{', '.join(unknown)}: not a published file `{FETCH_HINT}` knows (it fetches "
            f"{', '.join(DEFAULT_FETCH_NAMES)}); copy it where the workers can read it and point the config's "
            "weights at the copy"
        )
    return "; ".join([*parts, RANDOM_INIT_HINT])


def _not_found_hint(file_name: str, url: str | None, fetch_name: str | None = None) -> str:
    return missing_files_hint({file_name: fetch_name or fetch_name_for(file_name)}, url)


def _torchvision_location(spec: WeightsSpec, allow_download: bool) -> str:
    _arch, _enum, url, file_name = _torchvision_entry(spec.source)
    hint = _not_found_hint(file_name, url, fetch_name=spec.source)
    path = torchvision_cache_path(file_name)
    if os.path.isfile(path):
        return path
    if allow_download:
        import torch.hub

        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            torch.hub.download_url_to_file(url, path, progress=False)
            return path
        except Exception as error:  # noqa: BLE001 - any download failure (network, disk, HTTP) is the weights error naming the file
            reason = f"{file_name} is not cached at {path} and downloading {url} failed: {error}"
            raise WeightsError(spec.source, reason, hint=hint) from error
    raise WeightsError(
        spec.source,
        f"file {file_name} is not cached at {path} (URL {url}); weights are never downloaded "
        "implicitly and never replaced by random ones",
        hint=f"place the file at {path}, or {hint}",
    )


def _file_location(spec: WeightsSpec) -> str:
    try:
        storage.split_uri(spec.source)
    except StorageError as error:
        hint = _not_found_hint(posixpath.basename(urlparse(spec.source).path) or "the file", spec.source)
        raise WeightsError(spec.source, f"not a usable weights location: {error.reason}", hint=hint) from None
    return spec.source


def _read(location: str) -> bytes:
    try:
        return storage.read_bytes(location)
    except StorageError as error:
        file_name = posixpath.basename(storage.split_uri(location)[1])
        raise WeightsError(location, f"cannot read weight file: {error.reason}",
                           hint=_not_found_hint(file_name, None)) from error


# --- public entry points --------------------------------------------------------------------------


def weights_id(spec: WeightsSpec | str | Mapping[str, Any]) -> str:
    """The `weights_id` outputs of these weights record (`random-init:<seed>`, else the sha256 of the
    file), verified against the expected sha256 when given; the file is hashed, never unpickled."""
    spec = WeightsSpec.parse(spec)
    if spec.kind == "random-init":
        return resolve_weights(spec).weights_id
    location = _torchvision_location(spec, False) if spec.kind == "torchvision" else _file_location(spec)
    digest = sha256_hex(_read(location))
    _verify_sha256(spec, location, digest)
    return digest


def resolve_weights(
    spec: WeightsSpec | str | Mapping[str, Any], *, allow_download: bool = False
) -> ResolvedWeights:
    """Find, verify (sha256 when given) and load the weights a spec names.

    Raises WeightsError when anything is missing or wrong; never falls back to random weights.
    """
    spec = WeightsSpec.parse(spec)
    if spec.kind == "random-init":
        seed = spec.seed
        if spec.sha256 is not None:
            raise WeightsError(spec.source, "random-init has no file: an expected sha256 makes no sense")
        return ResolvedWeights(None, f"{RANDOM_INIT_PREFIX}{seed}", spec.source, None, seed)
    location = (
        _torchvision_location(spec, allow_download) if spec.kind == "torchvision" else _file_location(spec)
    )
    data = _read(location)
    digest = sha256_hex(data)
    _verify_sha256(spec, location, digest)
    state = load_state_dict_bytes(data, location)
    return ResolvedWeights(state, digest, spec.source, location, None)


def check_weights_available(spec: WeightsSpec | str | Mapping[str, Any]) -> None:
    """Fail fast (WeightsError) unless the weights a spec names are there (and match its sha256).

    Cheap: an existence check, plus one read to hash the file only when a sha256 is given; nothing is
    unpickled. Call it when a study starts, before any work.
    """
    spec = WeightsSpec.parse(spec)
    if spec.kind == "random-init":
        _ = spec.seed  # validates the seed
        if spec.sha256 is not None:
            raise WeightsError(spec.source, "random-init has no file: an expected sha256 makes no sense")
        return
    if spec.kind == "torchvision":
        location = _torchvision_location(spec, allow_download=False)
    else:
        location = _file_location(spec)
        try:
            present = storage.exists(location)
        except StorageError as error:
            raise WeightsError(location, f"cannot check weight file: {error.reason}") from error
        if not present:
            file_name = posixpath.basename(storage.split_uri(location)[1])
            raise WeightsError(location, "weight file not found", hint=_not_found_hint(file_name, None))
    if spec.sha256 is not None:
        _verify_sha256(spec, location, sha256_hex(_read(location)))
