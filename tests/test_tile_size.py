"""A tile larger than the scene: clipped for fully convolutional models, padded only to a fixed tile, absurd refused."""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from hypothesis import given
from hypothesis import strategies as st

from segflow.cli import main
from segflow.errors import ConfigError
from segflow.predict import check_window_memory, window_batch_bytes
from segflow.tile_infer import TileInferParams, tile_infer
from segflow.tiling import effective_tile

from .helpers import make_ts_package, random_image, write_geotiff

SHAPE = (70, 90)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_geotiff(tmp_path_factory.mktemp("scene") / "s.tif", random_image((3, *SHAPE), seed=4))


@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=3).flatmap(
    lambda tile: st.tuples(st.just(tile), st.lists(st.integers(1, 5000), min_size=len(tile), max_size=len(tile)))))
def test_effective_tile_never_exceeds_the_scene_unless_fixed(args: tuple[list[int], list[int]]) -> None:
    tile, shape = args
    clipped = effective_tile(tile, shape)
    assert all(c == min(t, s) for c, t, s in zip(clipped, tile, shape, strict=True))
    assert effective_tile(tile, shape, fixed=True) == tuple(tile)


def test_effective_tile_refuses_mismatched_axes() -> None:
    with pytest.raises(ConfigError, match="different numbers of axes"):
        effective_tile((64, 64), (10, 10, 10))


def _labels(path: Path) -> np.ndarray:
    with rasterio.open(path / "labels.tif") as ds:
        return ds.read(1)


def test_a_huge_tile_is_one_window_of_the_scene(tmp_path, scene) -> None:
    pkg = make_ts_package(tmp_path / "net", bands=3, classes=3, tile=32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    huge = tile_infer(scene, tmp_path / "huge", TileInferParams(model=str(pkg), tile=1_000_000, overlap=0.5))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    exact = tile_infer(scene, tmp_path / "exact", TileInferParams(model=str(pkg), tile=max(SHAPE), overlap=0.5))
    assert huge.windows_total == 1
    record = json.loads((tmp_path / "huge" / "run.json").read_text())
    assert record["effective"]["tile"] == list(SHAPE)
    assert exact.windows_total == 1
    assert np.array_equal(_labels(tmp_path / "huge"), _labels(tmp_path / "exact"))
    assert grown_mib < 500  # a 10⁶-pixel-square window would need terabytes


def test_a_fixed_tile_is_kept_and_padded(tmp_path, scene) -> None:
    pkg = make_ts_package(tmp_path / "net", bands=3, classes=3, tile=128, fixed_tile=True)
    tile_infer(scene, tmp_path / "out", TileInferParams(model=str(pkg)))
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["effective"]["tile"] == [128, 128]
    assert _labels(tmp_path / "out").shape == SHAPE


def test_an_absurd_fixed_tile_is_refused_before_allocating(tmp_path, scene, capsys) -> None:
    pkg = make_ts_package(tmp_path / "net", bands=3, classes=3, tile=32, fixed_tile=True)
    t0 = time.perf_counter()
    code = main(["run", "tile-infer", "-q", "--input", str(scene), "--output", str(tmp_path / "out"),
                 "--model", str(pkg), "--tile", "1000000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "smaller --tile" in err[0] and "GiB" in err[0], err
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "out" / "labels.tif").exists()


def test_window_memory_rule() -> None:
    assert window_batch_bytes((10, 10), 4, 3, 2) == 2 * 100 * (16 + 1 + 24)
    cpu = torch.device("cpu")
    check_window_memory((256, 256), 4, 4, 16, cpu)
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    side = int((0.3 * ram / (4 * 4 + 1 + 2 * 4 * 4)) ** 0.5)  # one window: 30 % of memory
    check_window_memory((side, side), 4, 4, 1, cpu)
    with pytest.raises(ConfigError, match="--batch 1"):
        check_window_memory((side, side), 4, 4, 2, cpu)
    with pytest.raises(ConfigError, match="smaller --tile"):
        check_window_memory((10**6, 10**6), 4, 4, 1, cpu)
