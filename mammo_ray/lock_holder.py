"""Who holds an output's lock, and whether that holder is still alive.

`LockHolder` is the content of the lock object `<output>/_lock.json` (see mammo_ray.output_lock): host, pid,
process start time and start ticks, boot id and pid namespace, a random token, when the lock was taken and
its last heartbeat (UTC ISO times). `LockHolder.parse` checks every field, so a malformed value never reaches
`stale_reason`, which judges a holder dead when its heartbeat is older than `stale_after_s`, or when it ran on
this machine (same host name, boot and pid namespace) and its process is gone: its pid is not alive, or is
alive with another start (the pid was reused). A holder on another machine is judged by its heartbeat only.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import psutil

#: psutil's process start times of one process agree to well within this.
_START_TIME_TOLERANCE_S = 1.0
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class LockHolder:
    """The content of a lock object: who holds it and since when (times are UTC ISO 8601)."""

    host: str
    pid: int
    process_started_at: str
    token: str
    started_at: str
    heartbeat_at: str
    boot_id: str = ""  # Linux: /proc/sys/kernel/random/boot_id; '' elsewhere
    pid_namespace: str = ""  # Linux: the pid namespace (containers on one host share its name)
    # Linux: the process's start in clock ticks since boot (/proc/<pid>/stat), 0 elsewhere. Unlike a wall-clock
    # start time (boot time + ticks), it does not move when the system clock is stepped.
    process_start_ticks: int = 0

    @classmethod
    def of_this_process(cls, token: str, started_at: str, heartbeat_at: str | None = None) -> LockHolder:
        me = _this_process()
        return cls(host=me["host"], pid=me["pid"], process_started_at=me["process_started_at"], token=token,
                   started_at=started_at, heartbeat_at=heartbeat_at or started_at, boot_id=me["boot_id"],
                   pid_namespace=me["pid_namespace"], process_start_ticks=me["process_start_ticks"])

    def to_bytes(self) -> bytes:
        return json.dumps({"version": _FORMAT_VERSION, **asdict(self)}, indent=2, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LockHolder | None:
        """The holder a lock object names, or None when it is empty or not a lock (being written, damaged)."""
        return cls.parse(data)[0]

    @classmethod
    def parse(cls, data: bytes) -> tuple[LockHolder | None, str]:
        """(the holder, '') or (None, what is wrong with the object). Every field is checked here, so that no
        malformed value (a pid of -1, a garbage time) reaches the judgement of staleness."""
        try:
            raw = json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None, "empty (being written?)" if not data.strip() else "not JSON"
        if not isinstance(raw, dict):
            return None, "not a JSON object"
        texts = ("host", "token", "process_started_at", "started_at", "heartbeat_at")
        bad = [name for name in texts if not (isinstance(raw.get(name), str) and raw[name].strip())]
        bad += [name for name in ("boot_id", "pid_namespace") if not isinstance(raw.get(name, ""), str)]
        if bad:
            return None, f"{', '.join(bad)} missing or not text"
        pid = raw.get("pid")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            return None, f"pid {pid!r} is not a positive integer"
        ticks = raw.get("process_start_ticks", 0)
        if isinstance(ticks, bool) or not isinstance(ticks, int) or ticks < 0:
            return None, f"process_start_ticks {ticks!r} is not a non-negative integer"
        for name in ("process_started_at", "started_at", "heartbeat_at"):
            try:
                parse_time(raw[name])
            except ValueError:
                return None, f"{name} {raw[name]!r} is not a time"
        return cls(host=raw["host"], pid=pid, process_started_at=raw["process_started_at"], token=raw["token"],
                   started_at=raw["started_at"], heartbeat_at=raw["heartbeat_at"],
                   boot_id=raw.get("boot_id", ""), pid_namespace=raw.get("pid_namespace", ""),
                   process_start_ticks=ticks), ""

    def heartbeat_age_s(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - parse_time(self.heartbeat_at)

    def describe(self) -> str:
        age = self.heartbeat_age_s()
        when = f"{age:.1f} s ago" if age >= 0 else f"{-age:.1f} s in the future by this host's clock"
        return (f"pid {self.pid} on host {self.host} (process started {self.process_started_at}, "
                f"lock taken {self.started_at}, last heartbeat {self.heartbeat_at}, {when})")


# --- who we are ---------------------------------------------------------------------------------------------


def iso_time(epoch: float) -> str:
    """Epoch seconds as the lock writes times: UTC ISO 8601 with microseconds."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="microseconds")


def parse_time(text: str) -> float:
    """Epoch seconds of an ISO 8601 time (one without a zone is UTC); ValueError when it is not a time."""
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


_identity: dict[str, Any] = {}


def _this_process() -> dict[str, Any]:
    if _identity.get("pid") != os.getpid():  # computed once per process (a forked child recomputes)
        _identity.clear()
        _identity.update(host=socket.gethostname(), pid=os.getpid(),
                         process_started_at=iso_time(psutil.Process().create_time()),
                         boot_id=_read_text("/proc/sys/kernel/random/boot_id"),
                         pid_namespace=_pid_namespace(), process_start_ticks=_start_ticks(os.getpid()))
    return _identity


def _start_ticks(pid: int) -> int:
    """Linux: field 22 of /proc/<pid>/stat (after the parenthesised name, which may hold spaces); 0 elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return 0
    fields = stat.rpartition(")")[2].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else 0


def stale_reason(holder: LockHolder, stale_after_s: float, now: float | None = None) -> str | None:
    """Why the lock of `holder` may be taken over, or None while it is live."""
    age = holder.heartbeat_age_s(now)
    if age > stale_after_s:
        return f"no heartbeat for {age:.0f} s (stale after {stale_after_s:g} s)"
    me = _this_process()
    here = (me["host"], me["boot_id"], me["pid_namespace"])
    if (holder.host, holder.boot_id, holder.pid_namespace) != here:
        return None  # another machine (or container): only its heartbeat tells
    if holder.process_start_ticks and me["process_start_ticks"]:  # both on Linux: immune to clock steps
        ticks = _start_ticks(holder.pid)
        if ticks == holder.process_start_ticks:
            return None
        if not ticks:
            return f"its process {holder.pid} on this host is no longer running"
        return (f"its process {holder.pid} on this host is no longer running (pid {holder.pid} now belongs to a "
                f"process started {ticks} clock ticks after boot, not {holder.process_start_ticks})")
    try:
        started = psutil.Process(holder.pid).create_time()
    except psutil.NoSuchProcess:
        return f"its process {holder.pid} on this host is no longer running"
    except psutil.AccessDenied:
        return None  # alive, and not ours to inspect
    try:
        recorded = parse_time(holder.process_started_at)
    except ValueError:
        return None
    if abs(started - recorded) > _START_TIME_TOLERANCE_S:
        return (f"its process {holder.pid} on this host is no longer running (pid {holder.pid} now belongs "
                f"to a process started {iso_time(started)})")
    return None
