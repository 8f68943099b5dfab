"""GeoTIFF (and any raster GDAL opens, by any name GDAL takes) → lazy :class:`Scene`, read by windows."""

from __future__ import annotations

import math
import os
import re
import shlex
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rasterio
from dask.base import tokenize
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.errors import RasterioError
from rasterio.windows import Window

from ..array_keys import bounding_read
from ..errors import InputError
from ..scene import Scene
from .gdal_names import existing_file, input_name, local_file

__all__ = ["cap_gdal_cache", "close_datasets", "gdal_cache_limit", "gdal_message", "open_geotiff"]

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


_GENERIC = ("See previous exception for details",)
_BLOCK = re.compile(r"band (\d+): IReadBlock failed at X offset (\d+), Y offset (\d+)")


def gdal_message(exc: BaseException) -> str:
    """GDAL's own words for a failure, oldest first, on one line.

    rasterio raises ``Read failed. See previous exception for details.`` and chains GDAL's
    errors (``CPLE_...``) behind it as ``__cause__``/``__context__``; those name the block and
    why it failed (e.g. ``TIFFFillTile: Read error at row 0, col 0, tile 63; got 0 bytes,
    expected 21096``).
    """
    messages: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join(str(current).split())
        if text and not any(g in text for g in _GENERIC):
            messages.append(text)
        current = current.__cause__ or current.__context__
    messages.reverse()  # GDAL reports the innermost failure first
    kept = [m for i, m in enumerate(messages)
            if not any(m in other for j, other in enumerate(messages) if j != i and len(other) > len(m))
            and m not in messages[:i]]
    return " / ".join(kept) or " ".join(str(exc).split()) or type(exc).__name__


def _block_detail(ds: Any, name: str, message: str) -> str:
    """Where in the file a GeoTIFF block that failed lies: ``; block x 7, y 7 of band 1 is ...``."""
    found = _BLOCK.search(message)
    if found is None or ds is None or ds.closed or ds.driver != "GTiff":
        return ""
    band, x, y = found.groups()
    try:
        offset = ds.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=int(band))
        size = ds.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=int(band))
    except (RasterioError, ValueError, IndexError):  # IndexError: a band the file does not have
        return ""
    if not offset or not size:
        return ""
    where = f"; block x {x}, y {y} of band {band} is {size} bytes at byte offset {offset}"
    file = existing_file(name)  # offsets inside a /vsizip/ member are not offsets in the archive
    if file is not None:
        where += f" of the {file.stat().st_size}-byte file {file.name}"
    return where


def _read_error(name: str, what: str, exc: Exception, ds: Any = None) -> InputError:
    message = gdal_message(exc)
    return InputError(
        f"cannot read {what} of {name}: the file is truncated or corrupt (GDAL: {message})"
        f"{_block_detail(ds, name, message)}; re-create or re-download it"
    )


class _WindowReader:
    """Array-like over one raster: ``reader[c, y0:y1, x0:x1]`` does one windowed read.

    With ``masks=True`` it reads the file's own validity over ``(Y, X)`` instead: the
    per-dataset mask band (``mask_band``) and every alpha band (``alpha``, 1-based numbers),
    True where the mask is non-zero and every alpha is non-zero.
    """

    def __init__(self, path: str, count: int, height: int, width: int, dtype: np.dtype, masks: bool,
                 mask_band: bool = False, alpha: tuple[int, ...] = ()):
        self.path = path
        self.masks = masks
        self.mask_band = mask_band
        self.alpha = alpha
        self.dtype = np.dtype("bool") if masks else dtype
        self.shape = (height, width) if masks else (count, height, width)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        """One windowed read for ``key`` (:func:`~segflow.array_keys.bounding_read`: indices and steps too)."""
        spans, local = bounding_read(key, self.shape)
        if not all(spans):
            return np.empty([len(s) for s in spans], dtype=self.dtype)[local]
        rows, cols = spans[-2], spans[-1]
        window = Window(cols.start, rows.start, len(cols), len(rows))
        ds = None
        try:
            ds = _dataset(self.path)
            if self.masks:
                return self._valid(ds, window)[local]
            return np.asarray(ds.read([b + 1 for b in spans[0]], window=window))[local]
        except RasterioError as exc:
            raise _read_error(self.path, f"window rows {rows.start}:{rows.stop} cols {cols.start}:{cols.stop}",
                              exc, ds) from None

    def _valid(self, ds: Any, window: Window) -> np.ndarray:
        valid = np.ones((int(window.height), int(window.width)), dtype=bool)
        if self.mask_band:
            valid &= np.asarray(ds.dataset_mask(window=window)) > 0
        if self.alpha:
            valid &= (np.asarray(ds.read(list(self.alpha), window=window)) != 0).all(axis=0)
        return valid


def _chunking(block_shape: tuple[int, int], height: int, width: int, target: int) -> tuple[int, int]:
    """Dask chunk size: a whole number of the file's blocks, close to ``target`` pixels a side."""
    bh, bw = block_shape
    ch = min(height, max(bh, (target // bh) * bh))
    cw = min(width, max(bw, (target // bw) * bw))
    if ch * cw > 4 * target * target:  # strips: long rows, keep about target² pixels
        ch = max(1, min(height, (target * target) // cw // max(bh, 1) * max(bh, 1) or bh))
    return ch, cw


def _check_end_blocks(ds: Any, name: str) -> None:
    """Read the last block of the first and last band: catches files cut short early."""
    bh, bw = ds.block_shapes[0]
    rows = math.ceil(ds.height / bh)
    cols = math.ceil(ds.width / bw)
    window = Window((cols - 1) * bw, (rows - 1) * bh, ds.width - (cols - 1) * bw, ds.height - (rows - 1) * bh)
    try:
        ds.read(sorted({1, ds.count}), window=window)
    except RasterioError as exc:
        raise _read_error(name, "its last block", exc, ds) from None


def _subdatasets(ds: Any) -> list[str]:
    """GDAL's names of the subdatasets of a container (netCDF, HDF, Zarr...), in GDAL's order."""
    tags = ds.tags(ns="SUBDATASETS")
    numbered = []
    for key, value in tags.items():
        found = re.fullmatch(r"SUBDATASET_(\d+)_NAME", key)
        if found:
            numbered.append((int(found.group(1)), value))
    return [value for _, value in sorted(numbered)]


def _container_error(name: str, driver: str, subdatasets: list[str]) -> InputError:
    shown = ", ".join(subdatasets[:_LISTED])
    more = f" and {len(subdatasets) - _LISTED} more" if len(subdatasets) > _LISTED else ""
    return InputError(
        f"{name} is a {driver} container of {len(subdatasets)} subdataset(s) and has no pixels itself; pick one "
        f"by its GDAL name, e.g. --input {shlex.quote(subdatasets[0])} (subdatasets: {shown}{more})")


_LISTED = 10


def _is_plain_path(name: str) -> bool:
    """A name GDAL would take as a plain file path (not /vsi..., not DRIVER:...)."""
    return not name.startswith("/vsi") and ":" not in name


def _open(name: str) -> Any:
    """Open ``name`` with GDAL (any name GDAL opens), or say in one line why it cannot be opened."""
    local = Path(name)
    try:
        exists, is_dir = local.exists(), local.is_dir()
    except OSError:
        exists = is_dir = False
    try:
        return rasterio.open(name)
    except RasterioError as exc:
        message = gdal_message(exc)
        if is_dir:
            raise InputError(f"input {name} is a directory with no DICOM images and not a raster GDAL reads "
                             f"(GDAL: {message}); give a raster file such as a GeoTIFF, or a folder holding "
                             "one DICOM series") from None
        if exists and local.is_file() and local.stat().st_size == 0:
            raise InputError(f"input {name} is empty (0 bytes); re-create or re-download it") from None
        if exists:
            raise InputError(f"{name} is not a raster GDAL can read ({message}); expected a GeoTIFF") from None
        if _is_plain_path(name):
            raise InputError(f"input file not found: {name}; check the path") from None
        holder = local_file(name)
        if holder is not None:
            try:
                with rasterio.open(str(holder)) as container:
                    subdatasets, driver = _subdatasets(container), container.driver
            except RasterioError:
                subdatasets, driver = [], ""
            if subdatasets and name not in subdatasets:
                raise InputError(
                    f"GDAL cannot open {name} ({message}); {holder} holds these {driver} subdatasets: "
                    f"{', '.join(subdatasets[:_LISTED])}"
                    f"{f' and {len(subdatasets) - _LISTED} more' if len(subdatasets) > _LISTED else ''}; "
                    f"pass one of them, e.g. --input {shlex.quote(subdatasets[0])}") from None
        raise InputError(f"input not found: GDAL cannot open {name} ({message}); check the name (a path, "
                         "/vsizip/archive.zip/scene.tif, NETCDF:\"file.nc\":variable...)") from None


def _token(name: str) -> str:
    """A dask name part unique to this raster's content: its name and its local file's size and mtime."""
    file = local_file(name)
    stat = file.stat() if file is not None else None
    return tokenize(name, stat.st_size if stat else None, stat.st_mtime_ns if stat else None)


def open_geotiff(path: str | os.PathLike[str], *, chunk: int = 1024) -> Scene:
    """Open a raster lazily as a ``(C, Y, X)`` scene with its CRS, transform, nodata and mask.

    ``path`` is any name GDAL opens: a file path, ``/vsizip/archive.zip/scene.tif``,
    ``NETCDF:"file.nc":variable``... A container of subdatasets (netCDF, HDF) is refused
    with the list of their names. Pixels are read only when a region is computed, one
    windowed read per dask chunk; dask chunks are whole multiples of the file's internal
    blocks, about ``chunk`` pixels a side. The scene's ``mask`` is the file's own validity
    (its per-dataset mask band and every band whose colour interpretation is alpha, 0 =
    nodata); its ``scales``/``offsets`` are GDAL's per-band scale and offset (applied by
    :meth:`Scene.scaled`, not here: pixels stay the stored values).
    """
    name = input_name(path)
    ds = _open(name)
    with ds:
        if ds.count < 1 and ds.subdatasets:
            raise _container_error(name, ds.driver, _subdatasets(ds) or list(ds.subdatasets))
        if ds.count < 1 or ds.width < 1 or ds.height < 1:
            raise InputError(f"{name} has no pixels ({ds.count} bands, {ds.width}x{ds.height})")
        if len(set(ds.dtypes)) != 1:
            raise InputError(f"{name} mixes band data types {sorted(set(ds.dtypes))}; convert it to one type")
        if np.issubdtype(np.dtype(ds.dtypes[0]), np.complexfloating):
            stem = Path(local_file(name) or "input")
            raise InputError(
                f"{name} holds {ds.dtypes[0]} samples (complex, e.g. SAR single-look complex); models take real "
                f"bands: compute amplitude first, e.g. gdal_calc.py -A {shlex.quote(name)} --allBands=A "
                f"--calc='numpy.absolute(A)' --type=Float32 --outfile={stem.with_name(stem.stem + '_amplitude.tif')}")
        _check_end_blocks(ds, name)
        dtype = np.dtype(ds.dtypes[0])
        names = tuple(
            (d or f"band{i + 1}").strip().lower() for i, d in enumerate(ds.descriptions or (None,) * ds.count)
        )
        alpha = tuple(i for i, ci in enumerate(ds.colorinterp) if ci == ColorInterp.alpha)
        # GDAL's per-dataset mask band (internal or .msk); an alpha band GDAL uses as the mask
        # (2- and 4-band files) is read as an alpha band like any other
        mask_band = any(MaskFlags.per_dataset in f and MaskFlags.alpha not in f for f in ds.mask_flag_enums)
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
        if alpha:
            meta["alpha_bands"] = [i + 1 for i in alpha]
        ch, cw = _chunking(ds.block_shapes[0], ds.height, ds.width, chunk)
        token = _token(name)
        reader = _WindowReader(name, ds.count, ds.height, ds.width, dtype, masks=False)
        data = da.from_array(reader, chunks=(ds.count, ch, cw), lock=False, asarray=True,
                             meta=np.empty((0, 0, 0), dtype=dtype), name=f"read-{token}")
        mask = None
        if mask_band or alpha:
            mreader = _WindowReader(name, ds.count, ds.height, ds.width, dtype, masks=True, mask_band=mask_band,
                                    alpha=tuple(i + 1 for i in alpha))
            mask = da.from_array(mreader, chunks=(ch, cw), lock=False, asarray=True,
                                 meta=np.empty((0, 0), dtype=bool), name=f"mask-{token}")
        return Scene(data=data, axes="CYX", band_names=names, crs=crs, transform=transform,
                     nodata=ds.nodata, mask=mask, gcps=gcps, gcp_crs=gcp_crs.to_wkt() if gcps and gcp_crs else None,
                     rpcs=rpcs, source=name, meta=meta, alpha_bands=alpha,
                     scales=tuple(float(v) for v in ds.scales), offsets=tuple(float(v) for v in ds.offsets))
