"""Synthetic feature tables for tests and benchmarks: pure noise, or embedding-like features with signal.

`noise_table` is the negative control: features independent of the label, so any protocol that
reports more than chance on it leaks. `embedding_table` imitates CNN embeddings (non-negative,
correlated through a few latent factors, several images per patient sharing a patient effect) with a
weak label signal in some factors. `write_embeddings` stores either as an extractor's feature store and
index, with a manifest of its images, so the grid reads it like real embeddings (`read_synthetic`).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import ndimage

from mammo_ray import feature_store, schemas, storage, tables
from mammo_ray.classify.data import GridData
from mammo_ray.datasets.manifest import label_from_birads, validate_manifest
from mammo_ray.datasets.synthetic import VIEWS, SyntheticSource, cohort_plan, generate_image
from mammo_ray.feature_store import ModelKey


def _rng(seed: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, purpose]))


def _patients(n_rows: int, images_per_patient: int) -> np.ndarray:
    return (np.arange(n_rows) // images_per_patient).astype(np.int64)


def noise_table(n_rows: int = 410, n_features: int = 2048, n_positive: int = 100, seed: int = 0,
                images_per_patient: int = 4, extractor: str = "noise") -> GridData:
    """Standard normal features, independent of a label with exactly `n_positive` positives."""
    rng = _rng(seed, 1)
    X = rng.standard_normal((n_rows, n_features), dtype=np.float32)
    y = np.zeros(n_rows, dtype=np.int8)
    y[rng.permutation(n_rows)[:n_positive]] = 1
    return GridData(extractor, X, y, _patients(n_rows, images_per_patient), weights_ids=("synthetic:noise",))


def embedding_table(n_rows: int = 410, n_features: int = 2048, positive_fraction: float = 0.25,
                    seed: int = 0, signal: float = 0.6, n_factors: int = 32, n_signal_factors: int = 4,
                    images_per_patient: int = 4, extractor: str = "synthetic") -> GridData:
    """Embedding-like features: ReLU(latent factors x loadings + noise), a patient effect, label signal.

    Positives shift `n_signal_factors` latent factors by `signal` standard deviations.
    """
    rng = _rng(seed, 2)
    groups = _patients(n_rows, images_per_patient)
    n_patients = int(groups.max()) + 1
    y = (rng.random(n_rows) < positive_fraction).astype(np.int8)
    patient_effect = rng.standard_normal((n_patients, n_factors)).astype(np.float32) * 0.7
    factors = rng.standard_normal((n_rows, n_factors), dtype=np.float32) * 0.7 + patient_effect[groups]
    factors[:, :n_signal_factors] += signal * y[:, None]
    loadings = rng.standard_normal((n_factors, n_features), dtype=np.float32) / np.sqrt(n_factors / 4)
    X = factors @ loadings
    X += rng.standard_normal(X.shape, dtype=np.float32)
    np.maximum(X, 0, out=X)
    return GridData(extractor, X, y, groups, weights_ids=("synthetic:embedding",))


def image_features(pixels: np.ndarray) -> np.ndarray:
    """20 hand-made intensity/blob features of one mammogram (no CNN): cheap, and they see lesions.

    Pixels are standardised inside the breast (median, std of an eroded breast mask); then, at three
    scales tied to the image height: the maximum and high percentiles of the smoothed image, the share
    of breast brighter than 2 and 2.5 std, and (at twice the scale) a normalised difference of Gaussians: bright
    blobs against their surroundings.
    """
    image = np.asarray(pixels, dtype=np.float32)
    rows = image.shape[0]
    breast = image > 0
    inner = ndimage.binary_erosion(breast, iterations=max(2, rows // 64))
    if inner.sum() < 16:
        inner = breast
    tissue = image[inner]
    spread = float(tissue.std()) or 1.0
    z = np.where(breast, (image - np.median(tissue)) / spread, 0.0).astype(np.float32)
    weight = breast.astype(np.float32)
    out: list[float] = []
    for sigma in (rows / 128, rows / 64, rows / 32):
        smooth = ndimage.gaussian_filter(z, sigma)
        inside = smooth[inner]
        out += [inside.max(), np.percentile(inside, 99.5), np.mean(inside > 2.0), np.mean(inside > 2.5)]
        blob_sigma = 2 * sigma
        local = ndimage.gaussian_filter(z, blob_sigma) / (ndimage.gaussian_filter(weight, blob_sigma) + 1e-3)
        background = ndimage.gaussian_filter(z, 3 * blob_sigma) / (
            ndimage.gaussian_filter(weight, 3 * blob_sigma) + 1e-3
        )
        blob = (local - background)[inner]
        out += [blob.max(), np.percentile(blob, 99.9)]
    out += [float(np.mean(breast)), float(np.percentile(z[inner], 90))]
    return np.asarray(out, dtype=np.float32)


def cohort_feature_table(patients: int = 60, seed: int = 3, rows: int = 128,
                         positive_fraction: float = 0.25, extractor: str = "synthetic_features") -> GridData:
    """The synthetic cohort's images (mammo_ray.datasets.synthetic, rendered in memory, no DICOM) as
    `image_features` rows: 4 images per patient, label from BI-RADS (4a..6 -> 1)."""
    spec = SyntheticSource(patients=patients, seed=seed, rows=rows, positive_fraction=positive_fraction)
    plan = cohort_plan(spec)
    features, labels, groups = [], [], []
    for patient in range(patients):
        for laterality, view in VIEWS:
            birads = plan[(patient, laterality)]
            features.append(image_features(generate_image(patient, laterality, view, birads, spec)))
            labels.append(label_from_birads(birads))
            groups.append(patient)
    return GridData(extractor, np.stack(features), np.asarray(labels, dtype=np.int8),
                    np.asarray(groups, dtype=np.int64), weights_ids=("hand-made:image_features",))


def write_embeddings(output_uri: str, data: GridData, extractor: str | None = None,
                     weights_id: str | None = None, unlabelled: int = 0,
                     rows_per_file: int = 5000, image_prefix: str | None = None) -> tuple[pd.DataFrame, ModelKey]:
    """Store `data` as the feature store and index of embeddings/<extractor>/, exactly as the embedding stage
    does; returns the manifest of its images and the model key to read them back with
    (`feature_store.read_view`).

    `unlabelled` extra images with a null label are added (they must be dropped by the grid). Image ids are
    `<image_prefix or extractor>/img<row>`: one prefix for several tables makes them tables of the same images.
    """
    name = extractor or data.extractor
    X, y, groups = data.X, data.y.astype(object), data.groups
    if unlabelled:
        extra = _rng(0, 3).standard_normal((unlabelled, X.shape[1]), dtype=np.float32)
        X = np.concatenate([X, np.abs(extra)])
        y = np.concatenate([y, np.array([None] * unlabelled, dtype=object)])
        groups = np.concatenate([groups, np.arange(unlabelled) + int(groups.max()) + 1])
    n = X.shape[0]
    ids = [f"{image_prefix or name}/img{i:06d}" for i in range(n)]
    manifest = validate_manifest(pd.DataFrame({
        "image_id": ids,
        "uri": [f"s3://synthetic/{i}.dcm" for i in ids],
        "dataset": "synthetic",
        "patient_id": [f"synthetic/p{g:05d}" for g in groups],
        "exam_id": [f"synthetic/p{g:05d}/e1" for g in groups],
        "laterality": ["L" if i % 2 == 0 else "R" for i in range(n)],
        "view": ["CC" if (i // 2) % 2 == 0 else "MLO" for i in range(n)],
        "label": [None if v is None else int(v) for v in y],
    }), source="<synthetic embeddings>")
    key = ModelKey(model_id=f"{name}:synthetic", weights_id=weights_id or (data.weights_ids[0] if data.weights_ids
                   else "synthetic"), preprocess_id="synthetic", orientation=False)
    contents = [hashlib.sha256(i.encode()).hexdigest() for i in ids]
    features = pd.DataFrame({"content_sha256": contents, "manifest_laterality": None, "manifest_view": None,
                             "embedding": list(X.astype(np.float32)), "breast_share": None})  # no images
    table_uri = tables.embeddings_uri(output_uri, name)
    schema = schemas.embeddings_schema(X.shape[1])
    for start in range(0, n, rows_per_file):
        chunk = feature_store.feature_rows(features.iloc[start : start + rows_per_file], key)
        table = pa.Table.from_pandas(chunk[schema.names], schema=schema, preserve_index=False)
        storage.write_table(table, storage.join(feature_store.key_uri(table_uri, key),
                                                feature_store.part_name(list(chunk["content_sha256"]))))
    index = pd.DataFrame({"image_id": ids, "content_sha256": contents, "status": "ok"})
    feature_store.write_index(table_uri, f"embed:{name}", index, manifest, key)
    return manifest, key


def read_synthetic(output_uri: str, extractor: str, manifest: pd.DataFrame, key: ModelKey) -> GridData:
    """What `write_embeddings` stored, read back as the grid stage reads embeddings: joined to `manifest`."""
    view = feature_store.read_view(tables.embeddings_uri(output_uri, extractor), manifest, key, "embed")
    return GridData.from_embeddings(view, extractor)
