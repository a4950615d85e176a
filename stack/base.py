"""What every local-stack component shares: status, errors, processes, ports, tool checks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Re-exported for the stack: its pid files carry the same identity as the services'.
from finpulse.service import (  # noqa: F401
    ServiceError,
    read_identity,
    read_pid,
    stop_pid,
    tail,
    write_pid_file,
)
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

    def purge_paths(self) -> list[tuple[Path, str]]:
        """(path, what) that ``down(purge=True)`` deletes, of those that exist now."""
        return []

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


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (mode 0600 from its creation on, whatever the umask).

    Created with O_EXCL after removing an old copy, so the secret never sits in a file that
    was created, or had been left, readable by others.
    """
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a umask can only have taken bits away; this gives the owner read/write back
        data = memoryview(text.encode("utf-8"))
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)
