"""One writer per output: a study holds a lock object on its output while it writes there.

The lock is the object `<output>/_lock.json`. It names its holder (host, pid, process start time, a
random token), when the lock was taken and when the holder last showed it is alive (UTC ISO times):

    with hold_output(config.output) as lock:
        ...                 # stages write their tables
        lock.check()        # still ours? (raises OutputLockedError when someone took it over)
        ...                 # write the ledger

While the lock is held a daemon thread rewrites the heartbeat every `heartbeat_s`. A second holder on
the same output (another process, another host, or another `hold_output` in this process) is refused
at once with OutputLockedError, unless the lock is stale:

* its heartbeat is older than `stale_after_s` (the holder died, hangs, or lost the store), or
* its holder ran on this machine (same host name, boot and pid namespace) and that process is gone:
  its pid is not alive, or is alive with another start time (the pid was reused).

A heartbeat more than CLOCK_SKEW_S ahead of this host's clock (the holder's clock is ahead, or the lock is
damaged) is watched on this process's own clock instead: unchanged for `stale_after_s`, it is stale; renewed
meanwhile, its holder is alive and the second holder is refused, told that the clocks disagree. A lock object
whose fields are malformed (a pid <= 0, a missing host, a time that is none) is an unreadable lock: refused
while recently written, taken over once older than `stale_after_s` by the store's clock.

A stale lock is taken over with a warning naming the old holder. The name starts with '_', so Parquet
dataset readers skip it; the files this module uses in passing start with '.', so listings skip them.

Atomicity. Creating the lock is exclusive: locally O_CREAT|O_EXCL, on S3 a conditional PUT
(If-None-Match: *, through s3fs `pipe_file(..., mode="create")`). A takeover removes only the stale
lock it judged (locally: rename it aside and compare; on S3: DeleteObject with If-Match on its ETag)
and then creates exclusively again, so of two takers at most one creates; the winner reads the lock
back after a short settle delay and checks its token. On S3 the heartbeat is a conditional overwrite
(If-Match on the ETag of our last write), so a holder that was presumed dead cannot overwrite the lock
of the process that took over; it finds out, logs an error and stops. Locally the heartbeat compares
the file with what it last wrote just before replacing it (a short race window that only matters if
a takeover happens within it, i.e. after this holder was already silent for `stale_after_s`).

Stores that ignore the conditional headers (some S3-compatible servers) degrade to last-writer-wins
for the PUT; the read-back after the settle delay then still makes all but one creator step back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any

import psutil

from mammo_ray import storage
from mammo_ray.config import S3Config
from mammo_ray.errors import ConfigError, MammoRayError, StorageError

log = logging.getLogger("mammo_ray.output_lock")

LOCK_NAME = "_lock.json"
DEFAULT_HEARTBEAT_S = 10.0
DEFAULT_STALE_AFTER_S = 60.0
#: How long a new holder waits before reading its lock back (S3 always, locally after a takeover).
SETTLE_S = 0.3
#: psutil's process start times of one process agree to well within this.
_START_TIME_TOLERANCE_S = 1.0
#: A heartbeat further ahead of this host's clock than this is suspect: synchronised clocks agree to within
#: milliseconds; beyond it the holder's clock is ahead or the lock is damaged (see OutputLock._watch).
CLOCK_SKEW_S = 5.0
#: Attempts to acquire when the lock keeps changing under us (released, taken over, being written).
_ACQUIRE_ATTEMPTS = 8
_FORMAT_VERSION = 1


class OutputLockedError(MammoRayError):
    """Another study holds (or took over) the lock on this output; `holder` says who, when known."""

    def __init__(self, output: str, holder: LockHolder | None, reason: str = "",
                 stale_after_s: float | None = None) -> None:
        self.output = output
        self.holder = holder
        self.reason = reason
        self.stale_after_s = stale_after_s
        who = f"held by {holder.describe()}" if holder is not None else "its lock cannot be read"
        why = f" ({reason})" if reason else ""
        after = f"{stale_after_s:g} s" if stale_after_s is not None else "a while"
        super().__init__(
            f"output {output} is in use by another study: {who}{why}. Only one study may write to an "
            f"output at a time: wait for that study to finish (a lock whose heartbeat is older than {after} "
            f"is taken over automatically), or use another output. The lock is "
            f"{storage.join(output, LOCK_NAME)}."
        )

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (Ray ships errors between processes)
        return (type(self), (self.output, self.holder, self.reason, self.stale_after_s))


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
                _parse_time(raw[name])
            except ValueError:
                return None, f"{name} {raw[name]!r} is not a time"
        return cls(host=raw["host"], pid=pid, process_started_at=raw["process_started_at"], token=raw["token"],
                   started_at=raw["started_at"], heartbeat_at=raw["heartbeat_at"],
                   boot_id=raw.get("boot_id", ""), pid_namespace=raw.get("pid_namespace", ""),
                   process_start_ticks=ticks), ""

    def heartbeat_age_s(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - _parse_time(self.heartbeat_at)

    def describe(self) -> str:
        age = self.heartbeat_age_s()
        when = f"{age:.1f} s ago" if age >= 0 else f"{-age:.1f} s in the future by this host's clock"
        return (f"pid {self.pid} on host {self.host} (process started {self.process_started_at}, "
                f"lock taken {self.started_at}, last heartbeat {self.heartbeat_at}, {when})")


# --- who we are ---------------------------------------------------------------------------------------------


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="microseconds")


def _parse_time(text: str) -> float:
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
                         process_started_at=_iso(psutil.Process().create_time()),
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
        recorded = _parse_time(holder.process_started_at)
    except ValueError:
        return None
    if abs(started - recorded) > _START_TIME_TOLERANCE_S:
        return (f"its process {holder.pid} on this host is no longer running (pid {holder.pid} now belongs "
                f"to a process started {_iso(started)})")
    return None


# --- the two stores -----------------------------------------------------------------------------------------


class _Changed(Exception):
    """A conditional write or delete found the lock object other than we last saw it (or gone)."""


@dataclass(frozen=True)
class _Seen:
    data: bytes
    version: Any  # what a conditional operation compares: the bytes locally, the ETag on S3
    modified: float | None  # epoch seconds of the last write, when the store says


def _wrap(uri: str, action: str, error: Exception) -> MammoRayError:
    return storage.wrap_error(uri, action, error)


class _LocalStore:
    verify_after_create = False  # O_EXCL is exclusive

    def __init__(self, lock_uri: str) -> None:
        self.uri = lock_uri
        self.path = storage.split_uri(lock_uri)[1]

    def create(self, data: bytes) -> Any:
        """Create the lock if there is none: the version written, or None when one exists."""
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        except OSError as error:
            raise _wrap(self.uri, "create the lock", error) from error
        os.close(descriptor)
        # The exclusive create made an empty file; its content appears whole (rename over it). A reader in
        # between sees an empty lock: recent, so live ("being written").
        storage.write_bytes(self.uri, data)
        return data

    def read(self) -> _Seen | None:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
                return _Seen(data, data, os.fstat(handle.fileno()).st_mtime)  # the content is the version
        except FileNotFoundError:
            return None
        except OSError as error:
            raise _wrap(self.uri, "read the lock", error) from error

    def remove_if(self, version: Any) -> bool:
        """Remove the lock if it still holds `version`; False when it changed (or is gone)."""
        aside = os.path.join(os.path.dirname(self.path), f".{LOCK_NAME}.removing-{uuid.uuid4().hex}")
        try:
            os.rename(self.path, aside)  # atomic: from here on only we see what we took
        except FileNotFoundError:
            return False
        except OSError as error:
            raise _wrap(self.uri, "remove the lock", error) from error
        try:
            with open(aside, "rb") as handle:
                taken = handle.read()
            if taken == version:
                return True
            # It changed since we judged it (a heartbeat, a new holder): put it back, unless a lock was
            # created meanwhile (os.link never replaces). That holder then reads back someone else's token.
            try:
                os.link(aside, self.path)
            except FileExistsError:
                log.warning("lock %s changed while being removed and a new one appeared meanwhile", self.uri)
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(aside)

    def replace_if(self, data: bytes, version: Any) -> Any:
        """Overwrite the lock if it still holds `version` (else _Changed); the new version."""
        current = self.read()
        if current is None or current.version != version:
            raise _Changed()
        storage.write_bytes(self.uri, data)
        return data


def _s3_code(error: BaseException) -> tuple[str, int]:
    """(S3 error code, HTTP status) of the botocore error behind `error`, or ('', 0)."""
    current: BaseException | None = error
    while current is not None:
        response = getattr(current, "response", None)
        if isinstance(response, dict) and "Error" in response:
            status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            return str(response["Error"].get("Code", "")), status
        current = current.__cause__ or current.__context__
    return "", 0


def _precondition_failed(error: BaseException) -> bool:
    code, status = _s3_code(error)
    return code == "PreconditionFailed" or status == 412


def _not_implemented(error: BaseException) -> bool:
    code, status = _s3_code(error)
    return code == "NotImplemented" or status == 501


def _lost_race(error: BaseException, *absent: type[BaseException]) -> bool:
    """The store's answer that the lock is not as we expected (412, or `absent`): contention, not a failure."""
    return isinstance(error, absent) or _precondition_failed(error)


_UNSUPPORTED = object()  # what `_S3Store._conditional` returns once the store refuses conditional requests


class _S3Store:
    verify_after_create = True  # moto (and stores that ignore If-None-Match) may let two PUTs through

    def __init__(self, lock_uri: str, s3: S3Config | None) -> None:
        self.uri = lock_uri
        self.fs, self.path = storage.filesystem(lock_uri, s3)
        self.bucket, self.key, _ = self.fs.split_path(self.path)
        self.conditional = True  # cleared when the store answers 501 to a conditional request

    def _conditional(self, request: Callable[[], Any]) -> Any:
        """`request()`, a conditional S3 call; `_UNSUPPORTED` (from then on) when the store answers 501."""
        if not self.conditional:
            return _UNSUPPORTED
        try:
            return request()
        except Exception as error:
            if not _not_implemented(error):
                raise
        log.warning("S3 store of %s does not support conditional requests; the lock falls back to "
                    "write-then-read-back", self.uri)
        self.conditional = False
        return _UNSUPPORTED

    def create(self, data: bytes) -> Any:
        try:
            answer = self._conditional(lambda: self.fs.pipe_file(self.path, data, mode="create"))  # If-None-Match: *
            if answer is _UNSUPPORTED:
                # No exclusive create: check, write, and let the read-back after the settle delay decide.
                if self.fs.exists(self.path):
                    return None
                answer = self.fs.pipe_file(self.path, data)
        except Exception as error:  # noqa: BLE001 - a backend's failure is classified here, as lock contention or a declared error
            if _lost_race(error, FileExistsError):
                return None
            raise _wrap(self.uri, "create the lock", error) from error
        return (answer or {}).get("ETag")

    def read(self) -> _Seen | None:
        import fsspec.asyn

        async def get() -> _Seen:
            answer = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            try:
                data = await answer["Body"].read()
            finally:
                answer["Body"].close()
            modified = answer.get("LastModified")
            return _Seen(data, answer.get("ETag"), modified.timestamp() if modified is not None else None)

        try:
            return fsspec.asyn.sync(self.fs.loop, get)
        except FileNotFoundError:
            return None
        except Exception as error:  # noqa: BLE001 - a backend's failure is classified here, as lock contention or a declared error
            raise _wrap(self.uri, "read the lock", error) from error

    def remove_if(self, version: Any) -> bool:
        try:
            deleted = _UNSUPPORTED
            if version:  # DELETE If-Match: <ETag>
                deleted = self._conditional(lambda: self.fs.call_s3(
                    "delete_object", Bucket=self.bucket, Key=self.key, IfMatch=version))
            if deleted is not _UNSUPPORTED:
                return True
            current = self.read()
            if current is None or current.version != version:
                return False
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key)
            return True
        except Exception as error:  # noqa: BLE001 - a backend's failure is classified here, as lock contention or a declared error
            if _lost_race(error, FileNotFoundError):
                return False
            raise _wrap(self.uri, "remove the lock", error) from error

    def replace_if(self, data: bytes, version: Any) -> Any:
        try:
            answer = _UNSUPPORTED
            if version:  # PUT If-Match: <ETag>
                answer = self._conditional(lambda: self.fs.pipe_file(self.path, data, IfMatch=version))
            if answer is _UNSUPPORTED:
                current = self.read()
                if current is None or current.version != version:
                    raise _Changed()
                answer = self.fs.pipe_file(self.path, data)
            return (answer or {}).get("ETag")
        except _Changed:
            raise
        except Exception as error:  # noqa: BLE001 - a backend's failure is classified here, as lock contention or a declared error
            if _lost_race(error, FileNotFoundError):
                raise _Changed() from None
            raise _wrap(self.uri, "renew the lock", error) from error


def _store_for(lock_uri: str, s3: S3Config | None) -> _LocalStore | _S3Store:
    return _S3Store(lock_uri, s3) if storage.is_remote(lock_uri) else _LocalStore(lock_uri)


# --- the lock -----------------------------------------------------------------------------------------------


class OutputLock:
    """A held lock on one output (see the module doc); made by `hold_output`."""

    def __init__(self, output_uri: str, *, heartbeat_s: float = DEFAULT_HEARTBEAT_S,
                 stale_after_s: float = DEFAULT_STALE_AFTER_S, s3: S3Config | None = None,
                 settle_s: float = SETTLE_S) -> None:
        if not heartbeat_s > 0:
            raise ConfigError("output_lock.heartbeat_s", f"must be positive, got {heartbeat_s}")
        if not stale_after_s > heartbeat_s:
            raise ConfigError("output_lock.stale_after_s",
                              f"must exceed heartbeat_s ({heartbeat_s:g} s), got {stale_after_s}")
        self.output = output_uri
        self.lock_uri = storage.join(output_uri, LOCK_NAME)
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.settle_s = settle_s
        self.token = uuid.uuid4().hex
        self.holder: LockHolder | None = None
        self._store = _store_for(self.lock_uri, s3)
        self._version: Any = None
        self._state = threading.Lock()  # one store operation on our lock at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: OutputLockedError | None = None
        self._released = False

    # acquiring ----------------------------------------------------------------------------------------------

    def acquire(self) -> OutputLock:
        took_over = False
        last: LockHolder | None = None
        for attempt in range(_ACQUIRE_ATTEMPTS):
            now = time.time()
            holder = LockHolder.of_this_process(self.token, _iso(now))
            version = self._store.create(holder.to_bytes())
            if version is not None:
                self._version = version
                if (took_over or self._store.verify_after_create) and not self._verify(holder):
                    continue  # our lock vanished in a competing takeover: try again
                self.holder = holder
                self._start_heartbeat()
                return self
            seen = self._store.read()
            if seen is None:
                continue  # released meanwhile
            current, problem = LockHolder.parse(seen.data)
            if current is None:
                age = time.time() - seen.modified if seen.modified is not None else None
                if age is None or age <= self.stale_after_s:
                    if attempt < _ACQUIRE_ATTEMPTS - 1:
                        time.sleep(0.1)  # most likely being written right now
                        continue
                    raise OutputLockedError(self.output, None, f"the lock object is empty or unreadable: {problem}",
                                            self.stale_after_s)
                reason = f"the lock object is unreadable ({problem}) and was last written {age:.0f} s ago"
                who = "an unknown holder"
            elif current.token == self.token:  # our own create, whose answer was lost and retried
                self.holder, self._version = current, seen.version
                self._start_heartbeat()
                return self
            else:
                last = current
                reason = stale_reason(current, self.stale_after_s)
                if reason is None and current.heartbeat_age_s() < -CLOCK_SKEW_S:
                    reason = self._watch(seen, current)
                    if reason is None:
                        continue  # released or taken by another meanwhile: judge it again
                if reason is None:
                    raise OutputLockedError(self.output, current, "", self.stale_after_s)
                who = current.describe()
            log.warning("output %s: taking over a stale lock held by %s: %s", self.output, who, reason)
            took_over = True
            self._store.remove_if(seen.version)  # False: it changed since we read it; judge it again
        raise OutputLockedError(self.output, last, "the lock kept changing hands while trying to take it",
                                self.stale_after_s)

    def _watch(self, seen: _Seen, holder: LockHolder) -> str | None:
        """A heartbeat ahead of this host's clock (the holder's clock is ahead, or the lock is damaged) cannot
        say how long its holder has been silent, and would keep the lock live until that time. Its silence is
        measured on this process's own clock instead, from when it first saw that heartbeat: unchanged for
        `stale_after_s`, the reason to take it over; renewed by its holder meanwhile, OutputLockedError (alive,
        the clocks disagree); released or taken by another, None."""
        ahead = -holder.heartbeat_age_s()
        log.warning("output %s: the lock's heartbeat is %.0f s ahead of this host's clock (the clocks of %s and "
                    "this host disagree, or the lock is damaged): watching it for %g s for a sign of life",
                    self.output, ahead, holder.host, self.stale_after_s)
        deadline = time.monotonic() + self.stale_after_s
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(self.heartbeat_s, left))
            now = self._store.read()
            if now is None:
                return None
            if now.version != seen.version:
                renewed = LockHolder.from_bytes(now.data)
                if renewed is None or renewed.token != holder.token:
                    return None
                raise OutputLockedError(
                    self.output, renewed, f"it is alive (renewed while watched) with a clock {ahead:.0f} s ahead of "
                    f"this host's: the clocks disagree; set both hosts' clocks right (NTP)", self.stale_after_s)
        return (f"its heartbeat lies {ahead:.0f} s in the future (the clocks disagree, or the lock is damaged) and "
                f"did not change for {self.stale_after_s:g} s")

    def _verify(self, holder: LockHolder) -> bool:
        """After the settle delay: is the lock ours? Raises OutputLockedError when another creator won."""
        time.sleep(self.settle_s)
        seen = self._store.read()
        if seen is None:
            return False
        current = LockHolder.from_bytes(seen.data)
        if current is None or current.token != holder.token:
            raise OutputLockedError(self.output, current, "another study took the lock at the same moment",
                                    self.stale_after_s)
        self._version = seen.version
        return True

    # holding ------------------------------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._heartbeat_loop, name=f"output-lock {self.output}",
                                        daemon=True)
        self._thread.start()

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._beat()
            except OutputLockedError as lost:
                self._lost = lost
                log.error("output %s: lost the lock, no longer renewing it: %s", self.output, lost)
                return
            except Exception as error:  # noqa: BLE001 - a store that is briefly away must not end the study
                log.warning("output %s: could not renew the lock (%s: %s); retrying in %g s", self.output,
                            type(error).__name__, error, self.heartbeat_s)

    def _beat(self) -> None:
        with self._state:
            if self._stop.is_set() or self.holder is None:
                return
            renewed = replace(self.holder, heartbeat_at=_iso(time.time()))
            try:
                self._version = self._store.replace_if(renewed.to_bytes(), self._version)
            except _Changed:
                seen = self._read_settled()
                current = LockHolder.from_bytes(seen.data) if seen is not None else None
                if current is not None and current.token == self.token:
                    self._version = seen.version  # our own write landed (an answer lost and retried)
                    self.holder = current
                    return
                raise OutputLockedError(
                    self.output, current,
                    "the lock was taken over" if current is not None else "the lock object was removed",
                    self.stale_after_s) from None
            self.holder = renewed

    def _read_settled(self) -> _Seen | None:
        """The lock as the store has it; a missing lock is read once more after the settle delay (locally a
        competing taker sets the lock aside for a moment before putting back one it must not remove)."""
        seen = self._store.read()
        if seen is None:
            time.sleep(self.settle_s)
            seen = self._store.read()
        return seen

    @property
    def lost(self) -> bool:
        """True once the heartbeat found the lock taken over or removed."""
        return self._lost is not None

    def check(self) -> None:
        """Raise OutputLockedError unless the lock on the store still holds our token (one read)."""
        if self._released:
            raise OutputLockedError(self.output, None, "this holder already released the lock",
                                    self.stale_after_s)
        if self._lost is not None:
            raise self._lost
        seen = self._read_settled()
        current = LockHolder.from_bytes(seen.data) if seen is not None else None
        if current is None or current.token != self.token:
            raise OutputLockedError(
                self.output, current,
                "the lock was taken over" if current is not None else "the lock object was removed",
                self.stale_after_s)

    # releasing ----------------------------------------------------------------------------------------------

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it still holds our token. Never raises."""
        if self._released:
            return
        self._released = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.heartbeat_s))
        if not self._state.acquire(timeout=60):  # a heartbeat stuck in a store call: do not hang the exit
            log.warning("output %s: could not remove the lock %s (a heartbeat is stuck); it goes stale after "
                        "%g s", self.output, self.lock_uri, self.stale_after_s)
            return
        try:
            try:
                seen = self._store.read()
                current = LockHolder.from_bytes(seen.data) if seen is not None else None
                if seen is None:
                    log.warning("output %s: the lock was already gone at release", self.output)
                elif current is None or current.token != self.token:
                    who = current.describe() if current is not None else "an unreadable lock"
                    log.error("output %s: not removing the lock: it now belongs to %s", self.output, who)
                elif not self._store.remove_if(seen.version):
                    log.error("output %s: the lock changed while being released; left in place", self.output)
            except Exception as error:  # noqa: BLE001 - release runs in `finally`: never mask the real error
                log.warning("output %s: could not remove the lock %s (%s); it goes stale after %g s",
                            self.output, self.lock_uri, error, self.stale_after_s)
        finally:
            self._state.release()

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@contextlib.contextmanager
def hold_output(output_uri: str, *, heartbeat_s: float | None = None, stale_after_s: float | None = None,
                s3: S3Config | None = None) -> Iterator[OutputLock]:
    """Hold the lock on `output_uri` for the duration of the block; OutputLockedError when another holds it.

    `heartbeat_s` / `stale_after_s`: None, DEFAULT_HEARTBEAT_S / DEFAULT_STALE_AFTER_S as they are when called.
    `s3` is the study's S3Config (endpoint, region) for an s3:// output; None takes the environment.
    """
    lock = OutputLock(output_uri, heartbeat_s=DEFAULT_HEARTBEAT_S if heartbeat_s is None else heartbeat_s,
                      stale_after_s=DEFAULT_STALE_AFTER_S if stale_after_s is None else stale_after_s,
                      s3=s3).acquire()
    try:
        yield lock
    finally:
        lock.release()


def read_lock(output_uri: str, s3: S3Config | None = None) -> LockHolder | None:
    """Who holds the lock on `output_uri` (None: nobody, or the lock is unreadable). For status displays."""
    seen = _store_for(storage.join(output_uri, LOCK_NAME), s3).read()
    return LockHolder.from_bytes(seen.data) if seen is not None else None


# --- before any work: can the output be written at all? -----------------------------------------------------


def check_output_writable(output_uri: str, *, s3: S3Config | None = None) -> None:
    """Raise ConfigError('output', ...) when `output_uri` cannot be a study's output; cheap (a probe write).

    Refused: an unknown scheme, a path (or S3 key) that is an existing file, a local folder that cannot be
    written (or created), an S3 bucket that does not exist or cannot be written.
    """
    try:
        scheme, path = storage.split_uri(output_uri)
    except StorageError as error:
        raise ConfigError("output", f"{output_uri!r}: {error.reason}") from None
    if scheme == "file":
        _check_local(output_uri, path)
    else:
        _check_s3(output_uri, path, s3)


def _probe_name() -> str:
    return f".mammo-ray-write-probe-{uuid.uuid4().hex}"


def _check_local(output_uri: str, path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError("output", f"{output_uri} is an existing file, not a folder")
    existing = path
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        raise ConfigError("output", f"{output_uri} cannot be created: {existing} is a file, not a folder")
    if existing != path:  # created by the study later; here only ask whether it could be
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError("output",
                              f"{output_uri} cannot be created: no permission to write in {existing}")
        return
    probe = os.path.join(path, _probe_name())
    try:
        descriptor = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as error:
        raise ConfigError("output", f"{output_uri} is not writable: {error.strerror or error}") from None
    os.close(descriptor)
    with contextlib.suppress(OSError):
        os.remove(probe)


def _check_s3(output_uri: str, path: str, s3: S3Config | None) -> None:
    fs, _ = storage.filesystem(output_uri, s3)
    bucket, _, key = path.partition("/")
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        raise ConfigError("output", f"{output_uri}: bucket {bucket!r} does not exist") from None
    except PermissionError:
        raise ConfigError("output", f"{output_uri}: access to bucket {bucket!r} is denied") from None
    except Exception as error:  # noqa: BLE001 - any failure to reach the output is a config error naming it
        raise ConfigError("output", f"{output_uri}: cannot reach bucket {bucket!r}: "
                                    f"{type(error).__name__}: {error}") from None
    if key:
        try:
            fs.call_s3("head_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            pass
        except Exception as error:  # noqa: BLE001 - a backend's failure is classified here, as lock contention or a declared error
            raise ConfigError("output", f"{output_uri}: cannot check the key: {type(error).__name__}: "
                                        f"{error}") from None
        else:
            raise ConfigError("output", f"{output_uri} is an existing object (a file), not a folder prefix")
    probe = "/".join(part for part in (key, _probe_name()) if part)
    try:
        fs.call_s3("put_object", Bucket=bucket, Key=probe, Body=b"")
    except Exception as error:  # noqa: BLE001 - any failure to reach the output is a config error naming it
        raise ConfigError("output",
                          f"{output_uri} is not writable: {type(error).__name__}: {error}") from None
    with contextlib.suppress(Exception):
        fs.call_s3("delete_object", Bucket=bucket, Key=probe)
