"""Truth objects from a vector file, on a raster's pixel grid (for :mod:`segflow.object_eval`).

A truth file is one layer of Polygon / MultiPolygon features (GeoPackage, FlatGeobuf, GeoJSON,
Shapefile... read through GDAL by pyogrio; GeoParquet through pyarrow) with a class per feature
from its ``class_name``, ``class`` or ``class_id`` column, or one class given for all.
:func:`read_truth` checks the features (polygonal, valid, with a known class), reprojects them
into the grid's CRS (pyproj, vertex by vertex, so edges stay straight in the grid's CRS) and maps
them into pixel coordinates ``(col, row)``; :func:`members` rasterizes them over one block with
GDAL's rule (a pixel belongs to a polygon when its centre lies inside), keeping every polygon a
pixel lies in when polygons overlap. Features are held in memory (geometry and class only).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from rasterio.enums import MergeAlg

from ..errors import InputError
from ..georef import PixelGrid
from ..labels import LABEL_NODATA
from ..tiling import Box

__all__ = ["CLASS_COLUMNS", "TruthPolygons", "members", "read_truth"]

CLASS_COLUMNS = ("class_name", "class", "class_id")


@dataclass(frozen=True)
class TruthPolygons:
    """Feature ``k`` (0-based, file order; truth id ``k + 1``): ``geometry[k]`` in the grid's pixel
    coordinates ``(col, row)`` (empty for a missing geometry), ``class_id[k]``; ``tree`` indexes them;
    ``notes`` say what was done to them (reprojection)."""

    geometry: np.ndarray
    class_id: np.ndarray
    tree: shapely.STRtree
    notes: list[str]


def _read_table(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray], str | None]:
    """WKB geometries, the class columns present and the CRS (None: none declared) of the one layer of ``path``."""
    if path.suffix.lower() in (".parquet", ".geoparquet"):
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
            meta = json.loads((parquet.schema_arrow.metadata or {})[b"geo"])
            name = meta["primary_column"]
            column = meta["columns"][name]
        except KeyError:
            raise InputError(f"{path} has no GeoParquet 'geo' metadata naming its geometry column; write it as "
                             "GeoParquet (geopandas to_parquet, ogr2ogr)") from None
        except Exception as exc:  # pyarrow raises many types for unreadable files
            raise InputError(f"cannot read {path} as GeoParquet ({' '.join(str(exc).split())[:200]})") from None
        if column.get("encoding", "WKB").upper() != "WKB":
            raise InputError(f"{path} stores geometry as {column['encoding']!r}; re-write it with WKB encoding "
                             "(the GeoParquet default)")
        crs: Any = column.get("crs", "OGC:CRS84")  # absent means OGC:CRS84, null means none (GeoParquet 1.1)
        wanted = [c for c in CLASS_COLUMNS if c in parquet.schema_arrow.names]
        table = parquet.read(columns=[*wanted, name])
        wkb = np.asarray(table.column(name).to_pylist(), dtype=object)
        columns = {c: np.asarray(table.column(c).to_pylist(), dtype=object) for c in wanted}
        if crs is not None and not isinstance(crs, str):
            crs = json.dumps(crs)
        return wkb, columns, crs
    import pyogrio
    import pyogrio.raw

    try:
        layers = pyogrio.list_layers(str(path))
        if len(layers) != 1:
            raise InputError(f"{path} has {len(layers)} layers ({', '.join(str(n) for n in layers[:, 0])}); "
                             f"give a file with one, e.g. ogr2ogr truth.gpkg {path.name} LAYER")
        fields = list(pyogrio.read_info(str(path))["fields"])
        wanted = [c for c in CLASS_COLUMNS if c in fields]
        meta, _, wkb, data = pyogrio.raw.read(str(path), columns=wanted, force_2d=True)
    except InputError:
        raise
    except Exception as exc:  # pyogrio/GDAL errors
        raise InputError(f"cannot read {path} as a vector file ({' '.join(str(exc).split())[:200]}); give a "
                         "GeoPackage, FlatGeobuf, GeoJSON, Shapefile or GeoParquet file") from None
    return np.asarray(wkb, dtype=object), dict(zip(meta["fields"], data, strict=True)), meta["crs"]


def _class_ids(path: Path, columns: dict[str, np.ndarray], n: int, names: Sequence[str] | None,
               truth_class: str | None) -> np.ndarray:
    """The class id of every feature, from ``truth_class`` or the first class column present."""
    def by_name(value: str, where: str) -> int:
        if names and value in names:
            return list(names).index(value)
        if value.isdigit():
            return int(value)
        known = f"the classes are {', '.join(names)}" if names else \
            "the labels name no classes, so give class ids (a class_id column)"
        raise InputError(f"{where} names class {value!r}; {known}")

    if truth_class is not None:
        ids = np.full(n, by_name(truth_class, "--truth-class"), np.int64)
    else:
        column = next((c for c in CLASS_COLUMNS if c in columns), None)
        if column is None:
            raise InputError(f"{path} has no class column ({', '.join(CLASS_COLUMNS)}); add one, or give "
                             "--truth-class NAME when every feature is of one class")
        values = columns[column]
        ids = np.zeros(n, np.int64)
        for k, value in enumerate(values):
            where = f"{path} feature {k} ({column})"
            if value is None or (isinstance(value, float) and math.isnan(value)):
                raise InputError(f"{where} has no class; give every feature a class")
            if isinstance(value, str):
                ids[k] = by_name(value, where)
            elif math.isfinite(float(value)) and float(value) == int(value):
                ids[k] = int(value)
            else:
                raise InputError(f"{where} is {value!r}; expected an integer class id or a class name")
    top = len(names) if names else LABEL_NODATA
    bad = np.flatnonzero((ids < 1) | (ids >= top))
    if bad.size:
        raise InputError(f"{path} feature {bad[0]} is of class {ids[bad[0]]}; object classes are 1..{top - 1} "
                         "(0 is background)")
    return ids


def _to_grid_crs(geometry: np.ndarray, crs: str | None, grid: PixelGrid, path: Path, grid_name: str
                 ) -> list[str]:
    """Reproject ``geometry`` (in place) into the grid's CRS; returns a note when it was."""
    from pyproj import CRS as ProjCRS
    from pyproj import Transformer

    if crs is None and grid.crs is None:
        return []
    if crs is None or grid.crs is None:
        missing, other = (str(path), grid_name) if crs is None else (grid_name, str(path))
        raise InputError(f"{missing} declares no CRS but {other} does; declare it (e.g. ogr2ogr -a_srs or "
                         "gdal_edit -a_srs) so the two can be compared")
    source, target = ProjCRS.from_user_input(crs), ProjCRS.from_user_input(grid.crs.to_wkt())
    if source.equals(target, ignore_axis_order=True):
        return []
    transformer = Transformer.from_crs(source, target, always_xy=True)

    def move(xy: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    geometry[:] = shapely.transform(geometry, move)
    coords = shapely.get_coordinates(geometry)
    if not np.isfinite(coords).all():
        raise InputError(f"{path} has coordinates that cannot be transformed from {source.name} to {target.name}; "
                         "check the truth's declared CRS")
    return [f"truth reprojected from {source.to_string()} to the CRS of {grid_name} (vertex by vertex)"]


def read_truth(path: Path, grid: PixelGrid, names: Sequence[str] | None, truth_class: str | None, *,
               grid_name: str = "the prediction") -> TruthPolygons:
    """The features of ``path`` on ``grid`` (2D); ``names``: the class names by id; ``grid_name`` for messages."""
    if not path.exists():
        raise InputError(f"truth {path} does not exist; give a vector file (gpkg, fgb, geojson, shp, parquet)")
    wkb, columns, crs = _read_table(path)
    geometry = shapely.from_wkb(wkb)
    del wkb
    missing = shapely.is_missing(geometry)
    if missing.any():
        geometry[missing] = shapely.Polygon()
    if shapely.has_z(geometry).any():
        geometry = shapely.force_2d(geometry)
    polygonal = np.isin(shapely.get_type_id(geometry), (3, 6)) | shapely.is_empty(geometry)
    if not polygonal.all():
        k = int(np.flatnonzero(~polygonal)[0])
        raise InputError(f"{path} feature {k} is a {geometry[k].geom_type}; object truth needs Polygon or "
                         "MultiPolygon features")
    invalid = ~shapely.is_valid(geometry)
    if invalid.any():
        k = int(np.flatnonzero(invalid)[0])
        raise InputError(f"{path} feature {k} is not a valid polygon ({shapely.is_valid_reason(geometry[k])}) and "
                         f"{int(invalid.sum())} in all; repair them, e.g. ogr2ogr -makevalid fixed.gpkg {path.name}")
    class_id = _class_ids(path, columns, len(geometry), names, truth_class)
    notes = _to_grid_crs(geometry, crs, grid, path, grid_name)
    forward = grid.transform or Affine.identity()
    inverse = ~forward
    mapped_bounds = shapely.total_bounds(geometry)
    matrix = np.array([[inverse.a, inverse.d], [inverse.b, inverse.e]])
    offset = np.array([inverse.c, inverse.f])
    geometry = shapely.transform(geometry, lambda xy: xy @ matrix + offset)
    tree = shapely.STRtree(geometry)
    extent = shapely.box(0, 0, grid.shape[1], grid.shape[0])
    if not len(tree.query(extent, predicate="intersects")):
        corners = shapely.get_coordinates(extent) @ np.array([[forward.a, forward.d], [forward.b, forward.e]])
        footprint = shapely.MultiPoint(corners + np.array([forward.c, forward.f])).bounds
        raise InputError(f"truth {path} lies outside {grid_name}: its bounds "
                         f"({', '.join(f'{v:.6g}' for v in mapped_bounds)}) do not meet the grid's "
                         f"({', '.join(f'{v:.6g}' for v in footprint)}) in the grid's CRS; check that both "
                         "cover the same place and that their CRSs are declared right")
    return TruthPolygons(geometry, class_id, tree, notes)


def members(truth: TruthPolygons, box: Box) -> tuple[np.ndarray, np.ndarray, int]:
    """``(flat pixel index in box, truth id)`` for each pixel and each truth polygon holding its centre
    (ids = feature row + 1), and the number of pixels held by more than one polygon."""
    (r0, c0), (r1, c1), shape = box.start, box.stop, box.shape
    candidates = truth.tree.query(shapely.box(c0, r0, c1, r1))
    if not candidates.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    at = Affine.translation(c0, r0)
    shapes = [g.__geo_interface__ for g in truth.geometry[candidates]]  # converted once for both passes
    ids = rasterio.features.rasterize(zip(shapes, (candidates + 1).tolist(), strict=True), out_shape=shape,
                                      transform=at, fill=0, dtype="uint32").ravel()
    cover = rasterio.features.rasterize(((g, 1) for g in shapes), out_shape=shape, transform=at, fill=0,
                                        merge_alg=MergeAlg.add, dtype="int32")
    single = np.flatnonzero(cover.ravel() == 1)
    index, owner = [single], [ids[single].astype(np.int64)]
    multi = cover > 1
    shared = int(multi.sum())
    if shared:  # each polygon holding a shared pixel, rasterized alone over the shared pixels' box
        rows, cols = np.nonzero(multi)
        sub = Box((r0 + int(rows.min()), c0 + int(cols.min())), (r0 + int(rows.max()) + 1, c0 + int(cols.max()) + 1))
        inside = multi[sub.relative_to(box)]
        for k in truth.tree.query(shapely.box(sub.start[1], sub.start[0], sub.stop[1], sub.stop[0])).tolist():
            burnt = rasterio.features.rasterize([(truth.geometry[k], 1)], out_shape=sub.shape, fill=0, dtype="uint8",
                                                transform=Affine.translation(sub.start[1], sub.start[0]))
            rr, cc = np.nonzero((burnt > 0) & inside)
            index.append((rr + sub.start[0] - r0) * shape[1] + cc + sub.start[1] - c0)
            owner.append(np.full(rr.size, k + 1, np.int64))
    return np.concatenate(index), np.concatenate(owner), shared
