"""Geometry value types: where a scene's pixels are in the world.

A raster's geometry is its CRS, the affine transform from (col, row) to CRS coordinates, and
the ground control points or RPC camera model of a scene georeferenced that way. A volume's
geometry is the voxel-to-world 4×4 affine (over ``Z, Y, X`` voxel indices) and the voxel
spacing. Readers produce one of these; sinks and the mask store consume it, so nothing
downstream needs to know the file format a scene came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .tiling import Box

__all__ = ["Box", "Geometry", "RasterGeometry", "VolumeGeometry"]

GCP = tuple[float, float, float, float, float]


@dataclass(frozen=True)
class RasterGeometry:
    """A 2D raster's georeferencing.

    ``crs``: WKT or None. ``transform``: rasterio's 6 affine coefficients ``(a, b, c, d, e, f)``
    or None. ``gcps``: ground control points ``(row, col, x, y, z)`` in ``gcp_crs`` (WKT).
    ``rpcs``: GDAL's ``RPC`` metadata strings, or None.
    """

    crs: str | None = None
    transform: tuple[float, ...] | None = None
    gcps: tuple[GCP, ...] = ()
    gcp_crs: str | None = None
    rpcs: Mapping[str, str] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.transform is not None and len(self.transform) != 6:
            raise ConfigError(f"a raster transform has 6 coefficients (a, b, c, d, e, f), got {len(self.transform)}")

    @property
    def kind(self) -> str:
        return "raster"

    def attrs(self) -> dict[str, Any]:
        """JSON-ready attributes for the mask store (``crs``, ``transform``, and GCPs/RPCs when present)."""
        out: dict[str, Any] = {"crs": self.crs, "transform": list(self.transform) if self.transform else None}
        if self.gcps:
            out.update(gcps=[list(g) for g in self.gcps], gcp_crs=self.gcp_crs)
        if self.rpcs:
            out["rpcs"] = dict(self.rpcs)
        return out


@dataclass(frozen=True)
class VolumeGeometry:
    """A 3D volume's voxel-to-world mapping: a 4×4 affine over ``(z, y, x, 1)`` and the spacing ``(dz, dy, dx)``."""

    affine: tuple[tuple[float, ...], ...]
    spacing: tuple[float, float, float]
    frame: str = "RAS"

    def __post_init__(self) -> None:
        if len(self.affine) != 4 or any(len(row) != 4 for row in self.affine):
            raise ConfigError("a volume affine is 4×4 (voxel z, y, x, 1 → world)")
        if len(self.spacing) != 3 or any(s <= 0 for s in self.spacing):
            raise ConfigError(f"voxel spacing must be 3 positive numbers, got {self.spacing}")

    @classmethod
    def from_matrix(cls, matrix: Sequence[Sequence[float]], spacing: Sequence[float], frame: str = "RAS"
                    ) -> VolumeGeometry:
        return cls(tuple(tuple(float(v) for v in row) for row in matrix),
                   tuple(float(s) for s in spacing), frame)  # type: ignore[arg-type]

    @property
    def kind(self) -> str:
        return "volume"

    def attrs(self) -> dict[str, Any]:
        return {"affine": [list(r) for r in self.affine], "spacing": list(self.spacing), "frame": self.frame}


Geometry = RasterGeometry | VolumeGeometry
