"""The registry of dataset adapters: a name (as a config names it) -> that adapter's build_manifest.

Every adapter returns a validated manifest DataFrame (DESIGN.md §2) and raises ManifestError naming
the metadata file and every offending row.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from mammo_ray.datasets import cbis_ddsm, cmmd, dicom_folder, generic_csv, inbreast, mias, rsna, vindr
from mammo_ray.errors import ConfigError

ADAPTERS: dict[str, Callable[..., pd.DataFrame]] = {
    "inbreast": inbreast.build_manifest,
    "mias": mias.build_manifest,
    "cbis_ddsm": cbis_ddsm.build_manifest,
    "csv": generic_csv.build_manifest,
    "rsna": rsna.build_manifest,
    "vindr": vindr.build_manifest,
    "cmmd": cmmd.build_manifest,
    "dicom_folder": dicom_folder.build_manifest,
}


def get_adapter(name: str, key_path: str = "dataset.adapter") -> Callable[..., pd.DataFrame]:
    """The build_manifest function registered as `name`; ConfigError naming `key_path` otherwise."""
    try:
        return ADAPTERS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            key_path, f"unknown adapter {name!r} (known: {', '.join(sorted(ADAPTERS))})"
        ) from None


def _accepted(parameters: list[inspect.Parameter]) -> str:
    return ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}" for p in parameters)


def build_with_adapter(name: str, args: Mapping[str, Any], key_path: str = "data.adapter.args") -> pd.DataFrame:
    """The manifest the adapter `name` builds from `args`, the argument names checked first.

    A missing or misspelt argument would otherwise be a TypeError traceback from inside the call; here it
    is one ConfigError naming `key_path`, every missing and every unknown name, and the accepted ones.
    A TypeError/ValueError of the adapter itself (a wrong type or choice) becomes a ConfigError too; its
    ManifestError (bad metadata) is raised as it is.
    """
    adapter = get_adapter(name, key_path)
    if not isinstance(args, Mapping) or not all(isinstance(key, str) for key in args):
        raise ConfigError(key_path, f"adapter {name!r} takes a mapping of argument names to values, got {args!r}")
    parameters = [
        p for p in inspect.signature(adapter).parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(adapter).parameters.values())
    names = [p.name for p in parameters]
    missing = [p.name for p in parameters if p.default is inspect.Parameter.empty and p.name not in args]
    unknown = [] if takes_any else [key for key in args if key not in names]
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"missing required argument(s) {', '.join(missing)}")
        for key in unknown:
            close = difflib.get_close_matches(key, names, n=1)
            problems.append(f"unknown argument {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(key_path, f"adapter {name!r}: {'; '.join(problems)}; it accepts {_accepted(parameters)}")
    try:
        return adapter(**args)
    except (TypeError, ValueError) as error:  # a wrong argument type or choice
        raise ConfigError(key_path, f"adapter {name!r}: {error}") from None
