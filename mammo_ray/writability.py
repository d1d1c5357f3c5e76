"""Before any work: can a study's output be written at all?

`check_output_writable` refuses an output that cannot be one with ConfigError('output', ...), naming why. It
asks the store directly and probes with one small write, removed at once (its name starts with '.', so
listings skip it); it takes no lock (that is mammo_ray.output_lock).
"""

from __future__ import annotations

import contextlib
import os
import uuid

from mammo_ray import storage
from mammo_ray.errors import ConfigError, StorageError
from mammo_ray.s3_settings import S3Config


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
