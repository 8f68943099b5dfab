"""Pixel grids of georeferenced rasters: are two rasters on one grid, and if not, how to fix it.

One check for every place that pairs rasters pixel by pixel (multi-input scenes, prediction
against truth, training images against their labels), with one message format: every property
that differs, then the ``gdalwarp`` command that resamples one raster onto the other's grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.transform import Affine

from .errors import InputError

__all__ = ["PixelGrid", "check_same_grid", "grid_differences", "same_transform", "warp_command"]


@dataclass(frozen=True)
class PixelGrid:
    """Where a raster's pixels lie: spatial ``shape`` (``(rows, cols)`` in 2D), CRS and 2D affine (None if absent).

    A raster georeferenced by ground control points instead of a transform has its ``gcps``
    ``(row, col, x, y, z)`` here.
    """

    shape: tuple[int, ...]
    crs: CRS | None
    transform: Affine | None
    gcps: tuple[tuple[float, ...], ...] = ()

    @classmethod
    def of(cls, shape: Sequence[int], crs: CRS | str | None, transform: Affine | Sequence[float] | None,
           gcps: Sequence[Sequence[float]] = ()) -> PixelGrid:
        """Build from a CRS as a rasterio CRS, WKT or ``EPSG:n``, and a transform as an Affine or 6 numbers."""
        if isinstance(crs, str):
            try:
                crs = CRS.from_user_input(crs)
            except CRSError:
                raise InputError(f"CRS {crs[:60]!r} is not understood") from None
        if transform is not None and not isinstance(transform, Affine):
            transform = Affine(*list(transform)[:6])
        return cls(tuple(int(s) for s in shape), crs or None, transform,
                   tuple(tuple(float(v) for v in g) for g in gcps))


def same_transform(a: Affine | None, b: Affine | None) -> bool:
    """Equal up to float noise: scale/shear to 1e-9 relative, origin to a millionth of a pixel on each axis."""
    if a is None or b is None:
        return a is None and b is None
    xpixel = max(abs(a.a), abs(a.b), 1e-12)
    ypixel = max(abs(a.e), abs(a.d), 1e-12)
    close_scale = all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) for x, y in
                      ((a.a, b.a), (a.b, b.b), (a.d, b.d), (a.e, b.e)))
    return close_scale and abs(a.c - b.c) <= 1e-6 * xpixel and abs(a.f - b.f) <= 1e-6 * ypixel


def _crs_text(crs: CRS | None) -> str:
    if crs is None:
        return "none"
    text = crs.to_string()
    return text if len(text) <= 60 else text[:57] + "..."


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _transform_text(t: Affine | None) -> str:
    if t is None:
        return "none"
    return f"({t.a:g}, {t.b:g}, {t.c:.10g}, {t.d:g}, {t.e:g}, {t.f:.10g})"


def grid_differences(reference: PixelGrid, other: PixelGrid, names: tuple[str, str] = ("reference", "other")
                     ) -> list[str]:
    """Each grid property that differs, as a phrase naming both values (empty: same grid)."""
    first, second = names
    diffs = []
    if reference.crs != other.crs:
        diffs.append(f"different CRS ({first} {_crs_text(reference.crs)}, {second} {_crs_text(other.crs)})")
    if reference.shape != other.shape:
        axes = " rows x cols" if len(reference.shape) == 2 else ""
        diffs.append(f"different shape ({first} {_shape_text(reference.shape)}, "
                     f"{second} {_shape_text(other.shape)}{axes})")
    if not same_transform(reference.transform, other.transform):
        diffs.append(f"different transform ({first} {_transform_text(reference.transform)}, "
                     f"{second} {_transform_text(other.transform)})")
    if reference.gcps != other.gcps:
        diffs.append(f"different ground control points ({first} {len(reference.gcps)}, {second} {len(other.gcps)})")
    return diffs


def warp_command(target: PixelGrid, source: Path) -> str | None:
    """The ``gdalwarp`` call that resamples ``source`` onto ``target`` (None for a rotated or ungeoreferenced grid).

    Nearest neighbour, so labels stay labels; the output goes next to the source as ``*_on_grid.tif``.
    """
    t = target.transform
    if t is None or t.b != 0 or t.d != 0 or len(target.shape) != 2:
        return None
    rows, cols = target.shape
    xs, ys = (t.c, t.c + cols * t.a), (t.f, t.f + rows * t.e)
    srs = f"-t_srs {target.crs.to_string()} " if target.crs is not None else ""
    return (f"gdalwarp {srs}-te {min(xs):.10g} {min(ys):.10g} {max(xs):.10g} {max(ys):.10g} "
            f"-tr {abs(t.a):g} {abs(t.e):g} -r near {source} {source.with_name(source.stem + '_on_grid.tif')}")


def check_same_grid(reference: PixelGrid, other: PixelGrid, *, names: tuple[str, str], paths: tuple[Path, Path]
                    ) -> None:
    """Raise one :class:`InputError` line naming every difference and how to resample ``other`` onto ``reference``.

    ``names`` label the two rasters in the message (e.g. ``("prediction", "truth")``).
    """
    diffs = grid_differences(reference, other, names)
    if not diffs:
        return
    command = warp_command(reference, paths[1])
    fix = f"resample the {names[1]} onto the {names[0]} grid" + (f": {command}" if command else
                                                                  " (gdalwarp -t_srs/-te/-tr)")
    raise InputError(f"{names[0]} {paths[0]} and {names[1]} {paths[1]} are not on the same grid: "
                     f"{'; '.join(diffs)}; {fix}")
