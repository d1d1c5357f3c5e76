"""One writer per output (mammo_ray.output_lock), on real local folders and a real (moto) S3 server."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from mammo_ray import storage
from mammo_ray.errors import ConfigError
from mammo_ray.lock_holder import LockHolder, iso_time, parse_time
from mammo_ray.lock_stores import LocalLockStore, LockChanged, S3LockStore, lock_store
from mammo_ray.output_lock import LOCK_NAME, OutputLockedError, hold_output, read_lock
from mammo_ray.s3_settings import S3Config
from mammo_ray.writability import check_output_writable

REPO_ROOT = Path(__file__).resolve().parent.parent
LOGGER = "mammo_ray.output_lock"


@pytest.fixture(params=["local", "s3"])
def output(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An output URI that nobody holds yet: a local folder, or a prefix in a fresh moto bucket."""
    if request.param == "local":
        return str(tmp_path / "study-out")
    return request.getfixturevalue("s3_bucket") + "/studies/out"


def lock_uri(output: str) -> str:
    return storage.join(output, LOCK_NAME)


def stored_holder(output: str) -> LockHolder:
    holder = LockHolder.from_bytes(storage.read_bytes(lock_uri(output)))
    assert holder is not None, "the lock object is not a readable lock"
    return holder


def plant_lock(output: str, **changes: object) -> LockHolder:
    """Write a lock as some other holder would have (this process's identity, then `changes`)."""
    now = iso_time(time.time())
    holder = replace(LockHolder.of_this_process(uuid.uuid4().hex, now), **changes)
    storage.write_bytes(lock_uri(output), holder.to_bytes())
    return holder


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step_s)
    return condition()


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not psutil.pid_exists(child.pid), "the pid was reused at once; run again"
    return child.pid


# --- one holder at a time -----------------------------------------------------------------------------------


def test_lock_object_names_its_holder(output: str) -> None:
    with hold_output(output) as lock:
        stored = stored_holder(output)
        assert stored.token == lock.token
        assert stored.host == socket.gethostname()
        assert stored.pid == os.getpid()
        assert len(stored.token) >= 32
        # The wall-clock start moves with a stepped system clock; the start in ticks since boot does not.
        assert parse_time(stored.process_started_at) > 0 and stored.process_start_ticks > 0
        assert parse_time(stored.started_at) <= parse_time(stored.heartbeat_at)
        assert 0 <= stored.heartbeat_age_s() < 60
        assert read_lock(output) == stored
        lock.check()  # ours: no error


def test_second_holder_is_refused_and_told_who_holds_it(output: str) -> None:
    with hold_output(output) as first:
        with pytest.raises(OutputLockedError) as refused, hold_output(output):
            pytest.fail("a second holder got in")
        message = str(refused.value)
        assert output in message
        assert socket.gethostname() in message and f"pid {os.getpid()}" in message
        assert first.holder is not None and first.holder.started_at in message
        assert "last heartbeat" in message
        assert "wait" in message and "another output" in message
        assert refused.value.holder is not None and refused.value.holder.token == first.token
        # The refused holder left the lock alone.
        assert stored_holder(output).token == first.token
        first.check()


def test_release_lets_a_new_holder_in(output: str) -> None:
    with hold_output(output) as first:
        pass
    assert not storage.exists(lock_uri(output)), "the lock was not removed on release"
    with hold_output(output) as second:
        assert second.token != first.token
        assert stored_holder(output).token == second.token
    assert not storage.exists(lock_uri(output))


def test_release_after_an_error_in_the_block_still_removes_the_lock(tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    with pytest.raises(RuntimeError, match="stage failed"), hold_output(output):
        raise RuntimeError("stage failed")
    assert not storage.exists(lock_uri(output))


# --- stale locks --------------------------------------------------------------------------------------------


def test_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_warning(
        output: str, caplog: pytest.LogCaptureFixture) -> None:
    pid = dead_pid()
    old = plant_lock(output, pid=pid)  # fresh heartbeat: only the dead pid makes it stale
    with caplog.at_level(logging.WARNING, logger=LOGGER), hold_output(output) as lock:
        assert stored_holder(output).token == lock.token != old.token
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]
    assert any("taking over" in m and f"pid {pid}" in m and "no longer running" in m
               for m in warnings), warnings


def test_a_reused_pid_does_not_keep_a_lock_alive(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    output = str(tmp_path / "out")
    # Our own (alive) pid, but recorded with another process start time: the pid was reused.
    old = plant_lock(output, process_started_at=iso_time(psutil.Process().create_time() - 3600),
                     process_start_ticks=LockHolder.of_this_process("t", iso_time(time.time())).process_start_ticks + 1)
    with caplog.at_level(logging.WARNING, logger=LOGGER), hold_output(output) as lock:
        assert stored_holder(output).token == lock.token != old.token
    assert any("now belongs to a process started" in r.getMessage() for r in caplog.records)


def test_expired_heartbeat_is_taken_over(output: str, caplog: pytest.LogCaptureFixture) -> None:
    ten_minutes_ago = iso_time(time.time() - 600)
    old = plant_lock(output, host="another-host.example", pid=4242, heartbeat_at=ten_minutes_ago,
                     started_at=ten_minutes_ago)
    with caplog.at_level(logging.WARNING, logger=LOGGER), hold_output(output, stale_after_s=60) as lock:
        assert stored_holder(output).token == lock.token != old.token
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("another-host.example" in m and "no heartbeat for" in m for m in warnings), warnings


def test_live_lock_of_another_host_is_respected_whatever_its_pid(tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    # A pid that is dead here says nothing about a process on another machine: only the heartbeat counts.
    old = plant_lock(output, host="another-host.example", pid=dead_pid())
    with pytest.raises(OutputLockedError, match="another-host.example"), hold_output(output):
        pass
    assert stored_holder(output) == old


def test_an_old_unreadable_lock_is_taken_over_and_a_new_one_is_respected(tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    path = Path(storage.split_uri(lock_uri(output))[1])
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")  # a creator that died between its exclusive create and its write
    with pytest.raises(OutputLockedError, match="empty or unreadable"), hold_output(output, stale_after_s=60):
        pass
    old = time.time() - 120
    os.utime(path, (old, old))
    with hold_output(output, stale_after_s=60) as lock:
        assert stored_holder(output).token == lock.token


# --- clocks that disagree, malformed locks (through the CLI: a declared error or a takeover, no traceback) -----


def _prune(output: str) -> int:
    """`mammo-ray prune` on `output`: takes the output's lock, needs no Ray."""
    from mammo_ray.cli import main

    return main(["prune", "--output", output])


def test_a_lock_with_a_future_heartbeat_is_watched_then_taken_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from mammo_ray import output_lock

    monkeypatch.setattr(output_lock, "DEFAULT_STALE_AFTER_S", 2.0)  # the CLI's silence: 60 s otherwise
    monkeypatch.setattr(output_lock, "DEFAULT_HEARTBEAT_S", 0.5)
    output = str(tmp_path / "out")
    in_an_hour = iso_time(time.time() + 3600)  # another host's clock an hour ahead, or a damaged file
    plant_lock(output, host="ahead.example", pid=4242, heartbeat_at=in_an_hour, started_at=in_an_hour)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert _prune(output) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]
    assert any("ahead of this host's clock" in m and "watching it for 2 s" in m for m in warnings), warnings
    assert any("taking over" in m and "ahead.example" in m and "in the future" in m and "did not change for 2 s"
               in m for m in warnings), warnings
    assert not storage.exists(lock_uri(output))  # taken, then released by the prune


def test_a_live_holder_whose_clock_is_ahead_is_refused_saying_the_clocks_disagree(output: str) -> None:
    holder = plant_lock(output, host="ahead.example", pid=4242, heartbeat_at=iso_time(time.time() + 3600))
    stop = threading.Event()

    def renew() -> None:  # the holder, alive on a host whose clock runs an hour ahead
        while not stop.wait(0.2):
            storage.write_bytes(lock_uri(output), replace(holder, heartbeat_at=iso_time(time.time() + 3600)).to_bytes())

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    try:
        with pytest.raises(OutputLockedError, match="alive .* the clocks disagree") as refused, \
                hold_output(output, heartbeat_s=0.5, stale_after_s=10):
            pytest.fail("took the lock of a live holder")
    finally:
        stop.set()
        renewer.join()
    assert "in the future by this host's clock" in str(refused.value)  # not a negative age
    assert stored_holder(output).token == holder.token


@pytest.mark.parametrize(("change", "named"), [
    ({"pid": -1}, "pid -1 is not a positive integer"),
    ({"pid": 0}, "pid 0 is not a positive integer"),
    ({"pid": "12ab"}, "pid '12ab' is not a positive integer"),
    ({"host": None}, "host missing or not text"),
    ({"started_at": "yesterday-ish"}, "started_at 'yesterday-ish' is not a time"),
    ({"process_started_at": 17}, "process_started_at missing or not text"),
])
def test_a_lock_with_a_malformed_holder_is_refused_then_taken_over_once_old(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict, named: str) -> None:
    output = str(tmp_path / "out")
    planted = json.loads(plant_lock(output).to_bytes())
    planted.update(change)
    path = Path(storage.split_uri(lock_uri(output))[1])
    path.write_text(json.dumps({k: v for k, v in planted.items() if v is not None}))
    assert _prune(output) == 2  # a declared error: exit 2, not a traceback
    stderr = capsys.readouterr().err
    assert "is in use by another study" in stderr and named in stderr and "Traceback" not in stderr
    old = time.time() - 120  # written two minutes ago by the store's clock: beyond the 60 s silence
    os.utime(path, (old, old))
    assert _prune(output) == 0 and not path.exists()


# --- while held ---------------------------------------------------------------------------------------------


def test_heartbeat_advances_while_held(output: str) -> None:
    with hold_output(output, heartbeat_s=0.2, stale_after_s=30) as lock:
        first = stored_holder(output)
        assert wait_for(lambda: stored_holder(output).heartbeat_at != first.heartbeat_at), "no heartbeat"
        later = stored_holder(output)
        assert later.token == first.token == lock.token
        assert later.started_at == first.started_at
        assert parse_time(later.heartbeat_at) > parse_time(first.heartbeat_at)
        lock.check()


def test_check_fails_after_a_takeover_and_the_heartbeat_stops(output: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        with hold_output(output, heartbeat_s=0.2, stale_after_s=30) as lock:
            lock.check()
            usurper = plant_lock(output, host="usurper.example", pid=77)  # as if it had taken over
            with pytest.raises(OutputLockedError, match="usurper.example") as refused:
                lock.check()
            assert "taken over" in str(refused.value)
            assert wait_for(lambda: lock.lost), "the heartbeat did not notice the takeover"
            time.sleep(0.6)  # a few heartbeat periods: a stopped heartbeat writes nothing more
            assert stored_holder(output) == usurper
        # Release does not remove a lock that is no longer ours.
        assert stored_holder(output) == usurper
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("lost the lock" in m and "usurper.example" in m for m in errors), errors
    assert any("not removing the lock" in m for m in errors), errors


def test_check_fails_when_the_lock_was_removed(tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    with hold_output(output, heartbeat_s=30, stale_after_s=60) as lock:
        storage.remove(lock_uri(output))
        with pytest.raises(OutputLockedError, match="removed"):
            lock.check()


def test_heartbeat_failures_do_not_end_the_holder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    from mammo_ray.errors import StorageError

    output = str(tmp_path / "out")
    real = LocalLockStore.replace_if
    failures = {"left": 3}

    def flaky(self: LocalLockStore, data: bytes, version: object) -> object:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise StorageError(self.uri, "cannot write: store unreachable")
        return real(self, data, version)

    monkeypatch.setattr(LocalLockStore, "replace_if", flaky)
    with caplog.at_level(logging.WARNING, logger=LOGGER), \
            hold_output(output, heartbeat_s=0.1, stale_after_s=30) as lock:
        first = stored_holder(output)
        assert wait_for(lambda: failures["left"] == 0)
        assert wait_for(lambda: stored_holder(output).heartbeat_at != first.heartbeat_at)
        assert not lock.lost
        lock.check()
    assert sum("could not renew the lock" in r.getMessage() for r in caplog.records) == 3


def test_heartbeat_survives_a_store_that_is_briefly_unreachable(s3_endpoint: str, s3_bucket: str) -> None:
    from tests.flaky_s3 import FlakyS3Proxy

    output = f"{s3_bucket}/blip"
    with FlakyS3Proxy(s3_endpoint, failure_rate=0.0, delay_rate=0.0) as proxy:
        via_proxy = S3Config(endpoint_url=proxy.endpoint)
        with hold_output(output, heartbeat_s=0.2, stale_after_s=60, s3=via_proxy) as lock:
            proxy.failure_rate = 1.0  # every request fails: 5xx answers and reset connections
            assert wait_for(lambda: proxy.stats.failures + proxy.stats.resets >= 4), "no request hit the blip"
            during = stored_holder(output)  # read straight from moto, past the proxy
            proxy.failure_rate = 0.0
            assert wait_for(lambda: stored_holder(output).heartbeat_at != during.heartbeat_at, timeout_s=60)
            assert not lock.lost
            lock.check()
        assert not storage.exists(lock_uri(output))


# --- races between processes --------------------------------------------------------------------------------

_RACER = r"""
import os, sys, time
from mammo_ray.output_lock import OutputLockedError, hold_output
output, folder, name = sys.argv[1:4]
open(os.path.join(folder, "ready-" + name), "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(os.path.join(folder, "go")):
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.001)
try:
    with hold_output(output, heartbeat_s=0.5, stale_after_s=60) as lock:
        print("WON", lock.token, flush=True)
        while not os.path.exists(os.path.join(folder, "release")) and time.monotonic() < deadline:
            time.sleep(0.01)
except OutputLockedError as error:
    print("REFUSED", str(error).replace("\n", " "), flush=True)
"""


@pytest.mark.parametrize("over", ["nothing", "a stale lock"])
def test_racing_processes_exactly_one_wins(output: str, tmp_path: Path, over: str) -> None:
    """Three processes start acquiring at the same moment, on a free output or over one stale lock that each
    of them wants to take over: exactly one holds the output, the others are refused."""
    racers = 3
    folder = tmp_path / "race"
    folder.mkdir()
    if over == "a stale lock":
        plant_lock(output, pid=dead_pid())
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    children = [subprocess.Popen([sys.executable, "-c", _RACER, output, str(folder), str(i)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(racers)]
    try:
        assert wait_for(lambda: all((folder / f"ready-{i}").exists() for i in range(racers)), timeout_s=60)
        (folder / "go").touch()
        # The losers are refused and exit; the winner holds on until told to release.
        wait_for(lambda: sum(c.poll() is not None for c in children) >= racers - 1, timeout_s=30)
        holder_while_held = read_lock(output)
        (folder / "release").touch()
        results = [c.communicate(timeout=60) for c in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    lines = [out.strip() for out, _ in results]
    assert all(c.returncode == 0 for c in children), [err for _, err in results]
    winners = [line for line in lines if line.startswith("WON")]
    refused = [line for line in lines if line.startswith("REFUSED")]
    assert len(winners) == 1 and len(refused) == racers - 1, lines
    assert holder_while_held is not None and winners[0].split()[1] == holder_while_held.token
    assert all(output in line for line in refused)
    assert not storage.exists(lock_uri(output))


# --- can the output be written at all? ----------------------------------------------------------------------


def test_check_output_writable_accepts_a_good_local_folder(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    check_output_writable(str(existing))
    check_output_writable(f"file://{existing}")
    check_output_writable(str(tmp_path / "not" / "yet" / "there"))
    assert list(existing.iterdir()) == [], "the probe was left behind"
    assert not (tmp_path / "not").exists(), "the check created the folder"


def test_check_output_writable_refuses_an_existing_file(tmp_path: Path) -> None:
    a_file = tmp_path / "results.parquet"
    a_file.write_bytes(b"PAR1")
    with pytest.raises(ConfigError, match="existing file, not a folder") as refused:
        check_output_writable(str(a_file))
    assert refused.value.key_path == "output" and str(a_file) in str(refused.value)
    with pytest.raises(ConfigError, match="is a file"):
        check_output_writable(str(a_file / "below"))


def test_check_output_writable_refuses_an_unwritable_folder(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: folder permissions do not bind")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            check_output_writable(str(folder))
        with pytest.raises(ConfigError, match="no permission"):
            check_output_writable(str(folder / "sub"))
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("uri", ["ftp://host/out", "gs://bucket/out", "s3://", "s3:///no-bucket"])
def test_check_output_writable_refuses_unknown_or_malformed_uris(uri: str) -> None:
    with pytest.raises(ConfigError) as refused:
        check_output_writable(uri)
    assert refused.value.key_path == "output"
    assert uri in str(refused.value)


def test_check_output_writable_refuses_a_missing_bucket(s3_endpoint: str) -> None:
    with pytest.raises(ConfigError, match="does not exist") as refused:
        check_output_writable(f"s3://no-such-bucket-{uuid.uuid4().hex[:12]}/out")
    assert refused.value.key_path == "output"


def test_check_output_writable_accepts_a_good_bucket(s3_bucket: str) -> None:
    check_output_writable(s3_bucket)
    check_output_writable(f"{s3_bucket}/studies/out")
    fs, path = storage.filesystem(s3_bucket)
    assert fs.find(path) == [], "the probe was left behind"


def test_check_output_writable_refuses_an_object_where_the_folder_should_be(s3_bucket: str) -> None:
    storage.write_bytes(f"{s3_bucket}/taken", b"x")
    with pytest.raises(ConfigError, match="not a folder"):
        check_output_writable(f"{s3_bucket}/taken")


def test_creating_the_lock_object_is_exclusive(output: str) -> None:
    """The primitive the races rest on: a second create never replaces an existing lock (O_EXCL locally, a
    conditional PUT with If-None-Match: * on S3)."""
    store = lock_store(lock_uri(output), None)
    assert store.create(b"first") is not None
    assert store.create(b"second") is None
    assert storage.read_bytes(lock_uri(output)) == b"first"
    seen = store.read()
    assert seen is not None and seen.data == b"first"
    assert store.remove_if(b"other" if seen.version == b"first" else '"not-the-etag"') is False
    assert storage.read_bytes(lock_uri(output)) == b"first"
    assert store.remove_if(seen.version) is True
    assert not storage.exists(lock_uri(output))


def test_a_store_without_conditional_requests_falls_back_to_write_then_read_back(
    s3_endpoint: str, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Some S3 stores answer 501 to If-None-Match / If-Match: the lock still creates, renews and removes."""
    from tests.flaky_s3 import FlakyS3Proxy

    uri = lock_uri(s3_bucket + "/no-conditional/out")
    with FlakyS3Proxy(s3_endpoint, failure_rate=0.0, delay_rate=0.0, refuse_conditional=True) as proxy:
        store = S3LockStore(uri, S3Config(endpoint_url=proxy.endpoint))
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            created = store.create(b"first")
        assert created is not None and not store.conditional
        assert "does not support conditional requests" in caplog.text
        assert store.create(b"second") is None
        renewed = store.replace_if(b"renewed", created)
        with pytest.raises(LockChanged):
            store.replace_if(b"stale", created)
        assert store.remove_if(created) is False
        assert store.remove_if(renewed) is True
        assert not storage.exists(uri)
        refused = [verb for verb, _, outcome in proxy.stats.log if outcome == "not_implemented"]
    assert refused == ["PUT"]  # asked once; from then on the store is known not to support them


def test_output_locked_error_survives_pickling(tmp_path: Path) -> None:
    import pickle

    output = str(tmp_path / "out")
    with hold_output(output), pytest.raises(OutputLockedError) as refused, hold_output(output):
        pass
    copy = pickle.loads(pickle.dumps(refused.value))
    assert str(copy) == str(refused.value) and copy.holder == refused.value.holder
