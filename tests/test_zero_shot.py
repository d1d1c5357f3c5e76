"""Zero-shot NYU inference on Ray Data: the right head per image, published checkpoints, reruns, bad
images, and the predicted-benign-vs-malignant-per-BI-RADS figure (the paper's Figure 3)."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd
import pytest

from mammo_ray import feature_store, schemas, storage
from mammo_ray.config import EmbedConfig, ZeroShotConfig
from mammo_ray.datasets.manifest import validate_manifest
from mammo_ray.datasets.synthetic import SyntheticSource, generate_cohort, generate_image
from mammo_ray.models.catalogue import nyu_transform
from mammo_ray.report.figures import zero_shot_by_birads, zero_shot_counts
from mammo_ray.stages.zero_shot import (
    UnknownLateralityError,
    errors_uri,
    head_for,
    read_zero_shot,
    run_zero_shot,
    zero_shot_key,
)

COHORT = SyntheticSource(patients=2, seed=5, rows=256)
OPTIONS = EmbedConfig(batch_size=4)
OTHER_VIEW_ID = "copy/P0000_L_MLO_as_other"
NO_VIEW_ID = "png/no_view"  # view unknown (not in the manifest, not in the file)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[str, str]:
    """A NYU image-wise checkpoint in the published format ({"model": state_dict}) and its sha256."""
    import torch

    from mammo_ray.models.nyu import build_nyu_model, published_state_dict

    path = tmp_path_factory.mktemp("weights") / "ImageOnly__ModeImage_weights.p"
    torch.save({"model": published_state_dict(build_nyu_model(seed=21))}, str(path))
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cohort(s3_endpoint) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """(bucket, the synthetic cohort's manifest, the same plus a view-'other' copy, an image of unknown
    view and two bad images)."""
    import boto3
    from PIL import Image

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="zero-shot-cohort")
    bucket = "s3://zero-shot-cohort"
    manifest = generate_cohort(bucket + "/cohort", COHORT)

    def png(pixels: np.ndarray) -> bytes:  # a PNG has no laterality or view tags
        buffer = io.BytesIO()
        grey = (pixels.astype(np.float64) * 255 / pixels.max()).astype(np.uint8)
        Image.fromarray(grey).save(buffer, format="PNG")
        return buffer.getvalue()

    storage.write_bytes(bucket + "/bad/no_side.png", png(generate_image(0, "L", "CC", "2", COHORT)))
    storage.write_bytes(bucket + "/png/no_view.png", png(generate_image(1, "R", "CC", "2", COHORT)))
    storage.write_bytes(bucket + "/bad/garbage.dcm", b"DICM" * 100)
    mlo = manifest[manifest["image_id"] == "synth/P0000_L_MLO"].iloc[0]
    extra = pd.DataFrame(
        [
            {**mlo.to_dict(), "image_id": OTHER_VIEW_ID, "view": "other"},
            {"image_id": NO_VIEW_ID, "uri": bucket + "/png/no_view.png", "dataset": "png",
             "patient_id": "png/1", "laterality": "R", "birads": "2"},
            {"image_id": "bad/no_side", "uri": bucket + "/bad/no_side.png", "dataset": "bad",
             "patient_id": "bad/1", "view": "CC", "birads": "2"},
            {"image_id": "bad/garbage", "uri": bucket + "/bad/garbage.dcm", "dataset": "bad",
             "patient_id": "bad/1"},
        ]
    )
    mixed = validate_manifest(pd.concat([manifest, extra], ignore_index=True), source="test")
    return bucket, manifest, mixed


@pytest.fixture(scope="module")
def scored(ray_session, cohort, checkpoint):
    bucket, manifest, mixed = cohort
    path, sha256 = checkpoint
    spec = ZeroShotConfig(weights=path, sha256=sha256, nyu_scale=0.125)
    out = bucket + "/out"
    return out, spec, run_zero_shot(mixed, out, spec, OPTIONS)


def test_every_good_image_is_scored_with_the_schema_and_the_checkpoint_id(scored, cohort, checkpoint):
    out, spec, result = scored
    _, manifest, _ = cohort
    good = len(manifest) + 2  # the cohort, its view-'other' copy and the image of unknown view
    assert (result.scored, result.skipped, result.errors) == (good, 0, 2)
    assert result.weights_id == checkpoint[1] and result.preprocess_id == f"{nyu_transform(spec).id}|voi_lut=1"

    store = feature_store.key_uri(result.uri, zero_shot_key(spec))
    table = storage.read_table(store)
    assert table.schema.equals(schemas.ZERO_SHOT_SCHEMA, check_metadata=False)
    assert storage.list_files(store, extensions=[".parquet"]) == storage.list_files(store)
    _, _, mixed = cohort
    frame = read_zero_shot(out, mixed, spec)
    # The view-'other' copy shares its source's bytes but not its view: a row of its own in the store.
    assert len(frame) == table.num_rows == good and frame["image_id"].is_unique
    assert sorted(frame["image_id"]) == sorted([*manifest["image_id"], OTHER_VIEW_ID, NO_VIEW_ID])
    for column in ("p_benign", "p_malignant"):
        values = frame[column].to_numpy()
        assert values.dtype == np.float32 and ((values >= 0) & (values <= 1)).all()
    assert set(frame["weights_id"]) == {checkpoint[1]}
    assert set(frame["preprocess_id"]) == {"nyu:v2:window=image-view:scale=0.125:tta=0:source=auto|voi_lut=1"}
    labels = manifest.set_index("image_id")
    for row in frame[frame["image_id"].isin(manifest["image_id"])].itertuples():
        expected = tuple(labels.loc[row.image_id, ["birads", "laterality", "view"]])
        assert (row.birads, row.laterality, row.view) == expected
        assert row.label == labels.loc[row.image_id, "label"]
    assert len(set(frame["content_sha256"])) == len(manifest) + 1  # the copy shares its source's bytes


def _in_process(uri: str, view: str | None, laterality: str, head: str, spec: ZeroShotConfig, path: str):
    """(p_benign, p_malignant) computed here, without Ray, from the file and the checkpoint."""
    import torch

    from mammo_ray.imaging.decode import decode_image
    from mammo_ray.models.nyu import build_nyu_model

    pixels = decode_image(storage.read_bytes(uri), uri).pixels
    window = nyu_transform(spec).preprocess(pixels.shape[0])(pixels, view, laterality)
    model = build_nyu_model(torch.load(path, weights_only=True, map_location="cpu"))
    with torch.inference_mode():
        p_benign, p_malignant = model.predict_proba(torch.from_numpy(window)[None, None], head)
    return float(p_benign[0]), float(p_malignant[0])


@pytest.mark.parametrize(
    ("image_id", "head", "wrong_head"),
    [
        ("synth/P0001_L_CC", "lcc", "rcc"),
        ("synth/P0001_R_MLO", "rmlo", "lmlo"),
        (OTHER_VIEW_ID, "lcc", "lmlo"),  # view 'other': the CC window and the CC head of its side
        (NO_VIEW_ID, "rcc", "rmlo"),  # view unknown: the same
    ],
)
def test_probabilities_are_the_models_for_the_images_own_side_and_view(
    scored, cohort, checkpoint, image_id, head, wrong_head
):
    out, spec, _ = scored
    row = read_zero_shot(out, cohort[2], spec).set_index("image_id").loc[image_id]
    assert head_for(row["laterality"], row["view"]) == head
    expected = _in_process(row["uri"], row["view"], row["laterality"], head, spec, checkpoint[0])
    np.testing.assert_allclose([row["p_benign"], row["p_malignant"]], expected, rtol=1e-4, atol=1e-5)
    other = _in_process(row["uri"], row["view"], row["laterality"], wrong_head, spec, checkpoint[0])
    # The heads differ, so matching the right one means something.
    assert not np.allclose(other, expected, rtol=1e-3, atol=1e-4)


def test_images_that_cannot_be_scored_are_error_rows(scored):
    out, _, result = scored
    errors = storage.read_table(errors_uri(out)).to_pandas()
    assert result.errors_uri == errors_uri(out) and set(errors["stage"]) == {"zero_shot"}
    kinds = dict(zip(errors["image_id"], errors["error_type"], strict=True))
    assert kinds == {"bad/garbage": "DecodeError", "bad/no_side": "UnknownLateralityError"}
    message = errors.set_index("image_id").loc["bad/no_side", "message"]
    assert "no_side.png" in message and "laterality" in message and "L or R" in message


def test_rerun_adds_nothing_and_reports_the_still_bad_images_once(scored, cohort):
    out, spec, first = scored
    _, _, mixed = cohort
    again = run_zero_shot(mixed, out, spec, OPTIONS)
    assert (again.scored, again.skipped, again.errors) == (0, first.scored, 2)
    assert storage.read_table(feature_store.key_uri(first.uri, zero_shot_key(spec))).num_rows == first.scored
    assert storage.read_table(errors_uri(out)).num_rows == 2


def test_test_time_augmentation_averages_the_windows_and_is_a_new_preprocessing(scored, cohort, checkpoint):
    import torch

    from mammo_ray.imaging.decode import decode_image
    from mammo_ray.models.nyu import build_nyu_model

    out, spec, _ = scored
    _, manifest, mixed = cohort
    subset = manifest[manifest["image_id"].isin(["synth/P0000_R_CC", "synth/P0000_L_MLO"])]
    tta = ZeroShotConfig(weights=spec.weights, nyu_scale=spec.nyu_scale, tta=3)
    result = run_zero_shot(subset, out, tta, OPTIONS)
    assert (result.scored, result.skipped, result.errors) == (2, 0, 0)  # other preprocessing: new rows
    rows = read_zero_shot(out, subset, tta).set_index("image_id")
    assert len(rows) == 2
    assert storage.read_table(feature_store.key_uri(result.uri, zero_shot_key(spec))).num_rows == len(manifest) + 2
    model = build_nyu_model(torch.load(checkpoint[0], weights_only=True, map_location="cpu"))
    for _image_id, row in rows.iterrows():
        pixels = decode_image(storage.read_bytes(row["uri"]), row["uri"]).pixels
        preprocess = nyu_transform(tta).preprocess(pixels.shape[0])
        windows = preprocess(pixels, row["view"], row["laterality"])
        assert windows.shape[0] == 3
        with torch.inference_mode():
            head = head_for(row["laterality"], row["view"])
            p_benign, p_malignant = model.predict_proba(torch.from_numpy(windows)[:, None], head)
        np.testing.assert_allclose([row["p_benign"], row["p_malignant"]],
                                   [float(p_benign.mean()), float(p_malignant.mean())], rtol=1e-4, atol=1e-5)
    back = run_zero_shot(mixed, out, spec, OPTIONS)  # back to the first settings: all of it is still stored
    assert (back.scored, back.skipped, back.errors) == (0, len(mixed) - 2, 2)


def test_the_stage_draws_the_figure_and_its_counts_match_the_probabilities(scored, cohort):
    from PIL import Image

    out, spec, result = scored
    assert result.figure_uri == storage.join(out, "figures", "zero_shot_by_birads.png")
    with Image.open(io.BytesIO(storage.read_bytes(result.figure_uri))) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
        image.verify()

    _, _, mixed = cohort
    frame = read_zero_shot(out, mixed, spec)
    counts = zero_shot_counts(frame)
    assert list(counts.columns) == ["birads", "predicted_benign", "predicted_malignant"]
    total = int(counts[["predicted_benign", "predicted_malignant"]].to_numpy().sum())
    assert total == len(frame) == result.scored
    order = ["0", "1", "2", "3", "4", "4a", "4b", "4c", "5", "6"]
    assert list(counts["birads"]) == [b for b in order if b in set(frame["birads"])]
    for row in counts.itertuples():
        group = frame[frame["birads"] == row.birads]
        malignant = int((group["p_malignant"] > group["p_benign"]).sum())
        assert (row.predicted_benign, row.predicted_malignant) == (len(group) - malignant, malignant)


def test_counts_group_by_birads_then_pathology_then_na_and_ties_count_as_benign(tmp_path):
    from PIL import Image

    frame = pd.DataFrame(
        {
            "birads": ["4a", "1", "0", None, None, "1", "5", None, "4"],
            "pathology": [None, None, None, "benign", None, "benign", None, "malignant", None],
            "p_benign": [0.2, 0.9, 0.5, 0.1, 0.3, 0.6, 0.4, 0.2, np.nan],
            "p_malignant": [0.7, 0.1, 0.5, 0.8, 0.2, 0.7, 0.9, 0.1, 0.5],
        }
    )
    counts = zero_shot_counts(frame)
    expected = pd.DataFrame(
        {
            "birads": ["0", "1", "4a", "5", "pathology: benign", "pathology: malignant", "n/a"],
            "predicted_benign": [1, 1, 0, 0, 0, 1, 1],
            "predicted_malignant": [0, 1, 1, 1, 1, 0, 0],
        }
    )
    pd.testing.assert_frame_equal(counts, expected, check_dtype=False)
    assert counts["predicted_benign"].dtype == np.int64

    path = tmp_path / "figures" / "counts.png"
    zero_shot_by_birads(frame, str(path))
    with Image.open(path) as image:
        assert image.format == "PNG"
    zero_shot_by_birads(frame.iloc[:0], str(tmp_path / "empty.png"))  # nothing scored: still a figure
    assert zero_shot_counts(frame.iloc[:0]).empty


def test_head_for_needs_a_side_and_falls_back_to_cc():
    assert head_for("L", "CC") == "lcc" and head_for("R", "MLO") == "rmlo"
    assert head_for("R", "other") == "rcc" and head_for("L", None) == "lcc"
    with pytest.raises(UnknownLateralityError, match="laterality is missing"):
        head_for(None, "CC")
    with pytest.raises(ValueError, match="tta"):
        ZeroShotConfig(tta=-1)
