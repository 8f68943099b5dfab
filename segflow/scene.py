"""The Scene: a lazy N-D image plus its geometry. Nothing reads pixels until a region is asked for."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import dask.array as da
import numpy as np

from .errors import ConfigError
from .geometry import Geometry, RasterGeometry, VolumeGeometry
from .tiling import Box

__all__ = ["Scene"]


@dataclass(frozen=True)
class Scene:
    """A lazily read image with an explicit axis order and its geometry.

    Attributes
    ----------
    data:
        dask array ``(C, Y, X)`` for rasters or ``(C, Z, Y, X)`` for volumes; channels first.
    axes:
        ``"CYX"`` or ``"CZYX"``.
    band_names:
        One name per channel (lower case; ``"band1"``... when the file names none).
    crs:
        Coordinate reference system as WKT, or None when the source has none.
    transform:
        For rasters, the 6 affine coefficients ``(a, b, c, d, e, f)`` mapping (col, row) to
        CRS coordinates as rasterio's ``Affine`` does; None when the source has none.
    nodata:
        The source's nodata value, or None.
    mask:
        Optional lazy boolean array over the spatial axes from the source's own mask (its
        mask band, its alpha bands): False where masked. None when the source has none.
    gcps:
        Ground control points ``(row, col, x, y, z)`` of a raster georeferenced by GCPs
        instead of a transform (e.g. Sentinel-1 GRD), in ``gcp_crs`` (WKT); empty when none.
    rpcs:
        Rational polynomial camera model as GDAL's ``RPC`` metadata strings (e.g. a Level-1
        optical scene), or None. GCPs and RPCs are carried to the outputs so that a mask can
        be orthorectified the same way as its scene.
    source:
        Where the pixels come from (a path), for messages and provenance.
    volume:
        For volumes, the voxel-to-world geometry (see :attr:`geometry`).
    meta:
        Extra provenance (driver, dtype, block size...).
    alpha_bands:
        0-based indices of the bands whose colour interpretation is alpha (transparency, not
        data); the reader folds them into ``mask``.
    scales, offsets:
        Per band, the source's scale and offset: the physical value is ``stored * scale +
        offset`` (GDAL's convention, e.g. reflectance = DN * 0.0001 - 0.1). Empty = 1 and 0 for
        every band. ``data`` holds the stored values; :meth:`scaled` applies them.
    """

    data: da.Array
    axes: str
    band_names: tuple[str, ...]
    crs: str | None = None
    transform: tuple[float, ...] | None = None
    nodata: float | None = None
    mask: da.Array | None = None
    gcps: tuple[tuple[float, float, float, float, float], ...] = ()
    gcp_crs: str | None = None
    rpcs: dict[str, str] | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    volume: VolumeGeometry | None = None
    alpha_bands: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()
    offsets: tuple[float, ...] = ()

    @property
    def geometry(self) -> Geometry:
        """The scene's geometry as one value: a volume's voxel-to-world affine, else the raster's georeferencing."""
        if self.volume is not None:
            return self.volume
        return RasterGeometry(crs=self.crs, transform=self.transform, gcps=self.gcps, gcp_crs=self.gcp_crs,
                              rpcs=self.rpcs)

    @classmethod
    def from_array(cls, array: np.ndarray | da.Array, *, chunks: int | str = "auto", nodata: float | None = None,
                   band_names: Sequence[str] | None = None, **geometry: Any) -> Scene:
        """A scene over an in-memory (or dask) array ``(C, Y, X)`` or ``(C, Z, Y, X)``."""
        data = array if isinstance(array, da.Array) else da.from_array(np.asarray(array), chunks=chunks)
        axes = {3: "CYX", 4: "CZYX"}.get(data.ndim)
        if axes is None:
            raise ConfigError(f"array must be (C, Y, X) or (C, Z, Y, X), got shape {data.shape}")
        names = tuple(band_names) if band_names else tuple(f"band{i + 1}" for i in range(data.shape[0]))
        return cls(data=data, axes=axes, band_names=names, nodata=nodata, source="<array>", **geometry)

    def __post_init__(self) -> None:
        if self.axes not in ("CYX", "CZYX"):
            raise ConfigError(f"scene axes must be 'CYX' or 'CZYX', got {self.axes!r}")
        if self.data.ndim != len(self.axes):
            raise ConfigError(f"scene data has {self.data.ndim} dimensions but axes {self.axes!r}")
        if len(self.band_names) != self.data.shape[0]:
            raise ConfigError(f"{len(self.band_names)} band names for {self.data.shape[0]} channels")
        for what, values in (("scales", self.scales), ("offsets", self.offsets)):
            if values and len(values) != self.data.shape[0]:
                raise ConfigError(f"{len(values)} {what} for {self.data.shape[0]} channels")

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape[1:])

    @property
    def spatial_dims(self) -> int:
        return self.data.ndim - 1

    @property
    def num_bands(self) -> int:
        return int(self.data.shape[0])

    @property
    def valid(self) -> da.Array | None:
        """Lazy boolean array over the spatial axes: True where the pixel holds data.

        A pixel is invalid where ``mask`` is False (the source's mask band or an alpha band
        that is 0), where every band of this scene equals ``nodata`` (GDAL's dataset-mask
        rule, over the bands this scene holds: after :meth:`select_bands`, the model's bands)
        or where any band is NaN or infinite. None when every pixel is valid by construction
        (integer data, no nodata, no mask). See "Nodata rule" in the README.
        """
        parts = [] if self.mask is None else [self.mask]
        if self.nodata is not None and not np.isnan(self.nodata):
            parts.append((self.data != self.nodata).any(axis=0))
        if np.issubdtype(self.data.dtype, np.floating):
            parts.append(da.isfinite(self.data).all(axis=0))
        if not parts:
            return None
        valid = parts[0]
        for part in parts[1:]:
            valid = valid & part
        return valid

    def select_bands(self, indices: Sequence[int]) -> Scene:
        """A scene holding only the channels ``indices`` (0-based), in that order."""
        idx = [int(i) for i in indices]
        return replace(self, data=self.data[idx], band_names=tuple(self.band_names[i] for i in idx),
                       alpha_bands=tuple(n for n, i in enumerate(idx) if i in self.alpha_bands),
                       scales=tuple(self.scales[i] for i in idx) if self.scales else (),
                       offsets=tuple(self.offsets[i] for i in idx) if self.offsets else ())

    @property
    def scaling(self) -> list[tuple[float, float]]:
        """``(scale, offset)`` of each band (``(1.0, 0.0)`` where the source declares none)."""
        n = self.num_bands
        return list(zip(self.scales or (1.0,) * n, self.offsets or (0.0,) * n, strict=True))

    def scaled(self) -> Scene:
        """This scene in physical values: ``stored * scale + offset`` per band (computed in float64, stored
        as float32), lazily.

        Validity is decided first, on the stored values (a nodata value is a stored value),
        and kept as the new scene's ``mask``. Returns ``self`` when every band's scale is 1
        and offset 0.
        """
        pairs = self.scaling
        if all(s == 1.0 and o == 0.0 for s, o in pairs):
            return self
        shape = (self.num_bands,) + (1,) * self.spatial_dims
        scale = np.asarray([s for s, _ in pairs], dtype=np.float64).reshape(shape)
        offset = np.asarray([o for _, o in pairs], dtype=np.float64).reshape(shape)
        # in double precision, then rounded once, as GDAL (gdal_translate -unscale) and nibabel do
        data = (self.data.astype(np.float64) * scale + offset).astype(np.float32)
        return replace(self, data=data, mask=self.valid, nodata=None, scales=(), offsets=())

    def read(self, box: Box) -> tuple[np.ndarray, np.ndarray | None]:
        """Read the pixels of ``box``: ``(C, *box.shape)`` data and the validity mask (or None).

        Data and mask are computed together, so reads shared by both happen once, and each
        block is stored straight into the result (no concatenation copy).
        """
        data = self.data[(slice(None), *box.slices)]
        values = np.empty(data.shape, dtype=data.dtype)
        valid_all = self.valid
        if valid_all is None:
            da.store(data, values, lock=False, scheduler="threads")
            return values, None
        valid = np.empty(box.shape, dtype=bool)
        da.store([data, valid_all[box.slices]], [values, valid], lock=False, scheduler="threads")
        return values, valid
