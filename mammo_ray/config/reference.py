"""The configuration reference (README.md, "Configuration"): every key of the study config with its default and
meaning, one Markdown table per section, generated from the config types so that it cannot drift from them
(`python -m mammo_ray.readme` writes it into the README; `tests/test_readme_reference.py` compares).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from mammo_ray.config.study_config import StudyConfig


@dataclass(frozen=True)
class Entry:
    """One key: its dotted path (`[]` for a list's items), its default as YAML, what it means."""

    key: str
    default: str
    meaning: str


def _models(annotation: Any) -> tuple[type[BaseModel], bool]:
    """The config model a field holds (directly, optionally, or as a list's items) and whether it is a list;
    (None, False) for a plain value or a mapping (a mapping's keys are the user's, documented by its field)."""
    if typing.get_origin(annotation) is dict:
        return None, False  # type: ignore[return-value]
    if typing.get_origin(annotation) is list:
        items = typing.get_args(annotation)[0]
        return (items, True) if isinstance(items, type) and issubclass(items, BaseModel) else (None, False)  # type: ignore[return-value]
    for member in typing.get_args(annotation) or (annotation,):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member, False
    return None, False  # type: ignore[return-value]


def _yaml(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_defaults=True)
    elif isinstance(value, (list, tuple)):
        value = [v.model_dump(mode="json", exclude_defaults=True) if isinstance(v, BaseModel) else v for v in value]
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel) and not value.model_dump(exclude_defaults=True):
        return "its keys' defaults"
    return f"`{_yaml(value)}`"


def entries(model: type[BaseModel] = StudyConfig, prefix: str = "") -> list[Entry]:
    """Every key under `model`, depth first in declaration order; a section's own row before its keys'."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        inner, is_list = _models(field.annotation)
        rows.append(Entry(key, _default(field), (field.description or "").strip()))
        if inner is not None:
            rows.extend(entries(inner, f"{key}[]." if is_list else f"{key}."))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """One table per top-level section, the study's own keys first."""
    sections: dict[str, list[Entry]] = {}
    for entry in entries():
        top = entry.key.split(".")[0].split("[")[0]
        sections.setdefault(top if "." in entry.key or _models(StudyConfig.model_fields[top].annotation)[0]
                            else "study", []).append(entry)
    parts = []
    for section, rows in sections.items():
        parts.append(f"#### `{section}`\n" if section != "study" else "#### the study\n")
        parts.append("| key | default | meaning |\n|---|---|---|")
        parts.extend(f"| `{row.key}` | {_cell(row.default)} | {_cell(row.meaning)} |" for row in rows)
        parts.append("")
    return "\n".join(parts).strip()
