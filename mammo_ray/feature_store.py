"""Model outputs keyed by content and model, and the one way to read them: joined to the current manifest.

A model output folder (`embeddings/<extractor>/`, `zero_shot/`) holds

- `features/<model key>/part-*.parquet`: outputs keyed by FEATURE_KEY_COLUMNS (tables). One folder per
  model key (model identity, weights, preprocessing), so a key's rows are one listing and settings with
  other output shapes never share a folder. Other keys stay as cache until `prune`;
- `_index.parquet`: for the manifest of the stage's last run, each image's content hash and whether it
  became an output or an errors row. Its provenance names the model key and the image digest of that
  manifest.

`read_view` gives exactly one row per image of the current manifest that has an output under the current
key, with labels, patients and image ids from the manifest: never rows of removed images, of other
weights or settings, never the labels an earlier manifest had. A folder that does not describe the current
manifest and key raises StaleTableError naming what changed, instead of answering with old rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import pandas as pd
import pyarrow as pa

from mammo_ray import content_keys, schemas, storage, tables
from mammo_ray.errors import StaleTableError

log = logging.getLogger("mammo_ray.feature_store")


@dataclass(frozen=True)
class ModelKey:
    """What one run's outputs depend on besides the images: the model's identity (its name and every
    setting that changes its outputs), its weights and the preprocessing (decode settings included).
    `orientation`: whether the preprocessing uses each image's laterality and view."""

    model_id: str
    weights_id: str
    preprocess_id: str
    orientation: bool

    @property
    def folder(self) -> str:
        text = json.dumps([self.model_id, self.weights_id, self.preprocess_id])
        return "key-" + hashlib.sha256(text.encode()).hexdigest()[:16]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        return f"weights {self.weights_id}, preprocessing {self.preprocess_id}, model {self.model_id}"


def key_uri(table_uri: str, key: ModelKey) -> str:
    return storage.join(tables.features_uri(table_uri), key.folder)


def _read_folder(uri: str, columns: Sequence[str] | None = None) -> pd.DataFrame | None:
    if not storage.exists(uri) or not storage.list_files(uri, extensions=[".parquet"]):
        return None
    return storage.read_table(uri, columns=list(columns) if columns else None).to_pandas()


def stored_content(table_uri: str, key: ModelKey) -> frozenset[str]:
    """Content keys (content_keys.content_key) already stored under `key`."""
    rows = _read_folder(key_uri(table_uri, key), schemas.CONTENT_KEY_COLUMNS)
    if rows is None:
        return frozenset()
    return frozenset(_stored_keys(rows, key).tolist())


def _stored_keys(rows: pd.DataFrame, key: ModelKey) -> pd.Series:
    """The content keys of feature-store rows (whose laterality / view columns hold the hints)."""
    return content_keys.content_keys(rows["content_sha256"], rows["laterality"], rows["view"], key.orientation)


def _image_keys(images: pd.DataFrame, key: ModelKey) -> pd.Series:
    """The content keys of manifest rows joined to their content (the manifest's laterality / view)."""
    return content_keys.content_keys(images["content_sha256"], images["laterality"], images["view"], key.orientation)


def feature_rows(rows: pd.DataFrame, key: ModelKey) -> pd.DataFrame:
    """Output rows (decoded rows: `content_sha256`, `manifest_laterality`, `manifest_view`) with the key
    columns, one per content key."""
    def hints(column: str) -> list[str]:
        return [content_keys.orientation_hint(v) if key.orientation else "" for v in rows[column]]

    keyed = rows.assign(laterality=hints("manifest_laterality"), view=hints("manifest_view"),
                        model_id=key.model_id, weights_id=key.weights_id, preprocess_id=key.preprocess_id)
    return keyed.drop_duplicates(subset=list(schemas.CONTENT_KEY_COLUMNS))


def part_name(keys: Sequence[str]) -> str:
    """A part file named by the content keys it holds: a retried batch replaces its own file."""
    return "part-" + hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:24] + ".parquet"


@dataclass(frozen=True)
class Compaction:
    """What one compaction did: part files before and after, and the files it merged."""

    files_before: int
    files_after: int
    merged: int


def compact(table_uri: str, key: ModelKey, target_bytes: int) -> Compaction:
    """Merge the small part files of `key`'s folder into files of about `target_bytes`, each row once.

    The image pass writes one part file per batch (a retried batch must replace its own file); object
    stores and readers want few large files. Files under half the target are small; they are merged in
    name order into groups of about the target, each written (named by its content keys, so a repeated
    compaction of the same group writes the same file) before the files it replaces are removed. A
    compaction cut short leaves rows twice, which readers already take once (`read_view`) and the next
    compaction merges away. Files at least half the target are kept as they are.
    """
    folder = key_uri(table_uri, key)
    if not storage.exists(folder):
        return Compaction(0, 0, 0)
    listed = storage.list_file_details(folder, extensions=[".parquet"])
    small = sorted(uri for uri, details in listed.items() if details["size"] < target_bytes / 2)
    groups, group, filled = [], [], 0
    for uri in small:
        group.append(uri)
        filled += listed[uri]["size"]
        if filled >= target_bytes:
            groups.append(group)
            group, filled = [], 0
    if len(group) == 1 and groups:
        groups[-1].extend(group)  # a lone small file joins the last group rather than stay alone
    else:
        groups.append(group)
    groups = [group for group in groups if len(group) > 1]
    for group in groups:
        table = storage.read_files({uri: listed[uri] for uri in group})
        first = ~_stored_keys(table.select(list(schemas.CONTENT_KEY_COLUMNS)).to_pandas(), key).duplicated()
        table = table.filter(pa.array(first.to_numpy()))
        written = _write_parts(table, folder, key, rows_per_part=len(table))  # first the merged file ...
        storage.remove_files([uri for uri in group if uri not in written])  # ... then the small ones go
    merged = sum(len(group) for group in groups)
    return Compaction(len(listed), len(listed) - merged + len(groups), merged)


def _write_parts(table: pa.Table, folder: str, key: ModelKey, rows_per_part: int) -> set[str]:
    """Write `table`'s rows as part files of `rows_per_part` rows under `folder`, each named by its content
    keys; returns their URIs."""
    written = set()
    for start in range(0, len(table), max(1, rows_per_part)):
        part = table.slice(start, rows_per_part)
        keys = _stored_keys(part.select(list(schemas.CONTENT_KEY_COLUMNS)).to_pandas(), key)
        uri = storage.join(folder, part_name(keys.tolist()))
        storage.write_table(part, uri)
        written.add(uri)
    return written


def write_index(table_uri: str, stage: str, index: pd.DataFrame, manifest: pd.DataFrame, key: ModelKey) -> None:
    """The index of this run (one row per manifest image), atomically, naming the manifest and key it describes."""
    frame = index.sort_values("image_id").reset_index(drop=True)
    table = pa.Table.from_pandas(frame[schemas.INDEX_SCHEMA.names], schema=schemas.INDEX_SCHEMA, preserve_index=False)
    content = tables.frame_digest(frame, schemas.INDEX_SCHEMA.names)
    table = tables.with_provenance(table, stage, weights_ids=[key.weights_id], key=key.as_dict(),
                                   inputs={"images": tables.image_digest(manifest), "content": content})
    storage.write_table(table, tables.index_uri(table_uri))


def index_problem(table_uri: str, manifest: pd.DataFrame, key: ModelKey) -> str | None:
    """Why the folder does not describe `manifest` under `key` (None when it does)."""
    provenance = tables.read_provenance(tables.index_uri(table_uri))
    if provenance is None:
        return "the stage has not run for this output"
    if provenance.get("key") != key.as_dict():
        old = ModelKey(**provenance["key"]).describe() if provenance.get("key") else "unknown settings"
        return f"its last run used {old}; the config asks for {key.describe()}"
    if provenance.get("inputs", {}).get("images") != tables.image_digest(manifest):
        return "its last run saw another manifest (images added, removed, moved or re-oriented)"
    return None


def outputs_problem(table_uri: str, manifest: pd.DataFrame, key: ModelKey) -> str | None:
    """Why `read_view` of the folder for `manifest` under `key` would fail (None when it would not): the index
    does not describe them, or outputs it names are gone (pruned, deleted). Reads only the index and the
    stored content keys, not the outputs."""
    problem = index_problem(table_uri, manifest, key)
    if problem is not None:
        return problem
    index = storage.read_table(tables.index_uri(table_uri), columns=["image_id", "status", "content_sha256"])
    ok = index.to_pandas().query("status == 'ok'")[["image_id", "content_sha256"]]
    images = manifest.merge(ok, on="image_id")
    missing = ~_image_keys(images, key).isin(stored_content(table_uri, key)).to_numpy()
    return _missing_outputs(images["image_id"][missing], key) if missing.any() else None


def _missing_outputs(image_ids: pd.Series, key: ModelKey) -> str:
    shown = ", ".join(map(str, image_ids.head(5)))
    return (f"{len(image_ids)} image(s) of its index have no stored output under {key.describe()} (e.g. {shown}; "
            f"pruned or interrupted?)")


def index_digest(table_uri: str) -> str | None:
    """The content digest of the folder's index (which image had which content): None when there is none."""
    provenance = tables.read_provenance(tables.index_uri(table_uri))
    return None if provenance is None else provenance.get("inputs", {}).get("content")


def read_view(table_uri: str, manifest: pd.DataFrame, key: ModelKey, stage: str,
              columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The outputs of every image of `manifest` under `key`, one row per image with an output, sorted by
    image_id: manifest columns + the output columns (`columns` only, when given) + the key columns. Images
    that were errors rows of the stage are left out (see the errors table). Raises StaleTableError when the
    folder does not describe this manifest and key: run `stage` first."""
    problem = index_problem(table_uri, manifest, key)
    if problem is not None:
        raise StaleTableError(table_uri, f"{problem}: run the {stage} stage for the current manifest and config")
    index = storage.read_table(tables.index_uri(table_uri)).to_pandas()
    ok = index[index["status"] == "ok"][["image_id", "content_sha256"]]
    # Image ids are unique in a manifest and in an index (both checked where they are written).
    images = manifest.merge(ok, on="image_id", how="inner")
    features = _read_folder(key_uri(table_uri, key), [*schemas.CONTENT_KEY_COLUMNS, *columns] if columns else None)
    if features is None:
        features = pd.DataFrame(columns=list(schemas.FEATURE_KEY_COLUMNS))
    stored = _stored_keys(features, key)
    first = ~stored.duplicated()
    features, stored = features[first.to_numpy()], stored[first]
    positions = pd.Index(stored.to_numpy()).get_indexer(_image_keys(images, key).to_numpy())
    if (positions < 0).any():
        missing = _missing_outputs(images["image_id"][positions < 0], key)
        raise StaleTableError(table_uri, f"{missing}: run the {stage} stage")
    outputs = features.drop(columns=list(schemas.CONTENT_KEY_COLUMNS)).iloc[positions].reset_index(drop=True)
    view = pd.concat([images.reset_index(drop=True), outputs], axis=1)
    return view.sort_values("image_id", kind="stable").reset_index(drop=True)


def subfolders(uri: str) -> list[str]:
    """Names of the folders directly under `uri` that hold files (one recursive listing)."""
    if not storage.exists(uri):
        return []
    prefix = uri.rstrip("/")
    names = {item[len(prefix):].lstrip("/").split("/")[0] for item in storage.list_files(uri)
             if "/" in item[len(prefix):].lstrip("/")}
    return sorted(names)


def prune(table_uri: str, manifest: pd.DataFrame | None, key: ModelKey | None, dry_run: bool = False,
          target_bytes: int = 128 * 2**20) -> dict[str, int]:
    """Remove what no reader of the current manifest and key can see: other keys' folders, and rows of the
    current key whose content the current index does not name (the rest rewritten in files of about
    `target_bytes`). With `key`
    None (the output is no longer configured) the whole folder goes. Returns counts of what was (or,
    with `dry_run`, would be) removed."""
    root = tables.features_uri(table_uri)
    folders = subfolders(root)
    removed = {"folders": 0, "rows": 0}
    if key is None:
        removed["folders"] = len(folders)
        if not dry_run:
            storage.remove(table_uri, recursive=True)
        return removed
    for folder in folders:
        if folder != key.folder:
            removed["folders"] += 1
            if not dry_run:
                storage.remove(storage.join(root, folder), recursive=True)
    current = key_uri(table_uri, key)
    listed = storage.list_file_details(current, extensions=[".parquet"]) if storage.exists(current) else {}
    if not listed or manifest is None or index_problem(table_uri, manifest, key) is not None:
        return removed  # nothing current to compact against: keep the rows
    table = storage.read_files(listed)
    index = storage.read_table(tables.index_uri(table_uri)).to_pandas()
    named = manifest.merge(index[index["status"] == "ok"], on="image_id")
    wanted = set(_image_keys(named, key).tolist())
    contents = _stored_keys(table.select(list(schemas.CONTENT_KEY_COLUMNS)).to_pandas(), key)
    kept = (contents.isin(wanted) & ~contents.duplicated()).to_numpy()
    removed["rows"] = int((~kept).sum())
    if removed["rows"] and not dry_run:
        row_bytes = sum(details["size"] for details in listed.values()) / max(1, len(table))
        written = _write_parts(table.filter(pa.array(kept)), current, key,
                               rows_per_part=int(target_bytes / max(row_bytes, 1.0)))
        storage.remove_files([uri for uri in listed if uri not in written])  # first the kept rows, then the old files
    return removed
