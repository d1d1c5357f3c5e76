"""The crash points' session kill: it takes processes that left the study's process group, as Ray workers do."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from mammo_ray.faults import kill_session, session_processes

# A session leader whose child moves into a process group of its own (what a raylet does to its workers).
_LEADER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], process_group=0)
print(child.pid, flush=True)
time.sleep(120)
"""

def test_kill_session_takes_a_child_in_its_own_process_group():
    leader = subprocess.Popen([sys.executable, "-c", _LEADER], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        child = int(leader.stdout.readline())
        assert os.getpgid(child) == child != os.getpgid(leader.pid)  # killpg(leader) would miss it
        assert set(session_processes(leader.pid)) == {leader.pid, child}

        kill_session(leader.pid)
        leader.wait(timeout=30)
        deadline = time.monotonic() + 30
        while session_processes(leader.pid):  # the orphaned child is reaped by init
            assert time.monotonic() < deadline, "a process of the session outlived the kill"
            time.sleep(0.05)
    finally:
        for pid in session_processes(leader.pid):  # when the kill failed
            os.kill(pid, 9)
        leader.wait()
