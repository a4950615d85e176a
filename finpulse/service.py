"""Background services that the ``finpulse`` CLI starts, stops and reports on (pipeline, alerts).

A service is one detached process (its own session, so a closing terminal or ``make`` does not
take it down) with a pid file and a log file under ``FINPULSE_HOME/<name>/``. ``start`` is
idempotent: a live pid means "already running". ``stop`` sends SIGTERM and waits, so a service
can finish the unit of work in hand (a micro-batch, an evaluation) before it exits, then SIGKILL.

A pid file records the process's start time and command line with its pid (:class:`ProcessIdentity`),
and both are checked before any signal: a pid file left by a process that died, whose pid another
process got later, is stale (removed) and nothing is signalled.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from finpulse.settings import Settings, get_settings

log = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """A service could not be started or stopped. The message is one line for the operator."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    log: Path

    @property
    def running(self) -> bool:
        return self.pid is not None

    def line(self) -> str:
        state = f"running (pid {self.pid})" if self.running else "stopped"
        return f"{self.name:<12} {state:<22} log {self.log}"


class ManagedService:
    """``argv`` run detached, with ``FINPULSE_HOME/<name>/<name>.pid`` and ``.log``."""

    def __init__(self, name: str, argv: Sequence[str], *, settings: Settings | None = None,
                 env: dict[str, str] | None = None):
        self.name = name
        self.argv = list(argv)
        self.settings = settings or get_settings()
        self.env = env or {}
        self.dir = self.settings.home / name
        self.pid_file = self.dir / f"{name}.pid"
        self.log_file = self.dir / f"{name}.log"

    def status(self) -> ServiceStatus:
        return ServiceStatus(self.name, read_pid(self.pid_file), self.log_file)

    def start(self, *, ready: Callable[[], bool] | None = None, timeout: float = 120.0) -> ServiceStatus:
        """Start unless running; wait until ``ready()`` is true (or the process dies: error with its log tail)."""
        current = self.status()
        if current.running:
            return current
        self.dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "FINPULSE_HOME": str(self.settings.home), "PYTHONUNBUFFERED": "1"}
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        try:
            write_pid_file(self.pid_file, proc.pid)
        except ServiceError:
            pass  # it exited already: the loop below reports it with its log
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise ServiceError(f"{self.name} exited with code {proc.returncode} at start; "
                                   f"last lines of {self.log_file}:\n{tail(self.log_file)}")
            if ready is None or ready():
                return self.status()
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.name} did not become ready within {timeout:.0f}s; see {self.log_file}")
            time.sleep(0.5)

    def stop(self, *, timeout: float = 60.0) -> bool:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; True if a process was running."""
        identity = read_identity(self.pid_file)
        if identity is None:
            return False
        stop_pid(identity, timeout=timeout)
        self.pid_file.unlink(missing_ok=True)
        return True


def port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something accepts a TCP connection on host:port (a service's readiness, a status check)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def python_module_argv(module: str, *args: str) -> list[str]:
    """argv running ``python -m module args`` with this interpreter (the project's venv)."""
    return [sys.executable, "-m", module, *args]


@dataclass(frozen=True)
class ProcessIdentity:
    """What tells our process from another that got its pid later: its start time and command line.

    ``start_ticks`` is field 22 of ``/proc/<pid>/stat`` (clock ticks after boot, fixed for the
    life of the process); a pid is only reused after its process is gone, and the new one
    starts later.
    """

    pid: int
    start_ticks: int
    cmdline: tuple[str, ...]

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """The identity of the live (not zombie) process ``pid``, or None when there is none."""
        fields = _stat_fields(pid)
        if fields is None or fields[0] == "Z":
            return None
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        cmdline = tuple(part.decode("utf-8", "replace") for part in raw.split(b"\0")[:-1] if raw)
        return cls(pid, int(fields[19]), cmdline)

    def is_running(self) -> bool:
        """Whether the process at ``pid`` is still this one."""
        return ProcessIdentity.of(self.pid) == self

    def started_at(self) -> float:
        """Start time as a Unix timestamp (seconds)."""
        return _boot_time() + self.start_ticks / os.sysconf("SC_CLK_TCK")

    def to_json(self) -> str:
        return json.dumps({"pid": self.pid, "start_ticks": self.start_ticks, "cmdline": list(self.cmdline)}) + "\n"


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state first), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()  # the command name (field 2) may contain spaces and ')'


@functools.cache
def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise RuntimeError("no btime in /proc/stat")


def write_pid_file(pid_file: Path, pid: int) -> ProcessIdentity:
    """Record ``pid`` with its identity (atomically: a reader sees the old file or the new one)."""
    identity = ProcessIdentity.of(pid)
    deadline = time.monotonic() + 2.0
    # Popen returns while the kernel may still be building the new program's argv: its
    # /proc cmdline reads empty for that moment; record the real one.
    while identity is not None and not identity.cmdline and time.monotonic() < deadline:
        time.sleep(0.005)
        identity = ProcessIdentity.of(pid)
    if identity is None:
        raise ServiceError(f"process {pid} exited before its pid file {pid_file} was written")
    tmp = pid_file.with_name(pid_file.name + ".tmp")
    tmp.write_text(identity.to_json())
    os.replace(tmp, pid_file)
    return identity


def read_identity(pid_file: Path) -> ProcessIdentity | None:
    """The process ``pid_file`` names, if it is still running; else None, and a stale file is removed.

    Stale: the process is gone, a zombie, or the pid now belongs to another process (another
    start time or command line). A pid file of the old format (the pid alone) is trusted only
    for a process that started before the file was written. Nothing is ever signalled here.
    """
    try:
        text = pid_file.read_text().strip()
        written = pid_file.stat().st_mtime
    except (FileNotFoundError, NotADirectoryError):
        return None
    current = recorded = None
    try:
        if text.startswith("{"):
            data = json.loads(text)
            recorded = ProcessIdentity(int(data["pid"]), int(data["start_ticks"]), tuple(data["cmdline"]))
            current = ProcessIdentity.of(recorded.pid)
        else:
            current = ProcessIdentity.of(int(text))
    except (ValueError, KeyError, TypeError):
        pass  # unreadable: stale
    if recorded is not None:
        alive = current == recorded
    else:  # the old format: a process started after the file was written reused the pid
        alive = current is not None and current.started_at() <= written + 1.0
    if alive:
        return current
    if current is not None:
        log.warning("%s names pid %d, which is now another process (%s): removed, nothing signalled",
                    pid_file, current.pid, " ".join(current.cmdline)[:120] or "?")
    pid_file.unlink(missing_ok=True)
    return None


def read_pid(pid_file: Path) -> int | None:
    """The pid in pid_file if that process is still the one recorded there, else None (see read_identity)."""
    identity = read_identity(pid_file)
    return identity.pid if identity is not None else None


def stop_pid(process: ProcessIdentity | int, *, timeout: float = 30.0) -> None:
    """SIGTERM, wait, then SIGKILL: the broker flushes its logs on SIGTERM.

    Before each signal the process must still be the one identified (a pid alone: the process
    running under it now), so a process that exited meanwhile and whose pid was reused is never hit.
    """
    identity = process if isinstance(process, ProcessIdentity) else ProcessIdentity.of(process)
    if identity is None or not _signal(identity, signal.SIGTERM):
        return
    if _wait_gone(identity, timeout):
        return
    if _signal(identity, signal.SIGKILL):
        _wait_gone(identity, 10.0)


def _wait_gone(identity: ProcessIdentity, timeout: float) -> bool:
    """Wait until the process has exited: not merely tearing down (its cmdline already reads empty
    then, while its pid still stands for it), but gone, a zombie, or its pid another process's."""
    deadline = time.monotonic() + timeout
    while True:
        _reap(identity.pid)
        current = ProcessIdentity.of(identity.pid)
        if current is None or current.start_ticks != identity.start_ticks:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _signal(identity: ProcessIdentity, signum: int) -> bool:
    """Send ``signum`` if the process is still ``identity``; False when it is gone."""
    if not identity.is_running():
        return False
    try:
        os.kill(identity.pid, signum)
    except ProcessLookupError:
        return False
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])
