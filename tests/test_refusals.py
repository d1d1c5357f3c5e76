"""Bad input is refused before any work, naming the key or the file (and the row) to fix.

Config files (encoding, duplicate keys, alias bombs), `--stages` naming nothing, adapter arguments,
manifest labels and '..' in manifest URIs, and every missing weight file of a study in one message.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammo_ray import cli
from mammo_ray.config import load_config
from mammo_ray.config.loading import MAX_YAML_NODES, _ConfigLoader
from mammo_ray.datasets.adapters import build_with_adapter
from mammo_ray.datasets.manifest import normalise_label, read_manifest, validate_manifest
from mammo_ray.errors import ConfigError, ManifestError
from mammo_ray.models.weights import WeightsError
from mammo_ray.models.weights_catalogue import NYU_FILES, known_weights_file
from mammo_ray.models.weights_resolver import check_weights_available
from mammo_ray.study import STAGE_NAMES, check_stages, run_from_cli, run_study

CONFIGS = Path(__file__).resolve().parent.parent / "jobs" / "configs"


def _write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ config files


def test_a_config_that_is_not_utf8_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key_path == "<file>"
    assert f"{path} is not UTF-8 text" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "key_path", "line", "first"),
    [
        ("name: a\nname: b\n", "name", 2, 1),
        ("embed:\n  batch_size: 8\n  max_actors: 1\n  batch_size: 16\n", "embed.batch_size", 4, 2),
        ("embed:\n  extractors:\n    - name: nyu_lcc\n    - name: nyu_avg\n      pool: 4x4\n      pool: global\n",
         "embed.extractors.1.pool", 6, 5),
        ("ingest: {batch_size: 2, rows_per_block: 4, batch_size: 3}\n", "ingest.batch_size", 1, 1),
        ("ingest:\n  batch_size: 1\n  01: a\n  1: b\n", "ingest.1", 4, 3),  # one int key, two spellings
        # an explicit key given twice next to a merge is still a duplicate
        ("base: &b {batch_size: 2}\ningest:\n  <<: *b\n  batch_size: 4\n  batch_size: 5\n", "ingest.batch_size", 5, 4),
    ],
    ids=["top-level", "nested", "in-a-list", "flow-mapping", "same-int-key", "after-a-merge"],
)
def test_duplicate_keys_are_refused_naming_the_key_path_and_the_line(
    tmp_path: Path, text: str, key_path: str, line: int, first: int
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key_path == key_path
    assert f"line {line} of {path}" in caught.value.reason and f"first at line {first}" in caught.value.reason


def test_anchors_and_merge_key_overrides_still_load(tmp_path: Path) -> None:
    path = _write(tmp_path, (
        "embed:\n"
        "  extractors:\n"
        "    - &nyu\n"
        "      name: nyu_lcc\n"
        "      pool: 4x4\n"
        "      nyu_scale: &scale 0.5\n"
        "    - <<: *nyu\n"
        "      name: nyu_avg\n"       # overrides the merged name: allowed
        "      nyu_scale: 0.25\n"
        "zero_shot:\n"
        "  nyu_scale: *scale\n"
    ))
    config = load_config(path)
    lcc, avg = config.embed.extractors
    assert (lcc.name, lcc.pool, lcc.nyu_scale) == ("nyu_lcc", "4x4", 0.5)
    assert (avg.name, avg.pool, avg.nyu_scale) == ("nyu_avg", "4x4", 0.25)
    assert config.zero_shot.nyu_scale == 0.5


def _alias_bomb(levels: int) -> str:
    lines = ['l0: &l0 ["ha", "ha", "ha", "ha", "ha", "ha", "ha", "ha", "ha"]']
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_alias_expansion_is_refused_before_the_document_is_constructed(tmp_path, monkeypatch) -> None:
    def construct_document(self, node):
        raise AssertionError("the document was constructed")

    monkeypatch.setattr(_ConfigLoader, "construct_document", construct_document)
    path = _write(tmp_path, _alias_bomb(9))  # 9**9 strings from 9 lines
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key_path == "<file>"
    assert str(path) in str(caught.value) and "aliases expand" in str(caught.value)
    assert str(MAX_YAML_NODES) in str(caught.value)


def test_a_small_alias_expansion_is_not_a_bomb(tmp_path: Path) -> None:
    # 3 levels expand to a few hundred nodes: loads, and fails only in validation (unknown keys)
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, _alias_bomb(3)))
    assert caught.value.key_path.startswith("l") and "aliases" not in str(caught.value)


def test_a_recursive_document_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "ingest: &self\n  batch_size: *self\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key_path == "<file>" and "alias of itself" in str(caught.value)


def test_the_shipped_configs_still_load() -> None:
    for name in ("demo", "mini_mias", "inbreast", "cluster_s3"):
        load_config(CONFIGS / f"{name}.yaml")


# ------------------------------------------------------------------ --stages


def test_an_empty_stage_list_is_refused_and_none_means_all() -> None:
    with pytest.raises(ConfigError) as caught:
        check_stages([])
    assert caught.value.key_path == "stages" and "at least one stage is needed" in caught.value.reason
    assert check_stages(None) == list(STAGE_NAMES)


def test_run_from_cli_refuses_an_empty_stage_list_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one stage"):
        run_from_cli(None, str(tmp_path / "out"), [])
    assert not (tmp_path / "out").exists()


def test_cli_run_with_stages_naming_none_exits_2_without_running(tmp_path, monkeypatch, capsys) -> None:
    import mammo_ray.study

    def run_study_called(*args, **kwargs):
        raise AssertionError("a stage ran")

    monkeypatch.setattr(mammo_ray.study, "run_study", run_study_called)
    assert cli.main(["run", "--output", str(tmp_path / "out"), "--stages"]) == 2
    assert "config stages: at least one stage is needed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ adapter arguments


def test_missing_adapter_arguments_are_named_with_the_accepted_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        build_with_adapter("csv", {}, "--arg")
    assert caught.value.key_path == "--arg"
    reason = caught.value.reason
    assert "missing required argument(s) csv_uri, columns, dataset" in reason
    assert "accepts csv_uri, columns, dataset, images_root=None" in reason and "label_from='label'" in reason


def test_unknown_adapter_arguments_are_refused_before_any_file_is_read(tmp_path: Path) -> None:
    args = {"info_uri": str(tmp_path / "absent.txt"), "image_uri": str(tmp_path), "positve": "malignant"}
    with pytest.raises(ConfigError) as caught:  # not a StorageError: nothing was read
        build_with_adapter("mias", args, "data.adapter.args")
    reason = caught.value.reason
    assert caught.value.key_path == "data.adapter.args"
    assert "missing required argument(s) images_uri" in reason
    assert "unknown argument 'image_uri' (did you mean 'images_uri'?)" in reason
    assert "unknown argument 'positve' (did you mean 'positive'?)" in reason
    assert "info_uri" not in reason.split(";")[0]  # given, so not missing


def test_adapter_type_and_value_errors_become_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="columns must be a mapping") as caught:
        build_with_adapter("csv", {"csv_uri": str(tmp_path / "a.csv"), "columns": "uri", "dataset": "d"}, "--arg")
    assert caught.value.key_path == "--arg"
    with pytest.raises(ConfigError, match="missing must be 'error' or 'skip'"):
        build_with_adapter("inbreast", {"metadata_uri": "m.xls", "images_uri": "i", "missing": "sometimes"}, "k")


def test_good_adapter_arguments_build_the_manifest(tmp_path: Path) -> None:
    table = tmp_path / "meta.csv"
    table.write_text("file,subject,label\na.dcm,s1,1\nb.dcm,s2,0\n")
    frame = build_with_adapter("csv", {"csv_uri": str(table), "columns": {"uri": "file", "patient_id": "subject"},
                                       "dataset": "d"}, "--arg")
    assert list(frame["image_id"]) == ["d/a", "d/b"] and list(frame["label"]) == [1, 0]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [([], "missing required argument(s) csv_uri, columns, dataset"),
     (["--arg", "csv=x.csv"], "unknown argument 'csv'")],
    ids=["no-args", "unknown-arg"],
)
def test_cli_manifest_with_bad_args_exits_2_naming_them(tmp_path, capsys, extra, expected) -> None:
    out = tmp_path / "m.parquet"
    assert cli.main(["manifest", "csv", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert "config --arg: adapter 'csv':" in err and expected in err and "Traceback" not in err
    assert not out.exists()


# ------------------------------------------------------------------ manifest labels


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1), (0, 0), (1.0, 1), (0.0, 0), (True, 1), (False, 0), (np.int8(1), 1), (np.float64(0.0), 0),
     ("1", 1), ("0", 0), (" TRUE ", 1), ("False", 0), ("1.0", 1), (" 0.0", 0), (None, None), (float("nan"), None),
     (pd.NA, None), ("", None), ("  ", None), ("NaN", None), ("none", None)],
)
def test_normalise_label_reads_every_spelling_of_0_and_1(value, expected) -> None:
    assert normalise_label(value) == expected


@pytest.mark.parametrize("value", [2, -1, 0.5, "2", "maybe", "yes", "1.5", np.int64(3)])
def test_normalise_label_refuses_anything_else(value) -> None:
    with pytest.raises(ValueError, match="is not 0, 1 or null"):
        normalise_label(value)


LABELS = ["1", " TRUE", "false ", "0.0", "1.0", "", "nan", "None", "0", "True"]
EXPECTED = [1, 1, 0, 0, 1, None, None, None, 0, 1]


def _manifest(uris: list[str], labels: list[object]) -> pd.DataFrame:
    return pd.DataFrame({"image_id": [f"i{n}" for n in range(len(uris))], "uri": uris, "dataset": "x",
                         "patient_id": "p", "label": labels})


def test_csv_manifest_labels_in_mixed_spellings_read_as_0_1_or_null(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    _manifest([f"/d/{n}.dcm" for n in range(len(LABELS))], LABELS).to_csv(path, index=False)
    frame = read_manifest(str(path))
    assert [None if pd.isna(v) else int(v) for v in frame["label"]] == EXPECTED
    assert str(frame["label"].dtype) == "Int8"


def test_only_the_truly_bad_label_rows_are_named(tmp_path: Path) -> None:
    labels = [*LABELS, "2", "maybe"]
    path = tmp_path / "m.csv"
    _manifest([f"/d/{n}.dcm" for n in range(len(labels))], labels).to_csv(path, index=False)
    with pytest.raises(ManifestError) as caught:
        read_manifest(str(path))
    assert caught.value.problems == ["row 10 (i10): label '2' is not 0, 1 or null",
                                     "row 11 (i11): label 'maybe' is not 0, 1 or null"]


@pytest.mark.parametrize(
    "labels",
    [LABELS, [1.0, 1.0, 0.0, 0.0, 1.0, np.nan, np.nan, None, 0.0, 1.0],
     [True, True, False, False, True, None, None, None, False, True]],
    ids=["text", "float", "bool"],
)
def test_parquet_manifest_labels_are_normalised_too(tmp_path: Path, labels: list[object]) -> None:
    path = tmp_path / "m.parquet"
    _manifest([f"/d/{n}.dcm" for n in range(len(labels))], labels).to_parquet(path, index=False)
    frame = read_manifest(str(path))
    assert [None if pd.isna(v) else int(v) for v in frame["label"]] == EXPECTED


def test_parquet_manifest_bad_labels_are_named(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    _manifest(["/d/a.dcm", "/d/b.dcm", "/d/c.dcm"], ["1", "2", " false"]).to_parquet(path, index=False)
    with pytest.raises(ManifestError) as caught:
        read_manifest(str(path))
    assert caught.value.problems == ["row 1 (i1): label '2' is not 0, 1 or null"]


# ------------------------------------------------------------------ '..' in manifest uris


TRAVERSING = ["/data/../etc/a.dcm", "images/../../a.dcm", "file:///data/../a.dcm", "s3://bucket/images/../a.dcm",
              "..\\secrets\\a.dcm", "../a.dcm"]
FINE = ["/data/a.dcm", "/data/..a.dcm", "/data/a..b/c.dcm", "s3://bucket/images/a..dcm", "file:///data/x/a.dcm"]


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_manifest_uris_with_dotdot_segments_are_refused_naming_each_row(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"m.{suffix}"
    frame = _manifest(FINE + TRAVERSING, [None] * (len(FINE) + len(TRAVERSING)))
    frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path, index=False)
    with pytest.raises(ManifestError) as caught:
        read_manifest(str(path))
    assert len(caught.value.problems) == len(TRAVERSING)
    for row, (uri, problem) in enumerate(zip(TRAVERSING, caught.value.problems, strict=True), start=len(FINE)):
        assert problem == f"row {row} (i{row}): uri {uri}: a '..' path segment is not allowed"


def test_uris_without_dotdot_segments_are_accepted() -> None:
    frame = validate_manifest(_manifest(FINE, [0] * len(FINE)), source="m")
    assert list(frame["uri"]) == FINE


# ------------------------------------------------------------------ missing weights


FETCH_COMMAND = re.compile(r"`mammo-ray weights fetch --to URI ([^`]+)`")


def _fetched_files(message: str) -> dict[str, str]:
    """fetch name -> file name, for every name the message's fetch command suggests (each must be accepted)."""
    (names,) = FETCH_COMMAND.findall(message)
    return {name: known_weights_file(name).file_name for name in names.split()}


def test_one_refusal_names_every_missing_weight_file_of_a_study(tmp_path, monkeypatch) -> None:
    config = load_config(CONFIGS / "inbreast.yaml")
    monkeypatch.chdir(tmp_path)  # no weights/ folder here
    with pytest.raises(ConfigError) as caught:
        run_study(config.model_copy(update={"output": str(tmp_path / "out")}))
    message = str(caught.value)
    assert caught.value.key_path == "embed.extractors.0.weights"
    expected = {
        "embed.extractors.0.weights": "resnet50-11ad3fa6.pth",
        "embed.extractors.1.weights": "ImageOnly__ModeImage_weights.p",
        "embed.extractors.2.weights": "ImageOnly__ModeImage_weights.p",
        "zero_shot.weights": "ImageOnly__ModeImage_weights.p",
        "finetune.models.0.weights": "resnet50-0676ba61.pth",
        "finetune.models.1.weights": "resnet18-f37072fd.pth",
        "finetune.models.2.weights": "squeezenet1_1-b8a52dc0.pth",
        "finetune.models.3.weights": "ImageOnly__ModeImage_weights.p",  # the NYU model from its L-MLO head
        "finetune.models.4.weights": "ImageOnly__ModeImage_weights.p",  # ... and from its R-CC head
    }
    for key_path, file_name in expected.items():
        assert f"{key_path}: weights/{file_name}: weight file not found" in message
    assert "finetune.models.5" not in message  # small_cnn: random-init, nothing to find
    fetched = _fetched_files(message)
    assert set(fetched.values()) == set(expected.values())  # one command gets every missing file
    assert "ImageOnly__ModeImage_weights.p" not in fetched and "nyu-image-wise" in fetched
    assert "random-init:<seed>" in message and "offline" in message
    assert not (tmp_path / "out").exists()


def test_heatmaps_asked_for_without_the_patch_classifier_file_are_refused_naming_it(tmp_path, monkeypatch) -> None:
    config = load_config(CONFIGS / "mini_mias.yaml")  # heatmaps on, from weights/sample_patch_model.p
    monkeypatch.chdir(tmp_path)  # no weights/ folder here
    with pytest.raises(ConfigError) as caught:
        run_study(config.model_copy(update={"output": str(tmp_path / "out")}))
    message = str(caught.value)
    assert "heatmaps.weights: weights/sample_patch_model.p: weight file not found" in message
    assert _fetched_files(message)["nyu-patch"] == "sample_patch_model.p"
    assert not (tmp_path / "out").exists()


def test_a_single_missing_nyu_file_suggests_a_fetch_name_the_command_accepts(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as caught:
        check_weights_available(str(tmp_path / NYU_FILES["nyu-image-wise"]))
    message = str(caught.value)
    assert _fetched_files(message) == {"nyu-image-wise": NYU_FILES["nyu-image-wise"]}
    assert "random-init:<seed>" in message and "no file needed" in message


def test_a_file_the_fetch_command_does_not_know_is_not_offered_to_it(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as caught:
        check_weights_available(str(tmp_path / "my_own.pth"))
    message = str(caught.value)
    assert not FETCH_COMMAND.search(message)
    assert "my_own.pth: not a published file" in message and "nyu-image-wise" in message
    assert "random-init:<seed>" in message
