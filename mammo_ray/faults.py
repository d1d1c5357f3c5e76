"""Named crash points, so that reliability tests kill a process at an exact place instead of racing a timer.

Inert in production: `crash_point` returns at once unless the environment variable MAMMO_RAY_FAULTS
names a folder. Every process of a local Ray inherits the variable from the process that started it,
so a test sets it before Ray starts and arms a point later by writing `<folder>/<point>.json`:

    {"after": 3}                        the 3rd time one process passes the point, it dies (SIGKILL)
    {"after": 1, "take_session": 4242}  ... and takes every process of session 4242 with it (a study run
                                        started in its own session: the driver and the Ray it started)
    {"after": 2, "hold": true}          the 2nd time, it stops there instead of dying: it is caught mid-work
                                        for as long as it lives (a test then takes its Ray node away)

A session, not a process group: Ray starts each worker in a process group of its own, so killing the
driver's group leaves the other Tune trials or inference actors alive long enough to write more results,
which is not what a machine that loses power does.

A point fires once across every process (an O_EXCL marker file `<point>.fired` decides which one), so a
restarted worker passing the same point again lives on: that is what a real transient fault looks like.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from pathlib import Path

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
    while plan.get("hold"):  # until the process goes with its node
        time.sleep(0.1)
    session = plan.get("take_session")
    if session:
        kill_session(int(session))
    os.kill(os.getpid(), signal.SIGKILL)


def session_processes(session: int) -> list[int]:
    """The pids of every live process whose session id is `session` (Linux /proc); zombies are dead."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended while we looked
            continue
        if len(fields) > 3 and int(fields[3]) == session and fields[0] not in ("Z", "X"):
            pids.append(int(stat.parent.name))
    return pids


def kill_session(session: int) -> None:
    """SIGKILL every process of `session`, the calling process last (if it belongs to it)."""
    me = os.getpid()
    for _ in range(3):  # again for any process forked while we scanned (a raylet starting a worker)
        for pid in session_processes(session):
            if pid != me:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    if os.getsid(0) == session:
        os.kill(me, signal.SIGKILL)


def arm(folder: str, name: str, after: int = 1, take_session: int | None = None, hold: bool = False) -> None:
    """Arm point `name` (see the module doc). For tests and drills; `disarm` undoes it."""
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}; choose from {sorted(POINTS)}")
    plan: dict[str, int | str | bool] = {"after": after, "token": uuid.uuid4().hex}
    if take_session is not None:
        plan["take_session"] = take_session
    if hold:
        plan["hold"] = True
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
