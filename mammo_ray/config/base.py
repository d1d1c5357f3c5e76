"""The base of every config section, and the one translation of pydantic's errors into a ConfigError
that names the key path."""

from __future__ import annotations

import hashlib
import json
import typing
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from mammo_ray.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def _numeric_not_boolean(annotation: Any) -> bool:
    """True for int / float fields (also inside a union) that do not admit a bool."""
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, type(int | None)) \
        else (annotation,)
    return bool({int, float} & set(members)) and bool not in members


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable, and a yes/no is not a
    number (pydantic's lax mode would take YAML's `true` for `batch_size: 1`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        numeric = info.field_name is not None and _numeric_not_boolean(cls.model_fields[info.field_name].annotation)
        if isinstance(value, bool) and numeric:
            raise ValueError(f"expected a number, got {value!r} (YAML reads yes/no/true/false as booleans)")
        return value

    def config_hash(self) -> str:
        """A stable hash of every setting: outputs record it as provenance."""
        return stable_hash(self.model_dump(mode="json"))


def stable_hash(value: Any) -> str:
    """16 hex digits of the sha256 of `value` as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def config_error(error: ValidationError, prefix: str = "", source: str | None = None) -> ConfigError:
    """The first problem of `error` as a ConfigError keyed by its path under `prefix` (up to four more in
    the reason), so every config mistake reads the same wherever it is found."""

    def path(problem: Any) -> str:
        return ".".join([prefix] * bool(prefix) + [str(part) for part in problem["loc"]]) or "<root>"

    problems = error.errors()
    reason = problems[0]["msg"]
    if len(problems) > 1:
        reason += " (also: " + "; ".join(f"{path(p)}: {p['msg']}" for p in problems[1:5]) + ")"
    if source is not None:
        reason += f" [in {source}]"
    return ConfigError(path(problems[0]), reason)


def checked(model: type[M], prefix: str, **values: Any) -> M:
    """`model(**values)`, with a bad value raised as the ConfigError of `prefix.<field>`."""
    try:
        return model(**values)
    except ValidationError as error:
        raise config_error(error, prefix) from None
