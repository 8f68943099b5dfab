"""Blocks of the infinite synthetic scene: classes, spectra and nodata for any ``(row, col)`` box.

:func:`synthesize_block` composes the layout (:mod:`segflow.synthetic.layout`) into a class map
and gives every pixel the spectrum of its class, varied by smooth fields and per-pixel noise
(:mod:`segflow.synthetic.noise`). Images are ``(band, row, col)`` surface reflectance x 10000
(``uint16``), truth ``(row, col)`` indices into :data:`CLASSES` (``uint8``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from segflow.errors import ConfigError

from .layout import _CELL, _building_ids, _buildings, _cell_span, _cells, _fields_parcels, _water
from .noise import (
    _BRIGHT,
    _FOREST,
    _MASK64,
    _PIXEL,
    _TEXTURE,
    F32,
    I64,
    _fbm,
    _field,
    _hash_grid,
    _noise_grid,
    _stream_key,
)

__all__ = ["BANDS", "CLASSES", "TRUTH_NODATA", "synthesize_block", "synthesize_instances"]

CLASSES: tuple[str, ...] = ("background", "water", "vegetation", "building")
"""Class names; the truth value of a class is its index (``background`` is bare ground)."""

BANDS: tuple[str, ...] = ("blue", "green", "red", "nir")
"""Band names the generator knows, in their canonical order."""

TRUTH_NODATA = 255
"""Truth value of pixels that are nodata in the image."""

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


_FOREST_OCTAVES = ((160, 1.0), (48, 0.5), (16, 0.2))
_FOREST_LEVEL = np.float32(0.6)
_TEXTURE_OCTAVES = ((40, 1.0), (12, 0.5))
_BRIGHT_OCTAVES = ((512, 1.0),)


class _Layers(NamedTuple):
    """Per-pixel class map and the smooth fields that shape the spectra."""

    truth: npt.NDArray[np.uint8]
    variant: F32  # position between the class's low and high spectrum, [0, 1)
    brightness: F32  # smooth illumination factor around 1


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


def synthesize_instances(y0: int, x0: int, height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """Instance ids of the buildings in one block of the scene of ``seed`` (see :func:`synthesize_block`).

    Each building rectangle is one instance, the two rectangles of a pair that share an edge
    included (they touch with no gap); ids are global (the same building has the same id in
    every block) and non-zero exactly where the truth is ``building``.

    Returns
    -------
    ndarray of int64, shape (height, width)
        0 off buildings, else the building's id; axes (row, col).
    """
    hint = "pass the block size in pixels"
    height = _check_int("height", height, 1, hint)
    width = _check_int("width", width, 1, hint)
    y0 = _check_int("y0", y0, None, "pass the block's global top row")
    x0 = _check_int("x0", x0, None, "pass the block's global left column")
    seed = _check_int("seed", seed, None, "pass an integer seed such as 0") & _MASK64
    rows = np.arange(y0, y0 + height, dtype=np.int64)
    cols = np.arange(x0, x0 + width, dtype=np.int64)
    ycells, xcells = _cells(rows, _CELL), _cells(cols, _CELL)
    return _building_ids(ycells, xcells, _water(_cell_span(ycells), _cell_span(xcells), seed), seed)
