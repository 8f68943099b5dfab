"""Vector features as every vector output receives them: polygons in the scene's CRS, fixed columns.

The vectorizer (:mod:`segflow.vectorize`) yields :class:`FeatureBatch` objects, a few thousand
features each, in a stream; every writer (GeoPackage, GeoParquet, FlatGeobuf, GeoJSON, PostGIS)
consumes the same stream, so no writer holds a whole scene's objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["FIELDS", "FeatureBatch", "LayerInfo"]

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
