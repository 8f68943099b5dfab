"""Label rasters read by windows for evaluation: a label GeoTIFF, a ``mask.zarr`` or a tile-infer folder.

:func:`open_labels` gives a :class:`LabelRaster` whose :meth:`~LabelRaster.read` returns int32 labels of
a window, with declared nodata mapped to 255 (segflow's label nodata) and values outside 0..255 refused.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
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
_MULTILABEL_HINT = ("; segflow eval scores it against a truth raster with one 0/1 band per class (255 where not "
                    "labelled), class by class")



@dataclass
class LabelRaster:
    """A 2D label raster read by windows: a GeoTIFF band or a zarr ``labels`` array.

    ``shape`` is ``(rows, cols)``; ``crs`` / ``transform`` are None when the source has none;
    ``class_names`` come from the source's metadata (``class_names`` tag or attribute, or a
    ``classes`` tag) when present. A multi-band source (a multi-label run's ``labels.tif`` or
    ``present`` planes, a multi-label truth) has ``bands`` > 1 and is read one ``band`` (1-based) at
    a time: :meth:`plane` gives the view of another band; ``multilabel`` says that it was written
    by a multi-label model (one 0/1 plane per class).
    """

    path: Path
    shape: tuple[int, int]
    crs: CRS | None
    transform: Affine | None
    class_names: list[str] | None
    nodata: int | None
    reader: Any = field(repr=False)
    kind: str = "geotiff"
    bands: int = 1
    band: int = 1
    multilabel: bool = False

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Labels of the window ``rows = (r0, r1)``, ``cols = (c0, c1)`` as int32 ``(r1 - r0, c1 - c0)``.

        Declared nodata becomes 255; values outside 0..255 raise :class:`InputError`.
        """
        (r0, r1), (c0, c1) = rows, cols
        try:
            if self.kind == "zarr":
                block = np.asarray(self.reader[self.band - 1, r0:r1, c0:c1] if self.reader.ndim == 3
                                   else self.reader[r0:r1, c0:c1])
            else:
                block = self.reader.read(self.band, window=Window(c0, r0, c1 - c0, r1 - r0))
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

    def plane(self, band: int) -> LabelRaster:
        """The same raster read at ``band`` (1-based); it shares the open source (close only one)."""
        if not 1 <= band <= self.bands:
            raise InputError(f"{self.path} has {self.bands} band(s); band {band} does not exist")
        return replace(self, band=band)

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


def _open_geotiff(path: Path, multiband: bool = False) -> LabelRaster:
    try:
        ds = rasterio.open(path)
    except RasterioError as exc:
        raise InputError(
            f"cannot open {path} as a raster ({str(exc).strip()[:200]}); give a label GeoTIFF, a tile-infer "
            "output folder or a mask.zarr"
        ) from None
    try:
        tags = ds.tags()
        multilabel = tags.get("label_kind") == "multilabel"
        if ds.count != 1 and not multiband:
            raise InputError(
                f"{path} is a multi-label prediction (one 0/1 band per class){_MULTILABEL_HINT}" if multilabel else
                f"{path} has {ds.count} bands; expected a single-band label raster")
        if not np.issubdtype(np.dtype(ds.dtypes[0]), np.integer):
            raise InputError(
                f"{path} holds {ds.dtypes[0]} values; expected integer class labels (uint8), not scores"
            )
        names = _split_names(tags.get("class_names")) or _split_names(tags.get("classes"))
        if ds.count > 1 and names is None and all(ds.descriptions):
            names = [str(d) for d in ds.descriptions]
        georef = ds.crs is not None or not ds.transform.is_identity
        return LabelRaster(path=path, shape=(ds.height, ds.width), crs=ds.crs,
                           transform=ds.transform if georef else None, class_names=names,
                           nodata=_int_nodata(path, ds.nodata), reader=ds, bands=ds.count, multilabel=multilabel)
    except BaseException:
        ds.close()
        raise


def _open_zarr(path: Path, multiband: bool = False) -> LabelRaster:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises many types for unreadable stores
        raise InputError(f"cannot open {path} as a zarr group ({str(exc).strip()[:200]})") from None
    bands, multilabel = 1, False
    if isinstance(node, zarr.Group) and node.attrs.get("label_kind") == "multilabel" and "present" in node:
        store = MaskStore.open(path)
        if not multiband:
            raise InputError(f"{path} is a multi-label prediction (one 0/1 plane per class){_MULTILABEL_HINT}")
        array, attrs, multilabel = store.present, store.attrs, True
        bands = int(array.shape[0])
    elif isinstance(node, zarr.Group):
        if "labels" not in node:
            raise InputError(f"zarr group {path} has no 'labels' array; give the mask.zarr written by tile-infer")
        store = MaskStore.open(path)
        array, attrs = store.labels, store.attrs
    else:
        array, attrs = node, dict(node.attrs)
    if not isinstance(array, zarr.Array) or array.ndim != (3 if multilabel else 2):
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
    return LabelRaster(path=path, shape=(int(array.shape[-2]), int(array.shape[-1])), crs=crs, transform=transform,
                       class_names=_split_names(attrs.get("class_names")),
                       nodata=_int_nodata(path, attrs.get("nodata")), reader=array, kind="zarr", bands=bands,
                       multilabel=multilabel)


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and (path.suffix == ".zarr" or (path / "zarr.json").is_file()
                              or (path / ".zgroup").is_file() or (path / ".zarray").is_file())


def open_labels(path: str | os.PathLike[str], what: str = "prediction", multiband: bool = False) -> LabelRaster:
    """Open a label GeoTIFF, a ``mask.zarr`` group or a tile-infer output directory.

    Parameters
    ----------
    path : str or PathLike
        The raster. For a directory that is not a zarr store, its ``labels.tif`` (else its
        ``mask.zarr``) is used.
    what : str
        ``"prediction"`` or ``"truth"``, for error messages.
    multiband : bool
        Accept several bands (multi-label planes, read one at a time); else a multi-band raster is
        refused.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p} does not exist; give a label GeoTIFF, a tile-infer output folder or a mask.zarr")
    if _is_zarr(p):
        return _open_zarr(p, multiband)
    if p.is_dir():
        if (p / "labels.tif").is_file():
            return _open_geotiff(p / "labels.tif", multiband)
        if _is_zarr(p / "mask.zarr"):
            return _open_zarr(p / "mask.zarr", multiband)
        raise InputError(f"{what} folder {p} has no labels.tif or mask.zarr; give a tile-infer output folder")
    return _open_geotiff(p, multiband)
