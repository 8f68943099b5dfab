"""Deterministic synthetic multispectral scenes with matching ground truth.

The scene is an infinite, seeded landscape at 10 m pixels: irregular lakes and rivers,
forest and crop fields, bare ground, and rectangular buildings (some of them touching).
Every pixel is a pure function of its *global* ``(row, col)`` coordinates and the seed:
per-pixel noise and per-cell decisions come from a counter-based splitmix64 hash of integer
coordinates, natural shapes from smooth value noise on coarse global lattices. There is no
global random state, so any block equals the same region cut out of a larger block, and a
scene written block by block does not depend on the block size.

Axis order is always ``(band, row, col)`` for images and ``(row, col)`` for truth; image
values are surface reflectance multiplied by 10000 (``uint16``), truth values are indices
into :data:`CLASSES` (``uint8``), with :data:`TRUTH_NODATA` where the image is nodata.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioError
from rasterio.transform import Affine
from rasterio.windows import Window

from segflow.errors import ConfigError, OutputError
from segflow.io.atomic import atomic_path

__all__ = [
    "BANDS",
    "CLASSES",
    "TRUTH_NODATA",
    "SyntheticScene",
    "synthesize_block",
    "write_synthetic_scene",
]

CLASSES: tuple[str, ...] = ("background", "water", "vegetation", "building")
"""Class names; the truth value of a class is its index (``background`` is bare ground)."""

BANDS: tuple[str, ...] = ("blue", "green", "red", "nir")
"""Band names the generator knows, in their canonical order."""

TRUTH_NODATA = 255
"""Truth value of pixels that are nodata in the image."""

U64 = npt.NDArray[np.uint64]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_ROW_STEP = np.uint64(_GOLDEN)
_COL_STEP = np.uint64(0xD1B54A32D192ED03)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)

# Independent hash streams; a noise octave uses stream * 16 + octave.
_LAKE, _RIVER, _FOREST, _TEXTURE, _BRIGHT, _PIXEL, _PARCEL, _PARCEL_SHIFT, _BUILDING, _URBAN = range(1, 11)

_CELL = 48  # building grid cell side (px); a cell holds at most two rectangles
_CELL_MARGIN = 2  # free border inside each cell, so buildings of neighbour cells never touch
_PARCEL_SHAPE = (56, 72)  # field parcel rows, cols (px)
_LANE = 2  # width (px) of the bare tracks between parcels
_NOISE_AMPLITUDE = np.float32(0.08)  # per-pixel multiplicative noise spans +-4 %

# Reflectance x 10000 per class (rows, CLASSES order) and band (cols, BANDS order) at the two
# ends of each class's natural variation; pixels interpolate between them.
_SPECTRA_LOW = np.array(
    [
        [1000, 1300, 1700, 2300],  # dry bright soil
        [550, 480, 250, 70],  # clear deep water
        [250, 450, 260, 2900],  # conifer forest
        [2200, 2250, 2300, 2600],  # concrete roof
    ],
    dtype=np.float32,
)
_SPECTRA_HIGH = np.array(
    [
        [650, 850, 1050, 1500],  # moist dark soil
        [700, 900, 650, 260],  # turbid water
        [380, 850, 420, 4300],  # green crop
        [1300, 1400, 2600, 2900],  # red tile roof
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class SyntheticScene:
    """A synthetic scene written by :func:`write_synthetic_scene`.

    Attributes
    ----------
    path : Path
        The image GeoTIFF, ``uint16`` reflectance x 10000, one band per name in ``bands``.
    truth_path : Path or None
        The ``uint8`` truth GeoTIFF on the same grid, or None when none was written.
    width, height : int
        Scene size in pixels (columns, rows).
    bands : tuple of str
        Band names in file order (band 1 first).
    crs : str
        Coordinate reference system, e.g. ``"EPSG:32633"``.
    transform : Affine
        Pixel-to-CRS transform, ``Affine(pixel_size, 0, x0, 0, -pixel_size, y0)``.
    nodata : int or None
        Image nodata value, or None when the scene has no nodata.
    """

    path: Path
    truth_path: Path | None
    width: int
    height: int
    bands: tuple[str, ...]
    crs: str
    transform: Affine
    nodata: int | None


# --------------------------------------------------------------------------- hashing


def _mix_int(z: int) -> int:
    """Splitmix64 finalizer on a Python int (used for scalar keys, no overflow warnings)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _mix(z: U64) -> U64:
    """Splitmix64 finalizer on a uint64 array, in place; returns the array."""
    z ^= z >> np.uint64(30)
    z *= _MUL1
    z ^= z >> np.uint64(27)
    z *= _MUL2
    z ^= z >> np.uint64(31)
    return z


def _stream_key(seed: int, stream: int) -> np.uint64:
    """64-bit key of one hash stream of one seed."""
    return np.uint64(_mix_int(_mix_int(seed) + (stream + 1) * _GOLDEN))


def _as_u64(values: I64) -> U64:
    """Reinterpret int64 coordinates (possibly negative) as uint64 bit patterns."""
    return np.ascontiguousarray(values, dtype=np.int64).view(np.uint64)


def _hash_rows(rows: I64, key: np.uint64) -> U64:
    """Row part of the 2-D hash: one value per row coordinate."""
    return _mix(_as_u64(rows) * _ROW_STEP + key)


def _hash_grid(rows: I64, cols: I64, key: np.uint64) -> U64:
    """Hash of every (row, col) of the outer product, shape (len(rows), len(cols))."""
    grid = _hash_rows(rows, key)[:, None] + (_as_u64(cols) * _COL_STEP)[None, :]
    return _mix(grid)


def _hash_pairs(rows: I64, cols: I64, key: np.uint64) -> U64:
    """Hash of element-wise (row, col) pairs; equals :func:`_hash_grid` on the same pairs."""
    rows, cols = np.broadcast_arrays(rows, cols)
    flat = _hash_rows(rows.ravel(), key) + _as_u64(cols.ravel()) * _COL_STEP
    return _mix(flat).reshape(rows.shape)


def _unit(hashes: U64) -> F32:
    """Top 24 bits of each hash as float32 in [0, 1)."""
    return (hashes >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)


def _field(hashes: U64, shift: int, bits: int) -> I64:
    """Bit field ``hashes[shift : shift + bits]`` as int64."""
    return ((hashes >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int64)


# --------------------------------------------------------------------------- value noise


def _lattice_weights(coords: I64, spacing: int) -> tuple[I64, F32]:
    """Lattice index below each coordinate and its smoothstep weight towards the next one."""
    index = np.floor_divide(coords, spacing)
    frac = (coords - index * spacing).astype(np.float64) / spacing
    weight = frac * frac * (3.0 - 2.0 * frac)
    return index, weight.astype(np.float32)


def _noise_grid(rows: I64, cols: I64, spacing: int, key: np.uint64) -> F32:
    """Value noise in [0, 1) on the outer product of consecutive ``rows`` x ``cols``."""
    iy, wy = _lattice_weights(rows, spacing)
    ix, wx = _lattice_weights(cols, spacing)
    lat_rows = np.arange(iy[0], iy[-1] + 2, dtype=np.int64)
    lat_cols = np.arange(ix[0], ix[-1] + 2, dtype=np.int64)
    lattice = _unit(_hash_grid(lat_rows, lat_cols, key))
    jx = ix - ix[0]
    left = lattice[:, jx]
    across = left + (lattice[:, jx + 1] - left) * wx  # (lattice rows, len(cols))
    jy = iy - iy[0]
    top = across[jy]
    return top + (across[jy + 1] - top) * wy[:, None]


def _noise_points(rows: I64, cols: I64, spacing: int, key: np.uint64) -> F32:
    """Value noise at element-wise points; bit-identical to :func:`_noise_grid` there."""
    iy, wy = _lattice_weights(rows, spacing)
    ix, wx = _lattice_weights(cols, spacing)
    corner = [_unit(_hash_pairs(iy + dy, ix + dx, key)) for dy in (0, 1) for dx in (0, 1)]
    top = corner[0] + (corner[1] - corner[0]) * wx
    bottom = corner[2] + (corner[3] - corner[2]) * wx
    return top + (bottom - top) * wy


def _fbm(
    noise: Callable[[I64, I64, int, np.uint64], F32],
    rows: I64,
    cols: I64,
    octaves: Sequence[tuple[int, float]],
    seed: int,
    stream: int,
) -> F32:
    """Weighted sum of value-noise octaves ``(spacing, weight)``, normalised to [0, 1)."""
    total = np.float32(sum(weight for _, weight in octaves))
    out: F32 | None = None
    for octave, (spacing, weight) in enumerate(octaves):
        layer = noise(rows, cols, spacing, _stream_key(seed, stream * 16 + octave))
        layer *= np.float32(weight / total)
        out = layer if out is None else out + layer
    assert out is not None
    return out


_LAKE_OCTAVES = ((192, 1.0), (64, 0.5), (24, 0.2))
_LAKE_LEVEL = np.float32(0.68)
_RIVER_OCTAVES = ((448, 1.0), (112, 0.3))
_RIVER_HALF_WIDTH = np.float32(0.008)
_FOREST_OCTAVES = ((160, 1.0), (48, 0.5), (16, 0.2))
_FOREST_LEVEL = np.float32(0.6)
_TEXTURE_OCTAVES = ((40, 1.0), (12, 0.5))
_BRIGHT_OCTAVES = ((512, 1.0),)
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


# --------------------------------------------------------------------------- block synthesis


class _Layers(NamedTuple):
    """Per-pixel class map and the smooth fields that shape the spectra."""

    truth: npt.NDArray[np.uint8]
    variant: F32  # position between the class's low and high spectrum, [0, 1)
    brightness: F32  # smooth illumination factor around 1


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


def _cell_span(cells: _Cells) -> I64:
    """Global pixel coordinates of whole building cells covering a block axis."""
    return np.arange(cells.first * _CELL, (cells.first + cells.number) * _CELL, dtype=np.int64)


def _layers(rows: I64, cols: I64, seed: int) -> _Layers:
    """Class map, spectral variant and brightness of the block ``rows`` x ``cols``."""
    ycells = _cells(rows, _CELL)
    xcells = _cells(cols, _CELL)
    cell_water = _water(_cell_span(ycells), _cell_span(xcells), seed)
    built, roof = _buildings(ycells, xcells, cell_water, seed)
    top = int(rows[0]) - ycells.first * _CELL
    left = int(cols[0]) - xcells.first * _CELL
    water = cell_water[top : top + len(rows), left : left + len(cols)]
    forest = _fbm(_noise_grid, rows, cols, _FOREST_OCTAVES, seed, _FOREST) > _FOREST_LEVEL
    fields, field_variant = _fields_parcels(rows, cols, seed)
    truth = np.zeros(water.shape, dtype=np.uint8)
    truth[forest | fields] = CLASSES.index("vegetation")
    truth[built] = CLASSES.index("building")
    truth[water] = CLASSES.index("water")
    variant = _fbm(_noise_grid, rows, cols, _TEXTURE_OCTAVES, seed, _TEXTURE)
    np.copyto(variant, field_variant, where=fields & ~forest & (truth == CLASSES.index("vegetation")))
    np.copyto(variant, roof, where=built)
    brightness = _fbm(_noise_grid, rows, cols, _BRIGHT_OCTAVES, seed, _BRIGHT)
    brightness *= np.float32(0.3)
    brightness += np.float32(0.85)
    return _Layers(truth, variant, brightness)


def _spectra(
    layers: _Layers, rows: I64, cols: I64, band_index: Sequence[int], seed: int
) -> npt.NDArray[np.uint16]:
    """Reflectance x 10000 for each band in ``band_index`` (indices into :data:`BANDS`)."""
    pixel_hash = _hash_grid(rows, cols, _stream_key(seed, _PIXEL))
    image = np.empty((len(band_index), *layers.truth.shape), dtype=np.uint16)
    for out_index, band in enumerate(band_index):
        low = np.take(_SPECTRA_LOW[:, band], layers.truth)
        span = np.take(_SPECTRA_HIGH[:, band] - _SPECTRA_LOW[:, band], layers.truth)
        span *= layers.variant
        low += span
        low *= layers.brightness
        noise = _field(pixel_hash, 16 * band, 16).astype(np.float32)
        noise *= _NOISE_AMPLITUDE / np.float32(65536.0)
        noise += np.float32(1.0) - _NOISE_AMPLITUDE / np.float32(2.0)
        low *= noise
        low += np.float32(0.5)
        image[out_index] = low  # truncation of value + 0.5 rounds; values are far below 65535
    return image


def _band_indices(bands: Sequence[str]) -> tuple[int, ...]:
    """Validate band names and map them to indices into :data:`BANDS`."""
    if isinstance(bands, str) or len(bands) == 0:
        raise ConfigError(
            f"bands={bands!r} is invalid: expected a non-empty sequence of names from {BANDS}; "
            "pass e.g. bands=('red', 'green', 'blue')"
        )
    unknown = [name for name in bands if name not in BANDS]
    if unknown:
        raise ConfigError(
            f"unknown band name(s) {unknown!r} in bands={tuple(bands)!r}: expected names from {BANDS}; "
            "use only those names"
        )
    if len(set(bands)) != len(bands):
        raise ConfigError(
            f"bands={tuple(bands)!r} repeats a band: expected each name at most once; remove the duplicates"
        )
    return tuple(BANDS.index(name) for name in bands)


def _check_int(name: str, value: object, minimum: int | None = None, hint: str = "") -> int:
    """Return ``value`` as int if it is an integer >= ``minimum``; else raise ConfigError."""
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if ok and (minimum is None or int(value) >= minimum):  # type: ignore[call-overload]
        return int(value)  # type: ignore[call-overload]
    expected = "an integer" if minimum is None else f"an integer >= {minimum}"
    raise ConfigError(f"{name}={value!r} is invalid: expected {expected}; {hint}")


def _check_nodata(nodata: object) -> int | None:
    """Validate an optional uint16 nodata value."""
    if nodata is None:
        return None
    value = _check_int("nodata", nodata, 0, "pass a uint16 value such as 0 or 65535, or None")
    if value > 65535:
        raise ConfigError(
            f"nodata={nodata!r} is invalid: expected an integer in 0..65535 (uint16); pass e.g. 0 or None"
        )
    return value


def _check_scene_shape(scene_shape: object) -> tuple[int, int] | None:
    """Validate an optional (height, width) scene shape."""
    if scene_shape is None:
        return None
    if not isinstance(scene_shape, tuple | list) or len(scene_shape) != 2:
        raise ConfigError(
            f"scene_shape={scene_shape!r} is invalid: expected a (height, width) pair of integers >= 1; "
            "pass the whole scene's size or None"
        )
    hint = "pass the whole scene's (height, width) in pixels"
    rows = _check_int("scene_shape[0]", scene_shape[0], 1, hint)
    return rows, _check_int("scene_shape[1]", scene_shape[1], 1, hint)


def _apply_nodata(
    image: npt.NDArray[np.uint16],
    truth: npt.NDArray[np.uint8],
    rows: I64,
    cols: I64,
    nodata: int,
    scene_shape: tuple[int, int] | None,
) -> None:
    """Nudge valid values off ``nodata``; fill the scene's top-left triangle with nodata."""
    substitute = nodata + 1 if nodata < 65535 else nodata - 1
    image[image == nodata] = substitute
    if scene_shape is None:
        return
    limit = min(scene_shape) // 4
    if int(rows[0]) + int(cols[0]) >= limit:
        return
    corner = (rows[:, None] + cols[None, :]) < limit
    image[:, corner] = nodata
    truth[corner] = TRUTH_NODATA


def synthesize_block(
    y0: int,
    x0: int,
    height: int,
    width: int,
    *,
    seed: int = 0,
    bands: Sequence[str] = BANDS,
    nodata: int | None = None,
    scene_shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthesize one block of the infinite deterministic scene of ``seed``.

    Parameters
    ----------
    y0, x0 : int
        Global row and column of the block's top-left pixel (may be negative).
    height, width : int
        Block size in pixels (rows, columns), each >= 1.
    seed : int, optional
        Scene seed; any integer (taken modulo 2**64).
    bands : sequence of str, optional
        Band names from :data:`BANDS`, in the wanted output order (any subset).
    nodata : int or None, optional
        Image nodata value (0..65535). Valid pixels never take this value (they are nudged
        by one); with ``scene_shape`` the pixels with ``row + col < min(scene_shape) // 4``
        become nodata in every band and :data:`TRUTH_NODATA` in the truth.
    scene_shape : (int, int) or None, optional
        ``(height, width)`` of the whole scene, needed for the nodata corner.

    Returns
    -------
    image : ndarray of uint16, shape (len(bands), height, width)
        Surface reflectance x 10000, axes (band, row, col).
    truth : ndarray of uint8, shape (height, width)
        Class index into :data:`CLASSES` per pixel, axes (row, col).

    Raises
    ------
    ConfigError
        If a size, band name, nodata value or scene shape is invalid.
    """
    band_index = _band_indices(bands)
    hint = "pass the block size in pixels"
    height = _check_int("height", height, 1, hint)
    width = _check_int("width", width, 1, hint)
    y0 = _check_int("y0", y0, None, "pass the block's global top row")
    x0 = _check_int("x0", x0, None, "pass the block's global left column")
    seed = _check_int("seed", seed, None, "pass an integer seed such as 0") & _MASK64
    nodata = _check_nodata(nodata)
    shape = _check_scene_shape(scene_shape)
    rows = np.arange(y0, y0 + height, dtype=np.int64)
    cols = np.arange(x0, x0 + width, dtype=np.int64)
    layers = _layers(rows, cols, seed)
    image = _spectra(layers, rows, cols, band_index, seed)
    truth = layers.truth
    if nodata is not None:
        _apply_nodata(image, truth, rows, cols, nodata, shape)
    return image, truth


# --------------------------------------------------------------------------- writing


def _windows(width: int, height: int, block: int) -> Iterator[Window]:
    """Row-major windows of at most ``block`` x ``block`` pixels covering the scene."""
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield Window(col, row, min(block, width - col), min(block, height - row))


def _in_order(
    windows: Iterator[Window], make: Callable[[Window], tuple[np.ndarray, np.ndarray]], workers: int
) -> Iterator[tuple[Window, tuple[np.ndarray, np.ndarray]]]:
    """Generate blocks on ``workers`` threads, yielding them in order with bounded look-ahead."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[tuple[Window, Future[tuple[np.ndarray, np.ndarray]]]] = deque()
        for window in windows:
            pending.append((window, pool.submit(make, window)))
            if len(pending) > workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def _profile(width: int, height: int, count: int, dtype: str, tiled_block: int) -> dict[str, object]:
    """Creation options shared by the image and the truth GeoTIFF."""
    return {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "tiled": True,
        "blockxsize": tiled_block,
        "blockysize": tiled_block,
        "compress": "deflate",
        "predictor": 2,
        "bigtiff": "IF_SAFER",
        "num_threads": "ALL_CPUS",
    }


@dataclass(frozen=True)
class _Plan:
    """Validated parameters of :func:`write_synthetic_scene`."""

    width: int
    height: int
    seed: int
    band_index: tuple[int, ...]
    nodata: int | None
    block: int
    tiled_block: int


def _check_real(name: str, value: object, hint: str, positive: bool = False) -> float:
    """Return ``value`` as float if it is a finite (and, if asked, positive) real number."""
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    number = float(value) if ok else float("nan")  # type: ignore[arg-type]
    if np.isfinite(number) and (number > 0 or not positive):
        return number
    expected = "a finite number > 0" if positive else "a finite number"
    raise ConfigError(f"{name}={value!r} is invalid: expected {expected}; {hint}")


def _geotransform(crs: object, origin: object, pixel_size: object) -> Affine:
    """Validate the georeferencing and build the north-up pixel-to-CRS transform."""
    try:
        CRS.from_user_input(crs)
    except (CRSError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"crs={crs!r} is invalid: expected a CRS rasterio understands ({exc}); pass e.g. 'EPSG:32633'"
        ) from exc
    if not isinstance(origin, tuple | list) or len(origin) != 2:
        raise ConfigError(
            f"origin={origin!r} is invalid: expected an (x, y) pair of CRS coordinates of the top-left "
            "corner; pass e.g. (500000.0, 5000000.0)"
        )
    hint = "pass the top-left corner's CRS coordinates"
    x = _check_real("origin[0]", origin[0], hint)
    y = _check_real("origin[1]", origin[1], hint)
    size = _check_real("pixel_size", pixel_size, "pass the pixel side in CRS units, e.g. 10.0", positive=True)
    return Affine(size, 0.0, x, 0.0, -size, y)


def _check_tile(tiled_block: object) -> int:
    """Validate the GeoTIFF tile side (a multiple of 16)."""
    tile = _check_int(
        "tiled_block", tiled_block, 16, "pass a GeoTIFF tile side that is a multiple of 16, e.g. 256"
    )
    if tile % 16:
        raise ConfigError(
            f"tiled_block={tiled_block!r} is invalid: expected a multiple of 16 (GeoTIFF tiles); "
            "pass e.g. 256"
        )
    return tile


def _validate(
    width: object,
    height: object,
    seed: object,
    bands: Sequence[str],
    nodata: object,
    block: object,
    tiled_block: object,
) -> _Plan:
    """Check the writer's raster parameters and round ``block`` up to whole tiles."""
    band_index = _band_indices(bands)
    size_hint = "pass the scene size in pixels"
    width_ = _check_int("width", width, 1, size_hint)
    height_ = _check_int("height", height, 1, size_hint)
    seed_ = _check_int("seed", seed, None, "pass an integer seed such as 0") & _MASK64
    block_ = _check_int("block", block, 1, "pass the processing block side in pixels, e.g. 1024")
    tile = _check_tile(tiled_block)
    block_ = -(-block_ // tile) * tile  # whole tiles per window: every tile is written once
    return _Plan(width_, height_, seed_, band_index, _check_nodata(nodata), block_, tile)


def _write(plan: _Plan, image_path: Path, truth_path: Path | None, crs: str, transform: Affine) -> None:
    """Write the image (and truth) GeoTIFFs block by block."""
    bands = tuple(BANDS[i] for i in plan.band_index)
    image_profile = _profile(plan.width, plan.height, len(bands), "uint16", plan.tiled_block)
    image_profile.update(crs=crs, transform=transform, nodata=plan.nodata)
    truth_profile = _profile(plan.width, plan.height, 1, "uint8", plan.tiled_block)
    truth_nodata = TRUTH_NODATA if plan.nodata is not None else None
    truth_profile.update(crs=crs, transform=transform, nodata=truth_nodata)

    def make(window: Window) -> tuple[np.ndarray, np.ndarray]:
        return synthesize_block(
            int(window.row_off),
            int(window.col_off),
            int(window.height),
            int(window.width),
            seed=plan.seed,
            bands=bands,
            nodata=plan.nodata,
            scene_shape=(plan.height, plan.width),
        )

    workers = max(1, min(4, os.cpu_count() or 1))
    with rasterio.Env(GDAL_CACHEMAX=256), ExitStack() as stack:
        image_dst = stack.enter_context(rasterio.open(image_path, "w", **image_profile))
        image_dst.descriptions = bands
        truth_dst = None
        if truth_path is not None:
            truth_dst = stack.enter_context(rasterio.open(truth_path, "w", **truth_profile))
            truth_dst.set_band_description(1, "truth")
            truth_dst.update_tags(classes=",".join(CLASSES))
        windows = _windows(plan.width, plan.height, plan.block)
        for window, (image, truth) in _in_order(windows, make, workers):
            image_dst.write(image, window=window)
            if truth_dst is not None:
                truth_dst.write(truth, 1, window=window)


def write_synthetic_scene(
    path: str | os.PathLike[str],
    *,
    width: int,
    height: int,
    seed: int = 0,
    truth_path: str | os.PathLike[str] | None = None,
    bands: Sequence[str] = BANDS,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (500000.0, 5000000.0),
    pixel_size: float = 10.0,
    nodata: int | None = None,
    block: int = 1024,
    tiled_block: int = 256,
) -> SyntheticScene:
    """Write a synthetic scene (and optionally its truth) as tiled, DEFLATE-compressed GeoTIFFs.

    The scene is the region ``[0, height) x [0, width)`` of the infinite scene of ``seed``
    (see :func:`synthesize_block`). It is generated and written window by window, so memory
    stays bounded whatever the scene size; each file is written to a temporary file in its
    directory and moved into place atomically.

    Parameters
    ----------
    path : path-like
        Output image GeoTIFF: ``uint16`` reflectance x 10000, bands in ``bands`` order, band
        descriptions set to the band names.
    width, height : int
        Scene size in pixels (columns, rows), each >= 1.
    seed : int, optional
        Scene seed.
    truth_path : path-like or None, optional
        Output truth GeoTIFF (``uint8`` class indices, description ``"truth"``, tag
        ``classes`` listing :data:`CLASSES`); not written when None.
    bands : sequence of str, optional
        Band names from :data:`BANDS`, in file order.
    crs : str, optional
        Coordinate reference system of both files.
    origin : (float, float), optional
        CRS ``(x, y)`` of the scene's top-left corner.
    pixel_size : float, optional
        Pixel side in CRS units (metres for UTM), > 0.
    nodata : int or None, optional
        Image nodata value; when set, the top-left triangle ``row + col < min(width, height) // 4``
        is nodata (truth :data:`TRUTH_NODATA`, which is then the truth file's nodata).
    block : int, optional
        Side in pixels of the windows generated at once (rounded up to whole tiles); the
        result does not depend on it, only memory use and speed do.
    tiled_block : int, optional
        GeoTIFF tile side in pixels, a multiple of 16.

    Returns
    -------
    SyntheticScene
        Paths and geometry of what was written.

    Raises
    ------
    ConfigError
        If a parameter is out of range.
    OutputError
        If an output file cannot be written.
    """
    plan = _validate(width, height, seed, bands, nodata, block, tiled_block)
    transform = _geotransform(crs, origin, pixel_size)
    image_path = Path(path)
    truth_file = Path(truth_path) if truth_path is not None else None
    if truth_file is not None and truth_file.resolve() == image_path.resolve():
        raise ConfigError(
            f"truth_path={str(truth_file)!r} is the image path: expected a different file; "
            "pass another truth_path or None"
        )
    hint = "expected a writable location with free space; check the directory and disk"
    try:
        with ExitStack() as stack:  # both written, then each renamed into place (truth first)
            image_tmp = stack.enter_context(atomic_path(image_path, hint=hint))
            truth_tmp = stack.enter_context(atomic_path(truth_file, hint=hint)) if truth_file is not None else None
            _write(plan, image_tmp, truth_tmp, crs, transform)
    except RasterioError as exc:
        raise OutputError(f"cannot write {str(image_path)!r}: {exc}; {hint}") from exc
    return SyntheticScene(
        path=image_path,
        truth_path=truth_file,
        width=plan.width,
        height=plan.height,
        bands=tuple(BANDS[i] for i in plan.band_index),
        crs=crs,
        transform=transform,
        nodata=plan.nodata,
    )
