"""What every local-stack component shares: status, errors, processes, ports, tool checks."""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from finpulse.service import read_pid, stop_pid, tail  # noqa: F401 - re-exported for the stack
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
