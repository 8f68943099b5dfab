"""The allocator settings of a run: applied on glibc, and the free heap pages returned after each chunk."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from segflow import _memory
from segflow.engine import tasks
from segflow.tile_infer import TileInferParams, tile_infer

from .helpers import make_ts_package, random_image, write_geotiff


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings")
def test_free_heap_pages_go_back_to_the_system() -> None:
    assert _memory.limit_heap_fragmentation()
    big = [np.ones(1 << 20) for _ in range(40)]  # 320 MiB of 8 MiB blocks: from the heap (below the threshold)
    tail = np.ones(1 << 17)  # a live 1 MiB block above them keeps the heap from shrinking on its own
    del big
    before = _rss_kib()
    _memory.release_free_memory()
    assert _rss_kib() < before - 200 * 1024, "malloc_trim returned the freed heap pages"
    del tail


def test_every_merged_chunk_releases_free_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(tasks, "release_free_memory", lambda: calls.append(1))
    package = make_ts_package(tmp_path / "net", bands=3, classes=3, tile=32)
    scene = write_geotiff(tmp_path / "s.tif", random_image((3, 100, 90), seed=1))
    result = tile_infer(scene, tmp_path / "out", TileInferParams(model=str(package), chunk=40))
    assert len(calls) == result.chunks == 9
