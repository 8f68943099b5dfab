"""Windowed reads of GeoTIFFs for training chips: thread-local dataset handles, band lookup, grid checks.

:class:`_ImageReader` reads selected bands of a window (and its validity mask) of an image;
``_open_meta`` reads what the chip sources check of a raster (bands, size, CRS, transform, nodata,
descriptions); ``_check_same_grid`` refuses a label (or instance) raster that is not on the image's
grid; ``_instance_raster`` checks a pair's instance-id raster. Windows are ``(row, col)`` starts and
``(rows, cols)`` shapes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

from .. import georef
from ..errors import InputError
from ..georef import PixelGrid
from .sources import Start


class _Handles:
    """One rasterio dataset per (thread, path): GDAL handles must not be shared across threads."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[Any] = []

    def get(self, path: Path) -> Any:
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
        if path not in handles:
            ds = rasterio.open(path)
            handles[path] = ds
            with self._lock:
                self._all.append(ds)
        return handles[path]

    def close(self) -> None:
        with self._lock:
            for ds in self._all:
                ds.close()
            self._all.clear()
        self._local = threading.local()


def _open_meta(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{what} {path} not found; check the path in the training config")
    try:
        with rasterio.open(path) as ds:
            return {"count": ds.count, "width": ds.width, "height": ds.height, "crs": ds.crs,
                    "transform": ds.transform, "dtypes": ds.dtypes, "nodata": ds.nodata,
                    "descriptions": tuple((d or "").strip().lower() for d in ds.descriptions),
                    "tags": ds.tags()}
    except RasterioError as exc:
        raise InputError(
            f"{what} {path} is not a raster GDAL can read ({str(exc).strip()}); expected a GeoTIFF"
        ) from None


def _band_numbers(bands: Sequence[tuple[str, int | None]], meta: dict[str, Any], path: Path) -> list[int]:
    """1-based band numbers of the model inputs: declared index, else matching description, else position."""
    numbers = []
    for position, (name, index) in enumerate(bands):
        if index is not None:
            number = index
        elif name.lower() in meta["descriptions"]:
            number = meta["descriptions"].index(name.lower()) + 1
        else:
            number = position + 1
        if number > meta["count"]:
            raise InputError(
                f"model band {name!r} is band {number} but {path} has {meta['count']} band(s); "
                "fix the band's index in model.bands"
            )
        numbers.append(number)
    return numbers


class _ImageReader:
    """Windowed reads of selected bands of a GeoTIFF, with its validity mask."""

    def __init__(self, path: Path, bands: Sequence[tuple[str, int | None]]) -> None:
        self.path = path
        self.meta = _open_meta(path, "image")
        self.bands = _band_numbers(bands, self.meta, path)
        self.handles = _Handles()
        self.masked = self.meta["nodata"] is not None

    def read(self, start: Start, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        window = Window(start[1], start[0], shape[1], shape[0])
        try:
            ds = self.handles.get(self.path)
            image = ds.read(self.bands, window=window).astype(np.float32)
            valid = ds.dataset_mask(window=window) > 0 if self.masked else np.ones(shape, dtype=bool)
        except RasterioError as exc:
            raise InputError(
                f"cannot read rows {start[0]}:{start[0] + shape[0]} cols {start[1]}:{start[1] + shape[1]} of "
                f"{self.path} ({str(exc).strip()}); the file may be truncated, re-create it"
            ) from None
        return image, valid



def _instance_raster(image: dict[str, Any], path: Path | None, image_path: Path) -> Path | None:
    """The instance-id raster of a pair, checked: one integer band on the image's grid (or None)."""
    if path is None:
        return None
    meta = _open_meta(Path(path), "instance raster")
    _check_same_grid(image, meta, image_path, Path(path))
    if meta["count"] != 1 or not np.issubdtype(np.dtype(meta["dtypes"][0]), np.integer):
        raise InputError(f"instance raster {path} has {meta['count']} band(s) of {meta['dtypes'][0]}: expected one "
                         "integer band of instance ids (0 = no instance)")
    return Path(path)


def _check_same_grid(image: dict[str, Any], labels: dict[str, Any], image_path: Path, labels_path: Path) -> None:
    """Raise InputError unless both rasters have the same shape, CRS and transform."""
    georef.check_same_grid(PixelGrid.of((image["height"], image["width"]), image["crs"], image["transform"]),
                           PixelGrid.of((labels["height"], labels["width"]), labels["crs"], labels["transform"]),
                           names=("image", "label raster"), paths=(image_path, labels_path))
