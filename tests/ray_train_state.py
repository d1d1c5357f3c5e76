"""Reading Ray Train's own run state from storage, for tests that act once a checkpoint is committed."""

from __future__ import annotations

import json
from pathlib import Path

SNAPSHOT = "checkpoint_manager_snapshot.json"


def checkpoint_committed(run_folder: Path) -> bool:
    """True once the run's checkpoint manager snapshot (what a restarted run resumes from) names a checkpoint."""
    try:
        return bool(json.loads((run_folder / SNAPSHOT).read_text()).get("latest_checkpoint_result"))
    except (FileNotFoundError, ValueError):
        return False
