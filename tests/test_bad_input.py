"""The bad-input promise, job level: bad images are errors rows, bad manifests and configs clear errors.

One manifest mixes the synthetic cohort (and good PNG / PGM copies of its pixels) with broken and
hostile files. The real ingest and embed stages run on the session's Ray and must return normally:
every good image has exactly one row per stage, every bad one exactly one errors row per stage that
meets it, naming its file and saying why. Decoding problems are met at ingest (and again by every
embed run, which decodes for itself); an image that decodes but holds no breast is met at embed, where
the NYU / ImageNet preprocessing looks for one.

Manifest- and config-level problems (duplicate ids, unknown BI-RADS or labels, path traversal,
config typos and wrong types) fail before any work, naming the row or key.

The decoder's own corpus (every reason, file by file) is tests/imaging/test_decode.py; this file is
about what the job does with such files among good ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammo_ray import storage
from mammo_ray.config import EmbedConfig, ExtractorConfig, parse_config
from mammo_ray.datasets import generic_csv
from mammo_ray.datasets.manifest import read_manifest, validate_manifest
from mammo_ray.datasets.synthetic import SyntheticSource, generate_cohort, synthetic_dicom_bytes
from mammo_ray.errors import ConfigError, ManifestError, StorageError
from mammo_ray.imaging import decode_image
from mammo_ray.stages.embed import errors_uri, read_embeddings, run_embed
from mammo_ray.stages.ingest import run_ingest
from mammo_ray.study import run_study
from tests.image_builders import huge_element_dicom, make_dicom, nested_sequence_dicom, png_bomb, png_bytes

COHORT = SyntheticSource(patients=2, seed=5, rows=96)
EXTRACTORS = [
    ExtractorConfig(name="imagenet_resnet18", weights="random-init:0", input_size=64),
    ExtractorConfig(name="nyu_lcc", weights="random-init:0", nyu_scale=0.125),
]
TINY = np.arange(64, dtype=np.uint16).reshape(8, 8)


@dataclass(frozen=True)
class BadCase:
    """A bad image: its file name, the stage that first meets it, the error type and a reason fragment."""

    name: str
    stage: str  # "ingest" (it does not decode) or "embed" (it decodes, but no breast is found)
    error_type: str
    reason: str


BAD_CASES = [
    BadCase("truncated.dcm", "ingest", "DecodeError", "truncated pixel data"),
    BadCase("garbage.dcm", "ingest", "DecodeError", "not a DICOM file"),
    BadCase("empty.dcm", "ingest", "DecodeError", "empty file (0 bytes)"),
    BadCase("absurd-60000x60000.dcm", "ingest", "DecodeError", "60000 x 60000 = 3600000000 pixels exceeds"),
    BadCase("bits-allocated-32.dcm", "ingest", "DecodeError", "unsupported BitsAllocated 32"),
    BadCase("bits-allocated-12.dcm", "ingest", "DecodeError", "unsupported BitsAllocated 12"),
    BadCase("bits-stored-17.dcm", "ingest", "DecodeError", "unsupported BitsStored 17 with BitsAllocated 16"),
    BadCase("bits-stored-0.dcm", "ingest", "DecodeError", "unsupported BitsStored 0"),
    BadCase("short-pixel-data.dcm", "ingest", "DecodeError", "truncated pixel data: 128 bytes"),
    BadCase("nested-sequences.dcm", "ingest", "DecodeError", "RecursionError"),
    BadCase("huge-element-length.dcm", "ingest", "DecodeError", "no pixel data"),
    BadCase("multi-frame.dcm", "ingest", "DecodeError", "multi-frame DICOM (3 frames)"),
    BadCase("colour.png", "ingest", "DecodeError", "channels differ"),
    BadCase("bomb-100000x100000.png", "ingest", "DecodeError", "100000 x 100000 = 10000000000 pixels exceeds"),
    BadCase("text.png", "ingest", "DecodeError", "not a PNG file"),
    BadCase("maxval-0.pgm", "ingest", "DecodeError", "maxval 0 outside 1..65535"),
    BadCase("a-folder.dcm", "ingest", "StorageError", "is a folder, not a file"),
    BadCase("missing.dcm", "ingest", "StorageError", "not found"),
    BadCase("all-black.dcm", "embed", "NoBreastFoundError", "every pixel is <= 0"),
    BadCase("speckle.dcm", "embed", "NoBreastFoundError", "after the morphological opening"),
]
GOOD_EXTRA = ["copy-8bit.png", "copy-grey-as-rgb.png", "copy-16bit.pgm"]


def _bad_bytes(name: str, valid: bytes, pixels: np.ndarray) -> bytes | None:
    """The file content of a bad case (None: the case writes no file)."""
    black = np.zeros((128, 100), dtype=np.uint16)
    speckle = black.copy()
    speckle[::9, ::9] = 3000  # isolated pixels: something > 0, but nothing a breast crop keeps
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    grey = (pixels * (255 / pixels.max())).astype(np.uint8)
    builders = {
        "truncated.dcm": lambda: valid[: len(valid) // 2],
        "garbage.dcm": lambda: np.random.default_rng(7).bytes(4096),
        "empty.dcm": lambda: b"",
        "absurd-60000x60000.dcm": lambda: make_dicom(TINY, Rows=60000, Columns=60000),
        "bits-allocated-32.dcm": lambda: make_dicom(TINY, BitsAllocated=32, BitsStored=32),
        "bits-allocated-12.dcm": lambda: make_dicom(TINY, BitsAllocated=12),
        "bits-stored-17.dcm": lambda: make_dicom(TINY, BitsStored=17),
        "bits-stored-0.dcm": lambda: make_dicom(TINY, BitsStored=0),
        "short-pixel-data.dcm": lambda: make_dicom(TINY, Rows=16),  # 16 x 8 declared, 8 x 8 stored
        "nested-sequences.dcm": lambda: nested_sequence_dicom(make_dicom(TINY), depth=5000),
        "huge-element-length.dcm": lambda: huge_element_dicom(make_dicom(TINY), 0xFFFFFFF0),
        "multi-frame.dcm": lambda: make_dicom(np.stack([TINY] * 3)),
        "colour.png": lambda: png_bytes(rgb),
        "bomb-100000x100000.png": lambda: png_bomb(100_000, 100_000),
        "text.png": lambda: b"this is a text file, not an image\n",
        "maxval-0.pgm": lambda: b"P5\n4 4\n0\n" + bytes(32),
        "a-folder.dcm": lambda: None,
        "missing.dcm": lambda: None,
        "all-black.dcm": lambda: synthetic_dicom_bytes(
            black, patient_id="bad/P1", exam_id="bad/P1_E1", laterality="L", view="CC", spec=COHORT
        ),
        "speckle.dcm": lambda: synthetic_dicom_bytes(
            speckle, patient_id="bad/P1", exam_id="bad/P1_E1", laterality="L", view="CC", spec=COHORT
        ),
        "copy-8bit.png": lambda: png_bytes(grey),
        "copy-grey-as-rgb.png": lambda: png_bytes(np.repeat(grey[..., None], 3, axis=2)),
        "copy-16bit.pgm": lambda: (
            f"P5\n{pixels.shape[1]} {pixels.shape[0]}\n65535\n".encode() + pixels.astype(">u2").tobytes()
        ),
    }
    return builders[name]()


@dataclass(frozen=True)
class Corpus:
    manifest: pd.DataFrame
    good: set[str]  # image ids that must come through every stage
    bad: dict[str, BadCase]  # image id -> its case
    output: str


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("bad-input")
    cohort = generate_cohort(str(root / "cohort"), COHORT)
    valid = Path(cohort["uri"].iloc[0]).read_bytes()
    pixels = decode_image(valid, cohort["uri"].iloc[0]).pixels.astype(np.uint16)
    folder = root / "files"
    folder.mkdir()
    (folder / "a-folder.dcm").mkdir()
    rows = []
    for name in [*GOOD_EXTRA, *(case.name for case in BAD_CASES)]:
        data = _bad_bytes(name, valid, pixels)
        if data is not None:
            (folder / name).write_bytes(data)
        rows.append({"image_id": f"files/{name}", "uri": str(folder / name), "dataset": "files",
                     "patient_id": "files/P1", "laterality": "L", "view": "CC"})
    manifest = validate_manifest(pd.concat([cohort, pd.DataFrame(rows)], ignore_index=True), source="corpus")
    good = {*cohort["image_id"], *(f"files/{name}" for name in GOOD_EXTRA)}
    bad = {f"files/{case.name}": case for case in BAD_CASES}
    return Corpus(manifest, good, bad, str(root / "out"))


@pytest.fixture(scope="module")
def job(corpus: Corpus, ray_session: None) -> dict[str, object]:
    """Ingest and both embeddings of the mixed manifest: the calls must simply return."""
    results: dict[str, object] = {"ingest": run_ingest(corpus.manifest, corpus.output)}
    for spec in EXTRACTORS:
        results[spec.name] = run_embed(corpus.manifest, corpus.output, spec, EmbedConfig(batch_size=4))
    return results


def test_the_corpus_is_large_enough(corpus: Corpus) -> None:
    assert len(corpus.bad) >= 20 and len(corpus.good) >= 10
    assert set(corpus.manifest["image_id"]) == corpus.good | set(corpus.bad)


def test_every_good_image_has_one_ingest_row_and_one_embedding_row(corpus: Corpus, job) -> None:
    met_at_embed = {image_id for image_id, case in corpus.bad.items() if case.stage == "embed"}
    images = storage.read_table(job["ingest"].images_uri).to_pandas()
    assert sorted(images["image_id"]) == sorted(corpus.good | met_at_embed)  # each exactly once
    assert job["ingest"].images == len(corpus.good | met_at_embed)
    for spec in EXTRACTORS:
        embedded = read_embeddings(corpus.output, corpus.manifest, spec)
        assert sorted(embedded["image_id"]) == sorted(corpus.good), spec.name
        assert (job[spec.name].embedded, job[spec.name].errors) == (len(corpus.good), len(corpus.bad))
        assert np.isfinite(np.stack(embedded["embedding"])).all()


def _errors(uri: str) -> pd.DataFrame:
    return storage.read_table(uri).to_pandas()


def _check_rows(errors: pd.DataFrame, expected: dict[str, BadCase], stage: str) -> None:
    assert sorted(errors["image_id"]) == sorted(expected)  # one row per bad image, no other
    assert set(errors["stage"]) == {stage}
    for row in errors.itertuples(index=False):
        case = expected[row.image_id]
        assert row.error_type == case.error_type, (case.name, row.message)
        assert row.uri in row.message and case.name in row.message  # names its file
        assert case.reason in row.message, (case.name, row.message)  # and says why


def test_every_undecodable_image_is_one_ingest_error_row(corpus: Corpus, job) -> None:
    expected = {image_id: case for image_id, case in corpus.bad.items() if case.stage == "ingest"}
    _check_rows(_errors(job["ingest"].errors_uri), expected, "ingest")
    assert job["ingest"].errors == len(expected)


@pytest.mark.parametrize("spec", EXTRACTORS, ids=[spec.name for spec in EXTRACTORS])
def test_every_bad_image_is_one_error_row_of_each_embedding(corpus: Corpus, job, spec: ExtractorConfig) -> None:
    # Embed decodes for itself, so the undecodable images are its errors too, with the same reasons.
    _check_rows(_errors(errors_uri(corpus.output, spec.name)), corpus.bad, f"embed:{spec.name}")


# ------------------------------------------------------------------ manifests: refused before any work


def _refused(tmp_path: Path, data: dict) -> Exception:
    """The error a study on this data source stops on; it must stop before writing anything (the data source
    is read under the output's lock: the folder its taking created goes again)."""
    output = tmp_path / "out"
    config = parse_config({"output": str(output), "data": data})
    with pytest.raises((ManifestError, ConfigError)) as caught:
        run_study(config, ["manifest", "ingest"])
    assert not output.exists()
    return caught.value


MANIFEST_HEADER = "image_id,uri,dataset,patient_id,birads,label\n"


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ("a,/d/a.dcm,x,p1,,\nb,/d/b.dcm,x,p1,,\na,/d/c.dcm,x,p2,,\n", "duplicate image_id 'a' in rows 0, 2"),
        ("a,/d/a.dcm,x,p1,4d,\nb,/d/b.dcm,x,p1,2,\n", "row 0 (a): birads: unknown BI-RADS value '4d'"),
        ("a,/d/a.dcm,x,p1,,\nb,/d/b.dcm,x,p1,,yes\n", "row 1 (b): label 'yes' is not 0, 1 or null"),
        ("a,/d/a.dcm,x,p1,,2\n", "row 0 (a): label 2"),
        ("a,s3://bucket/images/../secrets/a.dcm,x,p1,,\n", "row 0 (a): uri s3://bucket/images/../secrets/a.dcm"),
        ("a,ftp://host/a.dcm,x,p1,,\n", "row 0 (a): uri ftp://host/a.dcm: unsupported scheme 'ftp'"),
        ("a,,x,p1,,\n", "row 0: empty uri"),
    ],
    ids=["duplicate-id", "unknown-birads", "unknown-label", "label-out-of-range", "s3-traversal",
         "unsupported-scheme", "empty-uri"],
)
def test_bad_manifest_rows_fail_before_any_work(tmp_path: Path, rows: str, problem: str) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(MANIFEST_HEADER + rows)
    error = _refused(tmp_path, {"manifest": str(manifest)})
    assert isinstance(error, ManifestError) and error.source == str(manifest)
    assert any(problem in line for line in error.problems), error.problems


@pytest.mark.parametrize(
    "path",
    ["../secrets/a.dcm", "images/../../a.dcm", "..\\..\\a.dcm", "./../a.dcm", "a/b/../../../c.dcm"],
)
def test_relative_paths_that_climb_out_of_the_images_root_are_refused(tmp_path: Path, path: str) -> None:
    table = tmp_path / "meta.csv"
    table.write_text(f"file,subject\nimages/ok.dcm,s1\n{path},s2\n")
    root = tmp_path / "root"
    for images_root in (str(root), "s3://bucket/root"):
        with pytest.raises(ManifestError) as caught:
            generic_csv.build_manifest(str(table), columns={"uri": "file", "patient_id": "subject"},
                                       dataset="d", images_root=images_root)
        (problem,) = caught.value.problems
        assert problem.startswith("row 1 (d/") and repr(path) in problem and "climbs out of" in problem
    error = _refused(tmp_path, {"adapter": {"name": "csv", "args": {  # the same through a study config
        "csv_uri": str(table), "columns": {"uri": "file"}, "dataset": "d", "images_root": str(root)}}})
    assert isinstance(error, ManifestError) and "climbs out of" in error.problems[0]


def test_dot_dot_inside_the_root_is_resolved_and_stays_inside(tmp_path: Path) -> None:
    table = tmp_path / "meta.csv"
    table.write_text("file\nimages/old/../new/a.dcm\n./b.dcm\n")
    manifest = generic_csv.build_manifest(str(table), columns={"uri": "file"}, dataset="d",
                                          images_root="s3://bucket/root")
    assert manifest["uri"].tolist() == ["s3://bucket/root/images/new/a.dcm", "s3://bucket/root/b.dcm"]


@pytest.mark.parametrize(
    "uri", ["s3://b/images/../secrets/x", "s3://b/./x", "s3://b/x/..", "s3://../x", "S3://b/a/./../c"]
)
def test_s3_uris_with_dot_segments_are_refused(uri: str) -> None:
    with pytest.raises(StorageError) as caught:
        storage.split_uri(uri)
    assert caught.value.uri == uri and "'..'" in caught.value.reason
    assert storage.split_uri("s3://b/images/..x/.hidden/x..y") == ("s3", "b/images/..x/.hidden/x..y")


def test_missing_files_do_not_fail_the_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(MANIFEST_HEADER + "a,/nowhere/a.dcm,x,p1,,\n")
    assert read_manifest(str(manifest))["uri"].tolist() == ["/nowhere/a.dcm"]  # ingest reports it
    with pytest.raises(ManifestError, match="file not found: /nowhere/a.dcm"):  # still there on request
        read_manifest(str(manifest), check_files=True)


@pytest.mark.parametrize(
    ("adapter", "args", "reason"),
    [
        ("csv", {"csv": "m.csv", "columns": {}, "dataset": "d"}, "unknown argument 'csv' (did you mean 'csv_uri'?)"),
        ("csv", {"csv_uri": "m.csv", "columns": "uri", "dataset": "d"}, "columns must be a mapping"),
        ("csv", {"csv_uri": "m.csv", "columns": {"uri": 3}, "dataset": "d"}, "columns must be a mapping"),
        ("mias", {"info_uri": "Info.txt", "images_uri": ".", "missing": "ignore"}, "'error' or 'skip'"),
    ],
    ids=["typo-in-an-argument-name", "columns-not-a-mapping", "column-name-not-text", "unknown-choice"],
)
def test_adapter_argument_typos_and_wrong_types_name_the_key(
    tmp_path: Path, adapter: str, args: dict, reason: str
) -> None:
    error = _refused(tmp_path, {"adapter": {"name": adapter, "args": args}})
    assert isinstance(error, ConfigError) and error.key_path == "data.adapter.args"
    assert reason in error.reason, error.reason
