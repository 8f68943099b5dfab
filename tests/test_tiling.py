"""Property tests of the pure window/chunk arithmetic, and agreement with MONAI's grid and weights."""

from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from segflow.errors import ConfigError, SegflowWarning
from segflow.tiling import (
    OVERSAMPLING_PER_AXIS,
    Box,
    ChunkGrid,
    WindowGrid,
    axis_starts,
    blend_weights,
    effective_tile,
    minimum_windows,
    stride_for,
    warn_if_oversampled,
)

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


@given(shape=st.tuples(st.integers(1, 400), st.integers(1, 400)), tile=st.integers(1, 80))
def test_minimum_windows_is_the_zero_overlap_grid(shape: tuple[int, int], tile: int) -> None:
    minimum = minimum_windows(shape, (tile, tile))
    assert minimum == len(WindowGrid.create(shape, tile, 0.0))
    assert minimum == math.ceil(shape[0] / min(tile, shape[0])) * math.ceil(shape[1] / min(tile, shape[1]))


def test_a_wasteful_overlap_is_warned_about_in_one_line_with_the_count() -> None:
    grid = WindowGrid.create((350, 350), 64, 0.999)  # stride 1: 287 windows per axis
    assert len(grid) == 287 * 287
    with pytest.warns(SegflowWarning) as caught:
        assert warn_if_oversampled(grid, 0.999)
    message = str(caught[0].message)
    assert "\n" not in message and len(caught) == 1
    for part in ("overlap 0.999", "82369 windows", "350x350 scene", "64x64 tiles", "2288 times the 36",
                 f"--overlap 0.5: {len(WindowGrid.create((350, 350), 64, 0.5))} windows"):
        assert part in message, (part, message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for shape, tile, overlap in [((10000, 10000), 512, 0.75), ((10000, 10000), 512, 0.5), ((300, 300), 512, 0.999),
                                     ((64, 64, 64), 32, 0.5), ((2048, 2048), 512, 0.25)]:
            assert not warn_if_oversampled(WindowGrid.create(shape, tile, overlap), overlap), (shape, tile, overlap)
    with pytest.warns(SegflowWarning, match=r"overlap 0.8 makes 9025 windows .* 23 times the 400"):
        warn_if_oversampled(WindowGrid.create((10000, 10000), 512, 0.8), 0.8)
    with pytest.warns(SegflowWarning, match=r"35937 windows for a 64x64x64 scene with 32x32x32 tiles, 4492 times"):
        warn_if_oversampled(WindowGrid.create((64, 64, 64), 32, 0.95), 0.95)  # stride 1: 33 windows per axis


# ----------------------------------------------------------------------------- blend weights in closed form


def _raised_cosine(n: int) -> np.ndarray:
    """sin²(π(i + ½)/n) as the raised cosine ½ − ½·cos(2π(i + ½)/n), computed element by element."""
    return np.array([0.5 - 0.5 * math.cos(2.0 * math.pi * (i + 0.5) / n) for i in range(n)])


def _outer_product(vectors: list[np.ndarray]) -> np.ndarray:
    out = np.ones(())
    for v in vectors:
        out = out[..., None] * v  # broadcasting, not np.multiply.outer as the module does
    return out


def test_cosine_weights_by_hand() -> None:
    np.testing.assert_array_equal(blend_weights((1,), "cosine"), np.float32([1.0]))
    np.testing.assert_allclose(blend_weights((2,), "cosine"), [0.5, 0.5], rtol=1e-7)
    np.testing.assert_allclose(blend_weights((3,), "cosine"), [0.25, 1.0, 0.25], rtol=1e-7)
    s = math.sin(math.pi / 8) ** 2  # 0.1464...
    np.testing.assert_allclose(blend_weights((4,), "cosine"), [s, 1 - s, 1 - s, s], rtol=1e-6)
    np.testing.assert_allclose(blend_weights((3, 2), "cosine"), [[0.125, 0.125], [0.5, 0.5], [0.125, 0.125]],
                               rtol=1e-7)


@pytest.mark.parametrize("tile", [(1,), (2,), (5,), (8,), (31,), (48,), (64,), (200,), (7, 12), (16, 9), (100, 3),
                                  (4, 6, 10), (1, 5, 2)])
def test_cosine_weights_equal_their_closed_form(tile: tuple[int, ...]) -> None:
    """w(i₁, …, i_d) = max(Π_k sin²(π(i_k + ½)/n_k), 1e-3): a Hann window shifted by half a pixel, floored."""
    expected = np.maximum(_outer_product([_raised_cosine(n) for n in tile]), 1e-3)
    w = blend_weights(tile, "cosine")
    assert w.dtype == np.float32 and w.shape == tile
    np.testing.assert_allclose(w, expected, rtol=3e-7, atol=0)
    floored = _outer_product([_raised_cosine(n) for n in tile]) < 1e-3
    assert (w[floored] == np.float32(1e-3)).all() and (w[~floored] > np.float32(1e-3)).all()


@pytest.mark.parametrize("n", [2, 4, 16, 32, 48])
def test_cosine_weights_at_half_overlap_sum_to_one(n: int) -> None:
    """sin² + cos² = 1: windows at stride n/2 add up to exactly 1 everywhere two of them overlap."""
    w = blend_weights((n,), "cosine").astype(np.float64)
    np.testing.assert_allclose(w[: n // 2] + w[n // 2 :], 1.0, rtol=0, atol=2e-7)


@pytest.mark.parametrize("tile", [(1,), (6,), (33,), (5, 8), (3, 4, 5)])
def test_constant_weights_are_all_ones(tile: tuple[int, ...]) -> None:
    w = blend_weights(tile, "constant")
    assert w.dtype == np.float32 and w.shape == tile and (w == 1).all()


def test_an_unknown_blend_mode_is_named_with_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        blend_weights((8, 8), "hann")
    assert str(info.value) == "blend mode must be one of gaussian, cosine, constant, got 'hann'"


@pytest.mark.parametrize("call", [
    lambda: Box((0, 0), (4, 4)).relative_to(Box((0,), (4,))),
    lambda: Box((0, 0, 0), (4, 4, 4)).relative_to(Box((0, 0), (4, 4))),
    lambda: WindowGrid.create((40, 40, 40), 8, 0.0).indices_starting_in(Box((0, 0), (9, 9))),
    lambda: WindowGrid.create((40, 40), 8, 0.0).indices_starting_in(Box((0, 0, 0), (9, 9, 9))),
    lambda: WindowGrid.create((40, 40, 40), 8, 0.0).indices_touching(Box((0, 0), (9, 9))),
    lambda: ChunkGrid.create((40, 40, 40), 8).indices_touching(Box((0, 0), (9, 9))),
    lambda: ChunkGrid.create((40, 40), 8).indices_touching(Box((0, 0, 0), (9, 9, 9))),
    lambda: minimum_windows((40, 40, 40), (8, 8)),
    lambda: minimum_windows((40, 40), (8, 8, 8)),
])
def test_boxes_of_another_dimension_are_refused_not_truncated(call) -> None:  # type: ignore[no-untyped-def]
    """Mixing a 2-D box into a 3-D grid is a bug to stop, never an axis silently dropped."""
    with pytest.raises(ValueError, match="zip"):
        call()


def test_oversampling_is_warned_about_only_above_the_limit_and_at_the_caller() -> None:
    at_limit = WindowGrid((100, 100), (25, 25), (5, 5))  # 16 x 16 windows = 4² x the 4 x 4 that tile it
    assert len(at_limit) == OVERSAMPLING_PER_AXIS**2 * minimum_windows((100, 100), (25, 25))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_oversampled(at_limit, 0.8)
    above = WindowGrid((100, 100), (25, 25), (5, 4))  # 16 x 20 windows
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warn_if_oversampled(above, 0.8)
    assert [w.category for w in caught] == [SegflowWarning]
    where = Path(caught[0].filename)  # the code that asked for the grid (mutmut's trampoline under mutation testing)
    assert where == Path(__file__) or where.parts[-3:] == ("mutmut", "mutation", "trampoline.py"), where


@pytest.mark.parametrize(("tile", "shape", "fixed", "expected"), [
    ((512, 512), (300, 2000), False, (300, 512)),  # clipped on the short axis only
    ((512, 512), (300, 2000), True, (512, 512)),  # a fixed-size network keeps its tile (windows padded)
    ((64, 64, 64), (64, 10, 100), False, (64, 10, 64)),
    ((np.int64(32), 48), (np.int64(40), 40), False, (32, 40)),
])
def test_effective_tile_is_the_tile_clipped_to_the_scene(tile: tuple[int, ...], shape: tuple[int, ...], fixed: bool,
                                                         expected: tuple[int, ...]) -> None:
    got = effective_tile(tile, shape, fixed=fixed)
    assert got == expected and all(type(t) is int for t in got)


def test_effective_tile_refuses_another_number_of_axes() -> None:
    with pytest.raises(ConfigError) as info:
        effective_tile((512, 512), (20, 300, 300))
    assert str(info.value) == "tile (512, 512) and scene shape (20, 300, 300) have different numbers of axes"


@pytest.mark.parametrize(("call", "message"), [
    (lambda: axis_starts(0, 5, 1), "axis size, tile and stride must be >= 1, got 0, 5, 1"),
    (lambda: axis_starts(10, 0, 1), "axis size, tile and stride must be >= 1, got 10, 0, 1"),
    (lambda: axis_starts(10, 5, 0), "axis size, tile and stride must be >= 1, got 10, 5, 0"),
    (lambda: stride_for(0, 0.5), "tile must be a positive number of pixels, got 0"),
    (lambda: Box((0, 0), (1,)), "box start (0, 0) and stop (1,) differ in dimensions"),
    (lambda: ChunkGrid.create((5, 5), (4, 4, 4)), "chunk has 3 values (4, 4, 4), expected 2 (one per spatial axis)"),
    (lambda: WindowGrid.create((5, 5), (4, 4, 4), 0.0),
     "tile has 3 values (4, 4, 4), expected 2 (one per spatial axis)"),
])
def test_bad_arguments_are_refused_with_the_whole_message(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as info:
        call()
    assert str(info.value) == message


@pytest.mark.parametrize("call", [
    lambda: WindowGrid.create((40, 40), 8, 0.0).window((0, 0, 0)),
    lambda: ChunkGrid.create((40, 40), 8).box((0, 0, 0)),
])
def test_an_index_with_too_many_axes_is_refused(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="zip"):
        call()


def test_an_empty_box_is_a_box_and_the_default_tile_is_clipped() -> None:
    empty = Box((3, 4), (3, 9))  # half-open: no pixel on the first axis
    assert empty.shape == (0, 5) and empty.size == 0
    assert effective_tile((512, 512), (300, 2000)) == (300, 512)  # clipping is the default


@given(shape=st.tuples(st.integers(1, 30), st.integers(1, 30), st.integers(1, 30)), data=st.data())
def test_relative_to_selects_the_box_inside_an_array_holding_the_origin(shape: tuple[int, int, int],
                                                                       data: st.DataObject) -> None:
    scene = np.arange(math.prod(shape)).reshape(shape)
    o_start = tuple(data.draw(st.integers(0, n - 1)) for n in shape)
    o_stop = tuple(data.draw(st.integers(a + 1, n)) for a, n in zip(o_start, shape, strict=True))
    start = tuple(data.draw(st.integers(a, b - 1)) for a, b in zip(o_start, o_stop, strict=True))
    stop = tuple(data.draw(st.integers(a + 1, b)) for a, b in zip(start, o_stop, strict=True))
    origin, box = Box(o_start, o_stop), Box(start, stop)
    held = scene[origin.slices]  # e.g. the region a task read
    np.testing.assert_array_equal(held[box.relative_to(origin)], scene[box.slices])


def test_blend_weights_default_to_monai_gaussian() -> None:
    np.testing.assert_array_equal(blend_weights((9, 12)), blend_weights((9, 12), "gaussian", 0.125))
