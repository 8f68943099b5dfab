"""Process memory behaviour for long streaming runs."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache

__all__ = ["limit_heap_fragmentation"]

_M_MMAP_THRESHOLD = -3


@cache
def limit_heap_fragmentation(threshold: int = 1 << 20) -> bool:
    """Serve allocations of ``threshold`` bytes and more with mmap, on glibc (Linux).

    A streaming run allocates and frees many arrays of a few MiB (windows, blocks, labels)
    from several threads. glibc raises its mmap threshold up to 32 MiB as such blocks are
    freed, after which they come from per-thread heaps that fragment and do not shrink, so
    resident memory creeps up with the number of chunks. A fixed threshold returns each
    large block to the system when it is freed. Called once per process by a run, never on
    import; returns whether the setting was applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False
