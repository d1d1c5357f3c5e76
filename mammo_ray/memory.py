"""Peak memory of a study run: the driver and every process under it (the local Ray it started: GCS,
raylet, workers, actors), sampled while it runs. Used by the memory-bound test and `jobs/benchmark.py
memory`, so both measure the same thing.

Sums PSS (proportional set size), not RSS: Ray's object store is shared memory mapped by many
processes, and RSS would count the same pages once per process that touched them.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil


def tree_pss(root: psutil.Process) -> int:
    """Bytes of PSS of `root` and all its descendants now (processes that vanish meanwhile count 0)."""
    total = 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for process in processes:
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total


class PeakPSS:
    """Samples the PSS of `root`'s process tree every `interval` s while the `with` block runs; `bytes`
    is the highest sample."""

    def __init__(self, root: psutil.Process, interval: float = 0.1) -> None:
        self.root, self.interval = root, interval
        self.bytes, self.samples = 0, 0
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.bytes = max(self.bytes, tree_pss(self.root))
            self.samples += 1
            self._done.wait(self.interval)

    def __enter__(self) -> PeakPSS:
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._sampler.join()


@dataclass(frozen=True)
class MeasuredRun:
    returncode: int
    peak_bytes: int
    samples: int
    seconds: float
    output: str


def run_measured(command: Sequence[str], interval: float = 0.1, timeout: float = 1800.0,
                 **popen: object) -> MeasuredRun:
    """Run `command`, sampling the PSS of its whole process tree every `interval` s; returns its peak."""
    started = time.perf_counter()
    process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               **popen)  # type: ignore[arg-type]
    try:
        with PeakPSS(psutil.Process(process.pid), interval) as peak:
            output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    return MeasuredRun(process.returncode, peak.bytes, peak.samples, time.perf_counter() - started, output)
