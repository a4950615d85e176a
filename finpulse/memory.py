"""Giving freed heap memory back to the OS in long-running scoring processes.

glibc's malloc keeps what Python frees, such as the buffers of tensors whose shapes change with every
batch, in its heaps and arenas for reuse. A process that scores batch after batch of different shapes
grows its RSS by fragments that no later batch fits. Measured on the pipeline's Python worker (fp32
Scorer, 40 batches of 20-400 demo tweets): 1.19 GB growing to 1.63 GB without trimming, and flat at
0.97 GB with ``trim_heap`` after each batch, which costs milliseconds.
"""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
        return None


def trim_heap() -> bool:
    """Return the free memory at the top and inside glibc's heaps to the OS; False where libc is not glibc."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
