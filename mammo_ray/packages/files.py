"""A model package on a store (local folder or s3://): written whole, loaded only when every check passes.

Integrity: `package.json` lists each file's sha256 and carries `package_id`, the digest of its own content; a
file or description changed after export is refused by name. Safety: `pipeline.skops` is read with skops,
which builds only the types it is told to trust (no pickle, no code run); a type beyond the package's own
(`TRUSTED_TYPES`) is refused before anything is built. The digests catch accidents and careless edits, not a
forger who rewrites them: a package from elsewhere is trusted only as far as its types are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import skops.io

from mammo_ray import storage
from mammo_ray.errors import MammoRayError
from mammo_ray.packages.model import FittedModel

FORMAT = "mammo-ray model package"
FORMAT_VERSION = 1
DESCRIPTION_FILE = "package.json"
PIPELINE_FILE = "pipeline.skops"
#: A fine-tuned network's package: its state dict in safetensors (tensors only, no code).
NETWORK_FILE = "network.safetensors"
NETWORK_KIND = "network"
CARD_MARKDOWN = "card.md"
CARD_JSON = "card.json"
#: Types a package holds beyond those skops trusts by default (scikit-learn's, numpy's).
TRUSTED_TYPES = frozenset({
    "imblearn.pipeline.Pipeline",
    "imblearn.over_sampling._smote.base.SMOTE",
    "mammo_ray.classify.estimators.LassoSelector",
    "mammo_ray.classify.estimators.NystroemSVC",
    "mammo_ray.classify.estimators.QuietLinearSVC",
})
_LARGEST_FILE = 2 * 2**30


class PackageRefused(MammoRayError):
    """A model package that is not one, was changed after export, or does not fit the scoring inputs."""

    def __init__(self, uri: str, reason: str) -> None:
        self.uri, self.reason = uri, reason
        super().__init__(f"model package {uri}: {reason}")

    def __reduce__(self) -> tuple:
        return type(self), (self.uri, self.reason)


@dataclass(frozen=True)
class LoadedPackage:
    uri: str
    description: dict[str, Any]
    model: FittedModel | None  # None for a network package: its network loads where it runs (an actor)

    @property
    def package_id(self) -> str:
        return str(self.description["package_id"])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def package_id(description: dict[str, Any]) -> str:
    """The digest of a description without its own id (canonical JSON)."""
    content = {key: value for key, value in description.items() if key != "package_id"}
    return sha256_hex(json.dumps(content, sort_keys=True, separators=(",", ":")).encode())[:32]


def pipeline_files(model: FittedModel) -> dict[str, bytes]:
    """A frozen-feature pipeline's file: everything fitted, in skops's format."""
    # skops names arrays by object id: the same fit written twice gives other bytes, so another package_id.
    return {PIPELINE_FILE: skops.io.dumps(model.parts())}


def write_package(uri: str, description: dict[str, Any], files: Mapping[str, bytes]) -> dict[str, Any]:
    """Write the package's `files` (its model file and card) and its description at `uri`, the description last:
    its presence means the package is whole. Returns the description as written, with its files' digests and
    its id."""
    written = {**description, "format": FORMAT, "format_version": FORMAT_VERSION,
               "files": {name: sha256_hex(data) for name, data in sorted(files.items())}}
    written["package_id"] = package_id(written)
    for name, data in files.items():
        storage.write_bytes(storage.join(uri, name), data)
    storage.write_bytes(storage.join(uri, DESCRIPTION_FILE), json.dumps(written, indent=2, sort_keys=True).encode())
    return written


def load_package(uri: str) -> LoadedPackage:
    """The package at `uri`, or PackageRefused saying what is wrong with it."""
    described = storage.join(uri, DESCRIPTION_FILE)
    if not storage.exists(described):
        raise PackageRefused(uri, f"no {DESCRIPTION_FILE}: not a mammo-ray model package")
    try:
        description = json.loads(storage.read_bytes(described, max_bytes=2**24))
    except ValueError as error:
        raise PackageRefused(uri, f"{DESCRIPTION_FILE} is not JSON ({error})") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise PackageRefused(uri, f"{DESCRIPTION_FILE} does not describe a {FORMAT}")
    if description.get("format_version") != FORMAT_VERSION:
        raise PackageRefused(uri, f"format version {description.get('format_version')!r}; this mammo-ray reads "
                                  f"{FORMAT_VERSION}")
    if description.get("package_id") != package_id(description):
        raise PackageRefused(uri, f"{DESCRIPTION_FILE} was changed after export: its package_id does not match "
                                  "its content")
    contents = {}
    for name, expected in description["files"].items():
        data = storage.read_bytes(storage.join(uri, name), max_bytes=_LARGEST_FILE)
        if sha256_hex(data) != expected:
            raise PackageRefused(uri, f"{name} was changed after export: its sha256 is {sha256_hex(data)}, "
                                      f"{DESCRIPTION_FILE} says {expected}")
        contents[name] = data
    if description.get("kind") == NETWORK_KIND:
        if NETWORK_FILE not in contents:
            raise PackageRefused(uri, f"a network package without {NETWORK_FILE}")
        return LoadedPackage(uri, description, None)
    if PIPELINE_FILE not in contents:
        raise PackageRefused(uri, f"a pipeline package without {PIPELINE_FILE}")
    blob = contents[PIPELINE_FILE]
    foreign = sorted(set(skops.io.get_untrusted_types(data=blob)) - TRUSTED_TYPES)
    if foreign:
        raise PackageRefused(uri, f"{PIPELINE_FILE} holds types a mammo-ray package does not: {foreign}")
    parts = skops.io.loads(blob, trusted=sorted(TRUSTED_TYPES))
    shift = description["shift"]
    model = FittedModel.from_parts(parts, float(description["threshold"]),
                                   (float(shift["training_median"]), float(shift["training_q95"])))
    return LoadedPackage(uri, description, model)


__all__ = ["CARD_JSON", "CARD_MARKDOWN", "DESCRIPTION_FILE", "FORMAT", "NETWORK_FILE", "NETWORK_KIND", "PIPELINE_FILE",
           "TRUSTED_TYPES", "LoadedPackage", "PackageRefused", "load_package", "package_id", "pipeline_files",
           "sha256_hex", "write_package"]
