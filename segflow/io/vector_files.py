"""Vector files from a feature stream: GeoPackage, GeoParquet, FlatGeobuf, GeoJSON.

Every writer consumes :class:`~segflow.features.FeatureBatch` objects one at a time, so memory is
one batch, whatever the number of objects:

- GeoPackage, FlatGeobuf, GeoJSON through GDAL (pyogrio's Arrow stream writer: one layer, one
  pass). GeoPackage is the default; it gets an R-tree spatial index. GeoJSON follows RFC 7946:
  GDAL reprojects the coordinates to WGS 84 (lon, lat), and the source CRS is recorded as a
  foreign member ``"source_crs"`` of the FeatureCollection (RFC 7946 has no "crs" member).
- GeoParquet 1.1 through pyarrow, row group by row group: WKB geometry, ``geo`` metadata with the
  CRS as PROJJSON, the geometry type and a ``bbox`` covering column (xmin, ymin, xmax, ymax).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import shapely

from ..errors import ConfigError, OutputError
from ..features import FeatureBatch, LayerInfo

__all__ = ["VECTOR_FORMATS", "check_format", "count_features", "read_features", "vector_name", "write_vectors"]

VECTOR_FORMATS: dict[str, tuple[str, str]] = {  # --vector-format: (GDAL driver or "", file suffix)
    "gpkg": ("GPKG", ".gpkg"),
    "parquet": ("", ".parquet"),
    "fgb": ("FlatGeobuf", ".fgb"),
    "geojson": ("GeoJSON", ".geojson"),
}
LAYER = "objects"
_ARROW_TYPES = {"int32": pa.int32(), "int64": pa.int64(), "float64": pa.float64(), "str": pa.string()}


def vector_name(fmt: str, stem: str = "instances") -> str:
    """The file name of a vector output in format ``fmt`` (refused in one line when unknown)."""
    if fmt not in VECTOR_FORMATS:
        raise ConfigError(f"unknown vector format {fmt!r}; choose one of {', '.join(VECTOR_FORMATS)}")
    return stem + VECTOR_FORMATS[fmt][1]


def _schema(info: LayerInfo, bbox: bool) -> pa.Schema:
    fields = [pa.field(name, _ARROW_TYPES[kind]) for name, kind in info.fields]
    geometry = pa.field("geometry", pa.binary(), metadata={"ARROW:extension:name": "geoarrow.wkb",
                                                           "ARROW:extension:metadata": "{}"})
    if bbox:
        box = pa.struct([("xmin", pa.float64()), ("ymin", pa.float64()), ("xmax", pa.float64()),
                         ("ymax", pa.float64())])
        return pa.schema([*fields, geometry, pa.field("bbox", box)])
    return pa.schema([*fields, geometry])


def _record_batch(batch: FeatureBatch, schema: pa.Schema, bbox: bool) -> pa.RecordBatch:
    geometry = np.asarray(batch.geometry, dtype=object)
    columns = [pa.array(batch.columns[f.name], type=f.type) for f in schema if f.name not in ("geometry", "bbox")]
    columns.append(pa.array(shapely.to_wkb(geometry), type=pa.binary()))
    if bbox:
        b = shapely.bounds(geometry)
        columns.append(pa.StructArray.from_arrays([pa.array(b[:, k]) for k in range(4)],
                                                  names=["xmin", "ymin", "xmax", "ymax"]))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _stream(batches: Iterable[FeatureBatch], schema: pa.Schema, bbox: bool, counter: list[int]
            ) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        counter[0] += len(batch)
        yield _record_batch(batch, schema, bbox)


def _projjson(crs_wkt: str) -> dict[str, Any]:
    from pyproj import CRS as ProjCRS

    return dict(ProjCRS.from_wkt(crs_wkt).to_json_dict())


def _write_parquet(path: Path, info: LayerInfo, batches: Iterable[FeatureBatch]) -> int:
    import pyarrow.parquet as pq

    schema = _schema(info, bbox=True)
    column: dict[str, Any] = {"encoding": "WKB", "geometry_types": [info.geometry_type],
                              "orientation": "counterclockwise",
                              "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}}
    if info.crs_wkt is not None:
        column["crs"] = _projjson(info.crs_wkt)
    else:
        column["crs"] = None  # explicit: no CRS (pixel coordinates), not the OGC:CRS84 default
    geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}
    schema = schema.with_metadata({b"geo": json.dumps(geo).encode()})
    written = [0]
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for record in _stream(batches, schema, True, written):
            writer.write_batch(record)
    return written[0]


def _write_gdal(path: Path, driver: str, info: LayerInfo, batches: Iterable[FeatureBatch]) -> int:
    from pyogrio.raw import write_arrow

    schema = _schema(info, bbox=False)
    written = [0]
    reader = pa.RecordBatchReader.from_batches(schema, _stream(batches, schema, False, written))
    layer_options: dict[str, Any] = {}
    if driver == "GeoJSON":
        layer_options = {"RFC7946": "YES", "WRITE_NAME": "NO"}
        if info.crs_wkt is not None:
            layer_options["FOREIGN_MEMBERS_COLLECTION"] = json.dumps({"source_crs": _crs_label(info)})
    elif driver == "GPKG":
        layer_options = {"SPATIAL_INDEX": "YES", "FID": "fid"}
    # GeoPackage 1.2: what the GDAL of current LTS distributions reads without a warning (1.4 is the default)
    dataset_options = {"VERSION": "1.2"} if driver == "GPKG" else None
    with warnings.catch_warnings():
        # a scene without a CRS is written without one on purpose (pixel coordinates); outputs are written under
        # a temporary name (.tmp) and published under their own
        warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
        warnings.filterwarnings("ignore", message="The filename extension should be", category=RuntimeWarning)
        write_arrow(reader, str(path), layer=LAYER, driver=driver, geometry_name="geometry",
                    geometry_type=info.geometry_type, crs=info.crs_wkt, layer_options=layer_options,
                    dataset_options=dataset_options)
    return written[0]


def _crs_label(info: LayerInfo) -> str:
    return f"EPSG:{info.epsg}" if info.epsg is not None else str(info.crs_wkt)


def check_format(fmt: str, crs_wkt: str | None) -> None:
    """Refuse in one line an unknown format, or GeoJSON for a scene without a CRS (RFC 7946 is WGS 84)."""
    vector_name(fmt)
    if fmt == "geojson" and crs_wkt is None:
        raise ConfigError("GeoJSON (RFC 7946) needs coordinates in WGS 84, but this scene has no CRS; choose "
                          "--vector-format gpkg, parquet or fgb")


def write_vectors(path: Path, fmt: str, info: LayerInfo, batches: Iterable[FeatureBatch]) -> int:
    """Write ``batches`` to ``path`` in ``fmt`` (a key of :data:`VECTOR_FORMATS`); return the feature count."""
    check_format(fmt, info.crs_wkt)
    driver = VECTOR_FORMATS[fmt][0]
    path.unlink(missing_ok=True)  # GDAL would add a layer to an existing file, keeping its old settings
    if driver:
        return _write_gdal(path, driver, info, batches)
    return _write_parquet(path, info, batches)


def count_features(path: Path, fmt: str) -> int:
    """Features in a written vector file, as its reader sees them (GDAL, or pyarrow for GeoParquet)."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        from pyogrio import read_info

        # forced: a driver that does not store the count says -1 (GDAL's FlatGeobuf without features)
        return int(read_info(str(path), layer=0, force_feature_count=True)["features"])
    except Exception as exc:  # any failure to read it back means the file is damaged
        raise OutputError(f"{path} does not read back ({' '.join(str(exc).split())[:200]}); the disk may be full "
                          "or failing: check it and run again") from None


def _feature_batch(record: pa.RecordBatch, geometry: str) -> FeatureBatch:
    batch = FeatureBatch()
    batch.geometry = list(shapely.from_wkb(np.asarray(record.column(geometry).to_pylist(), dtype=object)))
    for name in batch.columns:
        batch.columns[name] = record.column(name).to_pylist()
    return batch


def read_features(path: Path, fmt: str, scene_id: str) -> tuple[LayerInfo, Iterator[FeatureBatch]]:
    """A written vector file as a feature stream again (e.g. for PostGIS): its layer info and batches.

    GeoJSON gives WGS 84 coordinates (EPSG:4326), the others the scene's CRS.
    """
    from pyproj import CRS as ProjCRS

    if fmt == "parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        crs = json.loads(parquet.schema_arrow.metadata[b"geo"])["columns"]["geometry"].get("crs")
        wkt = None if crs is None else ProjCRS.from_json_dict(crs).to_wkt()

        def batches() -> Iterator[FeatureBatch]:
            for record in parquet.iter_batches(batch_size=4096):
                yield _feature_batch(record, "geometry")
    else:
        from pyogrio import read_info
        from pyogrio.raw import open_arrow

        wkt = read_info(str(path), layer=0)["crs"]

        def batches() -> Iterator[FeatureBatch]:
            with open_arrow(str(path), layer=0, use_pyarrow=True, batch_size=4096) as (meta, reader):
                for record in reader:
                    yield _feature_batch(record, meta["geometry_name"] or "wkb_geometry")
    epsg = None if wkt is None else ProjCRS.from_user_input(wkt).to_epsg()
    wkt = None if wkt is None else ProjCRS.from_user_input(wkt).to_wkt()
    return LayerInfo(wkt, epsg, scene_id), batches()
