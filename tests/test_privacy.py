"""What of a collection may leave: secrets as fingerprints, identifying paths as locators (mammo_ray.privacy).

The whole study on a PACS-style export, every output read decoded, is tests/test_security.py; here the parts,
and a study reading pseudonymised images across runs (the locators resolved when the manifest is not rebuilt).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from mammo_ray import privacy
from mammo_ray.config import StudyConfig
from mammo_ray.datasets.adapters import build_source
from mammo_ray.errors import ConfigError, ManifestError
from mammo_ray.study import run_study
from tests import collection_builders as cb

SALT = "a-study-secret-0123456789"
NAME = "DOE_JANE_Q_MRN-12345678"


def _export(root: Path, files: int = 3, broken: bool = False) -> Path:
    """A PACS-style export: a folder named after the patient, files after the MRN."""
    folder = root / "export" / NAME
    folder.mkdir(parents=True)
    for index in range(files):
        side, view = ("L", "CC") if index % 2 == 0 else ("R", "MLO")
        (folder / f"MRN-12345678_{side}{view}_{index}.dcm").write_bytes(cb.make_dicom(
            cb.gradient(), PatientID="MRN-12345678", StudyInstanceUID="1.2.3.4", ImageLaterality=side,
            ViewPosition=view))
    if broken:  # a header that reads, pixels that do not: an errors row of the image stages
        data = bytearray(cb.make_dicom(cb.gradient(), PatientID="MRN-12345678", StudyInstanceUID="1.2.3.4",
                                       ImageLaterality="L", ViewPosition="CC"))
        (folder / "MRN-12345678_LCC_broken.dcm").write_bytes(bytes(data[:-2000]))
    return root / "export"


def test_secrets_leave_as_fingerprints_only():
    config = {"data": {"adapter": {"args": {"salt": SALT, "dataset": "x"}}}, "tokens": [{"Token": "t0ps3cret"}]}
    redacted = privacy.redact_secrets(config)
    assert SALT not in str(redacted) and "t0ps3cret" not in str(redacted)
    assert redacted["data"]["adapter"]["args"] == {"salt": privacy.fingerprint(SALT), "dataset": "x"}
    assert privacy.fingerprint(SALT) != privacy.fingerprint(SALT + "x")
    assert privacy.fingerprint(SALT).startswith("fingerprint:") and len(privacy.fingerprint(SALT)) == 20


def test_locators_hide_the_path_keep_the_extension_and_depend_on_the_salt():
    uri = f"s3://pacs/{NAME}/MRN-12345678_LCC.dcm"
    found = privacy.locator("site", uri, SALT)
    assert found.startswith("pseudo://site/") and found.endswith(".dcm") and "12345678" not in found
    assert found == privacy.locator("site", uri, SALT)
    assert found != privacy.locator("site", uri, SALT + "x")
    assert privacy.locator("site", uri + "x", SALT) != found
    assert privacy.shown(f"cannot read {uri}: gone", uri, found) == f"cannot read {found}: gone"
    assert privacy.shown(f"[Errno 2] {NAME}/x", f"/data/{NAME}/x", found) == f"[Errno 2] {NAME}/x"  # no path: as is
    assert privacy.shown(f"[Errno 2] /data/{NAME}/x", f"/data/{NAME}/x", found) == f"[Errno 2] {found}"


def test_dicom_folder_paths_are_pseudonymised_by_default_and_on_request(tmp_path):
    export = _export(tmp_path)
    args = {"images_uri": str(export), "dataset": "site", "salt": SALT}
    manifest = build_source("dicom_folder", args)
    assert manifest["uri"].map(privacy.is_locator).all() and NAME not in manifest["uri"].str.cat()
    assert manifest[privacy.SOURCE_COLUMN].str.contains(NAME).all()  # in memory only
    assert sorted(privacy.locations(manifest).values()) == sorted(manifest[privacy.SOURCE_COLUMN])
    plain = build_source("dicom_folder", args, pseudonymise=False)
    assert plain["uri"].str.contains(NAME).all() and privacy.SOURCE_COLUMN not in plain
    csv = tmp_path / "m.csv"
    pd.DataFrame({"image": ["a"], "path": [str(export / NAME / "x.dcm")], "subject": ["p"]}).to_csv(csv, index=False)
    csv_args = {"csv_uri": str(csv), "dataset": "d",
                "columns": {"image_id": "image", "uri": "path", "patient_id": "subject"}}
    with pytest.raises(ConfigError, match=r"data\.adapter\.args\.salt"):
        build_source("csv", csv_args, pseudonymise=True)
    csv_manifest = build_source("csv", {**csv_args, "salt": SALT}, pseudonymise=True)
    assert csv_manifest["uri"].tolist() == [privacy.locator("d", str(export / NAME / "x.dcm"), SALT)]


def test_an_unknown_locator_is_refused_naming_what_to_do():
    manifest = pd.DataFrame({"uri": ["pseudo://d/0123456789abcdef.dcm", "/data/x.png"]})
    with pytest.raises(ManifestError, match="run the manifest stage"):
        privacy.with_sources(manifest, {})
    resolved = privacy.with_sources(manifest, {"pseudo://d/0123456789abcdef.dcm": "/real/a.dcm"})
    assert resolved[privacy.SOURCE_COLUMN].tolist() == ["/real/a.dcm", None]


def _config(tmp_path: Path, export: Path, **adapter) -> StudyConfig:
    return StudyConfig.model_validate({
        "name": "pacs", "output": str(tmp_path / "out"), "ray": {"num_cpus": 2},
        "data": {"adapter": {"name": "dicom_folder", "args": {"images_uri": str(export), "dataset": "site",
                                                               "salt": SALT}, **adapter}}})


def test_a_locations_file_inside_the_output_is_refused_before_work(tmp_path):
    config = _config(tmp_path, _export(tmp_path), locations=str(tmp_path / "out" / "where.csv"))
    with pytest.raises(ConfigError, match="locations"):
        run_study(config, ["manifest"])
    assert not (tmp_path / "out").exists()


def test_images_are_read_through_their_locators_and_every_table_shows_the_locator(tmp_path, ray_session):
    export = _export(tmp_path, broken=True)
    config = _config(tmp_path, export, locations=str(tmp_path / "locations.csv"))
    run_study(config, ["manifest"])
    # Another run, without the manifest stage: it finds the real files again from the source.
    result = run_study(config, ["ingest"])
    assert result.counts["ingested_images"] == 3
    written = {path.relative_to(tmp_path / "out"): path for path in (tmp_path / "out").rglob("*.parquet")}
    errors = pq.read_table(written[Path("errors/ingest.parquet")]).to_pandas()
    assert len(errors) == 1 and privacy.is_locator(errors.at[0, "uri"])
    assert errors.at[0, "uri"] in errors.at[0, "message"]
    for path in written.values():
        assert NAME not in pq.read_table(path).to_pandas().to_csv() and "12345678" not in str(
            pq.read_schema(path).metadata)
    locations = pd.read_csv(tmp_path / "locations.csv")
    assert len(locations) == 4 and locations["uri"].str.contains(NAME).all()
