"""`join`: reading embeddings joined to the current manifest (`feature_store.read_view`) against reading
the feature store's vectors alone, and the manifest digests every rerun's fingerprints compute.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from mammo_ray import feature_store, storage, tables
from mammo_ray.benchmarks.common import seconds
from mammo_ray.classify.synthetic import noise_table, write_embeddings


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="mammo-ray-bench-") as folder:
        manifest, key = write_embeddings(folder, noise_table(args.rows, args.dim, args.rows // 4, extractor="bench"))
        table = tables.embeddings_uri(folder, "bench")
        store, view, digests = [], [], []
        for _ in range(args.repeats):  # side by side, interleaved
            store.append(seconds(lambda: storage.read_table(feature_store.key_uri(table, key)).to_pandas()))
            view.append(seconds(lambda: feature_store.read_view(table, manifest, key, "embed")))
            digests.append(seconds(lambda: (tables.manifest_digest(manifest), tables.image_digest(manifest))))
        rows = len(feature_store.read_view(table, manifest, key, "embed"))
    store_s, view_s, digest_s = (statistics.median(t) for t in (store, view, digests))
    overhead = f"({view_s / store_s:.2f}x the store alone, +{(view_s - store_s) / rows * 1e6:.1f} us per image)"
    print("\n".join([
        f"join benchmark: {rows} images, {args.dim}-d float32 vectors, median of {args.repeats}",
        f"  feature store alone, to pandas (the vectors)   {store_s:8.3f} s",
        f"  read_view: manifest -> index -> store, joined  {view_s:8.3f} s   {overhead}",
        f"  manifest + image digests (fingerprints)       {digest_s:8.3f} s",
    ]))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("join", help="reading embeddings joined to the manifest vs the store alone")
    parser.add_argument("--rows", type=int, default=100_000, help="images in the manifest")
    parser.add_argument("--dim", type=int, default=256, help="vector length")
    parser.add_argument("--repeats", type=int, default=3)
    parser.set_defaults(func=run)
