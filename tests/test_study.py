"""The study runner and the command line, on the synthetic cohort."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mammo_ray import storage
from mammo_ray.config import parse_config
from mammo_ray.datasets.manifest import read_manifest
from mammo_ray.errors import ConfigError, ManifestError
from mammo_ray.study import run_study


@pytest.mark.usefixtures("ray_session")
def test_study_manifest_and_ingest_on_s3(s3_bucket):
    config = parse_config(
        {
            "name": "t",
            "output": s3_bucket + "/study",
            "data": {"synthetic": {"patients": 2, "rows": 96}},
            "embed": {
                "extractors": [
                    {"name": "imagenet_resnet18", "input_size": 64},
                    {"name": "nyu_lcc", "nyu_scale": 0.125, "weights": "random-init:1"},
                ]
            },
        }
    )
    result = run_study(config, ["manifest", "ingest", "embed"])
    assert result.ran == ["manifest", "ingest", "embed"]
    assert result.counts["manifest_rows"] == 8 and result.counts["ingested_images"] == 8
    assert result.counts["embedded:imagenet_resnet18"] == 8 and result.counts["embedded:nyu_lcc"] == 8
    rerun = run_study(config, ["manifest", "ingest", "embed"])
    assert rerun.ran == [] and rerun.skipped == ["manifest", "ingest", "embed"]
    forced = run_study(config, ["embed"], force=True)  # runs, but every image is already embedded
    assert forced.counts["embedded:nyu_lcc"] == 0 and forced.counts["skipped:nyu_lcc"] == 8
    changed = parse_config({**config.model_dump(mode="json"), "ingest": {"batch_size": 2}})
    assert run_study(changed, ["manifest", "ingest"]).ran == ["ingest"]  # its config changed: it reruns
    manifest = read_manifest(s3_bucket + "/study/manifest.parquet", check_files=True)
    assert set(manifest["view"]) == {"CC", "MLO"} and set(manifest["laterality"]) == {"L", "R"}
    assert storage.read_table(s3_bucket + "/study/ingest/images.parquet").num_rows == 8


def test_missing_pretrained_weights_fail_before_any_work(tmp_path):
    config = parse_config(
        {
            "output": str(tmp_path / "out"),
            "embed": {"extractors": [{"name": "nyu_avg", "weights": str(tmp_path / "ImageOnly__ModeImage_weights.p")}]},
        }
    )
    with pytest.raises(ConfigError, match=r"embed\.extractors\.0\.weights.*ImageOnly__ModeImage_weights\.p"):
        run_study(config)
    assert not (tmp_path / "out").exists()


def test_study_from_a_manifest_with_missing_files_fails_before_work(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_id,uri,dataset,patient_id\na,/nowhere/a.dcm,x,p1\nb,/nowhere/b.dcm,x,p1\n")
    config = parse_config({"output": str(tmp_path / "out"), "data": {"manifest": str(manifest)}})
    with pytest.raises(ManifestError, match="file not found: /nowhere/a.dcm"):
        run_study(config, ["manifest"])
    assert not (tmp_path / "out").exists()


def test_cli_synth_writes_the_cohort_to_s3(s3_bucket):
    out = s3_bucket + "/cli-cohort"
    completed = subprocess.run(
        [sys.executable, "-m", "mammo_ray.cli", "synth", "--out", out, "--patients", "2", "--rows", "96"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        check=True,
    )
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["images"] == 8
    assert len(storage.list_files(out + "/images", extensions=[".dcm"])) == 8


def test_cli_reports_bad_input_with_exit_code_2(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "mammo_ray.cli", "run", "--config", str(tmp_path / "absent.yaml")],
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 2
    assert "absent.yaml" in completed.stderr


@pytest.mark.usefixtures("ray_session")
def test_whole_study_writes_a_report_with_every_section(tmp_path):
    output = tmp_path / "study"
    config = parse_config(
        {
            "name": "report-test",
            "output": str(output),
            "data": {"synthetic": {"patients": 12, "rows": 96}},
            "embed": {"extractors": [{"name": "imagenet_resnet18", "input_size": 64}]},
            "zero_shot": {"nyu_scale": 0.125},
            "grid": {"cv_folds": 2, "bootstrap": 50, "classifiers": ["logreg"]},
            "finetune": {"models": [{"name": "small_cnn"}], "tasks": ["binary"],
                         "stages": [{"name": "all", "size": 32, "epochs": 1}], "cpus_per_worker": 0.5},
        }
    )
    result = run_study(config)
    assert result.ran == ["manifest", "ingest", "embed", "zero_shot", "grid", "finetune", "report"]
    markdown = (output / "report" / "report.md").read_text()
    for heading in ("Provenance", "Figure 3", "Table 1", "Table 2"):
        assert f"## {heading}" in markdown
    assert "small_cnn" in markdown.split("## Table 1")[1].split("## Table 2")[0]  # the fine-tuning rows
    assert "logreg" in markdown.split("## Table 2")[1] and "figures/protocol_gap.png" in markdown
    assert "random-init" in markdown.split("## Provenance")[0]  # the banner, above everything else
    assert "figures/zero_shot_by_birads.png" in markdown and (output / "report" / "figures" / "zero_shot_by_birads.png").exists()
    page = (output / "report" / "report.html").read_text()
    assert "data:image/png;base64," in page and "<img" in page and "src='figures/" not in page  # self-contained


def test_report_of_a_grid_whose_cells_all_failed_still_renders(tmp_path):
    import pandas as pd
    import pyarrow as pa

    from mammo_ray import layout
    from mammo_ray.stages.report import build_report

    failed = pd.DataFrame([{"extractor": "x", "selection": "none", "balancing": "none", "classifier": "logreg",
                            "protocol": "leak_free", "status": "failed", "error": "ValueError: too few groups"}])
    storage.write_table(pa.Table.from_pandas(failed, preserve_index=False), layout.grid_uri(str(tmp_path)))
    uris = build_report(str(tmp_path), {"name": "empty"})
    markdown = storage.read_bytes(uris["markdown"]).decode()
    assert "too few groups" in markdown and "No grid cell succeeded" in markdown
