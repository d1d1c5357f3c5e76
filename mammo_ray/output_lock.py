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
dataset readers skip it; the files the lock uses in passing start with '.', so listings skip them.
Who the holder is and when it counts as dead: mammo_ray.lock_holder; how the lock object is created,
replaced and removed atomically, locally and on S3: mammo_ray.lock_stores.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from mammo_ray import storage
from mammo_ray.errors import ConfigError, MammoRayError
from mammo_ray.lock_holder import LockHolder, iso_time, stale_reason
from mammo_ray.lock_stores import LockChanged, SeenLock, lock_store
from mammo_ray.s3_settings import S3Config

log = logging.getLogger("mammo_ray.output_lock")

LOCK_NAME = "_lock.json"
DEFAULT_HEARTBEAT_S = 10.0
DEFAULT_STALE_AFTER_S = 60.0
#: How long a new holder waits before reading its lock back (S3 always, locally after a takeover).
SETTLE_S = 0.3
#: A heartbeat further ahead of this host's clock than this is suspect: synchronised clocks agree to within
#: milliseconds; beyond it the holder's clock is ahead or the lock is damaged (see OutputLock._watch).
CLOCK_SKEW_S = 5.0
#: Attempts to acquire when the lock keeps changing under us (released, taken over, being written).
_ACQUIRE_ATTEMPTS = 8


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
        self._store = lock_store(self.lock_uri, s3)
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
            holder = LockHolder.of_this_process(self.token, iso_time(now))
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

    def _watch(self, seen: SeenLock, holder: LockHolder) -> str | None:
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
            renewed = replace(self.holder, heartbeat_at=iso_time(time.time()))
            try:
                self._version = self._store.replace_if(renewed.to_bytes(), self._version)
            except LockChanged:
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

    def _read_settled(self) -> SeenLock | None:
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
    seen = lock_store(storage.join(output_uri, LOCK_NAME), s3).read()
    return LockHolder.from_bytes(seen.data) if seen is not None else None

