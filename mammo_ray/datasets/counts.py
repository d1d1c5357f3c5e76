"""What a source made of its metadata: rows read, rows kept, and every dropped row counted by its reason.

An adapter drops rows on purpose (an image absent from a partial download, another split, a breast without a
clinical row): each drop is counted here, never silent. The counts travel with the manifest frame the adapter
returns (`Tally.attach` puts them in `frame.attrs`, as JSON values pyarrow can serialise; `counts_of` reads them
back), so every adapter keeps its plain `build_manifest(...) -> DataFrame`, and the study logs the counts and
writes them into the manifest's provenance.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

#: Why a row was dropped (the keys of SourceCounts.dropped).
MISSING_FILE = "missing file"
OTHER_SPLIT = "other split"
UNLABELLED = "unlabelled"
REPEATED = "listed again"

_ATTR = "mammo_ray.source_counts"


@dataclass(frozen=True)
class SourceCounts:
    """`read` rows (or images, where a collection writes several rows per image) of a source, `kept` of them in
    its manifest, `dropped` the others by reason; `looked_in` is where its images were looked for."""

    looked_in: str
    read: int
    kept: int
    dropped: Mapping[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"looked_in": self.looked_in, "read": self.read, "kept": self.kept, "dropped": dict(self.dropped)}

    def describe(self) -> str:
        """'10 rows read, 8 kept, 2 dropped (missing file: 2); images looked for in <where>'."""
        dropped = sum(self.dropped.values())
        reasons = f" ({', '.join(f'{reason}: {n}' for reason, n in sorted(self.dropped.items()))})" if dropped else ""
        return (f"{self.read} rows read, {self.kept} kept, {dropped} dropped{reasons}; images looked for in "
                f"{self.looked_in}")

    @classmethod
    def whole(cls, frame: pd.DataFrame, looked_in: str) -> SourceCounts:
        """A source that drops nothing (a manifest file, the synthetic cohort): every row read is kept."""
        return cls(looked_in=looked_in, read=len(frame), kept=len(frame))


class Tally:
    """The counts of one adapter run, filled while it walks its rows: `read` what it reads, `drop` each row it
    leaves out, then `attach` them to the manifest it returns (kept = that manifest's rows)."""

    def __init__(self, looked_in: str, read: int = 0) -> None:
        self.looked_in = looked_in
        self.read = read
        self._dropped: Counter[str] = Counter()

    def drop(self, reason: str, rows: int = 1) -> None:
        if rows:  # a reason with no row is no drop: it stays out of the counts
            self._dropped[reason] += rows

    def attach(self, frame: pd.DataFrame) -> pd.DataFrame:
        frame.attrs[_ATTR] = SourceCounts(self.looked_in, self.read, len(frame), dict(self._dropped)).as_dict()
        return frame


def counts_of(frame: pd.DataFrame) -> SourceCounts | None:
    """The counts an adapter attached to the manifest it returned; None for a frame no adapter built."""
    found = frame.attrs.get(_ATTR)
    return None if found is None else SourceCounts(**found)
