"""What machine a benchmark ran on: results say which CPU (native bf16 or not decides the model's speed)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name and whether it has native bf16 (what decides the training speed here)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = [f for f in ("avx512_bf16", "amx_bf16") if f" {f}" in info]
    return f"{name} ({', '.join(flags) or 'no native bf16'})"
