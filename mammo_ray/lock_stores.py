"""Where an output's lock object lives: a local file or an S3 object, with the atomic operations the lock needs.

Both stores offer create (exclusive), read, remove_if and replace_if (conditional on the version last seen:
the bytes locally, the ETag on S3); a conditional operation that finds the object changed or gone says so
(False, or LockChanged) instead of failing. Any other failure of the store is a StorageError naming the lock.

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
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mammo_ray import storage
from mammo_ray.errors import MammoRayError
from mammo_ray.s3_settings import S3Config

# The output lock's logger: one logger for everything the lock does, which operators filter on.
log = logging.getLogger("mammo_ray.output_lock")


class LockChanged(Exception):
    """A conditional write or delete found the lock object other than we last saw it (or gone)."""


@dataclass(frozen=True)
class SeenLock:
    data: bytes
    version: Any  # what a conditional operation compares: the bytes locally, the ETag on S3
    modified: float | None  # epoch seconds of the last write, when the store says


def _wrap(uri: str, action: str, error: Exception) -> MammoRayError:
    return storage.wrap_error(uri, action, error)


class LocalLockStore:
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

    def read(self) -> SeenLock | None:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
                return SeenLock(data, data, os.fstat(handle.fileno()).st_mtime)  # the content is the version
        except FileNotFoundError:
            return None
        except OSError as error:
            raise _wrap(self.uri, "read the lock", error) from error

    def remove_if(self, version: Any) -> bool:
        """Remove the lock if it still holds `version`; False when it changed (or is gone)."""
        folder, name = os.path.split(self.path)
        aside = os.path.join(folder, f".{name}.removing-{uuid.uuid4().hex}")  # '.': listings skip it
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
        """Overwrite the lock if it still holds `version` (else LockChanged); the new version."""
        current = self.read()
        if current is None or current.version != version:
            raise LockChanged()
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


_UNSUPPORTED = object()  # what `S3LockStore._conditional` returns once the store refuses conditional requests


class S3LockStore:
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

    def read(self) -> SeenLock | None:
        import fsspec.asyn

        async def get() -> SeenLock:
            answer = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            try:
                data = await answer["Body"].read()
            finally:
                answer["Body"].close()
            modified = answer.get("LastModified")
            return SeenLock(data, answer.get("ETag"), modified.timestamp() if modified is not None else None)

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
                    raise LockChanged()
                answer = self.fs.pipe_file(self.path, data)
            return (answer or {}).get("ETag")
        except LockChanged:
            raise
        except Exception as error:  # noqa: BLE001 - a backend's failure is classified here, as lock contention or a declared error
            if _lost_race(error, FileNotFoundError):
                raise LockChanged() from None
            raise _wrap(self.uri, "renew the lock", error) from error


def lock_store(lock_uri: str, s3: S3Config | None) -> LocalLockStore | S3LockStore:
    return S3LockStore(lock_uri, s3) if storage.is_remote(lock_uri) else LocalLockStore(lock_uri)
