"""Getting weights into a network: safe unpickling, a strict fit, and a seeded init when there is no file.

Weight files are always loaded with ``torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")``:
no arbitrary pickles. A state dict is loaded into a model only when it fits exactly; otherwise one
WeightsError lists every missing key, unexpected key and shape mismatch.

torch is imported lazily so that importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from mammo_ray.models.weights import WeightsError

if TYPE_CHECKING:  # pragma: no cover
    import torch


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


def as_state_dict(obj: Any, source: str, checkpoint_key: str | None = None) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a loaded object: a state dict, or one under "model"/"state_dict", or the
    one at `checkpoint_key` (dotted keys into nested dicts)."""
    import torch

    if checkpoint_key is not None:
        for part in checkpoint_key.split("."):
            if not isinstance(obj, Mapping) or part not in obj:
                shown = sorted(map(str, obj))[:12] if isinstance(obj, Mapping) else type(obj).__name__
                raise WeightsError(source, f"has no checkpoint key {checkpoint_key!r} (at {part!r}: {shown})")
            obj = obj[part]

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


def load_state_dict_bytes(data: bytes, source: str, checkpoint_key: str | None = None) -> dict[str, torch.Tensor]:
    """Weight-file bytes into a flat state dict: a `.safetensors` file (no code in it by design), else a PyTorch
    file unpickled safely (weights_only, on CPU); `checkpoint_key` as `as_state_dict`."""
    import torch

    try:
        if source.endswith(".safetensors"):
            from safetensors.torch import load as load_safetensors

            obj: Any = load_safetensors(data)
        else:
            obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as error:  # noqa: BLE001 - any unpickling failure is one declared error
        raise WeightsError(
            source, f"cannot be loaded as PyTorch weights (weights_only): {type(error).__name__}: {error}"
        ) from error
    return as_state_dict(obj, source, checkpoint_key)


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
    names: a key (of the state dict or the model) -> the name the error shows for it (e.g. its name in the file).
    given_as: what a shape mismatch calls the state dict ("<key>: <given_as> (shape) vs model (shape)").
    """
    expected = model.state_dict()
    wanted = {key for key in expected if keep is None or keep(key)}
    given = {key: value for key, value in state_dict.items() if keep is None or keep(key)}
    shown = names or {}
    absent = wanted - given.keys()
    filled = sorted(key for key in absent if optional is not None and optional(key))
    missing = sorted(shown.get(key, key) for key in absent - set(filled))
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
