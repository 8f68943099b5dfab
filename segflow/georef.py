"""Pixel grids of georeferenced rasters: are two rasters on one grid, and if not, how to fix it.

One check for every place that pairs rasters pixel by pixel (multi-input scenes, prediction
against truth, training images against their labels), with one message format: every property
that differs, then the command that fixes it: ``gdal_translate -a_srs`` where one raster's pixels are on
the grid but its georeferencing is missing, ``gdalwarp`` that resamples one raster onto the other's grid
otherwise (:func:`fix_command`).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.transform import Affine

from .errors import InputError

__all__ = ["PixelGrid", "check_same_grid", "fix_command", "grid_differences", "same_transform", "warp_command"]


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
    return f"({', '.join(_num(v) for v in (t.a, t.b, t.c, t.d, t.e, t.f))})"


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


def _num(value: float) -> str:
    """The shortest text that reads back as exactly ``value`` (``500000``, ``0.000269494585236``)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _srs(crs: CRS) -> str:
    return shlex.quote(crs.to_string())


def _north_up(t: Affine | None) -> bool:
    return t is not None and t.b == 0 and t.d == 0 and t.a > 0 and t.e < 0


def _renamed(path: Path, suffix: str) -> Path:
    return path.with_name(path.stem + suffix + ".tif")


def warp_command(target: PixelGrid, source: Path, *, nodata: int | None = None, source_crs: CRS | None = None
                 ) -> str | None:
    """The ``gdalwarp`` call that resamples ``source`` onto ``target`` (None unless ``target`` is a north-up 2D grid).

    Nearest neighbour, so labels stay labels; extents and pixel sizes written exactly (the
    output's grid equals ``target``'s); the output goes next to the source as ``*_on_grid.tif``.
    ``nodata``: the value of output pixels no source pixel covers (``-dstnodata``; else GDAL's
    default, the source's nodata or 0). ``source_crs``: the CRS to read a source without one in
    (``-s_srs``).
    """
    t = target.transform
    if t is None or not _north_up(t) or len(target.shape) != 2:
        return None
    rows, cols = target.shape
    srs = (f"-s_srs {_srs(source_crs)} " if source_crs is not None else "") + (
        f"-t_srs {_srs(target.crs)} " if target.crs is not None else "")
    fill = f"-dstnodata {nodata} " if nodata is not None else ""
    return (f"gdalwarp {srs}-te {_num(t.c)} {_num(t.f + rows * t.e)} {_num(t.c + cols * t.a)} {_num(t.f)} "
            f"-tr {_num(t.a)} {_num(-t.e)} -r near {fill}{shlex.quote(str(source))} "
            f"{shlex.quote(str(_renamed(source, '_on_grid')))}")


def _assign_command(grid: PixelGrid, source: Path, *, transform: bool) -> str | None:
    """The ``gdal_translate`` call that gives ``source`` (same pixels, georeferencing missing) ``grid``'s CRS and,
    with ``transform``, its north-up transform; the output goes next to the source as ``*_georef.tif``."""
    if source.is_dir():  # a zarr store: gdal_translate does not write one
        return None
    args = f"-a_srs {_srs(grid.crs)} " if grid.crs is not None else ""
    t = grid.transform
    if transform and t is not None:
        rows, cols = grid.shape
        args += f"-a_ullr {_num(t.c)} {_num(t.f)} {_num(t.c + cols * t.a)} {_num(t.f + rows * t.e)} "
    return f"gdal_translate {args}{shlex.quote(str(source))} {shlex.quote(str(_renamed(source, '_georef')))}"


def _bounds(grid: PixelGrid) -> tuple[float, float, float, float]:
    t = grid.transform
    assert t is not None
    rows, cols = grid.shape
    xs, ys = (t.c, t.c + cols * t.a), (t.f, t.f + rows * t.e)
    return min(xs), min(ys), max(xs), max(ys)


def _apart(reference: PixelGrid, other: PixelGrid) -> bool:
    """Whether two georeferenced 2D grids lie in different places on the ground (False when that cannot be told)."""
    from rasterio.warp import transform_bounds

    try:
        x0, y0, x1, y1 = transform_bounds(other.crs, reference.crs, *_bounds(other))
    except Exception:  # PROJ refuses some pairs of CRSs or areas; then resampling is the only advice
        return False
    a0, b0, a1, b1 = _bounds(reference)
    finite = all(math.isfinite(v) for v in (x0, y0, x1, y1))
    return finite and (x1 <= a0 or x0 >= a1 or y1 <= b0 or y0 >= b1)


def fix_command(reference: PixelGrid, other: PixelGrid, *, names: tuple[str, str], paths: tuple[Path, Path],
                nodata: int | None = None) -> str | None:
    """What to run so that the two rasters share one grid: an instruction with its commands (None if unknown).

    * Same pixels, georeferencing missing on one side (no CRS on the same transform, or no CRS and no
      transform on the same shape): give that raster the other's with ``gdal_translate -a_srs [-a_ullr]``;
      ``gdalwarp`` cannot, as it has no CRS to reproject from.
    * Same pixel grid numbers in two CRSs that put the rasters in different places: one CRS label is
      wrong; both relabelling commands are given (which one is right is for the user to say).
    * Otherwise resample ``other`` onto ``reference`` with ``gdalwarp`` (:func:`warp_command`); a raster
      without a CRS is read in the other's CRS (``-s_srs``), or first given it (``-a_srs``) when it is the
      reference, and the instruction says that this is assumed.
    """
    (first, second), (path1, path2) = names, paths
    if reference.gcps or len(reference.shape) != 2:
        return None
    if reference.shape == other.shape and not other.gcps:
        for lacking, having, name, path, whose in ((reference, other, first, path1, second),
                                                   (other, reference, second, path2, first)):
            crs_only = having.crs is not None and same_transform(lacking.transform, having.transform)
            nothing = lacking.transform is None and _north_up(having.transform)
            command = _assign_command(having, path, transform=not crs_only) if lacking.crs is None and (
                crs_only or nothing) else None
            if command:
                missing = "CRS" if crs_only else "georeferencing"
                return (f"the {name}'s pixels are on the {whose}'s grid but its {missing} is missing: give it the "
                        f"{whose}'s: {command}; then use {_renamed(path, '_georef')} as the {name}")
    if not (_north_up(reference.transform) and other.transform is not None):
        return None
    if (reference.crs is not None and other.crs is not None and reference.shape == other.shape
            and same_transform(reference.transform, other.transform) and _apart(reference, other)):
        to_first = _assign_command(other, path1, transform=False)
        to_second = _assign_command(reference, path2, transform=False)
        if to_first is None or to_second is None:
            return None
        return (f"the same pixel grid in two CRSs puts them in different places, so one CRS is wrong: if the "
                f"{second}'s is right, {to_first} and use {_renamed(path1, '_georef')} as the {first}; if the "
                f"{first}'s, {to_second} and use {_renamed(path2, '_georef')} as the {second}")
    if reference.crs is None and other.crs is not None:
        assign = _assign_command(other, path1, transform=False)
        warp = warp_command(PixelGrid(reference.shape, other.crs, reference.transform), path2, nodata=nodata)
        if assign is None or warp is None:
            return None
        return (f"assuming the {first}'s coordinates are in the {second}'s CRS, give it that CRS and resample the "
                f"{second} onto its grid: {assign} && {warp}; then use {_renamed(path1, '_georef')} as the {first} "
                f"and {_renamed(path2, '_on_grid')} as the {second}")
    assumed = reference.crs if other.crs is None else None
    warp = warp_command(reference, path2, nodata=nodata, source_crs=assumed)
    if warp is None:
        return None
    assumption = f" (assuming its coordinates are in the {first}'s CRS)" if assumed is not None else ""
    return f"resample the {second} onto the {first} grid{assumption}: {warp}; then use " \
           f"{_renamed(path2, '_on_grid')} as the {second}"


def check_same_grid(reference: PixelGrid, other: PixelGrid, *, names: tuple[str, str], paths: tuple[Path, Path],
                    nodata: int | None = None) -> None:
    """Raise one :class:`InputError` line naming every difference and the commands that fix it (:func:`fix_command`).

    ``names`` label the two rasters in the message (e.g. ``("prediction", "truth")``); ``nodata``
    is the value a resampled ``other`` gets where nothing covers it (e.g. 255 for labels).
    """
    diffs = grid_differences(reference, other, names)
    if not diffs:
        return
    fix = fix_command(reference, other, names=names, paths=paths, nodata=nodata)
    if fix is None:
        fix = f"resample the {names[1]} onto the {names[0]} grid (gdalwarp -t_srs/-te/-tr)"
    raise InputError(f"{names[0]} {paths[0]} and {names[1]} {paths[1]} are not on the same grid: "
                     f"{'; '.join(diffs)}; {fix}")
