"""Property tests of the pure window/chunk arithmetic, and agreement with MONAI's grid and weights."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from segflow.errors import ConfigError
from segflow.tiling import Box, ChunkGrid, WindowGrid, axis_starts, blend_weights, stride_for

sizes = st.integers(1, 300)
tiles = st.integers(1, 64)
overlaps = st.floats(0.0, 0.95)


@given(size=sizes, tile=tiles, overlap=overlaps)
def test_axis_starts_cover_every_pixel_once_in_order(size: int, tile: int, overlap: float) -> None:
    stride = stride_for(tile, overlap)
    starts = axis_starts(size, tile, stride)
    assert starts[0] == 0
    assert np.all(np.diff(starts) > 0), "starts are strictly increasing: no window twice"
    assert np.all(starts + min(tile, size) <= size), "no window hangs over the edge"
    covered = np.zeros(size, dtype=bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()
    assert np.all(np.diff(starts) <= stride), "gaps never exceed the stride"


@given(shape=st.tuples(st.integers(8, 150), st.integers(8, 150)), tile=st.integers(4, 64), overlap=overlaps)
def test_grid_matches_monai_dense_patch_slices(shape: tuple[int, int], tile: int, overlap: float) -> None:
    tile = min(tile, *shape)
    grid = WindowGrid.create(shape, tile, overlap)
    interval = _get_scan_interval(shape, (tile, tile), 2, (overlap, overlap))
    theirs = sorted(tuple((s.start, s.stop) for s in sl) for sl in dense_patch_slices(shape, (tile, tile), interval))
    ours = sorted(tuple(zip(grid.window(i).start, grid.window(i).stop, strict=True))
                  for i in itertools.product(*(range(c) for c in grid.counts)))
    assert ours == theirs


@given(shape=st.tuples(st.integers(1, 60), st.integers(1, 60), st.integers(1, 20)),
       tile=st.integers(3, 30), overlap=st.floats(0.0, 0.8), data=st.data())
def test_windows_touching_a_box_match_brute_force_3d(shape: tuple[int, int, int], tile: int, overlap: float,
                                                     data: st.DataObject) -> None:
    grid = WindowGrid.create(shape, tile, overlap)
    start = tuple(data.draw(st.integers(0, n - 1)) for n in shape)
    stop = tuple(data.draw(st.integers(a + 1, n)) for a, n in zip(start, shape, strict=True))
    box = Box(start, stop)
    everything = itertools.product(*(range(c) for c in grid.counts))
    brute = [i for i in everything if grid.window(i).intersect(box) is not None]
    assert grid.indices_touching(box) == brute
    starting = [i for i in brute if all(a <= s < b for s, a, b in zip(grid.window(i).start, start, stop, strict=True))]
    assert grid.indices_starting_in(box) == starting


@given(shape=st.tuples(st.integers(1, 90), st.integers(1, 90)), chunk=st.tuples(st.integers(1, 40), st.integers(1, 40)))
def test_chunks_partition_the_scene(shape: tuple[int, int], chunk: tuple[int, int]) -> None:
    grid = ChunkGrid.create(shape, chunk)
    count = np.zeros(shape, dtype=int)
    boxes = [box for _, box in grid]
    for box in boxes:
        count[box.slices] += 1
    assert (count == 1).all()
    assert len(boxes) == len(grid)
    assert [i for i, _ in grid] == sorted(i for i, _ in grid), "raster order"


@settings(max_examples=30)
@given(shape=st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40)), chunk=st.integers(1, 16),
       data=st.data())
def test_chunks_touching_a_box(shape: tuple[int, int, int], chunk: int, data: st.DataObject) -> None:
    grid = ChunkGrid.create(shape, chunk)
    start = tuple(data.draw(st.integers(0, n - 1)) for n in shape)
    stop = tuple(data.draw(st.integers(a + 1, n)) for a, n in zip(start, shape, strict=True))
    box = Box(start, stop)
    brute = [i for i, b in grid if b.intersect(box) is not None]
    assert grid.indices_touching(box) == brute


@pytest.mark.parametrize("tile", [(1,), (7,), (64, 64), (33, 48), (8, 16, 24)])
def test_gaussian_weights_equal_monai_importance_map(tile: tuple[int, ...]) -> None:
    theirs = compute_importance_map(tile, mode="gaussian", sigma_scale=0.125, device="cpu", dtype=torch.float32)
    np.testing.assert_allclose(blend_weights(tile, "gaussian"), theirs.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ["gaussian", "cosine", "constant"])
def test_weights_are_positive_symmetric_and_peak_in_the_centre(mode: str) -> None:
    w = blend_weights((32, 20), mode)
    assert w.dtype == np.float32 and w.shape == (32, 20)
    assert (w > 0).all()
    np.testing.assert_allclose(w, w[::-1, ::-1], rtol=1e-6)
    assert w[16, 10] == pytest.approx(w.max(), rel=1e-6)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: stride_for(10, 1.0), "overlap must be >= 0 and < 1, got 1.0"),
    (lambda: stride_for(10, -0.1), "overlap must be >= 0 and < 1"),
    (lambda: blend_weights((4,), "hann"), "blend mode must be one of"),
    (lambda: WindowGrid.create((0, 5), 4, 0.0), "scene shape must be positive"),
    (lambda: WindowGrid.create((5, 5), (4, 4, 4), 0.0), "tile has 3 values"),
    (lambda: ChunkGrid.create((5, 5), 0), "chunk size must be >= 1"),
    (lambda: Box((0, 5), (1, 4)), "lies before its start"),
])
def test_bad_arguments_say_what_is_wrong(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        call()
