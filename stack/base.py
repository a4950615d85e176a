"""What every local-stack component shares: status, errors, processes, ports, tool checks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from finpulse.settings import Settings


class StackError(RuntimeError):
    """A component could not be started, stopped or reached. The message is one line for the operator."""


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    address: str
    pid: int | None
    healthy: bool
    detail: str = ""

    def line(self) -> str:
        health = "up" if self.healthy else "DOWN"
        pid = str(self.pid) if self.pid else "-"
        return f"{self.name:<12} {health:<5} {self.address:<40} pid {pid:<8} {self.detail}"


class Component:
    """One piece of the local stack. ``up`` is idempotent; ``down(purge=True)`` also wipes its data."""

    name = "component"

    def __init__(self, *, settings: Settings):
        self.settings = settings

    @property
    def external(self) -> bool:
        """True when the operator configured an external service instead of the embedded one."""
        return False

    def up(self) -> ComponentStatus:
        raise NotImplementedError

    def down(self, *, purge: bool = False) -> None:
        raise NotImplementedError

    def status(self) -> ComponentStatus:
        raise NotImplementedError


def require_tool(tool: str, install_hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise StackError(f"{tool} not found on PATH: install it ({install_hint})")
    return path


def java_major_version(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    # e.g. 'openjdk version "17.0.15" 2025-04-15' or 'java version "1.8.0_382"'
    try:
        version = out.split('"')[1]
    except IndexError:
        raise StackError(f"cannot read the Java version from `{java} -version`: {out.strip()[:200]}") from None
    parts = version.split(".")
    return int(parts[1]) if parts[0] == "1" else int(parts[0].split("-")[0])


def require_java(minimum: int = 17) -> str:
    java = require_tool("java", "apt-get install openjdk-17-jre-headless")
    major = java_major_version(java)
    if major < minimum:
        raise StackError(f"Java {major} found at {java}; Kafka 4 and Spark 4 need Java {minimum}+ "
                         "(apt-get install openjdk-17-jre-headless)")
    return java


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def ensure_port_free(port: int, what: str, env_var: str) -> None:
    if port_in_use(port):
        raise StackError(f"port {port} for {what} is already taken by another process: "
                         f"stop it or choose another port with {env_var}")


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
