"""The study runner and the command line, on the synthetic cohort."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mammo_ray import storage
from mammo_ray.config import parse_config
from mammo_ray.datasets.manifest import read_manifest
from mammo_ray.datasets.synthetic import SyntheticSource, generate_cohort
from mammo_ray.errors import ConfigError
from mammo_ray.study import run_study
from tests.table_access import record_stage_access, undeclared_access, undeclared_files


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
    # One pass for ingest and both extractors, each image decoded once.
    assert (result.counts["pass_outputs"], result.counts["pass_images"], result.counts["pass_decoded"]) == (3, 8, 8)
    rerun = run_study(config, ["manifest", "ingest", "embed"])
    assert rerun.ran == [] and rerun.skipped == ["manifest", "ingest", "embed"]
    forced = run_study(config, ["embed"], force=True)  # runs, but every image is already embedded
    assert forced.counts["embedded:nyu_lcc"] == 0 and forced.counts["skipped:nyu_lcc"] == 8
    assert forced.counts["pass_decoded"] == 0  # every output has every image: read and hashed, not decoded
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


@pytest.mark.usefixtures("ray_session")
def test_study_from_a_manifest_with_missing_files_reports_them_and_ingests_the_rest(tmp_path):
    cohort = generate_cohort(str(tmp_path / "cohort"), SyntheticSource(patients=1, rows=96))
    missing = pd.DataFrame(
        [{"image_id": name, "uri": str(tmp_path / "nowhere" / f"{name}.dcm"), "dataset": "x", "patient_id": "p1"}
         for name in ("a", "b")]
    )
    manifest = tmp_path / "m.csv"
    pd.concat([cohort, missing], ignore_index=True).to_csv(manifest, index=False)
    config = parse_config({"output": str(tmp_path / "out"), "data": {"manifest": str(manifest)}})
    result = run_study(config, ["manifest", "ingest"])
    assert result.counts["manifest_rows"] == len(cohort) + 2
    assert (result.counts["ingested_images"], result.counts["ingest_errors"]) == (len(cohort), 2)
    errors = storage.read_table(str(tmp_path / "out" / "errors" / "ingest.parquet")).to_pandas()
    assert sorted(errors["image_id"]) == ["a", "b"] and set(errors["error_type"]) == {"StorageError"}
    for uri, message in zip(errors["uri"], errors["message"], strict=True):
        assert message == f"{uri}: not found"


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


@pytest.mark.parametrize(
    ("arguments", "named"),
    [(["run", "--config", "absent.yaml"], "absent.yaml"),
     (["synth", "--rows", "10", "--out", "cohort"], "synth.rows: Input should be greater than or equal to 64")],
    ids=["missing-config", "bad-synth-rows"],
)
def test_cli_reports_bad_input_with_exit_code_2(tmp_path, arguments, named):
    completed = subprocess.run([sys.executable, "-m", "mammo_ray.cli", *arguments], cwd=tmp_path,
                               capture_output=True, text=True)
    assert completed.returncode == 2
    assert named in completed.stderr
    assert not (tmp_path / "cohort").exists()  # refused before anything is written


@pytest.mark.usefixtures("ray_session")
def test_whole_study_writes_a_report_with_every_section(tmp_path, monkeypatch):
    output = tmp_path / "study"
    config = parse_config(
        {
            "name": "report-test",
            "output": str(output),
            "data": {"synthetic": {"patients": 12, "rows": 96}},
            "embed": {"extractors": [{"name": "imagenet_resnet18", "input_size": 64},
                                     {"name": "nyu_lcc_heatmaps", "nyu_scale": 0.125}]},
            "zero_shot": {"nyu_scale": 0.125, "heatmaps_weights": "random-init:1"},
            # The 96-row images taken as 1/8-resolution ones and worked at that: one patch each.
            "heatmaps": {"enabled": True, "scale": 0.125, "source_resolution": 0.125},
            "grid": {"cv_folds": 2, "bootstrap": 20, "classifiers": ["logreg"], "permutations": 2,
                     "oof": {"repeats": 1}},
            "finetune": {"models": [{"name": "small_cnn"}], "tasks": ["binary"],
                         "stages": [{"name": "all", "size": 32, "epochs": 1}], "cpus_per_worker": 0.5},
        }
    )
    touched = record_stage_access(monkeypatch)
    result = run_study(config)
    assert result.ran == ["manifest", "ingest", "heatmaps", "embed", "zero_shot", "thumbnails", "grid", "finetune",
                          "transfer", "subgroups", "export", "export_networks", "report"]
    # Every table a stage read or wrote is one it declares (docs/design.md, "Stages").
    assert touched and not undeclared_access(touched, str(output)), undeclared_access(touched, str(output))
    assert not undeclared_files(str(output))
    # ingest, the extractor, zero-shot, the heatmaps and the two thumbnails in one pass: each image decoded once
    # for the six; then the image+heatmaps extractor and zero-shot model in a second, reading the stored heatmaps.
    images = result.counts["manifest_rows"]
    assert (result.counts["pass_outputs"], result.counts["pass_images"], result.counts["pass_decoded"]) == (
        8, images, 2 * images)
    assert result.counts["thumbnails:nyu"] == result.counts["thumbnails:imagenet"] == images
    assert result.counts["heatmaps_computed"] == images == result.counts["embedded:nyu_lcc_heatmaps"]
    markdown = (output / "report" / "report.md").read_text()
    for heading in ("Verdict", "Provenance", "Preprocessing", "Figure 3", "Table 1", "Table 2",
                    "Fine-tuned networks against their frozen features", "Model packages"):
        assert f"## {heading}" in markdown
    assert markdown.index("## Verdict") < markdown.index("## Provenance")  # the verdict opens the report
    assert "Negative control, leak_free protocol" in markdown and "Negative control, paper protocol" in markdown
    figure_3 = markdown.split("## Figure 3")[1].split("## Table 1")[0]
    assert "Caveat: the paper's Figure 3 is a bar chart" in figure_3 and "The weights are random-init" in figure_3
    assert "per BI-RADS (image only)" in figure_3 and "per BI-RADS (image+heatmaps)" in figure_3
    # The image+heatmaps extractor is an extractor of its own: its grid rows beside the others' (compared on the
    # same images where the compare pipeline fits: tests/test_grid.py).
    grid_rows = pd.read_parquet(output / "results" / "grid.parquet")
    assert set(grid_rows["extractor"]) == {"nyu_lcc_heatmaps", "imagenet_resnet18"}
    appendix = markdown.split("## Appendix: reporting checklist")[1]
    assert "| Class counts |" in appendix and "| Ethics approval and data access |  | left to the author |" in appendix
    assert "small_cnn" in markdown.split("## Table 1")[1].split("## Table 2")[0]  # the fine-tuning rows
    assert "logreg" in markdown.split("## Table 2")[1] and "figures/protocol_gap.png" in markdown
    for figure in ("grid_roc.png", "finetune_roc.png", "fold_scores.png"):  # ROC of the best grid cells too
        assert f"figures/{figure}" in markdown and (output / "report" / "figures" / figure).exists()
    assert "random-init" in markdown.split("## Provenance")[0]  # the banner, above everything else
    preprocessing = markdown.split("## Preprocessing")[1].split("\n## ")[0]
    assert "| imagenet_resnet18 | ImageNet square |" in preprocessing
    assert "figures/contact_sheet.png" in preprocessing
    assert (output / "report" / "figures" / "contact_sheet.png").exists()
    transfer = markdown.split("## Fine-tuned networks against their frozen features")[1].split("\n## ")[0]
    assert "finetuned:small_cnn (best)" in transfer  # small_cnn has no frozen twin: only the best-vs-best row
    assert "figures/zero_shot_by_birads.png" in markdown
    assert "## Figure 2: NYU patch heatmaps" in markdown and "figures/figure_2.png" in markdown
    assert any(stage == "report" and uri.endswith("errors/heatmaps.parquet") for stage, uri in touched)
    assert (output / "report" / "figures" / "zero_shot_by_birads.png").exists()
    subgroups = markdown.split("## Subgroups")[1].split("\n## ")[0]
    # lasso/smote/logreg (grid.compare) failed on 12 patients (too few for SMOTE's neighbours); the nested
    # choice is shown.
    chosen = "| imagenet_resnet18 | selected/selected/selected |"
    assert f"{chosen} view | CC |" in subgroups and f"{chosen} density |" in subgroups
    assert f"{chosen} device | mammo-ray synthetic | 48 | 12 |" in subgroups
    page = (output / "report" / "report.html").read_text()
    assert "data:image/png;base64," in page and "<img" in page and "src='figures/" not in page  # self-contained

    # Labels corrected, then only the grid and the report rerun: Table 1 would describe the old labels, so
    # the report says it is out of date instead of showing it beside a Table 2 of the new ones.
    manifest = read_manifest(str(output / "manifest.parquet"))
    corrected = manifest.assign(label=pd.array([1 - v for v in manifest["label"]], dtype="Int8"))
    corrected_uri = str(tmp_path / "corrected.parquet")
    from mammo_ray.datasets.manifest import write_manifest

    write_manifest(corrected, corrected_uri)
    relabelled = parse_config({**config.model_dump(mode="json"), "data": {"manifest": corrected_uri}})
    assert run_study(relabelled, ["manifest", "grid", "report"]).ran == ["manifest", "grid", "report"]
    markdown = (output / "report" / "report.md").read_text()
    table1, table2 = markdown.split("## Table 1")[1].split("## Table 2")
    assert "out of date" in table1 and "small_cnn" not in table1
    table2 = table2.split("\n## ")[0]
    assert "logreg" in table2 and "out of date" not in table2
    transfer = markdown.split("## Fine-tuned networks against their frozen features")[1].split("\n## ")[0]
    assert "out of date" in transfer  # computed with the old labels' grid and fine-tuning
    provenance = json.loads((output / "report" / "provenance.json").read_text())
    from mammo_ray import tables

    assert provenance["inputs"]["manifest"] == tables.manifest_digest(read_manifest(corrected_uri))
    grid_inputs = tables.read_provenance(tables.grid_uri(str(output)))["inputs"]
    assert grid_inputs["manifest"] == provenance["inputs"]["manifest"]


def _manifest(tmp_path) -> pd.DataFrame:
    from mammo_ray.datasets.manifest import validate_manifest

    return validate_manifest(pd.DataFrame([{"image_id": "a", "uri": str(tmp_path / "a.png"), "dataset": "d",
                                            "patient_id": "p", "label": 1}]), source="test")


def test_report_of_a_grid_whose_cells_all_failed_still_renders(tmp_path):
    import pandas as pd
    import pyarrow as pa

    from mammo_ray import tables
    from mammo_ray.stages.report import ReportInputs, build_report

    failed = pd.DataFrame([{"extractor": "x", "selection": "none", "balancing": "none", "classifier": "logreg",
                            "protocol": "leak_free", "status": "failed", "error": "ValueError: too few groups"}])
    storage.write_table(pa.Table.from_pandas(failed, preserve_index=False), tables.grid_uri(str(tmp_path)))
    config = parse_config({"name": "empty", "output": str(tmp_path)})
    uris = build_report(config, ReportInputs(manifest=_manifest(tmp_path)))
    markdown = storage.read_bytes(uris["markdown"]).decode()
    assert "too few groups" in markdown and "No grid cell succeeded" in markdown


def test_published_values_sit_beside_ours_and_a_bad_file_fails_before_work(tmp_path):
    import pandas as pd
    import pyarrow as pa

    from mammo_ray import tables
    from mammo_ray.stages.report import ReportInputs, build_report

    cell = {"extractor": "nyu_avg", "selection": "lasso", "balancing": "smote", "classifier": "svm_linear"}
    grid = pd.DataFrame([{**cell, "protocol": protocol, "status": "ok", "cv_balanced_accuracy_mean": value,
                          "accuracy": value, "auc": value, "n_features": 300, "cv_fold_scores": [value]}
                         for protocol, value in (("paper", 0.9), ("leak_free", 0.6))])
    storage.write_table(pa.Table.from_pandas(grid, preserve_index=False), tables.grid_uri(str(tmp_path)))
    published = tmp_path / "published.csv"  # test values, not the paper's
    published.write_text("table,extractor,selection,balancing,classifier,model,pretrained_on,task,metric,value\n"
                         "2,nyu_avg,lasso,smote,svm_linear,,,,accuracy,0.8642\n")
    study = parse_config({"name": "published", "output": str(tmp_path), "report": {"published": str(published)}})
    uris = build_report(study, ReportInputs(manifest=_manifest(tmp_path)))
    table2 = storage.read_bytes(uris["markdown"]).decode().split("## Table 2")[1]
    assert "accuracy (published)" in table2 and "0.864" in table2

    published.write_text("table,extractor,selection,balancing,classifier,model,pretrained_on,task,metric,value\n"
                         "2,nyu_avg,lasso,smote,svm_linear,,,,acuracy,high\n")
    config = parse_config({"output": str(tmp_path / "out"), "report": {"published": str(published)}})
    with pytest.raises(ConfigError, match=r"report\.published: .*row 2: metric 'acuracy'.*value 'high'"):
        run_study(config)
    assert not (tmp_path / "out").exists()


def test_the_shipped_paper_tables_read_and_sit_beside_a_random_init_run():
    """jobs/configs/paper_tables.csv (every value of the paper's Tables 1 and 2): the view-head variants and the
    CV std rows read; a random-init run of a model shows the paper's value beside it, both weights named."""
    import pandas as pd

    from mammo_ray.report.published import beside, read_published

    published = read_published(str(Path(__file__).resolve().parent.parent / "jobs" / "configs" / "paper_tables.csv"))
    assert set(published["table"]) == {"1", "2"} and {"l_mlo", "r_cc"} <= set(published["variant"])
    assert "cv_balanced_accuracy_std" in set(published["metric"])
    run = {"task": "binary", "stage": "all", "accuracy": 0.7}
    ours = pd.DataFrame([{**run, "model": "resnet50", "variant": "", "pretrained_on": "none",
                          "weights_id": "random-init:0"},
                         *({**run, "model": "nyu", "variant": view, "pretrained_on": "nyu", "weights_id": "sha256:ab"}
                           for view in ("l_mlo", "r_cc", "l_cc"))])
    table1 = beside(ours, published, "1").set_index(["model", "variant"])
    assert table1.loc[("resnet50", ""), "accuracy (published)"] == 0.866
    assert table1.loc[("resnet50", ""), "pretrained_on (published)"] == "imagenet"
    # Each NYU run sits beside the published row of its own view head; the paper has no L-CC run.
    assert table1.loc[("nyu", "l_mlo"), "accuracy (published)"] == 0.78
    assert table1.loc[("nyu", "r_cc"), "auroc (published)"] == 0.581
    assert pd.isna(table1.loc[("nyu", "l_cc"), "accuracy (published)"])
    assert len(table1) == 4  # matching adds no row
