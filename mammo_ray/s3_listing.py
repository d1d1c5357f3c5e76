"""Listing an S3 prefix of many objects: ranges of its key space listed at the same time.

A listing page holds at most 1,000 keys and costs a round trip, so one paginated listing of 100,000
objects waits on 100 round trips in a row. The folders of a tree split its key space into ranges that can
be listed at once: delimited listings of the first levels (descending until there are MIN_FOLDERS
folders, at most MAX_DEPTH levels: RSNA's `<root>/train_images/<patient>/` is two) give the folders and the
files above them; the sorted folders are cut into SHARDS contiguous ranges, and each range is one
paginated listing that starts after its first folder (StartAfter) and stops at the next range's. Every key
lies above the folders (a delimited listing returned it) or inside one (its range returned it). A tree
of one page costs that page; a tree without folders, that page and the one paginated listing.

`jobs/benchmark.py manifest` measures it against the one listing, on moto and on a store whose pages
cost a fixed round trip whatever the bucket holds (as S3's do; moto's cost grows with the bucket).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

#: Ranges listed at once.
SHARDS = 8
#: Folders at which descending stops: enough to cut into SHARDS ranges of several folders each.
MIN_FOLDERS = 4 * SHARDS
#: Folder levels descended at most to find them.
MAX_DEPTH = 3
#: Keys a listing page asks for (S3 returns at most 1,000).
PAGE_KEYS = 1000


async def list_objects(fs: Any, bucket: str, prefix: str) -> dict[str, dict]:
    """'bucket/key' -> info (`size`, `ETag`, ...) of every object under `prefix` ('' or ending in '/'), through
    `fs` (an s3fs filesystem: its retrying request call and its session)."""
    first = await fs._call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=PAGE_KEYS)
    files = _objects(fs, bucket, first.get("Contents", []), None)
    if not first.get("IsTruncated"):
        return files  # one page holds the tree: nothing to split
    level, folders = [prefix], []
    for _ in range(MAX_DEPTH):
        found = await asyncio.gather(*(_delimited(fs, bucket, folder) for folder in level))
        folders = sorted(sub for objects, subfolders in found for sub in subfolders)
        for objects, _subfolders in found:
            files.update(objects)
        if not folders or len(folders) >= MIN_FOLDERS:
            break
        level = folders
    if not folders:
        return files  # the delimited listings returned every key
    step = math.ceil(len(folders) / SHARDS)
    starts = folders[::step]
    ends: list[str | None] = [*starts[1:], None]
    for objects in await asyncio.gather(*(_key_range(fs, bucket, prefix, start, end)
                                          for start, end in zip(starts, ends, strict=True))):
        files.update(objects)
    return files


async def _delimited(fs: Any, bucket: str, prefix: str) -> tuple[dict[str, dict], list[str]]:
    """(the objects directly under `prefix`, its folders as prefixes ending in '/')."""
    objects: dict[str, dict] = {}
    folders: list[str] = []
    request = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/", "MaxKeys": PAGE_KEYS}
    while True:
        page = await fs._call_s3("list_objects_v2", **request)
        folders += [common["Prefix"] for common in page.get("CommonPrefixes", [])]
        objects.update(_objects(fs, bucket, page.get("Contents", []), None))
        if not page.get("IsTruncated"):
            return objects, folders
        request["ContinuationToken"] = page["NextContinuationToken"]


async def _key_range(fs: Any, bucket: str, prefix: str, start: str, end: str | None) -> dict[str, dict]:
    """The objects under `prefix` with start < key < end (every key inside a folder `start` ... before `end`)."""
    objects: dict[str, dict] = {}
    request = {"Bucket": bucket, "Prefix": prefix, "StartAfter": start, "MaxKeys": PAGE_KEYS}
    while True:
        page = await fs._call_s3("list_objects_v2", **request)
        contents = page.get("Contents", [])
        objects.update(_objects(fs, bucket, contents, end))
        if not page.get("IsTruncated") or (end is not None and contents and contents[-1]["Key"] >= end):
            return objects
        request["ContinuationToken"] = page["NextContinuationToken"]


def _objects(fs: Any, bucket: str, contents: list[dict], end: str | None) -> dict[str, dict]:
    """The page's objects before `end`, as s3fs describes them ('bucket/key' names, `size`); folder markers
    (keys ending in '/') are no files."""
    objects = {}
    for item in contents:
        if item["Key"].endswith("/") or (end is not None and item["Key"] >= end):
            continue
        info = {**item, "type": "file"}
        fs._fill_info(info, bucket)
        objects[info["name"]] = info
    return objects
