"""The current table or why not: a result table is read only when its provenance names the inputs its reader
expects (the current manifest and config); otherwise the reader learns why it is not used. Read by the report
and by the stages that build on other stages' tables (docs/design.md, "Provenance").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from mammo_ray import storage, tables


def read_current(uri: str, expected: Mapping[str, Any] | None) -> tuple[pd.DataFrame | None, str | None]:
    """(the table at `uri`, None) when its provenance names the `expected` inputs (None expects nothing);
    (None, None) when there is no such table; (None, why not) when it was computed on other inputs, the reason
    naming the stage to rerun. A store failure is raised, never read as 'not there'."""
    current = tables.describes(uri, expected)
    if current is None:
        return None, None
    if not current:
        stage = (tables.read_provenance(uri) or {}).get("stage", "its")
        return None, ("computed on other inputs than the current manifest and config (an earlier manifest, other "
                      f"labels, embeddings or weights): it is out of date and not shown; rerun the {stage} stage")
    return storage.read_table(uri).to_pandas(), None


__all__ = ["read_current"]
