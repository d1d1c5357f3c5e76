"""A study killed in the middle of embedding continues where it stopped, without duplicate rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mammo_ray import storage
from mammo_ray.stages.embed import read_embeddings

REPO = Path(__file__).resolve().parent.parent


def test_killed_during_embedding_then_rerun_finishes_without_redoing_work(tmp_path):
    output = tmp_path / "study"
    config = tmp_path / "resume.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "resume",
                "output": str(output),
                "data": {"synthetic": {"patients": 8, "rows": 256}},
                "ray": {"num_cpus": 2},
                "ingest": {"rows_per_block": 2, "batch_size": 2},
                "embed": {"batch_size": 2, "extractors": [{"name": "nyu_avg", "nyu_scale": 0.25}]},
            }
        )
    )
    command = [sys.executable, "jobs/full_study.py", "--config", str(config), "--stages", "manifest", "ingest", "embed"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    parts = output / "embeddings" / "nyu_avg"
    deadline = time.monotonic() + 600
    while not (parts.exists() and any(p.suffix == ".parquet" for p in parts.iterdir())):
        assert first.poll() is None, "the study ended before it could be interrupted"
        assert time.monotonic() < deadline, "no embedding was written in time"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started, mid-stage
    first.wait()
    written_before = len(read_embeddings(str(output), "nyu_avg"))
    assert 0 < written_before < 32

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = rerun.stdout + rerun.stderr
    assert "manifest: already done" in log and "ingest: already done" in log
    assert f"{written_before} already done (skipped)" in log
    rows = read_embeddings(str(output), "nyu_avg")
    table = storage.read_table(str(parts))
    assert len(rows) == 32 and table.num_rows == 32  # no duplicate row, even before deduplication
    assert rows["image_id"].is_unique
