"""The declared error types. Every failure the library raises on bad input is one of these.

Each carries the file, key or rows it is about, so the message alone tells a user what to fix.
"""

from __future__ import annotations

from collections.abc import Sequence


class MammoRayError(Exception):
    """Base of every error mammo-ray raises on purpose."""


class _FileError(MammoRayError):
    """A failure about one file: `uri` names it, `reason` says what is wrong."""

    prefix = ""

    def __init__(self, uri: str, reason: str) -> None:
        self.uri = uri
        self.reason = reason
        super().__init__(f"{self.prefix}{uri}: {reason}")

    def __reduce__(self) -> tuple:  # errors cross process boundaries (Ray pickles them): keep the fields
        return type(self), (self.uri, self.reason)


class StorageError(_FileError):
    """A URI could not be resolved, read or written."""


class StoreUnavailableError(MammoRayError):
    """The store itself failed (unreachable, timing out, throttling or 5xx beyond the retries, credentials
    refused): not a problem of one file. A stage that meets it fails and records nothing as done, so the
    rerun does the work; it never becomes an errors row."""

    def __init__(self, uri: str, reason: str) -> None:
        self.uri = uri
        self.reason = reason
        super().__init__(f"storage unavailable while reading or writing {uri}: {reason}. Nothing of this stage "
                         "was recorded as done: rerun the study once the store is back")

    def __reduce__(self) -> tuple:
        return type(self), (self.uri, self.reason)


class StaleTableError(MammoRayError):
    """A table does not describe the current manifest and config (another manifest, other weights or
    settings, or an interrupted run): readers refuse it instead of computing on the wrong rows."""

    def __init__(self, uri: str, reason: str) -> None:
        self.uri = uri
        self.reason = reason
        super().__init__(f"{uri}: {reason}")

    def __reduce__(self) -> tuple:
        return type(self), (self.uri, self.reason)


class DecodeError(_FileError):
    """An image file could not be decoded into pixels."""

    prefix = "cannot decode "


class ManifestError(MammoRayError):
    """A manifest (or the metadata an adapter reads) breaks the contract.

    `problems` holds one line per offending row or key, so a user sees all of them at once.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        shown = "\n  ".join(self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"invalid manifest {source}: {len(self.problems)} problem(s)\n  {shown}{more}")

    def __reduce__(self) -> tuple:
        return type(self), (self.source, self.problems)


class ConfigError(MammoRayError):
    """A configuration value is wrong; `key_path` names it (e.g. `storage.s3.endpoint_url`)."""

    def __init__(self, key_path: str, reason: str) -> None:
        self.key_path = key_path
        self.reason = reason
        super().__init__(f"config {key_path}: {reason}")

    def __reduce__(self) -> tuple:
        return type(self), (self.key_path, self.reason)


def declared_cause(error: BaseException) -> MammoRayError | None:
    """The declared error behind `error`, looking through Ray's wrappers (RayTaskError and the errors of
    Ray Data and Tune keep the original as `cause` or `__cause__`); None when there is none.

    A task's RayTaskError is an instance of its cause's class too (`RayTaskError(StoreUnavailableError)`),
    whose text is the whole remote traceback: the original it wraps (`cause`) is returned instead."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        inner = getattr(current, "cause", None)
        if isinstance(current, MammoRayError) and not isinstance(inner, MammoRayError):
            return current
        pending += [inner, current.__cause__, current.__context__]
    return None


def describe(error: BaseException, uri: str) -> str:
    """An errors-table message for a failure on `uri`: always names the file, once."""
    text = str(error) or type(error).__name__
    return text if uri in text else f"{uri}: {text}"
