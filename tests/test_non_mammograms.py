"""Issue 31, nothing else gets in: a CT and an MR DICOM among mammograms are errors rows of the ingest stage in
the study of every DICOM route (rsna, vindr, cmmd, dicom_folder, a manifest, the csv adapter), the mammograms
beside them are ingested; and an image whose model outputs are stored already is still judged.

Each collection is a small copy laid out as downloaded (tests/collection_builders.py); the CT and MR are two
of its own mammograms with Modality, SOP class and BodyPartExamined changed. A real local Ray runs the stages.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from mammo_ray import storage, tables
from mammo_ray.config import parse_config
from mammo_ray.datasets.manifest import read_manifest
from mammo_ray.datasets.synthetic import SyntheticSource, generate_cohort
from mammo_ray.study import run_study
from tests import collection_builders as cb
from tests.image_builders import CT_CHEST, MR_BRAIN, make_dicom, retagged

SALT = "a-study-secret-0123456789"


def _rsna(root: Path) -> tuple[dict, list[Path]]:
    cb.write_rsna(root)
    data = {"adapter": {"name": "rsna", "args": {"csv_uri": str(root / "train.csv"),
                                                 "images_uri": str(root / "train_images")}}}
    return data, sorted((root / "train_images").rglob("*.dcm"))


def _vindr(root: Path) -> tuple[dict, list[Path]]:
    cb.write_vindr(root)
    return ({"adapter": {"name": "vindr", "args": {"root_uri": str(root), "label_proxy": "birads_5"}}},
            sorted((root / "images").rglob("*.dicom")))


def _cmmd(root: Path) -> tuple[dict, list[Path]]:
    table, tree = cb.write_cmmd(root)
    labelled = sorted((tree / "D1-0001").rglob("1-[12].dcm"))  # its left breast has a clinical row: labelled
    return {"adapter": {"name": "cmmd", "args": {"clinical_csv_uri": str(table), "images_uri": str(tree)}}}, labelled


def _mammograms(folder: Path, count: int = 4) -> list[Path]:
    """`count` small MG files of one exam, laterality and view in their tags."""
    folder.mkdir(parents=True)
    paths = []
    for index in range(count):
        side, view = ("L", "R")[index % 2], ("CC", "MLO")[index // 2 % 2]
        path = folder / f"IMG{index:04d}.dcm"
        path.write_bytes(make_dicom(cb.gradient(), PatientID="MRN-1", StudyInstanceUID="1.2.3",
                                    ImageLaterality=side, ViewPosition=view))
        paths.append(path)
    return paths


def _dicom_folder(root: Path) -> tuple[dict, list[Path]]:
    paths = _mammograms(root / "export")
    return ({"adapter": {"name": "dicom_folder", "args": {"images_uri": str(root / "export"), "dataset": "site",
                                                          "salt": SALT}}}, paths)


def _manifest(root: Path) -> tuple[dict, list[Path]]:
    paths = _mammograms(root / "images")
    manifest = root / "manifest.csv"
    pd.DataFrame({"image_id": [p.stem for p in paths], "uri": [str(p) for p in paths], "dataset": "local",
                  "patient_id": "p1"}).to_csv(manifest, index=False)
    return {"manifest": str(manifest)}, paths


def _csv(root: Path) -> tuple[dict, list[Path]]:
    paths = _mammograms(root / "images")
    table = root / "cohort.csv"
    pd.DataFrame({"path": [p.name for p in paths], "subject": "s1", "y": [0, 1, 0, 1]}).to_csv(table, index=False)
    args = {"csv_uri": str(table), "columns": {"uri": "path", "patient_id": "subject", "label": "y"},
            "dataset": "local", "images_root": str(root / "images")}
    return {"adapter": {"name": "csv", "args": args}}, paths


ROUTES: dict[str, Callable[[Path], tuple[dict, list[Path]]]] = {
    "rsna": _rsna, "vindr": _vindr, "cmmd": _cmmd, "dicom_folder": _dicom_folder, "manifest": _manifest, "csv": _csv,
}


def _errors(output: Path, stage: str = "ingest") -> pd.DataFrame:
    return storage.read_table(tables.errors_uri(str(output), stage)).to_pandas()


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("route", ROUTES)
def test_a_ct_and_an_mr_among_mammograms_are_errors_rows(tmp_path: Path, route: str) -> None:
    data, files = ROUTES[route](tmp_path / route)
    ct, mr = files[0], files[1]
    ct.write_bytes(retagged(ct.read_bytes(), **CT_CHEST))
    mr.write_bytes(retagged(mr.read_bytes(), **MR_BRAIN))
    output = tmp_path / "out"
    result = run_study(parse_config({"output": str(output), "data": data}), ["manifest", "ingest"])

    manifest = read_manifest(tables.manifest_uri(str(output)))
    assert len(manifest) >= 4
    errors = _errors(output)
    assert len(errors) == 2 and set(errors["error_type"]) == {"DecodeError"}
    messages = " | ".join(errors["message"])
    assert messages.count("not a mammogram: Modality CT, SOP class CT Image Storage, BodyPartExamined CHEST;") == 1
    assert messages.count("not a mammogram: Modality MR, SOP class MR Image Storage, BodyPartExamined BRAIN;") == 1
    for uri, message in zip(errors["uri"], errors["message"], strict=True):
        assert uri in message  # names its file
    ingested = storage.read_table(tables.ingest_uri(str(output))).to_pandas()
    assert sorted(ingested["image_id"]) == sorted(set(manifest["image_id"]) - set(errors["image_id"]))
    assert (result.counts["ingested_images"], result.counts["ingest_errors"]) == (len(manifest) - 2, 2)


@pytest.mark.usefixtures("ray_session")
def test_allow_modalities_reruns_the_stages_and_stored_outputs_are_judged_again(tmp_path: Path) -> None:
    """A CT whose headers 'are known to be wrong' is embedded under allow_modalities; without it the embedding
    stage reruns, finds the CT's vector stored (not decoded again), and still makes it an errors row."""
    cohort = generate_cohort(str(tmp_path / "cohort"), SyntheticSource(patients=1, rows=96))
    ct_uri = cohort["uri"].iloc[0]
    data = Path(ct_uri).read_bytes()
    Path(ct_uri).write_bytes(retagged(data, **{**CT_CHEST, "BodyPartExamined": None}))
    manifest = tmp_path / "manifest.csv"
    cohort.to_csv(manifest, index=False)
    stages = ["manifest", "ingest", "embed"]

    def config(**ingest: object):
        return parse_config({"output": str(tmp_path / "out"), "data": {"manifest": str(manifest)}, "ingest": ingest,
                             "embed": {"extractors": [{"name": "imagenet_resnet18", "input_size": 32}]}})

    allowed = run_study(config(allow_modalities=["CT"]), stages)
    assert allowed.counts["ingest_errors"] == 0 and allowed.counts["embedded:imagenet_resnet18"] == len(cohort)

    # Without it: the embedding reruns (allow_modalities is in the image stages' fingerprints), finds every
    # vector stored, decodes nothing, and the CT is an errors row all the same; so is it in ingest.
    refused = run_study(config(), ["manifest", "embed"])
    assert refused.ran == ["manifest", "embed"]
    assert refused.counts["embedded:imagenet_resnet18"] == 0 and refused.counts["pass_decoded"] == 0
    assert refused.counts["embed_errors:imagenet_resnet18"] == 1
    assert run_study(config(), ["ingest"]).counts["ingest_errors"] == 1
    for stage in ("embed:imagenet_resnet18", "ingest"):
        errors = _errors(tmp_path / "out", stage)
        assert errors["image_id"].tolist() == [cohort["image_id"].iloc[0]]
        assert "not a mammogram: Modality CT, SOP class CT Image Storage;" in errors["message"].iloc[0]
    ingested = storage.read_table(tables.ingest_uri(str(tmp_path / "out"))).to_pandas()["image_id"]
    assert sorted(ingested) == sorted(cohort["image_id"].iloc[1:])
