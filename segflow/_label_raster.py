"""Label rasters read by windows for evaluation: a label GeoTIFF, a ``mask.zarr`` or a tile-infer folder.

:func:`open_labels` gives a :class:`LabelRaster` whose :meth:`~LabelRaster.read` returns int32 labels of
a window, with declared nodata mapped to 255 (segflow's label nodata) and values outside 0..255 refused.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioError
from rasterio.transform import Affine
from rasterio.windows import Window

from .errors import InputError
from .io.mask_store import MaskStore
from .labels import LABEL_NODATA

__all__ = ["LabelRaster", "open_labels"]

NODATA = LABEL_NODATA



@dataclass
class LabelRaster:
    """A 2D label raster read by windows: a GeoTIFF band or a zarr ``labels`` array.

    ``shape`` is ``(rows, cols)``; ``crs`` / ``transform`` are None when the source has none;
    ``class_names`` come from the source's metadata (``class_names`` tag or attribute, or a
    ``classes`` tag) when present.
    """

    path: Path
    shape: tuple[int, int]
    crs: CRS | None
    transform: Affine | None
    class_names: list[str] | None
    nodata: int | None
    reader: Any = field(repr=False)
    kind: str = "geotiff"

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Labels of the window ``rows = (r0, r1)``, ``cols = (c0, c1)`` as int32 ``(r1 - r0, c1 - c0)``.

        Declared nodata becomes 255; values outside 0..255 raise :class:`InputError`.
        """
        (r0, r1), (c0, c1) = rows, cols
        try:
            if self.kind == "zarr":
                block = np.asarray(self.reader[r0:r1, c0:c1])
            else:
                block = self.reader.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
        except (RasterioError, OSError, ValueError) as exc:
            raise InputError(
                f"cannot read rows {r0}:{r1} cols {c0}:{c1} of {self.path}: the file is truncated or corrupt "
                f"({str(exc).strip()[:200]}); re-create it"
            ) from None
        labels = block.astype(np.int32, copy=False)
        if self.nodata is not None and self.nodata != NODATA:
            labels = np.where(block == self.nodata, NODATA, labels)
        if labels.size and (labels.min() < 0 or labels.max() > NODATA):
            bad = int(labels[(labels < 0) | (labels > NODATA)][0])
            raise InputError(
                f"{self.path} holds label {bad} (rows {r0}:{r1}, cols {c0}:{c1}); expected class labels 0..254 "
                "with 255 as nodata; remap the classes to that range"
            )
        return labels

    def close(self) -> None:
        if self.kind == "geotiff":
            self.reader.close()


def _split_names(value: object) -> list[str] | None:
    if isinstance(value, str):
        names = [n.strip() for n in value.split(",")]
        return names if any(names) else None
    if isinstance(value, list | tuple) and value:
        return [str(n) for n in value]
    return None


def _int_nodata(path: Path, value: object) -> int | None:
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    if math.isnan(number) or number != int(number):
        raise InputError(f"{path} declares nodata {value!r}; expected an integer label value such as 255")
    return int(number)


def _open_geotiff(path: Path) -> LabelRaster:
    try:
        ds = rasterio.open(path)
    except RasterioError as exc:
        raise InputError(
            f"cannot open {path} as a raster ({str(exc).strip()[:200]}); give a label GeoTIFF, a tile-infer "
            "output folder or a mask.zarr"
        ) from None
    try:
        if ds.count != 1:
            raise InputError(f"{path} has {ds.count} bands; expected a single-band label raster")
        if not np.issubdtype(np.dtype(ds.dtypes[0]), np.integer):
            raise InputError(
                f"{path} holds {ds.dtypes[0]} values; expected integer class labels (uint8), not scores"
            )
        tags = ds.tags()
        names = _split_names(tags.get("class_names")) or _split_names(tags.get("classes"))
        georef = ds.crs is not None or not ds.transform.is_identity
        return LabelRaster(path=path, shape=(ds.height, ds.width), crs=ds.crs,
                           transform=ds.transform if georef else None, class_names=names,
                           nodata=_int_nodata(path, ds.nodata), reader=ds)
    except BaseException:
        ds.close()
        raise


def _open_zarr(path: Path) -> LabelRaster:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises many types for unreadable stores
        raise InputError(f"cannot open {path} as a zarr group ({str(exc).strip()[:200]})") from None
    if isinstance(node, zarr.Group):
        if "labels" not in node:
            raise InputError(f"zarr group {path} has no 'labels' array; give the mask.zarr written by tile-infer")
        store = MaskStore.open(path)
        array, attrs = store.labels, store.attrs
    else:
        array, attrs = node, dict(node.attrs)
    if not isinstance(array, zarr.Array) or array.ndim != 2:
        raise InputError(f"{path}: labels must be a 2D (rows, cols) array, got shape {getattr(array, 'shape', '?')}")
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{path}: labels hold {array.dtype} values; expected integer class labels (uint8)")
    crs = None
    if attrs.get("crs"):
        try:
            crs = CRS.from_user_input(attrs["crs"])
        except CRSError:
            raise InputError(f"{path} has an unreadable crs attribute {str(attrs['crs'])[:60]!r}") from None
    raw_transform: Any = attrs.get("transform")
    transform = Affine(*raw_transform[:6]) if raw_transform else None
    return LabelRaster(path=path, shape=(int(array.shape[0]), int(array.shape[1])), crs=crs, transform=transform,
                       class_names=_split_names(attrs.get("class_names")),
                       nodata=_int_nodata(path, attrs.get("nodata")), reader=array, kind="zarr")


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and (path.suffix == ".zarr" or (path / "zarr.json").is_file()
                              or (path / ".zgroup").is_file() or (path / ".zarray").is_file())


def open_labels(path: str | os.PathLike[str], what: str = "prediction") -> LabelRaster:
    """Open a label GeoTIFF, a ``mask.zarr`` group or a tile-infer output directory.

    Parameters
    ----------
    path : str or PathLike
        The raster. For a directory that is not a zarr store, its ``labels.tif`` (else its
        ``mask.zarr``) is used.
    what : str
        ``"prediction"`` or ``"truth"``, for error messages.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p} does not exist; give a label GeoTIFF, a tile-infer output folder or a mask.zarr")
    if _is_zarr(p):
        return _open_zarr(p)
    if p.is_dir():
        if (p / "labels.tif").is_file():
            return _open_geotiff(p / "labels.tif")
        if _is_zarr(p / "mask.zarr"):
            return _open_zarr(p / "mask.zarr")
        raise InputError(f"{what} folder {p} has no labels.tif or mask.zarr; give a tile-infer output folder")
    return _open_geotiff(p)
