"""Counter-based hashing and smooth value noise: the randomness of the synthetic scenes.

Per-pixel noise and per-cell decisions come from a splitmix64 hash of integer global
coordinates ``(row, col)`` and a 64-bit key per seed and stream; natural shapes from smooth value
noise on coarse global lattices, summed over octaves (:func:`_fbm`). Nothing holds random
state, so every value is a pure function of its coordinates, the seed and the stream.
Arrays are ``(row, col)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

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
