"""Write a synthetic scene (and its truth) as tiled, DEFLATE-compressed GeoTIFFs, window by window.

:func:`write_synthetic_scene` generates the region ``[0, height) x [0, width)`` of the infinite
scene of a seed (:func:`~segflow.synthetic.scene.synthesize_block`) block by block on a few
threads, so memory stays bounded whatever the scene size, and publishes both files atomically.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioError
from rasterio.transform import Affine
from rasterio.windows import Window

from segflow.errors import ConfigError, OutputError
from segflow.io.atomic import atomic_path

from .noise import _MASK64
from .scene import BANDS, CLASSES, TRUTH_NODATA, _band_indices, _check_int, _check_nodata, synthesize_block

__all__ = ["SyntheticScene", "write_synthetic_scene"]


@dataclass(frozen=True)
class SyntheticScene:
    """A synthetic scene written by :func:`write_synthetic_scene`.

    Attributes
    ----------
    path : Path
        The image GeoTIFF, ``uint16`` reflectance x 10000, one band per name in ``bands``.
    truth_path : Path or None
        The ``uint8`` truth GeoTIFF on the same grid, or None when none was written.
    width, height : int
        Scene size in pixels (columns, rows).
    bands : tuple of str
        Band names in file order (band 1 first).
    crs : str
        Coordinate reference system, e.g. ``"EPSG:32633"``.
    transform : Affine
        Pixel-to-CRS transform, ``Affine(pixel_size, 0, x0, 0, -pixel_size, y0)``.
    nodata : int or None
        Image nodata value, or None when the scene has no nodata.
    """

    path: Path
    truth_path: Path | None
    width: int
    height: int
    bands: tuple[str, ...]
    crs: str
    transform: Affine
    nodata: int | None


def _windows(width: int, height: int, block: int) -> Iterator[Window]:
    """Row-major windows of at most ``block`` x ``block`` pixels covering the scene."""
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield Window(col, row, min(block, width - col), min(block, height - row))


def _in_order(
    windows: Iterator[Window], make: Callable[[Window], tuple[np.ndarray, np.ndarray]], workers: int
) -> Iterator[tuple[Window, tuple[np.ndarray, np.ndarray]]]:
    """Generate blocks on ``workers`` threads, yielding them in order with bounded look-ahead."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[tuple[Window, Future[tuple[np.ndarray, np.ndarray]]]] = deque()
        for window in windows:
            pending.append((window, pool.submit(make, window)))
            if len(pending) > workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def _profile(width: int, height: int, count: int, dtype: str, tiled_block: int) -> dict[str, object]:
    """Creation options shared by the image and the truth GeoTIFF."""
    return {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "tiled": True,
        "blockxsize": tiled_block,
        "blockysize": tiled_block,
        "compress": "deflate",
        "predictor": 2,
        "bigtiff": "IF_SAFER",
        "num_threads": "ALL_CPUS",
    }


@dataclass(frozen=True)
class _Plan:
    """Validated parameters of :func:`write_synthetic_scene`."""

    width: int
    height: int
    seed: int
    band_index: tuple[int, ...]
    nodata: int | None
    block: int
    tiled_block: int


def _check_real(name: str, value: object, hint: str, positive: bool = False) -> float:
    """Return ``value`` as float if it is a finite (and, if asked, positive) real number."""
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    number = float(value) if ok else float("nan")  # type: ignore[arg-type]
    if np.isfinite(number) and (number > 0 or not positive):
        return number
    expected = "a finite number > 0" if positive else "a finite number"
    raise ConfigError(f"{name}={value!r} is invalid: expected {expected}; {hint}")


def _geotransform(crs: object, origin: object, pixel_size: object) -> Affine:
    """Validate the georeferencing and build the north-up pixel-to-CRS transform."""
    try:
        CRS.from_user_input(crs)
    except (CRSError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"crs={crs!r} is invalid: expected a CRS rasterio understands ({exc}); pass e.g. 'EPSG:32633'"
        ) from exc
    if not isinstance(origin, tuple | list) or len(origin) != 2:
        raise ConfigError(
            f"origin={origin!r} is invalid: expected an (x, y) pair of CRS coordinates of the top-left "
            "corner; pass e.g. (500000.0, 5000000.0)"
        )
    hint = "pass the top-left corner's CRS coordinates"
    x = _check_real("origin[0]", origin[0], hint)
    y = _check_real("origin[1]", origin[1], hint)
    size = _check_real("pixel_size", pixel_size, "pass the pixel side in CRS units, e.g. 10.0", positive=True)
    return Affine(size, 0.0, x, 0.0, -size, y)


def _check_tile(tiled_block: object) -> int:
    """Validate the GeoTIFF tile side (a multiple of 16)."""
    tile = _check_int(
        "tiled_block", tiled_block, 16, "pass a GeoTIFF tile side that is a multiple of 16, e.g. 256"
    )
    if tile % 16:
        raise ConfigError(
            f"tiled_block={tiled_block!r} is invalid: expected a multiple of 16 (GeoTIFF tiles); "
            "pass e.g. 256"
        )
    return tile


def _validate(
    width: object,
    height: object,
    seed: object,
    bands: Sequence[str],
    nodata: object,
    block: object,
    tiled_block: object,
) -> _Plan:
    """Check the writer's raster parameters and round ``block`` up to whole tiles."""
    band_index = _band_indices(bands)
    size_hint = "pass the scene size in pixels"
    width_ = _check_int("width", width, 1, size_hint)
    height_ = _check_int("height", height, 1, size_hint)
    seed_ = _check_int("seed", seed, None, "pass an integer seed such as 0") & _MASK64
    block_ = _check_int("block", block, 1, "pass the processing block side in pixels, e.g. 1024")
    tile = _check_tile(tiled_block)
    block_ = -(-block_ // tile) * tile  # whole tiles per window: every tile is written once
    return _Plan(width_, height_, seed_, band_index, _check_nodata(nodata), block_, tile)


def _write(plan: _Plan, image_path: Path, truth_path: Path | None, crs: str, transform: Affine) -> None:
    """Write the image (and truth) GeoTIFFs block by block."""
    bands = tuple(BANDS[i] for i in plan.band_index)
    image_profile = _profile(plan.width, plan.height, len(bands), "uint16", plan.tiled_block)
    image_profile.update(crs=crs, transform=transform, nodata=plan.nodata)
    truth_profile = _profile(plan.width, plan.height, 1, "uint8", plan.tiled_block)
    truth_nodata = TRUTH_NODATA if plan.nodata is not None else None
    truth_profile.update(crs=crs, transform=transform, nodata=truth_nodata)

    def make(window: Window) -> tuple[np.ndarray, np.ndarray]:
        return synthesize_block(
            int(window.row_off),
            int(window.col_off),
            int(window.height),
            int(window.width),
            seed=plan.seed,
            bands=bands,
            nodata=plan.nodata,
            scene_shape=(plan.height, plan.width),
        )

    workers = max(1, min(4, os.cpu_count() or 1))
    with rasterio.Env(GDAL_CACHEMAX=256), ExitStack() as stack:
        image_dst = stack.enter_context(rasterio.open(image_path, "w", **image_profile))
        image_dst.descriptions = bands
        truth_dst = None
        if truth_path is not None:
            truth_dst = stack.enter_context(rasterio.open(truth_path, "w", **truth_profile))
            truth_dst.set_band_description(1, "truth")
            truth_dst.update_tags(classes=",".join(CLASSES))
        windows = _windows(plan.width, plan.height, plan.block)
        for window, (image, truth) in _in_order(windows, make, workers):
            image_dst.write(image, window=window)
            if truth_dst is not None:
                truth_dst.write(truth, 1, window=window)


def write_synthetic_scene(
    path: str | os.PathLike[str],
    *,
    width: int,
    height: int,
    seed: int = 0,
    truth_path: str | os.PathLike[str] | None = None,
    bands: Sequence[str] = BANDS,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (500000.0, 5000000.0),
    pixel_size: float = 10.0,
    nodata: int | None = None,
    block: int = 1024,
    tiled_block: int = 256,
) -> SyntheticScene:
    """Write a synthetic scene (and optionally its truth) as tiled, DEFLATE-compressed GeoTIFFs.

    The scene is the region ``[0, height) x [0, width)`` of the infinite scene of ``seed``
    (see :func:`synthesize_block`). It is generated and written window by window, so memory
    stays bounded whatever the scene size; each file is written to a temporary file in its
    directory and moved into place atomically.

    Parameters
    ----------
    path : path-like
        Output image GeoTIFF: ``uint16`` reflectance x 10000, bands in ``bands`` order, band
        descriptions set to the band names.
    width, height : int
        Scene size in pixels (columns, rows), each >= 1.
    seed : int, optional
        Scene seed.
    truth_path : path-like or None, optional
        Output truth GeoTIFF (``uint8`` class indices, description ``"truth"``, tag
        ``classes`` listing :data:`CLASSES`); not written when None.
    bands : sequence of str, optional
        Band names from :data:`BANDS`, in file order.
    crs : str, optional
        Coordinate reference system of both files.
    origin : (float, float), optional
        CRS ``(x, y)`` of the scene's top-left corner.
    pixel_size : float, optional
        Pixel side in CRS units (metres for UTM), > 0.
    nodata : int or None, optional
        Image nodata value; when set, the top-left triangle ``row + col < min(width, height) // 4``
        is nodata (truth :data:`TRUTH_NODATA`, which is then the truth file's nodata).
    block : int, optional
        Side in pixels of the windows generated at once (rounded up to whole tiles); the
        result does not depend on it, only memory use and speed do.
    tiled_block : int, optional
        GeoTIFF tile side in pixels, a multiple of 16.

    Returns
    -------
    SyntheticScene
        Paths and geometry of what was written.

    Raises
    ------
    ConfigError
        If a parameter is out of range.
    OutputError
        If an output file cannot be written.
    """
    plan = _validate(width, height, seed, bands, nodata, block, tiled_block)
    transform = _geotransform(crs, origin, pixel_size)
    image_path = Path(path)
    truth_file = Path(truth_path) if truth_path is not None else None
    if truth_file is not None and truth_file.resolve() == image_path.resolve():
        raise ConfigError(
            f"truth_path={str(truth_file)!r} is the image path: expected a different file; "
            "pass another truth_path or None"
        )
    hint = "expected a writable location with free space; check the directory and disk"
    try:
        with ExitStack() as stack:  # both written, then each renamed into place (truth first)
            image_tmp = stack.enter_context(atomic_path(image_path, hint=hint))
            truth_tmp = stack.enter_context(atomic_path(truth_file, hint=hint)) if truth_file is not None else None
            _write(plan, image_tmp, truth_tmp, crs, transform)
    except RasterioError as exc:
        raise OutputError(f"cannot write {str(image_path)!r}: {exc}; {hint}") from exc
    return SyntheticScene(
        path=image_path,
        truth_path=truth_file,
        width=plan.width,
        height=plan.height,
        bands=tuple(BANDS[i] for i in plan.band_index),
        crs=crs,
        transform=transform,
        nodata=plan.nodata,
    )
