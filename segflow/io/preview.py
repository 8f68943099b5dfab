"""A scene read small for display: the sampling grid, the display bands read on it, a percentile stretch.

Used by :mod:`segflow.io.quicklook`; memory is bounded by the output size (GDAL's ``out_shape``, using
overviews when present) or by the scene's dask chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import dask.array as da
import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError

from ..errors import InputError
from .geotiff import gdal_cache_limit

if TYPE_CHECKING:
    from ..scene import Scene

__all__ = ["output_shape", "read_decimated", "sample_index", "stretch"]

_GDAL_CACHE = 64 << 20


def sample_index(n_src: int, n_dst: int) -> np.ndarray:
    """Source indices sampled by ``n_dst`` output pixels over ``n_src`` source pixels (nearest, pixel centres):
    ``floor((i + 1/2) * n_src / n_dst)``, in integers. (In floating point, a centre that lies exactly on a pixel
    edge, e.g. output 49 of 99 over 1000 pixels at 500, could fall to the pixel before: 499.99999999999994.)"""
    return (2 * np.arange(n_dst, dtype=np.int64) + 1) * n_src // (2 * n_dst)


def output_shape(shape: Sequence[int], max_side: int) -> tuple[int, int]:
    """``(rows, cols)`` of the picture of a ``(rows, cols)`` scene: longer side ``min(max_side, its own)``."""
    height, width = int(shape[0]), int(shape[1])
    scale = max(height, width) / max_side
    if scale <= 1:
        return height, width
    return max(1, round(height / scale)), max(1, round(width / scale))


def _display_bands(names: Sequence[str]) -> list[int]:
    """0-based indices of the bands named red, green, blue (in that order), else of the first band."""
    lowered = [n.lower() for n in names]
    if all(c in lowered for c in ("red", "green", "blue")):
        return [lowered.index(c) for c in ("red", "green", "blue")]
    return [0]


def _file_source(scene: Scene) -> str | None:
    """The GDAL name the scene was opened from, when it is a raster of the scene's own size."""
    own_size = (scene.meta.get("height"), scene.meta.get("width")) == scene.spatial_shape
    return scene.source if scene.source and scene.meta.get("driver") and own_size else None


def read_decimated(scene: Scene, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The scene's display bands sampled on a ``(rows, cols)`` grid: ``(C, rows, cols)`` values, ``(rows, cols)``
    validity (True = data). ``C`` is 3 (red, green, blue) or 1 (grey).

    A scene opened from a raster file is read by GDAL with ``out_shape`` (overviews used when present;
    validity is GDAL's dataset mask: mask band, alpha, nodata over every band), any other scene by
    sampling its dask array at :func:`sample_index` (memory bounded by the scene's chunks).
    """
    source = _file_source(scene)
    if source is not None:
        return _read_gdal(source, shape)
    rows = sample_index(scene.spatial_shape[0], shape[0])
    cols = sample_index(scene.spatial_shape[1], shape[1])
    data = scene.data[_display_bands(scene.band_names)][:, rows][:, :, cols]
    valid = scene.valid
    if valid is None:
        (values,) = da.compute(data, scheduler="threads")
        return np.asarray(values), np.ones(shape, dtype=bool)
    values, mask = da.compute(data, valid[rows][:, cols], scheduler="threads")
    return np.asarray(values), np.asarray(mask, dtype=bool)


def _read_gdal(name: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    try:
        with gdal_cache_limit(_GDAL_CACHE), rasterio.open(name) as ds:
            indexes = [i + 1 for i in _display_bands([(d or "").strip() for d in ds.descriptions])]
            values = ds.read(indexes, out_shape=(len(indexes), *shape), resampling=Resampling.nearest)
            valid = ds.dataset_mask(out_shape=shape, resampling=Resampling.nearest) > 0
    except RasterioError as exc:
        raise InputError(f"cannot read {name} for quicklook.png ({' '.join(str(exc).split())}); "
                         "check that the input is still there and readable") from None
    if np.issubdtype(values.dtype, np.floating):
        valid &= np.isfinite(values).all(axis=0)
    return values, valid


def _percentiles(values: np.ndarray, qs: Sequence[float]) -> list[float]:
    """``np.percentile(values, qs)`` (its default, linear method) by partitioning ``values`` in place (no copy)."""
    n = values.size
    positions = [q / 100 * (n - 1) for q in qs]
    kth = sorted({min(n - 1, int(np.floor(p)) + d) for p in positions for d in (0, 1)})
    values.partition(kth)
    out = []
    for p in positions:
        lo = int(np.floor(p))
        a, b = float(values[lo]), float(values[min(n - 1, lo + 1)])
        out.append(a + (b - a) * (p - lo))
    return out


def stretch(values: np.ndarray, valid: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """``(rows, cols, 3)`` uint8: each band of ``(C, rows, cols)`` mapped linearly from its ``low``..``high``
    percentile (over valid pixels) to 0..255 and clipped; a constant band is mid grey, a single band grey,
    invalid pixels dark."""
    out = np.zeros((*values.shape[1:], 3), dtype=np.uint8)
    if not valid.any():
        return out
    for c in range(3):
        band = values[min(c, values.shape[0] - 1)]
        if c >= values.shape[0]:  # grey: the same band again
            out[..., c] = out[..., 0]
            continue
        picked = band[valid]
        lo, hi = _percentiles(picked, (low, high))
        del picked
        if hi <= lo:
            out[..., c] = 128
            continue
        scaled = band.astype(np.float32)
        scaled -= np.float32(lo)
        scaled *= np.float32(255.0 / (hi - lo))
        np.clip(scaled, 0, 255, out=scaled)
        np.rint(scaled, out=scaled)
        out[..., c] = scaled
        del scaled
    out[~valid] = 0  # nodata: dark
    return out
