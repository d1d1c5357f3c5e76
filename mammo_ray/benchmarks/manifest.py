"""`manifest`: building a manifest of a large collection from its metadata table and one listing of its tree.

A synthetic RSNA download (train.csv + `train_images/<patient_id>/<image_id>.dcm`, four empty files per
patient: the adapter reads no image) on the local disk (`--rows`, default 100,000) and in a moto S3 bucket on
127.0.0.1 (`--s3-rows`, default 10,000; 0 skips it). Prints, for each: the tree listed page after page
(fsspec's find) beside `storage.list_files` (what the adapters call: key ranges at once on S3,
mammo_ray.s3_listing) and their ratio, the CSV read alone, and the whole `rsna.build_manifest` (listing + CSV +
checks + validation), in seconds and in microseconds per row. Then the two listings alone against a store whose
pages cost a fixed round trip (`--latency-ms`, default 30; `--latency-rows`, default 100,000), as S3's do:
moto's pages cost server CPU in proportion to the bucket, which no client-side listing can win against.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mammo_ray import storage
from mammo_ray.benchmarks.common import seconds
from mammo_ray.benchmarks.listing_store import ListingStore
from mammo_ray.datasets import rsna, sources

_HEADER = ("site_id,patient_id,image_id,laterality,view,age,cancer,biopsy,invasive,BIRADS,implant,density,"
           "machine_id,difficult_negative_case")
_VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))


def rsna_rows(count: int) -> list[tuple[str, str]]:
    """(CSV line, relative image path) for `count` images, four per patient."""
    rows = []
    for index in range(count):
        patient, (side, view) = 10_000 + index // 4, _VIEWS[index % 4]
        image = 100_000_000 + index
        cancer = int(patient % 50 == 0 and side == "L")
        line = f"{1 + patient % 2},{patient},{image},{side},{view},61.0,{cancer},{cancer},0,,0,B,29,False"
        rows.append((line, f"{patient}/{image}.dcm"))
    return rows


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("\n".join([_HEADER, *(line for line, _ in rows)]) + "\n")


def _measure(csv_uri: str, images_uri: str, repeats: int) -> dict[str, float]:
    fs, path = storage.filesystem(images_uri)
    actions: dict[str, Callable[[], object]] = {
        "sequential": lambda: fs.find(path),  # one paginated listing, page after page (s3fs / os.walk)
        "listing": lambda: sources.index_tree(images_uri, [".dcm"]),
        "csv": lambda: sources.read_text_table(csv_uri, rsna.KEY_COLUMNS),
        "manifest": lambda: rsna.build_manifest(csv_uri, images_uri),
    }
    timings: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(repeats):  # interleaved, so a slow moment of the machine falls on every column
        for name, action in actions.items():
            timings[name].append(seconds(action))
    return {name: statistics.median(values) for name, values in timings.items()}


def _print(label: str, rows: int, medians: dict[str, float]) -> None:
    print(f"  {label}: {rows} images")
    for name, text in (("sequential", "the tree listed page after page (fs.find)"),
                       ("listing", "storage.list_files (what adapters call)"),
                       ("csv", "train.csv read and checked for columns"),
                       ("manifest", "rsna.build_manifest (all of it)")):
        print(f"    {text:42s} {medians[name]:8.2f} s   {medians[name] / rows * 1e6:7.1f} us/image")
    print(f"    listing ratio product / page after page    {medians['listing'] / medians['sequential']:8.2f}")


def _local(rows: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mammo-ray-bench-") as folder:
        root = Path(folder)
        table = rsna_rows(rows)
        _write_csv(root / "train.csv", table)
        for _, relative in table:
            path = root / "train_images" / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        _print("local disk", rows, _measure(str(root / "train.csv"), str(root / "train_images"), repeats))


@contextlib.contextmanager
def _s3_endpoint(endpoint: str) -> Iterator[None]:
    """The S3 settings of this process pointed at `endpoint` (with throwaway credentials), restored after."""
    previous = {key: os.environ.get(key) for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                                    "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _s3(rows: int, repeats: int) -> None:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        with _s3_endpoint(f"http://{host}:{port}"):
            client = boto3.client("s3")
            client.create_bucket(Bucket="bench")
            table = rsna_rows(rows)
            with tempfile.TemporaryDirectory(prefix="mammo-ray-bench-") as folder:
                _write_csv(Path(folder) / "train.csv", table)
                client.upload_file(str(Path(folder) / "train.csv"), "bench", "rsna/train.csv")
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda item: client.put_object(Bucket="bench", Key=f"rsna/train_images/{item[1]}",
                                                             Body=b""), table))
            _print("moto S3 on 127.0.0.1", rows,
                   _measure("s3://bench/rsna/train.csv", "s3://bench/rsna/train_images", repeats))
    finally:
        server.stop()


def _fixed_round_trip(rows: int, latency_ms: float, repeats: int) -> None:
    keys = ["rsna/train.csv", *(f"rsna/train_images/{relative}" for _, relative in rsna_rows(rows))]
    with ListingStore("bench", keys, latency_ms / 1000) as store, _s3_endpoint(store.endpoint):
        fs, path = storage.filesystem("s3://bench/rsna")
        timings: dict[str, list[float]] = {"sequential": [], "ranges": []}
        requests: dict[str, int] = {}
        for _ in range(repeats):
            for name, action in (("sequential", lambda: fs.find(path)),
                                 ("ranges", lambda: storage.list_files("s3://bench/rsna"))):
                before = store.requests
                timings[name].append(seconds(action))
                requests[name] = store.requests - before
        medians = {name: statistics.median(values) for name, values in timings.items()}
    print(f"  a store with a fixed {latency_ms:g} ms round trip per request: {rows} images in "
          f"{rows // 4} patient folders")
    print(f"    one listing, page after page (fs.find)     {medians['sequential']:8.2f} s   "
          f"{requests['sequential']:6d} requests")
    print(f"    storage.list_files (key ranges at once)    {medians['ranges']:8.2f} s   "
          f"{requests['ranges']:6d} requests")
    print(f"    ratio key ranges / page after page          {medians['ranges'] / medians['sequential']:8.2f}")


def run(args: argparse.Namespace) -> int:
    print(f"manifest benchmark: synthetic RSNA layout, median of {args.repeats}")
    if args.rows:
        _local(args.rows, args.repeats)
    if args.s3_rows:
        _s3(args.s3_rows, args.repeats)
    if args.latency_rows:
        _fixed_round_trip(args.latency_rows, args.latency_ms, args.repeats)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("manifest", help="a manifest of a large collection: listing, CSV, whole build")
    parser.add_argument("--rows", type=int, default=100_000, help="images on the local disk (0 skips)")
    parser.add_argument("--s3-rows", type=int, default=10_000, help="objects in the moto bucket (0 skips)")
    parser.add_argument("--latency-rows", type=int, default=100_000,
                        help="objects in the fixed-round-trip store (0 skips)")
    parser.add_argument("--latency-ms", type=float, default=30.0, help="its round trip per request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.set_defaults(func=run)
