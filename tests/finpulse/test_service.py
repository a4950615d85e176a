"""Pid files of the background services: what they record, and that a stale one never gets a signal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from finpulse.service import ManagedService, ProcessIdentity, read_pid, stop_pid, write_pid_file
from finpulse.settings import Settings


@pytest.fixture
def unrelated():
    """A live process that is none of ours, like the one a reused pid names."""
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def service(tmp_path):
    return ManagedService("svc", [sys.executable, "-c", "import time; time.sleep(120)"],
                          settings=Settings(home=tmp_path))


def _stale_files(pid: int, identity: ProcessIdentity) -> dict[str, str]:
    """Pid files our dead service could have left behind, each naming ``pid`` (now someone else's)."""
    return {
        "our start time, our command line": ProcessIdentity(pid, identity.start_ticks - 500,
                                                            (sys.executable, "-m", "pipeline", "run")).to_json(),
        "its start time, another command line": ProcessIdentity(pid, identity.start_ticks,
                                                                (sys.executable, "-m", "pipeline")).to_json(),
        "unreadable": "{not json",
    }


def test_stop_never_signals_a_process_a_stale_pid_file_names(service, unrelated):
    identity = ProcessIdentity.of(unrelated.pid)
    service.dir.mkdir(parents=True)
    for case, text in _stale_files(unrelated.pid, identity).items():
        service.pid_file.write_text(text)
        assert service.status().pid is None, case
        service.pid_file.write_text(text)
        assert service.stop(timeout=5) is False, case
        time.sleep(0.2)
        assert unrelated.poll() is None, case  # alive: nothing was signalled
        assert not service.pid_file.exists(), case  # stale: removed


def test_an_old_style_pid_file_is_trusted_only_for_a_process_started_before_it(service, unrelated):
    service.dir.mkdir(parents=True)
    service.pid_file.write_text(f"{unrelated.pid}\n")
    assert read_pid(service.pid_file) == unrelated.pid  # written after the process started: ours
    written_before = time.time() - 3600
    service.pid_file.write_text(f"{unrelated.pid}\n")
    os.utime(service.pid_file, (written_before, written_before))  # the pid was reused after the file was written
    assert service.stop(timeout=5) is False
    assert unrelated.poll() is None and not service.pid_file.exists()


def test_stop_pid_checks_the_identity_before_signalling(unrelated):
    identity = ProcessIdentity.of(unrelated.pid)
    stop_pid(ProcessIdentity(identity.pid, identity.start_ticks + 1, identity.cmdline), timeout=1)
    time.sleep(0.5)  # a signal, had one been sent, has taken effect by now
    assert unrelated.poll() is None
    stop_pid(identity, timeout=5)
    assert ProcessIdentity.of(identity.pid) is None  # stopped (and reaped: it is our child)


def test_a_pid_file_written_right_after_start_names_its_process(tmp_path):
    """Popen returns while the kernel may still be setting up the new program's argv (its /proc cmdline reads
    empty for a moment); the pid file must hold the real command line, or the service would look stale."""
    pid_file = tmp_path / "x.pid"
    for _ in range(100):
        proc = subprocess.Popen(["sleep", "30"])
        try:
            write_pid_file(pid_file, proc.pid)
            assert json.loads(pid_file.read_text())["cmdline"] == ["sleep", "30"]
            assert read_pid(pid_file) == proc.pid
        finally:
            proc.kill()
            proc.wait()
    assert read_pid(pid_file) is None and not pid_file.exists()  # gone: stale


def test_a_service_starts_records_itself_and_stops(service):
    status = service.start(timeout=30)
    assert status.running
    recorded = json.loads(service.pid_file.read_text())
    assert recorded["pid"] == status.pid and recorded["cmdline"] == service.argv
    assert service.start().pid == status.pid  # idempotent
    assert service.stop(timeout=10) is True
    assert ProcessIdentity.of(status.pid) is None and not service.pid_file.exists()
