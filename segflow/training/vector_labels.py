"""Vector labels for training: GeoJSON polygons read, given model classes and checked against the image.

:func:`read_vector_labels` turns a GeoJSON file into polygons in the image's CRS with one class
value each, refusing (one :class:`~segflow.errors.InputError` line) what would train a model on
wrong labels without a word:

* **CRS.** The polygons' CRS is ``crs:`` of the vector source when given, else the file's legacy
  ``crs`` member, else EPSG:4326 (RFC 7946 says GeoJSON is longitude/latitude). Projected
  coordinates read as EPSG:4326 (a latitude beyond ±90°, or a longitude beyond ±360°) are refused
  before PROJ sees them, and so is a file none of whose polygons meets the image once reprojected
  (``0 of 1598 polygons intersect the image; their CRS is EPSG:4326 (assumed: ...), the image's is
  EPSG:32633 ...``): both name the CRS read, why it was read so, the image's CRS and the fix.
* **Classes.** A feature's ``property`` is looked up in ``class_map`` first (keys compared as
  text: ``{"residential": "building", "7": 2, "parking": "ignore"}``; a value is a model class
  name, a class index, or ``ignore``/255 for "unlabelled"), then as a model class name, then as
  a class index. Values found nowhere are refused, listed with their polygon counts
  (``unknown_classes: error``, the default; a missing property is the value ``None``), or left
  out with a warning naming them (``unknown_classes: skip``: their pixels take the class of
  whatever else covers them, else background; map them to ``ignore`` to leave their pixels
  unlabelled instead).

Coordinates are ``(x, y)`` in the CRS's traditional GIS order (longitude, latitude for
geographic CRSs), as GeoJSON writes them; boxes are ``(xmin, ymin, xmax, ymax)`` in the image CRS.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioError
from rasterio.transform import Affine
from rasterio.warp import transform_geom

from ..errors import InputError, SegflowWarning
from .sources import IGNORE

__all__ = ["VectorLabels", "class_lookup", "read_vector_labels"]

_IGNORE_NAMES = ("ignore", "unlabelled", "unlabeled")


@dataclass(frozen=True)
class VectorLabels:
    """Polygons in the image CRS: ``geometries`` (GeoJSON dicts), ``values`` ``(N,)`` uint8 class
    indices (255 = unlabelled), ``boxes`` ``(N, 4)`` float64 ``(xmin, ymin, xmax, ymax)``."""

    geometries: list[dict[str, Any]]
    values: np.ndarray
    boxes: np.ndarray


def _crs_of(value: object, what: str) -> CRS:
    try:
        return CRS.from_user_input(value)
    except CRSError:
        raise InputError(f"{what} CRS {value!r} is not understood; give e.g. EPSG:4326 or EPSG:32633") from None


def _crs_name(crs: CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else (crs.to_string() or "a CRS without EPSG code")


def _geojson_features(path: Path) -> tuple[list[Any], object]:
    """The features of a GeoJSON file and its legacy ``crs`` name (or None)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"vector labels {path} not found; check the path in the training config") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"vector labels {path} are not readable GeoJSON ({exc}); expected a FeatureCollection"
        ) from None
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "Feature":
        features = [data]
    elif kind == "FeatureCollection" and isinstance(data.get("features"), list):
        features = data["features"]
    else:
        raise InputError(f"vector labels {path} hold a GeoJSON {kind!r}: expected a FeatureCollection of polygons")
    crs = data.get("crs", {}).get("properties", {}).get("name") if isinstance(data.get("crs"), dict) else None
    return features, crs


def class_lookup(class_map: Mapping[str, int | str] | None, names: Sequence[str]) -> dict[str, int]:
    """``class_map`` as text key -> class index (or :data:`IGNORE`), every target checked against ``names``.

    Raises
    ------
    InputError
        A target that is neither a class name, a class index ``0..K-1`` nor ``ignore``/255.
    """
    table: dict[str, int] = {}
    for key, target in (class_map or {}).items():
        if isinstance(target, str) and target in names:
            table[str(key)] = names.index(target)
        elif isinstance(target, str) and target.lower() in _IGNORE_NAMES:
            table[str(key)] = IGNORE
        elif isinstance(target, int) and not isinstance(target, bool) and (0 <= target < len(names)
                                                                           or target == IGNORE):
            table[str(key)] = target
        else:
            raise InputError(f"class_map maps {key!r} to {target!r}: expected a model class name from {list(names)}, "
                             f"an index 0..{len(names) - 1}, or 'ignore' (255) for unlabelled; fix the class_map")
    return table


def _class_of(value: object, table: Mapping[str, int], names: Sequence[str]) -> int | None:
    """The class index of a property value, or None when it is unknown."""
    if not isinstance(value, dict | list) and str(value) in table:
        return table[str(value)]
    if isinstance(value, str) and value in names:
        return names.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return value
    return None


def _flatten(coords: object) -> Iterator[float]:
    if isinstance(coords, list | tuple) and coords and isinstance(coords[0], int | float):
        yield from coords[:2]
    elif isinstance(coords, list | tuple):
        for item in coords:
            yield from _flatten(item)


def _coordinates(geometry: Mapping[str, Any]) -> np.ndarray:
    """Every vertex ``(n, 2)`` of a GeoJSON geometry (collections included)."""
    if geometry.get("type") == "GeometryCollection":
        parts = [_coordinates(g) for g in geometry.get("geometries", []) if isinstance(g, dict)]
        return np.concatenate(parts) if parts else np.zeros((0, 2))
    return np.asarray(list(_flatten(geometry.get("coordinates", []))), dtype=np.float64).reshape(-1, 2)


def _bounds(coords: np.ndarray) -> tuple[float, float, float, float]:
    finite = coords[np.isfinite(coords).all(axis=1)]
    if finite.size == 0:
        return (math.inf, math.inf, -math.inf, -math.inf)
    return (float(finite[:, 0].min()), float(finite[:, 1].min()), float(finite[:, 0].max()),
            float(finite[:, 1].max()))


def _counts_text(counter: Counter[str], limit: int = 6) -> str:
    items = counter.most_common()
    text = ", ".join(f"{value} ({count})" for value, count in items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _image_box(transform: Affine, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    rows, cols = shape
    corners = np.array([transform @ (c, r) for r, c in ((0, 0), (0, cols), (rows, 0), (rows, cols))])
    return (float(corners[:, 0].min()), float(corners[:, 1].min()), float(corners[:, 0].max()),
            float(corners[:, 1].max()))


def read_vector_labels(path: Path, *, image_crs: CRS | None, image_transform: Affine, image_shape: tuple[int, int],
                       class_names: Sequence[str], key: str = "class", crs: str | None = None,
                       class_map: Mapping[str, int | str] | None = None, unknown_classes: str = "error"
                       ) -> VectorLabels:
    """The polygons of a GeoJSON file in the image CRS, with class values; see the module docstring.

    Parameters
    ----------
    path : Path
        The GeoJSON file.
    image_crs, image_transform, image_shape
        The image's CRS (None: the polygons are taken in the image's coordinates, not reprojected),
        affine transform and ``(rows, cols)``.
    class_names : sequence of str
        The model's classes, in label order.
    key : str
        The feature property holding the class.
    crs : str, optional
        The polygons' CRS (``crs:`` of the vector source); overrides the file's.
    class_map : mapping, optional
        Property value (as text) -> class name, index, or ``ignore``.
    unknown_classes : {"error", "skip"}
        What to do with features whose class is unknown.

    Raises
    ------
    InputError
        Unreadable file, a feature without geometry, unknown classes (``error``), coordinates that
        cannot be in the CRS they are read in, or no polygon meeting the image.
    """
    features, file_crs = _geojson_features(path)
    names = list(class_names)
    table = class_lookup(class_map, names)
    geometries: list[dict[str, Any]] = []
    classes: list[int | None] = []
    unknown = Counter[str]()
    for number, feature in enumerate(features):
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        if not isinstance(geometry, dict) or "type" not in geometry:
            raise InputError(f"feature {number} of {path} has no geometry; remove it or give it a polygon")
        props = feature.get("properties") if isinstance(feature, dict) else None
        value = props.get(key) if isinstance(props, dict) else None
        geometries.append(geometry)
        classes.append(_class_of(value, table, names))
        if classes[-1] is None:
            unknown[repr(value)] += 1
    if crs is not None:
        declared, why = _crs_of(crs, f"vector labels {path}"), "set by crs: of this vector source"
    elif file_crs is not None:
        declared, why = _crs_of(file_crs, f"vector labels {path}"), "the GeoJSON's crs member"
    else:
        declared, why = CRS.from_epsg(4326), "assumed: the GeoJSON has no crs member"
    # Where the polygons are comes first (every polygon, known class or not), then what they are.
    geometries, boxes = _in_image_crs(path, geometries, declared, why, image_crs, _image_box(image_transform,
                                                                                             image_shape))
    if unknown:
        total = sum(unknown.values())
        what = (f"vector labels {path}: {total} of {len(features)} polygons have a {key!r} not among the model's "
                f"classes {names}: {_counts_text(unknown)}")
        if unknown_classes != "skip":
            raise InputError(f"{what}; map them with class_map (e.g. class_map: {{{next(iter(unknown))}: "
                             f"{names[-1]!r}}}), or set unknown_classes: skip to leave them out")
        warnings.warn(f"{what}: left out (unknown_classes: skip)", SegflowWarning, stacklevel=3)
    keep = [i for i, k in enumerate(classes) if k is not None]
    if not keep:
        raise InputError(f"vector labels {path} hold no polygon of a model class ({len(features)} features); "
                         f"check the file and its '{key}' property")
    return VectorLabels([geometries[i] for i in keep], np.asarray([classes[i] for i in keep], dtype=np.uint8),
                        boxes[keep])


def _in_image_crs(path: Path, geometries: list[dict[str, Any]], declared: CRS, why: str, image_crs: CRS | None,
                  image_box: tuple[float, float, float, float]) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The polygons reprojected to the image CRS and their boxes ``(N, 4)``; refuses coordinates that cannot be in
    ``declared`` and polygons none of which meets ``image_box``."""
    coords = [_coordinates(g) for g in geometries]
    every = np.concatenate(coords) if coords else np.zeros((0, 2))
    image_name = _crs_name(image_crs) if image_crs is not None else "not set"
    fix = (f"set `crs:` of this vector source to the polygons' CRS (e.g. crs: {image_name} if they are in the "
           "image's)" if image_crs is not None else "give the image a CRS or the polygons in its coordinates")
    where = f"their CRS is {_crs_name(declared)} ({why}), the image's is {image_name}"
    outside = every.size and (np.abs(every[:, 1]).max() > 90 or np.abs(every[:, 0]).max() > 360)
    if image_crs is not None and declared.is_geographic and outside:
        x, y = every[np.argmax(np.abs(every[:, 1]))]
        raise InputError(f"vector labels {path}: coordinates such as ({x:.10g}, {y:.10g}) cannot be longitude/latitude "
                         f"(|latitude| > 90 or |longitude| > 360); {where} — {fix}")
    if image_crs is not None and declared != image_crs:
        try:
            geometries = [transform_geom(declared, image_crs, g) for g in geometries]
        except (RasterioError, CRSError, ValueError) as exc:
            raise InputError(f"vector labels {path} cannot be reprojected ({str(exc).splitlines()[0]}); "
                             f"{where} — {fix}") from None
        coords = [_coordinates(g) for g in geometries]
    boxes = np.asarray([_bounds(c) for c in coords], dtype=np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = image_box
    hits = int(((boxes[:, 0] <= x1) & (boxes[:, 2] >= x0) & (boxes[:, 1] <= y1) & (boxes[:, 3] >= y0)).sum())
    if geometries and hits == 0:
        lon_lat = "" if declared.is_geographic or not every.size or np.abs(every).max() > 360 else (
            "; their coordinates all lie within ±360, as longitude/latitude would")
        raise InputError(f"vector labels {path}: 0 of {len(geometries)} polygons intersect the image; {where}"
                         f"{lon_lat} — {fix}")
    return geometries, boxes
