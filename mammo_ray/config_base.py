"""The base of every config section, in a module of its own so stage modules can define their
sections without importing the whole study config."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


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
        if isinstance(value, bool) and info.field_name is not None:
            if _numeric_not_boolean(cls.model_fields[info.field_name].annotation):
                raise ValueError(f"expected a number, got {value!r} (YAML reads yes/no/true/false as booleans)")
        return value
