"""Named crash points, so that reliability tests kill a process at an exact place instead of racing a timer.

Inert in production: `crash_point` returns at once unless the environment variable MAMMO_RAY_FAULTS
names a folder. Every process of a local Ray inherits the variable from the process that started it,
so a test sets it before Ray starts and arms a point later by writing `<folder>/<point>.json`:

    {"after": 3}                      the 3rd time one process passes the point, it dies (SIGKILL)
    {"after": 1, "kill_group": 4242}  ... and takes the whole process group 4242 with it (a study run
                                      started in its own session: the driver and the Ray it started)

A point fires once across every process (an O_EXCL marker file `<point>.fired` decides which one), so a
restarted worker passing the same point again lives on: that is what a real transient fault looks like.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import uuid

FAULTS_ENV = "MAMMO_RAY_FAULTS"

#: The points the library passes, and where.
POINTS: dict[str, str] = {
    "inference.actor_batch": "an inference actor, before it runs a batch (embed, zero_shot)",
    "train.batch": "a Ray Train worker, after each training batch",
    "grid.unit_written": "a Ray Tune trial, after its unit's results are written",
}

_passes: dict[tuple[str, str], int] = {}


def crash_point(name: str) -> None:
    """Die here (SIGKILL, no cleanup) when a test armed `name` and this is its moment; else return."""
    folder = os.environ.get(FAULTS_ENV)
    if not folder:
        return
    try:
        with open(os.path.join(folder, f"{name}.json"), encoding="utf-8") as handle:
            plan = json.load(handle)
    except (FileNotFoundError, ValueError):
        return
    key = (name, str(plan.get("token", "")))  # a re-armed point counts afresh in long-lived workers
    _passes[key] = _passes.get(key, 0) + 1
    if _passes[key] < int(plan.get("after", 1)):
        return
    try:
        marker = os.open(os.path.join(folder, f"{name}.fired"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(marker, str(os.getpid()).encode())
    os.close(marker)
    group = plan.get("kill_group")
    if group:
        os.killpg(int(group), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def arm(folder: str, name: str, after: int = 1, kill_group: int | None = None) -> None:
    """Arm point `name` (see the module doc). For tests and drills; `disarm` undoes it."""
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}; choose from {sorted(POINTS)}")
    plan: dict[str, int | str] = {"after": after, "token": uuid.uuid4().hex}
    if kill_group is not None:
        plan["kill_group"] = kill_group
    path = os.path.join(folder, f"{name}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(plan, handle)
    os.replace(path + ".tmp", path)  # a process never reads half a plan


def fired(folder: str, name: str) -> bool:
    return os.path.exists(os.path.join(folder, f"{name}.fired"))


def disarm(folder: str, name: str) -> None:
    for suffix in (".json", ".fired"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name + suffix))
