"""What weights a study names: a spec string, its expected sha256, and the `weights_id` outputs record.

A spec (`WeightsSpec.source`, docs/design.md, "Weight resolution") is one of

- ``random-init:<seed>``: no file; the model is initialised deterministically from the seed
  (build it inside :func:`mammo_ray.models.weight_loading.seeded_init`). ``weights_id`` is
  ``random-init:<seed>``. Only ever used when asked for explicitly: nothing substitutes random weights for
  missing ones.
- ``torchvision:<ARCH>:<WEIGHTS_ENUM_NAME>``, e.g. ``torchvision:resnet50:IMAGENET1K_V2`` or
  ``torchvision:resnet50:DEFAULT``: the file of that torchvision weights enum (see
  :mod:`mammo_ray.models.weights_catalogue`).
- a local path, ``file://`` or ``s3://`` URI of a weight file.

An optional expected sha256 is verified before the bytes are unpickled; ``weights_id`` of a file is the
sha256 of its bytes. Finding, verifying and loading: :mod:`mammo_ray.models.weights_resolver`.

This module imports neither torch nor storage, so that checking a config that names weights is cheap.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mammo_ray.errors import MammoRayError

RANDOM_INIT_PREFIX = "random-init:"
TORCHVISION_PREFIX = "torchvision:"

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
    #: Where the state dict sits in a checkpoint dict (dotted keys, e.g. `model` or `network.ema`); None: the
    #: file is a state dict, or holds one under `model` or `state_dict`.
    checkpoint_key: str | None = None

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



def sha256_hex(data: bytes) -> str:
    """The sha256 of `data` in hex: the `weights_id` of a weight file with these bytes."""
    return hashlib.sha256(data).hexdigest()
