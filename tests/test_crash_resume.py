"""The whole study process killed (SIGKILL of its session: the driver and the local Ray it started)
during embedding, the grid or fine-tuning: a rerun finishes, redoes only unfinished work, and no table
has duplicate rows or a half-written file a reader could see."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
import yaml

from mammo_ray import storage, tables
from mammo_ray.config import ExtractorConfig
from mammo_ray.datasets.manifest import read_manifest
from mammo_ray.faults import arm, fired, kill_session, session_processes
from mammo_ray.stages.embed import read_embeddings
from tests.ray_train_state import checkpoint_committed

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


def _write_config(tmp_path: Path, **sections) -> tuple[Path, Path]:
    output = tmp_path / "study"
    config = tmp_path / "study.yaml"
    settings = {"name": "crash", "output": str(output), "data": {"synthetic": {"patients": 8, "rows": 256}},
                **sections}
    config.write_text(yaml.safe_dump(settings))
    return config, output


def _command(config: Path, *stages: str) -> list[str]:
    return [sys.executable, "jobs/full_study.py", "--config", str(config), "--stages", *stages]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, not ours


def _killed_run(command: list[str], until: Callable[[subprocess.Popen], bool]) -> None:
    """Start the study in its own session; `until(process)` is polled and returns True once the session
    has been (or may now be) killed. Fails if the study ends on its own first. Returns once no process of
    the session is left, so nothing writes to the output after the caller looks at it."""
    study = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while not until(study):
            assert study.poll() is None, "the study ended before it could be interrupted"
            assert time.monotonic() < deadline, "the study was not interrupted in time"
            time.sleep(0.05)
    finally:
        if study.poll() is None:
            kill_session(study.pid)
        study.wait()
        while session_processes(study.pid):  # killed, but the kernel may not have reaped them yet
            assert time.monotonic() < deadline + 60, f"session {study.pid} outlived its kill"
            time.sleep(0.05)
    assert study.returncode == -signal.SIGKILL


def _armed_then_dead(folder: str, point: str, when: Callable[[], bool] = lambda: True):
    """An `until` for _killed_run: arms crash point `point` to kill the study's whole session once
    `when()` holds, then waits for the study to be dead."""
    armed = False

    def until(study: subprocess.Popen) -> bool:
        nonlocal armed
        if not armed and when():
            arm(folder, point, take_session=study.pid)
            armed = True
        return study.poll() is not None

    return until


def _rerun(command: list[str]) -> str:
    """The study again, as a job joining this session's Ray (the killed run took its own Ray down with it)."""
    env = {**_env(), "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    rerun = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return rerun.stdout + rerun.stderr


def _assert_only_whole_files(output: Path) -> None:
    """Every Parquet file a reader can see opens; leftovers of interrupted writes are hidden temp files."""
    visible = [p for p in output.rglob("*.parquet") if not any(part.startswith(".") for part in p.parts)]
    assert visible
    for path in visible:
        pq.read_metadata(path)


def test_killed_during_embedding_then_rerun_finishes_without_redoing_work(tmp_path):
    config, output = _write_config(
        tmp_path, data={"synthetic": {"patients": 4, "rows": 256}}, ingest={"rows_per_block": 2, "batch_size": 2},
        embed={"batch_size": 2, "extractors": [{"name": "nyu_avg", "nyu_scale": 0.25}]},
    )
    command = _command(config, "manifest", "ingest", "embed")
    store = output / "embeddings" / "nyu_avg" / "features"

    def some_embeddings_written(study: subprocess.Popen) -> bool:
        if store.exists() and any(p.suffix == ".parquet" for p in store.rglob("*")):
            kill_session(study.pid)  # mid-stage: later batches are still being embedded
            return True
        return False

    _killed_run(command, some_embeddings_written)
    written_before = storage.read_table(str(store)).num_rows
    assert 0 < written_before < 16
    assert not storage.exists(tables.index_uri(str(output / "embeddings" / "nyu_avg")))  # the run did not complete

    log = _rerun(command)
    # ingest and embed are one pass over the images: the killed pass finished neither, so both run again;
    # embed computes only what its store lacks.
    assert "manifest: already done" in log and "image pass (ingest, embed)" in log
    assert f"{written_before} already stored (skipped)" in log
    assert storage.read_table(tables.ingest_uri(str(output))).num_rows == 16
    assert "taking over a stale lock" in log  # the killed study's lock: its holder is dead
    spec = ExtractorConfig(name="nyu_avg", nyu_scale=0.25)
    rows = read_embeddings(str(output), read_manifest(tables.manifest_uri(str(output))), spec)
    table = storage.read_table(str(store))
    assert len(rows) == 16 and table.num_rows == 16  # no duplicate row, even before deduplication
    assert rows["image_id"].is_unique
    _assert_only_whole_files(output)


def test_killed_during_the_grid_then_rerun_runs_only_the_unfinished_trials(tmp_path, crash_points):
    config, output = _write_config(
        tmp_path, data={"synthetic": {"patients": 16, "rows": 96, "positive_fraction": 0.5}},
        embed={"extractors": [{"name": "imagenet_resnet18", "input_size": 32}]},
        grid={"cv_folds": 3, "bootstrap": 20, "classifiers": ["logreg"], "trial_grouping": "preprocessing",
              "permutations": 1, "oof": {"repeats": 1}})
    command = _command(config, "manifest", "ingest", "embed", "grid")

    # Armed before the study starts: the first trial to journal its unit kills it, mid-grid.
    _killed_run(command, _armed_then_dead(crash_points, "grid.unit_written"))
    assert fired(crash_points, "grid.unit_written")
    assert not storage.exists(tables.grid_uri(str(output)))
    journal = storage.list_files(tables.grid_units_uri(str(output)))
    assert 0 < len(journal) < 8  # 2 protocols x 2 selections x 2 balancings: 8 units

    log = _rerun(command)
    assert "embed: already done" in log  # the embeddings the killed run finished are not redone
    assert f"grid: {len(journal)} of 8 trial units already done (skipped)" in log
    grid = storage.read_table(tables.grid_uri(str(output))).to_pandas()
    cells = ["extractor", "protocol", "selection", "balancing", "classifier"]
    # 8 cells and the best of the leak_free ones chosen inside the folds.
    assert len(grid) == 8 + 1 and not grid.duplicated(cells).any() and (grid["status"] == "ok").all()
    assert not storage.exists(tables.grid_units_uri(str(output)))  # the journal goes once the table is there
    _assert_only_whole_files(output)


def test_killed_during_fine_tuning_then_rerun_resumes_from_the_checkpoint(tmp_path, crash_points):
    config, output = _write_config(
        tmp_path, data={"synthetic": {"patients": 6, "rows": 96, "positive_fraction": 0.5}},
        finetune={"name": "crash", "models": [{"name": "small_cnn"}], "tasks": ["binary"],
                  "stages": [{"name": "all", "train": "all", "size": 32, "epochs": 3, "lr": 1e-3}],
                  "batch_size": 2, "cpus_per_worker": 0.5, "data_cpus": 0.5, "augment": {"enabled": False}},
    )
    command = _command(config, "manifest", "finetune")
    run_folder = output / "checkpoints" / "crash-small_cnn-none-binary-patient-all"

    # Armed once epoch 1 is committed: the next training batch kills the whole study.
    _killed_run(command, _armed_then_dead(crash_points, "train.batch", when=lambda: checkpoint_committed(run_folder)))
    assert fired(crash_points, "train.batch")
    assert not storage.exists(tables.finetune_uri(str(output)))

    log = _rerun(command)
    assert "manifest: already done" in log
    assert "finetune crash-small_cnn-none-binary-patient-all: resumed from its checkpoint at epoch" in log
    rows = storage.read_table(tables.finetune_uri(str(output))).to_pandas()
    assert len(rows) == 1 and int(rows["epochs"].iloc[0]) == 3
    _assert_only_whole_files(output)
