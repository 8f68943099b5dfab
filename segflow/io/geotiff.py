"""GeoTIFF (and any GDAL raster) → lazy :class:`Scene`, read by windows."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.errors import RasterioError
from rasterio.windows import Window

from ..errors import InputError
from ..scene import Scene

__all__ = ["cap_gdal_cache", "close_datasets", "gdal_cache_limit", "open_geotiff"]

_local = threading.local()
_opened: list[Any] = []  # every handle _dataset opened, so a finished run can close them all
_opened_lock = threading.Lock()


def _dataset(path: str) -> Any:
    """A rasterio dataset for this thread (GDAL handles must not be shared across threads)."""
    handles = getattr(_local, "handles", None)
    if handles is None:
        handles = _local.handles = {}
    ds = handles.get(path)
    if ds is None or ds.closed:
        ds = handles[path] = rasterio.open(path)
        with _opened_lock:
            _opened.append(ds)
    return ds


def close_datasets() -> None:
    """Close every dataset the readers opened, in all threads, freeing their cached blocks.

    Call it when no read is in progress (after a run's tasks); readers reopen on their next read.
    """
    with _opened_lock:
        handles, _opened[:] = list(_opened), []
    for ds in handles:
        ds.close()


_CACHE_BYTES = 256 << 20


def cap_gdal_cache(nbytes: int = _CACHE_BYTES) -> None:
    """Lower GDAL's block cache of this process to ``nbytes`` (a worker process that runs chunk tasks)."""
    current = get_gdal_config("GDAL_CACHEMAX")
    if not isinstance(current, int) or current > nbytes:
        set_gdal_config("GDAL_CACHEMAX", int(nbytes))


@contextmanager
def gdal_cache_limit(nbytes: int = _CACHE_BYTES) -> Iterator[None]:
    """Cap GDAL's block cache for the duration of a run, then restore the previous setting.

    GDAL's default cache is 5 % of RAM and keeps decoded blocks of every raster read or
    written, so without a cap the process grows with the scene even though each block is
    needed only once.
    """
    previous = get_gdal_config("GDAL_CACHEMAX")
    set_gdal_config("GDAL_CACHEMAX", int(nbytes))
    try:
        yield
    finally:
        set_gdal_config("GDAL_CACHEMAX", previous)


def _read_error(path: str, what: str, exc: Exception) -> InputError:
    return InputError(
        f"cannot read {what} of {path}: the file is truncated or corrupt (GDAL: {str(exc).strip()}); "
        "re-create or re-download it"
    )


class _WindowReader:
    """Array-like over one raster: ``reader[c, y0:y1, x0:x1]`` does one windowed read."""

    def __init__(self, path: str, count: int, height: int, width: int, dtype: np.dtype, masks: bool):
        self.path = path
        self.masks = masks
        self.dtype = np.dtype("bool") if masks else dtype
        self.shape = (height, width) if masks else (count, height, width)
        self.ndim = len(self.shape)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        rows, cols = key[-2], key[-1]
        window = Window.from_slices(rows, cols, height=self.shape[-2], width=self.shape[-1])
        try:
            ds = _dataset(self.path)
            if self.masks:
                return np.asarray(ds.dataset_mask(window=window) > 0)
            bands = range(self.shape[0])[key[0]]
            return np.asarray(ds.read([b + 1 for b in bands], window=window))
        except RasterioError as exc:
            raise _read_error(self.path, f"window rows {rows.start}:{rows.stop} cols {cols.start}:{cols.stop}",
                              exc) from None


def _chunking(block_shape: tuple[int, int], height: int, width: int, target: int) -> tuple[int, int]:
    """Dask chunk size: a whole number of the file's blocks, close to ``target`` pixels a side."""
    bh, bw = block_shape
    ch = max(bh, (target // bh) * bh) if bh < height else height
    cw = max(bw, (target // bw) * bw) if bw < width else width
    if ch * cw > 4 * target * target:  # strips: long rows, keep about target² pixels
        ch = max(1, min(height, (target * target) // cw // max(bh, 1) * max(bh, 1) or bh))
    return ch, cw


def _check_end_blocks(ds: Any, path: str) -> None:
    """Read the last block of the first and last band: catches files cut short early."""
    bh, bw = ds.block_shapes[0]
    rows = math.ceil(ds.height / bh)
    cols = math.ceil(ds.width / bw)
    window = Window((cols - 1) * bw, (rows - 1) * bh, ds.width - (cols - 1) * bw, ds.height - (rows - 1) * bh)
    try:
        ds.read(sorted({1, ds.count}), window=window)
    except RasterioError as exc:
        raise _read_error(path, "its last block", exc) from None


def open_geotiff(path: str | os.PathLike[str], *, chunk: int = 1024) -> Scene:
    """Open a raster lazily as a ``(C, Y, X)`` scene with its CRS, transform, nodata and mask.

    Pixels are read only when a region is computed, one windowed read per dask chunk; dask
    chunks are whole multiples of the file's internal blocks, about ``chunk`` pixels a side.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input file not found: {p}; check the path")
    if p.is_dir():
        raise InputError(f"input {p} is a directory, expected a raster file such as a GeoTIFF")
    try:
        ds = rasterio.open(p)
    except RasterioError as exc:
        raise InputError(f"{p} is not a raster GDAL can read ({str(exc).strip()}); expected a GeoTIFF") from None
    with ds:
        if ds.count < 1 or ds.width < 1 or ds.height < 1:
            raise InputError(f"{p} has no pixels ({ds.count} bands, {ds.width}x{ds.height})")
        if len(set(ds.dtypes)) != 1:
            raise InputError(f"{p} mixes band data types {sorted(set(ds.dtypes))}; convert it to one type")
        if np.issubdtype(np.dtype(ds.dtypes[0]), np.complexfloating):
            raise InputError(
                f"{p} holds {ds.dtypes[0]} samples (complex, e.g. SAR single-look complex); models take real bands: "
                f"compute amplitude first, e.g. gdal_calc.py -A {p} --allBands=A --calc='numpy.absolute(A)' "
                f"--type=Float32 --outfile={p.with_name(p.stem + '_amplitude.tif')}")
        _check_end_blocks(ds, str(p))
        dtype = np.dtype(ds.dtypes[0])
        names = tuple(
            (d or f"band{i + 1}").strip().lower() for i, d in enumerate(ds.descriptions or (None,) * ds.count)
        )
        has_mask = any(
            MaskFlags.per_dataset in flags or MaskFlags.alpha in flags for flags in ds.mask_flag_enums
        )
        crs = ds.crs.to_wkt() if ds.crs else None
        transform = tuple(ds.transform)[:6] if not ds.transform.is_identity else None
        points, gcp_crs = ds.gcps
        gcps = tuple((g.row, g.col, g.x, g.y, g.z or 0.0) for g in points)
        rpcs = {k: str(v) for k, v in ds.rpcs.to_gdal().items()} if ds.rpcs else None
        meta = {
            "driver": ds.driver,
            "dtype": str(dtype),
            "block_shape": list(ds.block_shapes[0]),
            "width": ds.width,
            "height": ds.height,
            "count": ds.count,
        }
        ch, cw = _chunking(ds.block_shapes[0], ds.height, ds.width, chunk)
        reader = _WindowReader(str(p), ds.count, ds.height, ds.width, dtype, masks=False)
        data = da.from_array(reader, chunks=(ds.count, ch, cw), lock=False, asarray=True,
                             meta=np.empty((0, 0, 0), dtype=dtype), name=f"read-{p.name}-{os.stat(p).st_mtime_ns}")
        mask = None
        if has_mask:
            mreader = _WindowReader(str(p), ds.count, ds.height, ds.width, dtype, masks=True)
            mask = da.from_array(mreader, chunks=(ch, cw), lock=False, asarray=True,
                                 meta=np.empty((0, 0), dtype=bool), name=f"mask-{p.name}-{os.stat(p).st_mtime_ns}")
        return Scene(data=data, axes="CYX", band_names=names, crs=crs, transform=transform,
                     nodata=ds.nodata, mask=mask, gcps=gcps, gcp_crs=gcp_crs.to_wkt() if gcps and gcp_crs else None,
                     rpcs=rpcs, source=str(p), meta=meta)
