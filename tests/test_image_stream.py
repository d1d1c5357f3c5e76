"""The Ray Data read path: manifest -> bytes from S3 -> decoded images, bad images as error rows."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from mammo_ray import storage
from mammo_ray.config import IngestConfig
from mammo_ray.datasets.manifest import MANIFEST_COLUMNS, read_manifest
from mammo_ray.datasets.synthetic import SyntheticSource, generate_cohort
from mammo_ray.image_stream import read_images
from mammo_ray.stages.ingest import run_ingest

pytestmark = pytest.mark.usefixtures("ray_session")

SMALL = SyntheticSource(patients=3, seed=7, rows=128)


@pytest.fixture()
def s3_cohort(s3_bucket) -> tuple[str, pd.DataFrame]:
    root = s3_bucket + "/cohort"
    return root, generate_cohort(root, SMALL)


def test_synthetic_cohort_round_trips_through_s3_and_ray_data(s3_cohort):
    root, written = s3_cohort
    manifest = read_manifest(storage.join(root, "manifest.parquet"), check_files=True)
    assert all(uri.startswith("s3://") for uri in manifest["uri"])
    rows = read_images(manifest, IngestConfig(batch_size=2, rows_per_block=3)).take_all()

    assert sorted(r["image_id"] for r in rows) == sorted(written["image_id"])
    by_id = {r["image_id"]: r for r in rows}
    for record in written.to_dict("records"):
        row = by_id[record["image_id"]]
        assert row["error_type"] is None
        for column in MANIFEST_COLUMNS:
            expected, got = record[column], row[column]
            if pd.isna(expected):
                assert got is None or pd.isna(got), column
            else:
                assert got == expected, column
        pixels = np.asarray(row["pixels"])
        assert pixels.dtype == np.float32 and pixels.shape == (row["height"], row["width"])
        assert pixels.shape[0] == SMALL.rows
        assert pixels[0, :].min() == 0.0 or pixels[-1, :].min() == 0.0  # zero background
        assert len(row["content_sha256"]) == 64


def test_tags_fill_what_the_manifest_leaves_open_and_the_manifest_wins(s3_cohort):
    _, written = s3_cohort
    manifest = written.head(2).copy()
    manifest["laterality"] = [None, "R" if written.iloc[1]["laterality"] == "L" else "L"]
    manifest["view"] = [None, None]
    rows = {r["image_id"]: r for r in read_images(manifest).take_all()}
    first, second = written.iloc[0], written.iloc[1]
    assert rows[first["image_id"]]["laterality"] == first["laterality"]  # from ImageLaterality
    assert rows[first["image_id"]]["view"] == first["view"]  # from ViewPosition
    assert rows[second["image_id"]]["laterality"] == manifest.iloc[1]["laterality"]  # the override


def _bad_corpus(root: str, good_dicom: bytes) -> dict[str, tuple[str, str]]:
    """Files that must each become one errors row: name -> (bytes written or None for missing, reason)."""
    dataset = pydicom.dcmread(io.BytesIO(good_dicom))
    del dataset.PixelData
    no_pixels = io.BytesIO()
    dataset.save_as(no_pixels, enforce_file_format=True)
    rgb = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(rgb, "PNG")
    return {
        "truncated.dcm": good_dicom[: len(good_dicom) // 2],
        "random.dcm": np.random.default_rng(1).bytes(4096),
        "no-pixels.dcm": no_pixels.getvalue(),
        "empty.dcm": b"",
        "not-a-png.png": b"this is a text file, not an image\n",
        "broken.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
        "rgb.png": rgb.getvalue(),
        "missing.dcm": None,
    }


def test_bad_images_are_error_rows_and_every_good_image_is_still_processed(s3_bucket, tmp_path):
    root = s3_bucket + "/mixed"
    good = generate_cohort(root + "/good", SMALL)
    corpus = _bad_corpus(root, storage.read_bytes(good["uri"].iloc[0]))
    bad_rows = []
    for name, data in corpus.items():
        uri = storage.join(root, "bad", name)
        if data is not None:
            storage.write_bytes(uri, data)
        bad_rows.append({"image_id": f"bad/{name}", "uri": uri, "dataset": "bad", "patient_id": "bad/P1"})
    manifest = pd.concat([good, pd.DataFrame(bad_rows)], ignore_index=True)
    manifest = manifest.sample(frac=1.0, random_state=3).reset_index(drop=True)  # bad rows between good ones

    result = run_ingest(manifest, root + "/out", IngestConfig(batch_size=3, rows_per_block=4))

    errors = storage.read_table(result.errors_uri).to_pandas()
    images = storage.read_table(result.images_uri).to_pandas()
    assert result.errors == len(corpus) and result.images == len(good)
    assert sorted(errors["image_id"]) == sorted(f"bad/{name}" for name in corpus)
    assert sorted(images["image_id"]) == sorted(good["image_id"])
    assert set(errors["stage"]) == {"ingest"}
    for row in errors.itertuples():
        assert row.uri.rsplit("/", 1)[1] in row.message  # each message names its file
    kinds = dict(zip(errors["image_id"], errors["error_type"], strict=True))
    assert kinds["bad/missing.dcm"] == "StorageError"
    assert {kinds[f"bad/{n}"] for n in corpus if n != "missing.dcm"} == {"DecodeError"}
    assert (images["breast_fraction"] > 0.1).all() and (images["height"] == SMALL.rows).all()
