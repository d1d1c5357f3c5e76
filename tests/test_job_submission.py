"""`ray job submit -- python jobs/full_study.py` for real: a local Ray head with token auth, its own
ports and temp dir, stopped afterwards by its own process group, never by stopping every Ray on the machine."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mammo_ray import storage

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head() -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray head on 127.0.0.1 with token auth; yields (dashboard address, client environment)."""
    temp_dir = tempfile.mkdtemp(prefix="/tmp/mr-head-")  # short: Ray's unix sockets live under it
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    # The job's `python` is found on PATH, as on a cluster node: make it this environment's interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    dashboard_port = _free_port()
    head = subprocess.Popen(
        [
            RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
            f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
            f"--ray-client-server-port={_free_port()}", "--num-cpus=2", f"--temp-dir={temp_dir}",
            # Every port our own: the defaults may be held by another Ray on this machine.
            f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: we stop exactly what we started
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        deadline = time.monotonic() + 120
        while subprocess.run(
            [RAY, "job", "list", "--address", address], env=env, capture_output=True
        ).returncode != 0:
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the Ray head did not come up")
            time.sleep(2)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:  # a graceful stop takes half a minute here; nothing of the head is needed after the tests
            head.wait(timeout=8)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_job_submit_runs_the_study_with_token_auth(ray_head, tmp_path):
    address, env = ray_head
    output = tmp_path / "study"
    config = tmp_path / "small.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "job-test",
                "output": str(output),
                "data": {"synthetic": {"patients": 2, "rows": 96}},
                "embed": {"extractors": [{"name": "imagenet_resnet18", "input_size": 64}]},
            }
        )
    )
    submission = f"mammo-ray-test-{secrets.token_hex(4)}"
    command = [
        RAY, "job", "submit", "--address", address, "--submission-id", submission, "--working-dir", ".",
        "--", "python", "jobs/full_study.py", "--config", str(config), "--stages", "manifest", "ingest", "embed",
        "report",
    ]
    for _ in range(20):  # the head's job agent comes up a little after its dashboard: bounded retries
        completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent" not in completed.stderr:
            break
        time.sleep(3)
    status = subprocess.run(
        [RAY, "job", "status", "--address", address, submission], env=env, capture_output=True, text=True
    )
    assert "SUCCEEDED" in status.stdout.upper(), completed.stdout[-4000:] + completed.stderr[-4000:]
    assert storage.read_table(str(output / "manifest.parquet")).num_rows == 8
    assert storage.read_table(str(output / "embeddings" / "imagenet_resnet18")).num_rows == 8

    without_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    refused = subprocess.run(
        [RAY, "job", "list", "--address", address], env=without_token, capture_output=True, text=True
    )
    assert refused.returncode != 0  # token auth is on: a client without the token is turned away


def test_a_relative_output_in_a_job_is_refused_with_what_to_write_instead(ray_head, tmp_path):
    """The job runs in a temporary copy of the working dir: a relative output would land there and be lost."""
    address, env = ray_head
    submission = f"mammo-ray-test-{secrets.token_hex(4)}"
    command = [
        RAY, "job", "submit", "--address", address, "--submission-id", submission, "--working-dir", ".",
        "--", "python", "jobs/full_study.py", "--output", "output/relative-in-a-job", "--stages", "manifest",
    ]
    for _ in range(20):
        completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent" not in completed.stderr:
            break
        time.sleep(3)
    status = subprocess.run([RAY, "job", "status", "--address", address, submission], env=env, capture_output=True,
                            text=True)
    assert "FAILED" in status.stdout.upper(), completed.stdout[-4000:] + completed.stderr[-4000:]
    logs = subprocess.run([RAY, "job", "logs", "--address", address, submission], env=env, capture_output=True,
                          text=True).stdout
    assert "config output: relative path(s) in a Ray job: output = 'output/relative-in-a-job'" in logs
    assert "temporary copy of the working dir" in logs and "s3:// URI" in logs
    assert not (REPO / "output" / "relative-in-a-job").exists()
