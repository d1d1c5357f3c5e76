"""Copy the published weight files to a folder or bucket, for clusters whose workers have no internet.

Run once where there is internet (``mammo-ray weights fetch --to s3://bucket/weights``); then point a
study's weights at the copies (``s3://bucket/weights/resnet50-11ad3fa6.pth``, optionally with the printed
sha256). Each file is downloaded once over HTTP(S) and written with :func:`mammo_ray.storage.write_bytes`.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterable

from mammo_ray import storage
from mammo_ray.errors import StorageError
from mammo_ray.models.weights import WeightsError, sha256_hex
from mammo_ray.models.weights_catalogue import DEFAULT_FETCH_NAMES, NYU_BASE_URL, KnownWeightsFile, known_weights_file

# A torchvision file name carries the first hex digits of its sha256: resnet50-11ad3fa6.pth.
_HASH_PREFIX = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def _download(url: str, timeout_s: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "mammo-ray-weights-fetch"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - http(s) only
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise WeightsError(url, f"download failed: {error}") from error
    if not data:
        raise WeightsError(url, "download returned no bytes")
    # torch.save writes a zip ("PK") or, in old PyTorch, a pickle (protocol byte 0x80): anything else
    # is an HTML page or a Git LFS pointer, not weights.
    if not (data[:2] == b"PK" or data[:1] == b"\x80"):
        raise WeightsError(url, f"downloaded {len(data)} bytes that are not a PyTorch weight file")
    return data


def _check_hash_prefix(known: KnownWeightsFile, digest: str) -> None:
    match = _HASH_PREFIX.search(known.file_name)
    if match and known.name.startswith("torchvision:") and not digest.startswith(match.group(1)):
        warnings.warn(
            f"{known.file_name}: sha256 {digest} does not start with {match.group(1)} as its name says",
            stacklevel=3,
        )


def fetch_weights(
    to_uri: str,
    names: Iterable[str] = DEFAULT_FETCH_NAMES,
    *,
    nyu_base_url: str = NYU_BASE_URL,
    torchvision_base_url: str | None = None,
    overwrite: bool = False,
    timeout_s: float = 300.0,
    echo: Callable[[str], None] | None = print,
) -> dict[str, tuple[str, str]]:
    """Download each named published file once and write it to ``<to_uri>/<file name>``.

    `names`: ``nyu-image-wise``, ``nyu-view-wise`` and torchvision specs such as
    ``torchvision:resnet50:IMAGENET1K_V2`` (default: all of DEFAULT_FETCH_NAMES). The base URLs can
    point at a mirror (`torchvision_base_url` None = the URLs of torchvision's enums). A file already
    at its destination is hashed, not downloaded again, unless `overwrite`. Prints
    ``<sha256>  <uri>`` per file through `echo`. Returns name -> (uri, sha256).
    """
    results: dict[str, tuple[str, str]] = {}
    done: dict[str, tuple[str, str]] = {}  # file name -> (uri, sha256): each file once
    for name in dict.fromkeys(names):
        known = known_weights_file(name, nyu_base_url=nyu_base_url, torchvision_base_url=torchvision_base_url)
        if known.file_name in done:
            results[name] = done[known.file_name]
            continue
        target = storage.join(to_uri, known.file_name)
        try:
            if not overwrite and storage.exists(target):
                digest = sha256_hex(storage.read_bytes(target))
                note = " (already there)"
            else:
                data = _download(known.url, timeout_s)
                digest = sha256_hex(data)
                _check_hash_prefix(known, digest)
                storage.write_bytes(target, data)
                note = f" ({len(data)} bytes from {known.url})"
        except StorageError as error:
            raise WeightsError(target, f"cannot write the fetched file: {error.reason}") from error
        done[known.file_name] = results[name] = (target, digest)
        if echo is not None:
            echo(f"{digest}  {target}  [{name}]{note}")
    return results
