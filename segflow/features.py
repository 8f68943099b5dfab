"""Vector features as every vector output receives them: polygons in the scene's CRS, fixed columns.

The vectorizer (:mod:`segflow.vectorize`) yields :class:`FeatureBatch` objects, a few thousand
features each, in a stream; every writer (GeoPackage, GeoParquet, FlatGeobuf, GeoJSON, PostGIS)
consumes the same stream, so no writer holds a whole scene's objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

__all__ = ["FIELDS", "SEPARATE", "FeatureBatch", "LayerInfo", "VectorOptions"]

FIELDS: tuple[tuple[str, str], ...] = (
    ("instance_id", "int64"),   # unique per run: the instance id of a thing, a region id of a stuff class
    ("class_id", "int32"),      # index into the model's classes
    ("class_name", "str"),
    ("kind", "str"),            # "thing" (an object) or "stuff" (a merged region of one class)
    ("area", "float64"),        # in map units² of the CRS (m² for a projected CRS in metres)
    ("area_px", "int64"),       # pixels of the object
    ("perimeter", "float64"),   # in map units, of the written (possibly simplified) polygon
    ("mean_score", "float64"),  # mean blended probability of its class over its pixels; None (null) without
                                # scores (run with --save-scores)
    ("scene_id", "str"),        # the input's name (file stem), so several scenes share one table
    ("model", "str"),
    ("model_version", "str"),
    ("run_id", "str"),          # the run fingerprint (first 16 hex digits)
)
"""Column names and types, in order. Types: int32, int64, float64, str."""


@dataclass(frozen=True)
class LayerInfo:
    """What a writer needs before the first feature.

    ``crs_wkt``: the scene's CRS as WKT (None for a raster without a CRS: pixel coordinates);
    ``epsg``: its EPSG code when it has one (PostGIS SRID); ``scene_id``: as in the rows.
    Geometries are always ``Polygon`` (one per object; holes kept; valid).
    """

    crs_wkt: str | None
    epsg: int | None
    scene_id: str
    geometry_type: str = "Polygon"
    fields: tuple[tuple[str, str], ...] = FIELDS


@dataclass
class FeatureBatch:
    """Features in columns: ``geometry`` (shapely Polygons) and one list per field of :data:`FIELDS`."""

    geometry: list[Any] = field(default_factory=list)
    columns: dict[str, list[Any]] = field(default_factory=lambda: {name: [] for name, _ in FIELDS})

    def __len__(self) -> int:
        return len(self.geometry)

    def append(self, geometry: Any, **values: Any) -> None:
        missing = [name for name, _ in FIELDS if name not in values]
        if missing:
            raise ValueError(f"feature without {missing}")
        self.geometry.append(geometry)
        for name, _ in FIELDS:
            self.columns[name].append(values[name])


SEPARATE = ("none", "watershed")


@dataclass(frozen=True)
class VectorOptions:
    """``min_area``: objects smaller than this (map units², by their pixels) are not written.
    ``simplify``: tolerance in map units of a topology-preserving simplification (0: none).
    ``separate``: ``watershed`` splits touching objects of thing classes by a marker-controlled
    watershed on the distance transform (:func:`segflow.postprocess.separate`; markers: distance
    maxima at least ``min_distance`` px apart); ``none`` keeps connected regions whole.
    ``fill_holes``: holes smaller than this (map units²) are removed from the polygons (``area``
    then includes them; ``area_px`` stays the object's own pixels)."""

    min_area: float = 0.0
    simplify: float = 0.0
    separate: str = "none"
    min_distance: float = 5.0
    fill_holes: float = 0.0  # holes smaller than this (map units²) are removed from the polygons

    def check(self) -> None:
        for name in ("min_area", "simplify", "fill_holes"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a number >= 0 in map units, got {value}")
        if self.separate not in SEPARATE:
            raise ConfigError(f"--separate must be one of {', '.join(SEPARATE)}, got {self.separate!r}")
        if not math.isfinite(self.min_distance) or self.min_distance < 1:
            raise ConfigError(f"--min-distance must be >= 1 pixel, got {self.min_distance}")
