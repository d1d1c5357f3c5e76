"""The registry of dataset adapters: a name (as a config names it) -> that adapter's build_manifest.

Every adapter returns a validated manifest DataFrame (docs/design.md, "Manifest") and raises ManifestError naming
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
from mammo_ray.privacy import pseudonymise_paths

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
#: Adapters whose paths become locators unless the config says otherwise: a plain DICOM folder is whatever a
#: hospital exported, and exports name folders and files after the patient. The published collections'
#: paths hold their own public ids.
PSEUDONYMISED_BY_DEFAULT: frozenset[str] = frozenset({"dicom_folder"})


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


def build_source(
    name: str, args: Mapping[str, Any], pseudonymise: bool | None = None, key_path: str = "data.adapter",
) -> pd.DataFrame:
    """`build_with_adapter`, with the paths replaced by pseudonymous locators (mammo_ray.privacy) when
    `pseudonymise` (None: `PSEUDONYMISED_BY_DEFAULT`), keyed by `args["salt"]`; the real paths stay in
    memory, in the frame's `source_uri` column. An adapter that takes no salt itself is not given it."""
    if not (name in PSEUDONYMISED_BY_DEFAULT if pseudonymise is None else pseudonymise):
        return build_with_adapter(name, args, f"{key_path}.args")
    salt = args.get("salt") if isinstance(args, Mapping) else None
    if not isinstance(salt, str) or len(salt) < dicom_folder.MIN_SALT_LENGTH:
        raise ConfigError(f"{key_path}.args.salt", f"pseudonymised paths need a secret salt of at least "
                                                   f"{dicom_folder.MIN_SALT_LENGTH} characters")
    takes_salt = "salt" in inspect.signature(get_adapter(name, f"{key_path}.name")).parameters
    own = args if takes_salt else {key: value for key, value in args.items() if key != "salt"}
    return pseudonymise_paths(build_with_adapter(name, own, f"{key_path}.args"), salt)
