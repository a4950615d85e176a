"""Background services that the ``finpulse`` CLI starts, stops and reports on (pipeline, alerts).

A service is one detached process (its own session, so a closing terminal or ``make`` does not
take it down) with a pid file and a log file under ``FINPULSE_HOME/<name>/``. ``start`` is
idempotent: a live pid means "already running". ``stop`` sends SIGTERM and waits, so a service
can finish the unit of work in hand (a micro-batch, an evaluation) before it exits, then SIGKILL.
"""

from __future__ import annotations

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
        self.pid_file.write_text(f"{proc.pid}\n")
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
        pid = read_pid(self.pid_file)
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        stop_pid(pid, timeout=timeout)
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


def read_pid(pid_file: Path) -> int | None:
    """The pid in pid_file if that process is alive, else None."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    if _is_zombie(pid):
        return None
    return pid


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def stop_pid(pid: int, *, timeout: float = 30.0) -> None:
    """SIGTERM, wait, then SIGKILL: the broker flushes its logs on SIGTERM."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if _is_zombie(pid):
            _reap(pid)
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _reap(pid)


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
