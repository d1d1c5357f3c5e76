"""Fuzzing the dataset adapters: any metadata text gives a valid manifest or a declared error.

Each adapter (inbreast, mias, cbis_ddsm, csv) and the manifest CSV reader are fed the real metadata
of ../shared/data mutated line by line and field by field (deleted, duplicated and swapped rows,
fields replaced by hostile values, cut files), and arbitrary text. Every outcome must be a manifest
that passes `validate_manifest` and converts to the Arrow schema, or a ManifestError / StorageError:
never another exception, which would crash a study at its first stage instead of naming the row.

Images are empty placeholder files named as each distribution names them: the adapters only list
image folders, they never read the pixels.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mammo_ray.datasets import cbis_ddsm, generic_csv, inbreast, mias
from mammo_ray.datasets.manifest import read_manifest, to_table, validate_manifest
from mammo_ray.errors import ManifestError, StorageError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INBREAST_ROWS = 24  # data rows kept from the real files: enough structure, fast per example
CBIS_ROWS = 30

# Values a broken or hostile metadata file may hold where a field should be.
HOSTILE = [
    "", " ", "..", "../../etc/passwd", "a/../../x.dcm", "..\\..\\x.png", "/etc/passwd", "s3://b/../x",
    "s3://b/./x", "ftp://host/x", "s3://", "nan", "NaN", "None", "null", "4d", "4A", "BI-RADS 7", "7",
    "0", "-1", "1e400", "inf", "99999999999999999999", "4.5", "LEFT", "RIGHT", "B", "X", "CC", "MLO",
    "FB", "MALIGNANT", "BENIGN_WITHOUT_CALLBACK", "mdb001", "mdb999", "\x00", "²", "٣", "１",
    '"', "'", ";", ",", "\t", "|", "\n", "\r\n", "\r", "\ufeff", "é", "😀",
]
field_values = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=12))
MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["delete", "duplicate", "swap", "field", "insert", "cut", "char"]),
        st.integers(min_value=0, max_value=1 << 16),
        st.integers(min_value=0, max_value=1 << 16),
        field_values,
    ),
    min_size=1,
    max_size=6,
)


def mutate(
    text: str, mutations: list[tuple[str, int, int, str]], delimiter: str | None, first_row: int = 0
) -> str:
    """Apply line and field mutations to `text`; `delimiter` None splits fields on whitespace.

    Mutations land on lines from `first_row` on (the data rows, not a free-text preamble), except a cut.
    """
    lines = text.splitlines(keepends=True) or [""]
    for kind, a, b, value in mutations:
        start = min(first_row, len(lines) - 1)
        i, j = start + a % (len(lines) - start), start + b % (len(lines) - start)
        if kind == "delete" and len(lines) > 1:
            del lines[i]
        elif kind == "duplicate":
            lines.insert(j, lines[i])
        elif kind == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "field":
            body = lines[i].rstrip("\r\n")
            fields = (body.split(delimiter) if delimiter else body.split()) or [""]
            fields[b % len(fields)] = value
            lines[i] = (delimiter or " ").join(fields) + lines[i][len(body):]
        elif kind == "insert":
            at = b % (len(lines[i]) + 1)
            lines[i] = lines[i][:at] + value + lines[i][at:]
        elif kind == "cut":
            joined = "".join(lines)
            lines = joined[: a % (len(joined) + 1)].splitlines(keepends=True) or [""]
        elif kind == "char" and lines[i]:
            at = b % len(lines[i])
            lines[i] = lines[i][:at] + (value[:1] or "") + lines[i][at + 1 :]
    return "".join(lines)


def manifest_or_declared_error(build: Callable[[], pd.DataFrame]) -> pd.DataFrame | None:
    """The manifest `build` returns, checked against the contract, or None for a declared error."""
    try:
        manifest = build()
    except (ManifestError, StorageError) as error:
        assert str(error)  # a message a user can act on, never an empty one
        return None
    validated = validate_manifest(manifest, source="<fuzzed>")
    to_table(validated)  # the Arrow schema accepts every value
    return validated


def head_records(text: str, records: int) -> str:
    """The header and the first `records` CSV records of `text`, bytes as they are (quoted newlines kept)."""
    lines = text.splitlines(keepends=True)
    reader = csv.reader(lines)
    for _ in range(records + 1):
        next(reader)
    return "".join(lines[: reader.line_num])


# --------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def inbreast_case(inbreast_metadata_dir: Path, work: Path) -> tuple[str, Path]:
    """The real INbreast.csv cut to its first rows, and a folder with an image file for each of them."""
    raw = (inbreast_metadata_dir / "INbreast.csv").read_bytes().decode("utf-8-sig")
    text = "".join(raw.splitlines(keepends=True)[: INBREAST_ROWS + 1])
    folder = work / "inbreast-images"
    folder.mkdir()
    table = pd.read_csv(io.StringIO(text), sep=";", dtype=str)
    for index, row in enumerate(table.to_dict("records")):
        patient = hashlib.sha256(f"patient-{index // 4}".encode()).hexdigest()[:16]
        view = {"CC": "CC", "MLO": "ML"}.get(row["View"], row["View"])
        (folder / f"{row['File Name']}_{patient}_MG_{row['Laterality']}_{view}_ANON.dcm").write_bytes(b"")
    return text, folder


@pytest.fixture(scope="module")
def mias_images(work: Path) -> Path:
    folder = work / "mias-images"
    folder.mkdir()
    for number in range(1, 323):
        (folder / f"mdb{number:03d}.png").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def mias_info(mini_mias_dir: Path) -> str:
    return (mini_mias_dir / "Info.txt").read_bytes().decode("latin-1")


@pytest.fixture(scope="module")
def cbis_case(cbis_metadata_dir: Path, work: Path) -> tuple[str, Path]:
    """The first rows of the real mass test CSV and the distribution's tree of their full images."""
    text = head_records((cbis_metadata_dir / "mass_case_description_test_set.csv").read_text(), CBIS_ROWS)
    root = work / "CBIS-DDSM"
    for path in pd.read_csv(io.StringIO(text), dtype=str)["image file path"].str.strip():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"")
    return text, root


def _write(work: Path, name: str, data: str | bytes) -> str:
    path = work / name
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return str(path)


# ------------------------------------------------------------------------------ mutated real files


@FUZZ
@given(mutations=MUTATIONS, missing=st.sampled_from(["error", "skip"]))
def test_inbreast_csv_mutations(inbreast_case: tuple[str, Path], work: Path, mutations, missing: str) -> None:
    text, images = inbreast_case
    uri = _write(work, "INbreast.csv", mutate(text, mutations, ";"))
    manifest_or_declared_error(lambda: inbreast.build_manifest(uri, str(images), missing=missing))


@FUZZ
@given(mutations=MUTATIONS, missing=st.sampled_from(["error", "skip"]))
def test_mias_info_mutations(mias_info: str, mias_images: Path, work: Path, mutations, missing: str) -> None:
    first_row = next(n for n, line in enumerate(mias_info.splitlines()) if line.startswith("mdb"))
    uri = _write(work, "Info.txt", mutate(mias_info, mutations, None, first_row))
    manifest_or_declared_error(lambda: mias.build_manifest(uri, str(mias_images), missing=missing))


@FUZZ
@given(mutations=MUTATIONS, missing=st.sampled_from(["error", "skip"]))
def test_cbis_csv_mutations(cbis_case: tuple[str, Path], work: Path, mutations, missing: str) -> None:
    text, root = cbis_case
    uri = _write(work, "mass_case_description_test_set.csv", mutate(text, mutations, ","))
    manifest_or_declared_error(lambda: cbis_ddsm.build_manifest([uri], str(root), missing=missing))


MIAS_TOKENS = {
    "ref": st.sampled_from(["mdb001", "mdb002", "MDB003", "mdb322", "mdb000", "mdb٠٠١", "mdb1"]),
    "background": st.sampled_from(["F", "G", "D", "g", "X", ""]),
    "abnormality": st.sampled_from([*mias.ABNORMALITY_CLASSES, "calc", "BAD"]),
    "severity": st.sampled_from(["B", "M", "m", "", "*NOTE", "X"]),
    "number": st.one_of(
        st.integers(-5, 1100).map(str),
        st.sampled_from(["1024", "1025", "1.5", "+3", "²", "٣", "１", "99999999999999999999", "*NOTE", "3*"]),
        st.sampled_from(HOSTILE),
    ),
}
mias_lines = st.tuples(
    MIAS_TOKENS["ref"], MIAS_TOKENS["background"], MIAS_TOKENS["abnormality"], MIAS_TOKENS["severity"],
    st.lists(MIAS_TOKENS["number"], max_size=4),
).map(lambda parts: " ".join([*parts[:4], *parts[4]]))


@FUZZ
@given(lines=st.lists(mias_lines, min_size=1, max_size=12), missing=st.sampled_from(["error", "skip"]))
def test_mias_info_rows_from_their_grammar(mias_images: Path, work: Path, lines: list[str], missing: str) -> None:
    uri = _write(work, "Info-grammar.txt", "header line\r\n" + "\r\n".join(lines) + "\r\n")
    manifest_or_declared_error(lambda: mias.build_manifest(uri, str(mias_images), missing=missing))


CBIS_MAPPING = {
    "uri": "image file path", "patient_id": "patient_id", "laterality": "left or right breast",
    "view": "image view", "birads": "assessment", "pathology": "pathology",
}


@FUZZ
@given(mutations=MUTATIONS, label_from=st.sampled_from(["label", "birads", "pathology"]))
def test_generic_csv_mutations(cbis_case: tuple[str, Path], work: Path, mutations, label_from: str) -> None:
    text, root = cbis_case
    uri = _write(work, "generic.csv", mutate(text, mutations, ","))
    manifest = manifest_or_declared_error(
        lambda: generic_csv.build_manifest(
            uri, columns=CBIS_MAPPING, dataset="cbis", images_root=str(root), label_from=label_from
        )
    )
    if manifest is not None:  # relative paths never leave the images root
        relative = [u for u in manifest["uri"] if "://" not in u and not u.startswith("/")]
        assert not relative
        inside = [u for u in manifest["uri"] if u.startswith(str(root) + "/")]
        assert all(".." not in u.split("/") for u in inside)


MANIFEST_CSV = (
    "image_id,uri,dataset,patient_id,exam_id,laterality,view,birads,label,pathology\n"
    "a/1,/data/a1.dcm,a,p1,e1,L,CC,4a,1,malignant\n"
    "a/2,s3://bucket/images/a2.dcm,a,p1,e1,R,MLO,2,0,benign\n"
    "a/3,file:///data/a3.png,a,p2,,L,ML,,,\n"
    "a/4,relative/a4.pgm,a,p3,e3,,,0,,normal\n"
)


@FUZZ
@given(mutations=MUTATIONS)
def test_manifest_csv_mutations(work: Path, mutations) -> None:
    uri = _write(work, "manifest.csv", mutate(MANIFEST_CSV, mutations, ","))
    manifest_or_declared_error(lambda: read_manifest(uri))


# ---------------------------------------------------------------------------------- arbitrary text


ADAPTER_CALLS: dict[str, Callable[[str, Path], pd.DataFrame]] = {
    "inbreast": lambda uri, images: inbreast.build_manifest(uri, str(images), missing="skip"),
    "mias": lambda uri, images: mias.build_manifest(uri, str(images), missing="skip"),
    "cbis_ddsm": lambda uri, images: cbis_ddsm.build_manifest([uri], str(images)),
    "csv": lambda uri, images: generic_csv.build_manifest(uri, columns={}, dataset="d", images_root=str(images)),
    "manifest": lambda uri, images: read_manifest(uri),
}


# Real headers, so that arbitrary rows below them get past the column checks into the row checks.
HEADERS = [
    "",
    ";".join(inbreast.EXPECTED_COLUMNS) + "\n",
    ",".join(cbis_ddsm.REQUIRED_COLUMNS) + ",breast_density\n",
    "image_id,uri,dataset,patient_id,laterality,view,birads,label,pathology\n",
    "uri;patient_id;birads;label;laterality;view\n",
]
rows = st.lists(st.lists(field_values, min_size=1, max_size=9).map(";".join), max_size=8).map("\n".join)


@FUZZ
@given(
    adapter=st.sampled_from(sorted(ADAPTER_CALLS)),
    header=st.sampled_from(HEADERS),
    body=st.one_of(st.text(max_size=600), rows, rows.map(lambda text: text.replace(";", ","))),
    raw=st.none() | st.binary(max_size=600),
)
def test_arbitrary_metadata(
    mias_images: Path, work: Path, adapter: str, header: str, body: str, raw: bytes | None
) -> None:
    name = {"inbreast": "INbreast.csv", "mias": "Info.txt", "manifest": "m.csv"}.get(adapter, "meta.csv")
    uri = _write(work, f"arbitrary-{name}", raw if raw is not None else header + body)
    manifest_or_declared_error(lambda: ADAPTER_CALLS[adapter](uri, mias_images))


BYTE_EDITS = st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=8)


@settings(max_examples=40, deadline=None)
@given(edits=BYTE_EDITS, cut=st.none() | st.integers(min_value=0))
def test_inbreast_xls_byte_mutations(
    inbreast_metadata_dir: Path, inbreast_case: tuple[str, Path], work: Path, edits, cut: int | None
) -> None:
    data = bytearray((inbreast_metadata_dir / "INbreast.xls").read_bytes())
    for position, value in edits:
        data[position % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    uri = _write(work, "INbreast.xls", bytes(data))
    manifest_or_declared_error(lambda: inbreast.build_manifest(uri, str(inbreast_case[1]), missing="skip"))


# ------------------------------------------------------------------- what the fuzzing found, kept


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("mdb001 G CIRC B 535 ² 197", "three whole numbers"),  # '²'.isdigit() is True; int('²') raised
        ("mdb001 G CIRC B 535 425 99999999999999999999", "three whole numbers"),  # overflowed Int64
        ("mdb001 G CIRC B 535 425 1025", "radius 1025 is larger than the 1024x1024 image"),
        ("mdb001 G CIRC B 535 425 " + "9" * 5000, "three whole numbers"),  # int() refuses > 4300 digits
    ],
)
def test_mias_coordinates_found_by_fuzzing(line: str, problem: str) -> None:
    with pytest.raises(ManifestError) as caught:
        mias.parse_info(line)
    (found,) = caught.value.problems
    assert found.startswith("line 1 ") and problem in found


def test_mias_reference_with_non_ascii_digits_is_not_a_film() -> None:
    # re's \d takes '٠٠١' for 001: it would have been a second mdb001.
    assert mias.parse_info("mdb٠٠١ G NORM\nmdb002 G NORM\n")["ref"].tolist() == ["mdb002"]


@pytest.mark.parametrize("data", [b"", b"\x80", b'"', b"image_id,uri\n\"a,b\n"], ids=["empty", "not-utf8",
                                                                                        "open-quote", "eof-in-quote"])
def test_unparsable_manifest_csv_is_a_manifest_error(work: Path, data: bytes) -> None:
    uri = _write(work, "broken-manifest.csv", data)
    with pytest.raises(ManifestError, match="cannot parse CSV"):
        read_manifest(uri)
