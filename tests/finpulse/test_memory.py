"""trim_heap gives freed heap memory back: RSS falls after many small blocks are freed."""

from __future__ import annotations

import ctypes
import platform

import pytest

from finpulse.memory import trim_heap


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_small_blocks_go_back_to_the_os():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    # 64 KiB blocks stay below malloc's mmap threshold, so they live in the heap, like a batch's buffers.
    blocks = [libc.malloc(64 * 1024) for _ in range(3200)]  # 200 MiB
    for b in blocks:
        libc.memset(b, 1, 64 * 1024)
    keep = blocks[-1]  # one live block at the top: plain free() cannot shrink the heap past it
    for b in blocks[:-1]:
        libc.free(b)
    before = _rss_mb()
    assert trim_heap()
    after = _rss_mb()
    libc.free(keep)
    assert before - after > 150, (before, after)
