"""The registry of dataset adapters: a name (as a config names it) -> that adapter's build_manifest.

Every adapter returns a validated manifest DataFrame (DESIGN.md §2) and raises ManifestError naming
the metadata file and every offending row.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from mammo_ray.datasets import cbis_ddsm, generic_csv, inbreast, mias
from mammo_ray.errors import ConfigError

ADAPTERS: dict[str, Callable[..., pd.DataFrame]] = {
    "inbreast": inbreast.build_manifest,
    "mias": mias.build_manifest,
    "cbis_ddsm": cbis_ddsm.build_manifest,
    "csv": generic_csv.build_manifest,
}


def get_adapter(name: str, key_path: str = "dataset.adapter") -> Callable[..., pd.DataFrame]:
    """The build_manifest function registered as `name`; ConfigError naming `key_path` otherwise."""
    try:
        return ADAPTERS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            key_path, f"unknown adapter {name!r} (known: {', '.join(sorted(ADAPTERS))})"
        ) from None
