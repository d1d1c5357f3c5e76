"""What of a collection may leave: secrets as fingerprints, file paths as pseudonymous locators.

- **Secrets** (a pseudonymisation salt, a password or token given in a config) never reach an output, a
  log or the report: `redact_secrets` replaces each by its fingerprint, `fingerprint:<8 hex>` (the first 32
  bits of a domain-separated sha256: enough to tell which salt a run used, far too few to test a guess of
  the salt against, and the salt itself is required to be long and random).
- **Paths** of a collection whose folders and files can carry identifiers (a PACS export named after the
  patient: `DOE_JANE_MRN-1234/MRN-1234_LCC.dcm`) are replaced in the manifest by locators,
  `pseudo://<dataset>/<16 hex of sha256(salt, path)><extension>`: unique per file, stable for one salt, and
  not reversible without the salt. Every table, errors message and log line the study writes holds the
  locator. The real path lives only in memory, beside the manifest, in its `source_uri` column (dropped
  when the manifest is written), and where the user chooses to keep it (`data.adapter.locations`: a mapping
  file outside the output). A run that does not rebuild the manifest resolves locators by rebuilding it.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Mapping
from typing import Any

import pandas as pd

from mammo_ray import storage
from mammo_ray.errors import ManifestError

LOCATOR_SCHEME = "pseudo"
#: The column of an in-memory manifest that holds where a pseudonymised image really is (never written).
SOURCE_COLUMN = "source_uri"
#: Config keys whose values are secrets, wherever they sit (adapter arguments above all).
SECRET_KEYS: frozenset[str] = frozenset({
    "salt", "secret", "password", "passphrase", "token", "api_key", "access_key", "secret_key", "credentials",
})
#: Extensions a locator keeps (they say nothing of a patient, and format detection falls back on them).
_KEPT_EXTENSIONS = frozenset({".dcm", ".dicom", ".dic", ".png", ".pgm", ".pnm"})


def fingerprint(secret: str) -> str:
    """'fingerprint:<8 hex>': which secret, without the means to check a guess of it."""
    digest = hashlib.sha256(b"mammo-ray secret fingerprint\x00" + secret.encode()).hexdigest()[:8]
    return f"fingerprint:{digest}"


def redact_secrets(value: Any) -> Any:
    """A JSON-like config with every value under a secret key (`SECRET_KEYS`) replaced by its fingerprint."""
    if isinstance(value, Mapping):
        return {key: (fingerprint(str(item)) if _is_secret_key(key) and item is not None else redact_secrets(item))
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_secrets(item) for item in value]
    return value


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and key.lower() in SECRET_KEYS


def is_locator(uri: object) -> bool:
    return isinstance(uri, str) and uri.startswith(f"{LOCATOR_SCHEME}://")


def locator(dataset: str, uri: str, salt: str) -> str:
    """The pseudonymous locator of the file at `uri` (see the module's docstring)."""
    digest = hashlib.sha256(f"{salt}\x00path\x00{uri}".encode()).hexdigest()[:16]
    extension = posixpath.splitext(uri.rsplit("?", 1)[0])[1].lower()
    return f"{LOCATOR_SCHEME}://{dataset}/{digest}{extension if extension in _KEPT_EXTENSIONS else ''}"


def pseudonymise_paths(manifest: pd.DataFrame, salt: str) -> pd.DataFrame:
    """The manifest with each `uri` replaced by its locator, the real one kept in `SOURCE_COLUMN`."""
    uris = manifest["uri"].astype(str)
    locators = [locator(str(dataset), uri, salt) for dataset, uri in zip(manifest["dataset"], uris, strict=True)]
    return manifest.assign(uri=locators, **{SOURCE_COLUMN: list(uris)})


def locations(manifest: pd.DataFrame) -> dict[str, str]:
    """locator -> real uri of the pseudonymised rows of an in-memory manifest."""
    if SOURCE_COLUMN not in manifest:
        return {}
    rows = manifest[manifest["uri"].map(is_locator) & manifest[SOURCE_COLUMN].notna()]
    return dict(zip(rows["uri"], rows[SOURCE_COLUMN], strict=True))


def write_locations(manifest: pd.DataFrame, uri: str) -> int:
    """The user's own mapping file (CSV: image_id, locator, uri) of the pseudonymised rows; their count."""
    known = locations(manifest)
    rows = manifest[manifest["uri"].isin(list(known))]
    frame = pd.DataFrame({"image_id": rows["image_id"], "locator": rows["uri"], "uri": rows[SOURCE_COLUMN]})
    storage.write_bytes(uri, frame.to_csv(index=False).encode())
    return len(frame)


def with_sources(manifest: pd.DataFrame, known: Mapping[str, str]) -> pd.DataFrame:
    """The manifest as the image readers take it: each locator's real uri in `SOURCE_COLUMN` (other rows are
    read from their `uri`). A locator the source no longer has is refused: the manifest on disk is older
    than the collection, and the manifest stage must run first."""
    pseudonymous = manifest["uri"].map(is_locator)
    unknown = [uri for uri in manifest.loc[pseudonymous, "uri"] if uri not in known]
    if unknown:
        raise ManifestError("the manifest on disk", [
            f"{len(unknown)} image(s) ({', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''}) are no "
            "longer in the collection the config names: run the manifest stage again"])
    sources = [known[uri] if private else None for uri, private in zip(manifest["uri"], pseudonymous, strict=True)]
    return manifest.assign(**{SOURCE_COLUMN: sources})


def shown(text: str, source: str, uri: str) -> str:
    """`text` (an error message about the file at `source`) with the real path replaced by `uri`."""
    if source == uri:
        return text
    text = text.replace(source, uri)
    path = source.partition("://")[2] or source  # the same file without its scheme, as libraries print it
    return text.replace(path, uri)
