"""The allocator settings of a run: applied on glibc, and the free heap pages returned after each chunk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from segflow.engine import tasks
from segflow.tile_infer import TileInferParams, tile_infer

from .helpers import make_ts_package, random_image, write_geotiff

_FREE_AND_TRIM = """
import numpy as np
from segflow import _memory
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
assert _memory.limit_heap_fragmentation()
big = [np.ones(1 << 20) for _ in range(40)]  # 320 MiB of 8 MiB blocks: from the heap (below the threshold)
tail = np.ones(1 << 17)  # a live 1 MiB block above them keeps the heap from shrinking on its own
del big
before = rss()
_memory.release_free_memory() if TRIM else None
print(before - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings")
def test_free_heap_pages_go_back_to_the_system() -> None:
    """In a fresh interpreter (a test process's heaps hold whatever earlier tests left)."""
    released = {}
    for trim in (False, True):
        done = subprocess.run([sys.executable, "-c", f"TRIM = {trim}\n" + _FREE_AND_TRIM], capture_output=True,
                              text=True, check=True)
        released[trim] = int(done.stdout.strip())
    assert released[True] > 200 * 1024, f"malloc_trim returned {released[True]} KiB of 320 MiB freed"
    assert released[False] < 50 * 1024, "without the trim the freed blocks stay resident (the test can fail)"


def test_every_merged_chunk_releases_free_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(tasks, "release_free_memory", lambda: calls.append(1))
    package = make_ts_package(tmp_path / "net", bands=3, classes=3, tile=32)
    scene = write_geotiff(tmp_path / "s.tif", random_image((3, 100, 90), seed=1))
    result = tile_infer(scene, tmp_path / "out", TileInferParams(model=str(package), chunk=40))
    assert len(calls) == result.chunks == 9
