"""Vector files from a feature stream, in-process (segflow.io.vector_files): every format reads back the rows and
polygons written, batch after batch; each format's own layout (GeoParquet's metadata and bbox covering, the
GeoPackage's layer, FID, R-tree and version, RFC 7946 GeoJSON); refusals and damaged files in one line."""

from __future__ import annotations

import json
import re
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely
from pyproj import CRS, Transformer

from segflow.errors import ConfigError, OutputError
from segflow.features import FeatureBatch, LayerInfo
from segflow.io.vector_files import (
    VECTOR_FORMATS,
    check_format,
    count_features,
    read_features,
    vector_name,
    write_vectors,
)

UTM = CRS.from_epsg(32633).to_wkt()
X0, Y0 = 500000.0, 5000000.0
FORMATS = list(VECTOR_FORMATS)


def _square(x: float, y: float, size: float, hole: bool = False) -> shapely.Polygon:
    shell = [(x, y), (x + size, y), (x + size, y + size), (x, y + size)]
    if not hole:
        return shapely.Polygon(shell)
    q = size / 4
    return shapely.Polygon(shell, [[(x + q, y + q), (x + q, y + 3 * q), (x + 3 * q, y + 3 * q), (x + 3 * q, y + q)]])


def _rows(first: int, count: int) -> FeatureBatch:
    batch = FeatureBatch()
    for n in range(first, first + count):
        polygon = _square(X0 + 100 * n, Y0 + 50 * n, 40.0 + n, hole=n % 2 == 1)
        batch.append(polygon, instance_id=10**10 + n, class_id=n % 3, class_name=f"class {n % 3}",
                     kind="thing" if n % 2 else "stuff", area=polygon.area, area_px=16 * n + 1,
                     perimeter=polygon.length, mean_score=None if n == 2 else n / 10, scene_id="scène",
                     model="m", model_version="1.2", run_id="abcdef0123456789")
    return batch


def _stream() -> Any:
    yield _rows(0, 3)
    yield _rows(3, 2)


def _read_all(path: Path, fmt: str) -> tuple[LayerInfo, list[shapely.Polygon], dict[str, list[Any]]]:
    info, batches = read_features(path, fmt, "given id")
    geometry: list[shapely.Polygon] = []
    columns: dict[str, list[Any]] = {}
    for batch in batches:
        geometry.extend(batch.geometry)
        for name, values in batch.columns.items():
            columns.setdefault(name, []).extend(values)
    return info, geometry, columns


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_back_the_rows_and_polygons_written(fmt: str, tmp_path: Path) -> None:
    path = tmp_path / vector_name(fmt)
    assert write_vectors(path, fmt, LayerInfo(UTM, 32633, "s"), _stream()) == 5 == count_features(path, fmt)
    info, geometry, columns = _read_all(path, fmt)
    want = _rows(0, 5)
    assert info.scene_id == "given id" and info.geometry_type == "Polygon"
    if fmt == "fgb":  # FlatGeobuf's spatial index orders the features along a Hilbert curve
        order = np.argsort(columns["instance_id"])
        geometry = [geometry[k] for k in order]
        columns = {name: [values[k] for k in order] for name, values in columns.items()}
    assert columns == want.columns  # every column, None kept, 64-bit ids, non-ASCII text
    if fmt == "geojson":  # RFC 7946: WGS 84 longitude, latitude
        assert info.epsg == 4326 and CRS.from_wkt(str(info.crs_wkt)) == CRS.from_epsg(4326)
        to_wgs84 = Transformer.from_crs(32633, 4326, always_xy=True)
        want.geometry = [shapely.transform(g, lambda xy: np.column_stack(to_wgs84.transform(xy[:, 0], xy[:, 1])))
                         for g in want.geometry]
        assert all(shapely.equals_exact(g, w, tolerance=1e-6) for g, w in zip(geometry, want.geometry, strict=True))
    else:
        assert info.epsg == 32633 and CRS.from_wkt(str(info.crs_wkt)) == CRS.from_epsg(32633)
        assert all(shapely.equals_exact(g, w, tolerance=0) for g, w in zip(geometry, want.geometry, strict=True))
    assert len(geometry[1].interiors) == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_empty_stream_gives_a_readable_file_without_features(fmt: str, tmp_path: Path) -> None:
    """A scene without objects: GDAL's FlatGeobuf stores no count then, and said -1 unless asked to count."""
    path = tmp_path / vector_name(fmt, "empty")
    assert write_vectors(path, fmt, LayerInfo(UTM, 32633, "s"), iter(())) == 0 == count_features(path, fmt)
    assert _read_all(path, fmt)[1] == []


@pytest.mark.parametrize("fmt", ["gpkg", "fgb", "parquet"])
def test_a_file_already_there_is_replaced_not_added_to(fmt: str, tmp_path: Path) -> None:
    path = tmp_path / vector_name(fmt)
    write_vectors(path, fmt, LayerInfo(UTM, 32633, "s"), _stream())
    assert write_vectors(path, fmt, LayerInfo(UTM, 32633, "s"), iter([_rows(7, 1)])) == 1 == count_features(path, fmt)
    if fmt != "parquet":
        assert [name for name, _ in pyogrio.list_layers(path)] == ["objects"]


def test_geoparquet_1_1_metadata_bbox_covering_and_one_row_group_per_batch(tmp_path: Path) -> None:
    path = tmp_path / "o.parquet"
    write_vectors(path, "parquet", LayerInfo(UTM, 32633, "s"), _stream())
    parquet = pq.ParquetFile(path)
    geo = json.loads(parquet.schema_arrow.metadata[b"geo"])
    column = geo["columns"]["geometry"]
    assert (geo["version"], geo["primary_column"], list(geo["columns"])) == ("1.1.0", "geometry", ["geometry"])
    assert column["encoding"] == "WKB" and column["geometry_types"] == ["Polygon"]
    assert column["orientation"] == "counterclockwise"
    assert column["covering"] == {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}
    assert CRS.from_json_dict(column["crs"]) == CRS.from_epsg(32633) and column["crs"]["id"]["code"] == 32633
    field = parquet.schema_arrow.field("geometry")
    assert field.metadata == {b"ARROW:extension:name": b"geoarrow.wkb", b"ARROW:extension:metadata": b"{}"}
    assert parquet.schema_arrow.names == [*(name for name, _ in LayerInfo(None, None, "").fields), "geometry", "bbox"]
    assert [str(parquet.schema_arrow.field(n).type) for n in ("instance_id", "class_id", "area", "class_name")] == \
        ["int64", "int32", "double", "string"]
    assert parquet.metadata.num_row_groups == 2 and parquet.metadata.row_group(0).num_rows == 3
    assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
    boxes = pq.read_table(path, columns=["bbox"]).column("bbox").combine_chunks()
    want = shapely.bounds(np.array(_rows(0, 5).geometry, dtype=object))
    for k, name in enumerate(("xmin", "ymin", "xmax", "ymax")):
        np.testing.assert_array_equal(boxes.field(name).to_numpy(), want[:, k])


def test_geoparquet_without_a_crs_says_so_explicitly(tmp_path: Path) -> None:
    """A null crs means "no CRS" (pixel coordinates); a missing one would mean OGC:CRS84."""
    path = tmp_path / "o.parquet"
    write_vectors(path, "parquet", LayerInfo(None, None, "s"), _stream())
    column = json.loads(pq.ParquetFile(path).schema_arrow.metadata[b"geo"])["columns"]["geometry"]
    assert "crs" in column and column["crs"] is None
    info, geometry, _ = _read_all(path, "parquet")
    assert (info.crs_wkt, info.epsg, len(geometry)) == (None, None, 5)


def test_geopackage_layer_fid_spatial_index_and_version(tmp_path: Path) -> None:
    path = tmp_path / "o.gpkg"
    write_vectors(path, "gpkg", LayerInfo(UTM, 32633, "s"), _stream())
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47  # "GPKG"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 10200  # GeoPackage 1.2
        assert db.execute("SELECT table_name, data_type, srs_id FROM gpkg_contents").fetchall() == \
            [("objects", "features", 32633)]
        assert db.execute("SELECT column_name, geometry_type_name FROM gpkg_geometry_columns").fetchall() == \
            [("geom", "POLYGON")]  # GDAL's and QGIS' usual name, as in the PostGIS table
        columns = [row[1] for row in db.execute("PRAGMA table_info(objects)")]
        assert columns[:2] == ["fid", "geom"] and "instance_id" in columns
        assert db.execute("SELECT count(*) FROM rtree_objects_geom").fetchone()[0] == 5


@pytest.mark.parametrize(("epsg", "label"), [(32633, "EPSG:32633"), (None, UTM)])
def test_geojson_is_rfc_7946_with_the_source_crs_as_a_foreign_member(epsg: int | None, label: str,
                                                                      tmp_path: Path) -> None:
    path = tmp_path / "o.geojson"
    write_vectors(path, "geojson", LayerInfo(UTM, epsg, "s"), _stream())
    doc = json.loads(path.read_text())
    assert doc["source_crs"] == label and "crs" not in doc and "name" not in doc
    lon, lat = doc["features"][0]["geometry"]["coordinates"][0][0]
    assert 14 < lon < 16 and 44 < lat < 46  # UTM 33N's (500 km, 5000 km): 15° E, 45° N


def test_formats_and_their_refusals_in_one_line(tmp_path: Path) -> None:
    assert [vector_name(fmt) for fmt in FORMATS] == ["instances.gpkg", "instances.parquet", "instances.fgb",
                                                     "instances.geojson"]
    assert vector_name("fgb", "objects") == "objects.fgb"
    with pytest.raises(ConfigError, match=r"^unknown vector format 'shp'; choose one of gpkg, parquet, fgb, geojson$"):
        vector_name("shp")
    with pytest.raises(ConfigError, match=r"^GeoJSON \(RFC 7946\) needs coordinates in WGS 84, but this scene has "
                                          r"no CRS; choose --vector-format gpkg, parquet or fgb$"):
        check_format("geojson", None)
    check_format("geojson", UTM)
    check_format("gpkg", None)
    with pytest.raises(ConfigError, match=r"^unknown vector format 'shp'"):
        check_format("shp", UTM)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_damaged_file_does_not_read_back_in_one_line(fmt: str, tmp_path: Path) -> None:
    path = tmp_path / vector_name(fmt)
    write_vectors(path, fmt, LayerInfo(UTM, 32633, "s"), _stream())
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(OutputError, match=rf"^{re.escape(str(path))} does not read back \([^\n]+\); the disk may be "
                                          r"full or failing: check it and run again$") as info:
        count_features(path, fmt)
    assert info.value.__cause__ is None and "\n" not in str(info.value)


@pytest.mark.parametrize("fmt", ["gpkg", "parquet", "fgb"])
def test_polygons_whose_wkb_ends_in_zero_bytes_read_back_whole(fmt: str, tmp_path: Path) -> None:
    """Pixel coordinates without a CRS: a ring closing at y = 0.0 ends its WKB with eight zero bytes, which a
    fixed-width bytes array would strip."""
    batch = _rows(0, 1)
    batch.geometry = [shapely.box(0, 0, 2, 2)]
    assert shapely.to_wkb(batch.geometry[0]).endswith(b"\0" * 8)
    path = tmp_path / vector_name(fmt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # no "'crs' was not provided" from pyogrio: no CRS is what the scene has
        write_vectors(path, fmt, LayerInfo(None, None, "s"), iter([batch]))
    assert [str(w.message) for w in caught] == []
    _, geometry, _ = _read_all(path, fmt)
    assert len(geometry) == 1 and shapely.equals_exact(geometry[0], batch.geometry[0], tolerance=0)


@pytest.mark.parametrize(("fmt", "driver"), [("gpkg", "GPKG"), ("fgb", "FlatGeobuf"), ("geojson", "GeoJSON")])
def test_the_format_not_the_file_name_chooses_the_driver(fmt: str, driver: str, tmp_path: Path) -> None:
    """Outputs are written under a temporary name before they are published."""
    path = tmp_path / ".segflow-objects.tmp"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # GDAL's advice on GeoPackage suffixes does not reach the user
        assert write_vectors(path, fmt, LayerInfo(UTM, 32633, "s"), _stream()) == 5
    assert [str(w.message) for w in caught] == []  # (raised from GDAL's callback, an error would be swallowed)
    assert pyogrio.read_info(path)["driver"] == driver
