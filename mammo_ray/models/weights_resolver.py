"""Weight resolution: a spec -> a verified state dict and its `weights_id` (docs/design.md, "Weight resolution").

`resolve_weights` finds the file a spec names (the torch hub cache for a torchvision spec, else a local path,
``file://`` or ``s3://`` URI read through :mod:`mammo_ray.storage`), verifies its sha256 when one is expected
before unpickling it, and loads it (see :mod:`mammo_ray.models.weight_loading`). `weights_id` and
`check_weights_available` do the same without unpickling. Nothing is downloaded unless `allow_download=True`,
and nothing falls back to random weights: anything missing or wrong is a WeightsError saying how to fix it.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from mammo_ray import storage
from mammo_ray.errors import StorageError
from mammo_ray.models.weight_loading import load_state_dict_bytes
from mammo_ray.models.weights import RANDOM_INIT_PREFIX, WeightsError, WeightsSpec, sha256_hex
from mammo_ray.models.weights_catalogue import (
    fetch_name_for,
    missing_files_hint,
    torchvision_cache_path,
    torchvision_entry,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch


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


def _verify_sha256(spec: WeightsSpec, location: str, digest: str) -> None:
    if spec.sha256 is not None and digest != spec.sha256:
        raise WeightsError(
            location,
            f"sha256 mismatch: expected {spec.sha256}, the file has {digest}",
            hint="the file changed or is not the one the config names; fix the file or the expected sha256",
        )


def _not_found_hint(file_name: str, url: str | None, fetch_name: str | None = None) -> str:
    return missing_files_hint({file_name: fetch_name or fetch_name_for(file_name)}, url)


def _torchvision_location(spec: WeightsSpec, allow_download: bool) -> str:
    _arch, _enum, url, file_name = torchvision_entry(spec.source)
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
    state = load_state_dict_bytes(data, location, spec.checkpoint_key)
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
