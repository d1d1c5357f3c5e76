"""A collection 10x larger embeds within 1.3x the peak memory: the image stages stream, nothing grows with
the number of images. Measured by `jobs/benchmark.py memory` (PSS of the study process and its local Ray)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_ten_times_the_images_embed_within_1_3_times_the_peak_memory():
    command = [sys.executable, "jobs/benchmark.py", "memory", "--patients", "2", "--factor", "10", "--rows", "256",
               "--json"]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    measured = json.loads(completed.stdout.strip().splitlines()[-1])
    (small_images, small_peak, _), (large_images, large_peak, _) = measured["small"], measured["large"]
    assert (small_images, large_images) == (8, 80)
    assert small_peak > 500 * 2**20  # a real measurement: the driver and its Ray processes were sampled
    assert large_peak <= 1.3 * small_peak, measured
