"""Where the synthetic landscape puts water, crop fields and buildings.

Lakes and rivers are thresholds of value noise; crop fields are parcels on a brick-like grid
of hashed rows; buildings are hashed rectangles in a grid of cells (at most two per cell,
never on water, never touching a neighbour cell's). Every function takes global ``(row,
col)`` pixel coordinates (``rows`` and ``cols`` consecutive along each axis) and the seed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from .noise import (
    _BUILDING,
    _LAKE,
    _PARCEL,
    _PARCEL_SHIFT,
    _RIVER,
    _ROW_STEP,
    _URBAN,
    F32,
    I64,
    Mask,
    _fbm,
    _field,
    _hash_grid,
    _hash_rows,
    _mix,
    _noise_grid,
    _noise_points,
    _stream_key,
    _unit,
)

_CELL = 48  # building grid cell side (px); a cell holds at most two rectangles
_CELL_MARGIN = 2  # free border inside each cell, so buildings of neighbour cells never touch
_PARCEL_SHAPE = (56, 72)  # field parcel rows, cols (px)
_LANE = 2  # width (px) of the bare tracks between parcels

_LAKE_OCTAVES = ((192, 1.0), (64, 0.5), (24, 0.2))
_LAKE_LEVEL = np.float32(0.68)
_RIVER_OCTAVES = ((448, 1.0), (112, 0.3))
_RIVER_HALF_WIDTH = np.float32(0.008)
_URBAN_SPACING = 768
_FIELD_PROBABILITY = 0.33


def _is_water(lake: F32, river: F32) -> Mask:
    """Water where the lake field is high or the river field is near its mid level."""
    return (lake > _LAKE_LEVEL) | (np.abs(river - np.float32(0.5)) < _RIVER_HALF_WIDTH)


def _water(rows: I64, cols: I64, seed: int) -> Mask:
    """Water mask on the outer product of consecutive ``rows`` x ``cols``."""
    lake = _fbm(_noise_grid, rows, cols, _LAKE_OCTAVES, seed, _LAKE)
    river = _fbm(_noise_grid, rows, cols, _RIVER_OCTAVES, seed, _RIVER)
    return _is_water(lake, river)


# --------------------------------------------------------------------------- cell layouts


class _Cells(NamedTuple):
    """Indices of the grid cells a block touches and how many block pixels fall in each."""

    first: int  # index of the first cell along the axis
    number: int  # number of cells
    local: I64  # pixel offset inside its cell, per block pixel
    cell: I64  # cell index relative to ``first``, per block pixel
    runs: I64  # block pixels per cell


def _cells(coords: I64, size: int) -> _Cells:
    """Split consecutive global coordinates into cells of ``size`` pixels."""
    index = np.floor_divide(coords, size)
    first = int(index[0])
    relative = index - first
    runs = np.bincount(relative).astype(np.int64)
    return _Cells(first, len(runs), coords - index * size, relative, runs)


def _expand(per_cell: npt.NDArray[np.generic], ycells: _Cells, xcells: _Cells) -> npt.NDArray[np.generic]:
    """Broadcast a (cell rows, cell cols) array to block pixels."""
    return np.repeat(np.repeat(per_cell, ycells.runs, axis=0), xcells.runs, axis=1)


class _Rect(NamedTuple):
    """Axis-aligned rectangles, one per cell, in cell-local pixels ``[y0, y1) x [x0, x1)``."""

    y0: I64
    y1: I64
    x0: I64
    x1: I64


def _rect_mask(rect: _Rect, ycells: _Cells, xcells: _Cells) -> Mask:
    """Block pixels inside the rectangle of their cell (empty rectangles have y0 == y1)."""
    ly = ycells.local[:, None]
    lx = xcells.local[None, :]
    in_rows = (ly >= rect.y0[ycells.cell]) & (ly < rect.y1[ycells.cell])  # (h, cell cols)
    in_cols = (lx >= rect.x0[:, xcells.cell]) & (lx < rect.x1[:, xcells.cell])  # (cell rows, w)
    return np.repeat(in_rows, xcells.runs, axis=1) & np.repeat(in_cols, ycells.runs, axis=0)


class _Buildings(NamedTuple):
    """Building rectangles A and B of each cell and their roof variants in [0, 1)."""

    first: _Rect
    second: _Rect
    roof_first: F32
    roof_second: F32


def _building_layout(cell_rows: I64, cell_cols: I64, seed: int) -> _Buildings:
    """Hashed building rectangles for the outer product of cell rows x cell cols.

    A cell holds nothing, one rectangle, or a pair sharing an edge; sides are 6-40 px.
    """
    h1 = _hash_grid(cell_rows, cell_cols, _stream_key(seed, _BUILDING))
    h2 = _mix(h1 + _ROW_STEP)
    centre_y = cell_rows[:, None] * _CELL + _CELL // 2
    centre_x = cell_cols[None, :] * _CELL + _CELL // 2
    urban = _noise_points(centre_y, centre_x, _URBAN_SPACING, _stream_key(seed, _URBAN))
    probability = 0.2 + 0.6 * np.clip((urban - 0.45) * 4.0, 0.0, 1.0)
    present = _field(h1, 0, 16) < probability * 65536
    pair = present & (_field(h1, 16, 8) < 90)
    vertical = _field(h1, 24, 1) == 1
    room = _CELL - 2 * _CELL_MARGIN
    along_a = np.where(pair, 6 + _field(h1, 32, 8) % 16, 6 + _field(h1, 32, 8) % 35)
    along_b = np.where(pair, 6 + _field(h1, 40, 8) % 16, 0)
    across_a = 6 + _field(h1, 48, 8) % 35
    across_b = np.where(pair, 6 + _field(h1, 56, 8) % 35, 0)
    along_0 = _CELL_MARGIN + _field(h2, 0, 16) % (room - along_a - along_b + 1)
    across_0 = _CELL_MARGIN + _field(h2, 16, 16) % (room - np.maximum(across_a, across_b) + 1)
    first = _oriented(vertical, along_0, along_0 + along_a, across_0, across_0 + across_a)
    second = _oriented(
        vertical, along_0 + along_a, along_0 + along_a + along_b, across_0, across_0 + across_b
    )
    first = _drop_absent(first, present)
    second = _drop_absent(second, pair)
    return _Buildings(first, second, _unit(h2), _unit(_mix(h2 + _ROW_STEP)))


def _oriented(vertical: Mask, a0: I64, a1: I64, c0: I64, c1: I64) -> _Rect:
    """Rectangle from along-axis [a0, a1) and across-axis [c0, c1): along is y when vertical."""
    return _Rect(
        np.where(vertical, a0, c0),
        np.where(vertical, a1, c1),
        np.where(vertical, c0, a0),
        np.where(vertical, c1, a1),
    )


def _drop_absent(rect: _Rect, keep: Mask) -> _Rect:
    """Empty the rectangles of cells where ``keep`` is False."""
    zero = np.zeros_like(rect.y0)
    return _Rect(np.where(keep, rect.y0, zero), np.where(keep, rect.y1, zero), rect.x0, rect.x1)


def _drop_on_water(rect: _Rect, cell_water: Mask) -> _Rect:
    """Empty rectangles that cover any water; ``cell_water`` spans the block's whole cells."""
    table = np.zeros((cell_water.shape[0] + 1, cell_water.shape[1] + 1), dtype=np.int32)
    np.cumsum(np.cumsum(cell_water, axis=0, dtype=np.int32), axis=1, out=table[1:, 1:])
    top = np.arange(rect.y0.shape[0])[:, None] * _CELL
    left = np.arange(rect.y0.shape[1])[None, :] * _CELL
    y0, y1, x0, x1 = top + rect.y0, top + rect.y1, left + rect.x0, left + rect.x1
    wet = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return _drop_absent(rect, wet == 0)


def _parcel_row(row: int, cols: I64, seed: int) -> tuple[Mask, F32]:
    """Crop parcels along one parcel row: which columns are crop and the crop variant.

    Each parcel row shifts its column grid by a hashed offset, giving a brick-like layout.
    """
    row_index = np.array([row], dtype=np.int64)
    shift = int(_field(_hash_rows(row_index, _stream_key(seed, _PARCEL_SHIFT)), 0, 16)[0])
    xcells = _cells(cols + shift, _PARCEL_SHAPE[1])
    cell_cols = np.arange(xcells.first, xcells.first + xcells.number, dtype=np.int64)
    hashes = _hash_grid(row_index, cell_cols, _stream_key(seed, _PARCEL))[0]
    crop = _field(hashes, 0, 16) < int(_FIELD_PROBABILITY * 65536)
    crop_cols = np.repeat(crop, xcells.runs) & (xcells.local >= _LANE)
    return crop_cols, np.repeat(_unit(hashes), xcells.runs)


def _fields_parcels(rows: I64, cols: I64, seed: int) -> tuple[Mask, F32]:
    """Crop-field parcels (interior pixels) and each parcel's crop variant."""
    ycells = _cells(rows, _PARCEL_SHAPE[0])
    mask = np.empty((len(rows), len(cols)), dtype=bool)
    variant = np.empty((len(rows), len(cols)), dtype=np.float32)
    start = 0
    for offset, run in enumerate(ycells.runs.tolist()):
        crop_cols, crop_variant = _parcel_row(ycells.first + offset, cols, seed)
        inside = ycells.local[start : start + run, None] >= _LANE
        mask[start : start + run] = inside & crop_cols[None, :]
        variant[start : start + run] = crop_variant[None, :]
        start += run
    return mask, variant


def _buildings(ycells: _Cells, xcells: _Cells, cell_water: Mask, seed: int) -> tuple[Mask, F32]:
    """Building pixels of the block and each building's roof variant."""
    cell_rows = np.arange(ycells.first, ycells.first + ycells.number, dtype=np.int64)
    cell_cols = np.arange(xcells.first, xcells.first + xcells.number, dtype=np.int64)
    layout = _building_layout(cell_rows, cell_cols, seed)
    in_first = _rect_mask(_drop_on_water(layout.first, cell_water), ycells, xcells)
    in_second = _rect_mask(_drop_on_water(layout.second, cell_water), ycells, xcells)
    roof = np.where(
        in_second,
        np.asarray(_expand(layout.roof_second, ycells, xcells), dtype=np.float32),
        np.asarray(_expand(layout.roof_first, ycells, xcells), dtype=np.float32),
    )
    return in_first | in_second, roof


_ID_OFFSET = 1 << 20  # cell indices are shifted by this to be >= 0 in building ids


def _building_ids(ycells: _Cells, xcells: _Cells, cell_water: Mask, seed: int) -> I64:
    """Instance id of every block pixel: 0 off buildings, else one id per building rectangle.

    The id of the first (second) rectangle of global cell ``(cy, cx)`` is
    ``((cy + 2**20) << 22 | (cx + 2**20) << 1) + 1`` (``+ 2``): the same building has the same id
    in every block, and the two rectangles of a touching pair have different ids.
    """
    cell_rows = np.arange(ycells.first, ycells.first + ycells.number, dtype=np.int64)
    cell_cols = np.arange(xcells.first, xcells.first + xcells.number, dtype=np.int64)
    layout = _building_layout(cell_rows, cell_cols, seed)
    in_first = _rect_mask(_drop_on_water(layout.first, cell_water), ycells, xcells)
    in_second = _rect_mask(_drop_on_water(layout.second, cell_water), ycells, xcells)
    cy = (ycells.first + ycells.cell + _ID_OFFSET)[:, None]
    cx = (xcells.first + xcells.cell + _ID_OFFSET)[None, :]
    base = (cy << 22) | (cx << 1)
    return np.where(in_second, base + 2, np.where(in_first, base + 1, 0)).astype(np.int64)


def _cell_span(cells: _Cells) -> I64:
    """Global pixel coordinates of whole building cells covering a block axis."""
    return np.arange(cells.first * _CELL, (cells.first + cells.number) * _CELL, dtype=np.int64)
