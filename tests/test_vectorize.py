"""Polygons of a run's objects: one valid polygon per object, the same for every chunking, exact areas,
rasterized back onto the pixels they came from; every vector format opens in GDAL and its validators."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.features
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from scipy import ndimage

from segflow.errors import ConfigError
from segflow.features import LayerInfo
from segflow.io.mask_store import MaskStore
from segflow.io.vector_files import count_features, write_vectors
from segflow.labels import LABEL_NODATA
from segflow.vectorize import VectorOptions, tracing_chunk, vectorize

KINDS = ("stuff", "stuff", "thing", "thing")  # background, a stuff class, two thing classes
NAMES = ("background", "water", "building", "tree")
UTM = CRS.from_epsg(32633).to_wkt()
VALIDATE_GPKG = Path("/usr/lib/python3/dist-packages/osgeo_utils/samples/validate_gpkg.py")


def blobs(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Class labels with blobs, holes, diagonal contacts and a nodata corner."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    labels = np.digitize(field, np.quantile(field, [0.35, 0.6, 0.8])).astype(np.uint8)
    labels[: shape[0] // 5, : shape[1] // 6] = LABEL_NODATA
    return labels


def store_of(tmp: Path, labels: np.ndarray, chunk: int, scores: bool = False) -> MaskStore:
    store = MaskStore.create(tmp / f"m{chunk}.zarr", labels.shape, (chunk, chunk), NAMES, save_scores=scores,
                             attrs={"run_fingerprint": "f" * 64})
    store.labels[:] = labels
    if scores:
        assert store.scores is not None
        rng = np.random.default_rng(0)
        store.scores[:] = rng.uniform(size=(len(NAMES), *labels.shape)).astype(np.float16)
    return store


def features(store: MaskStore, chunk: int, transform: Affine, options: VectorOptions | None = None
             ) -> dict[int, dict[str, Any]]:
    options = options or VectorOptions()
    out: dict[int, dict[str, Any]] = {}
    for batch in vectorize(store, (chunk, chunk), transform, NAMES, KINDS, options, scene_id="s", model="m",
                           model_version="1", run_id="r"):
        for n, geometry in enumerate(batch.geometry):
            row = {name: values[n] for name, values in batch.columns.items()}
            assert row["instance_id"] not in out, "each object is written once"
            out[row["instance_id"]] = {**row, "geometry": geometry}
    return out


TRANSFORMS = [Affine(10, 0, 500000, 0, -10, 5000000), Affine(0.5, 0.2, 100, 0.1, -0.7, 50),  # north-up, sheared
              Affine(-3, 0, 0, 0, 3, 0)]  # flipped axes


@settings(max_examples=15, deadline=None)
@given(h=st.integers(8, 60), w=st.integers(8, 60), chunk=st.integers(3, 25), seed=st.integers(0, 10_000),
       t=st.sampled_from(range(len(TRANSFORMS))))
def test_objects_are_whole_valid_and_the_same_for_every_chunking(tmp_path_factory: pytest.TempPathFactory, h: int,
                                                                  w: int, chunk: int, seed: int, t: int) -> None:
    tmp = tmp_path_factory.mktemp("v")
    labels = blobs((h, w), seed)
    transform = TRANSFORMS[t]
    whole = features(store_of(tmp, labels, 64), 64, transform)
    chunked = features(store_of(tmp, labels, chunk), chunk, transform)
    assert whole.keys() == chunked.keys()
    for i, a in whole.items():
        b = chunked[i]
        assert isinstance(b["geometry"], shapely.Polygon) and b["geometry"].is_valid
        assert shapely.equals(a["geometry"], b["geometry"]), f"object {i} differs between chunkings"
        assert {k: v for k, v in a.items() if k != "geometry"} == {k: v for k, v in b.items() if k != "geometry"}
    # rasterized back, the polygons are exactly the objects: scipy's components of each class
    ids = rasterio.features.rasterize(((f["geometry"], i) for i, f in chunked.items()), out_shape=(h, w),
                                      transform=transform, dtype="int32") if chunked else np.zeros((h, w), np.int32)
    lookup = np.zeros(max(chunked, default=0) + 1, dtype=np.int64)
    for i, f in chunked.items():
        lookup[i] = f["class_id"]
    classes = lookup[ids]
    present = (labels > 0) & (labels != LABEL_NODATA)
    np.testing.assert_array_equal(ids > 0, present)
    np.testing.assert_array_equal(classes, np.where(present, labels, 0))
    for c in (1, 2, 3):
        components, n = ndimage.label(labels == c)
        pairs = {(int(a), int(b)) for a, b in zip(components[labels == c], ids[labels == c], strict=True)}
        assert len(pairs) == n == len({b for _, b in pairs}), f"class {c}: objects are not its components"
    pixel_area = abs(transform.determinant)
    for f in chunked.values():
        assert f["area"] == pytest.approx(f["area_px"] * pixel_area, rel=1e-9)
        assert f["kind"] == KINDS[f["class_id"]]
        assert f["perimeter"] == pytest.approx(f["geometry"].length)
        assert shapely.Polygon(f["geometry"].exterior).area > 0


def test_ids_locate_each_object_by_its_first_pixel_and_scores_are_its_own_class_mean(tmp_path: Path) -> None:
    labels = blobs((50, 70), 3)
    store = store_of(tmp_path, labels, 16, scores=True)
    found = features(store, 16, Affine.identity())
    scores = np.asarray(store.scores[:], dtype=np.float32).astype(np.float64)  # type: ignore[index]
    expected = {}
    for c in (1, 2, 3):
        components, n = ndimage.label(labels == c)
        for k in range(1, n + 1):
            mask = components == k
            first = int(np.flatnonzero(mask.ravel())[0])
            expected[first + 1] = (c, int(mask.sum()), scores[c][mask].mean())
    assert found.keys() == expected.keys()
    for i, f in found.items():
        c, pixels, score = expected[i]
        assert (f["class_id"], f["area_px"]) == (c, pixels)
        assert f["mean_score"] == pytest.approx(score, rel=1e-9)
    assert features(store_of(tmp_path, labels, 32), 32, Affine.identity())[next(iter(found))]["mean_score"] is None


def test_min_area_and_simplify(tmp_path: Path) -> None:
    labels = blobs((80, 80), 5)
    store = store_of(tmp_path, labels, 32)
    transform = Affine(2, 0, 0, 0, -2, 0)
    exact = features(store, 32, transform)
    small = features(store, 32, transform, VectorOptions(min_area=40.0))
    assert set(small) == {i for i, f in exact.items() if f["area_px"] * 4 >= 40}
    assert len(small) < len(exact)
    simple = features(store, 32, transform, VectorOptions(simplify=3.0))
    assert simple.keys() == exact.keys()
    assert sum(shapely.get_num_coordinates(f["geometry"]) for f in simple.values()) < \
        sum(shapely.get_num_coordinates(f["geometry"]) for f in exact.values())
    assert all(f["geometry"].is_valid for f in simple.values())
    with pytest.raises(ConfigError, match="--min-area"):
        VectorOptions(min_area=-1).check()


@pytest.mark.parametrize("fmt", ["gpkg", "parquet", "fgb", "geojson"])
def test_every_format_opens_in_gdal_with_the_rows_written(fmt: str, tmp_path: Path) -> None:
    labels = blobs((60, 90), 8)
    store = store_of(tmp_path, labels, 32)
    transform = Affine(10, 0, 500000, 0, -10, 5000000)
    path = tmp_path / f"objects.{fmt}"
    info = LayerInfo(UTM, 32633, "s")

    def stream() -> Any:
        return vectorize(store, (32, 32), transform, NAMES, KINDS, VectorOptions(), scene_id="s", model="m",
                         model_version="1", run_id="r")

    written = write_vectors(path, fmt, info, stream())
    assert written == len(features(store, 32, transform)) > 10 and count_features(path, fmt) == written
    if fmt != "parquet":  # the system GDAL (Debian) opens it: what users' tools run
        done = subprocess.run(["ogrinfo", "-ro", "-so", "-al", str(path)], capture_output=True, text=True)
        assert done.returncode == 0 and f"Feature Count: {written}" in done.stdout, done.stderr
        assert "Warning" not in done.stderr and "ERROR" not in done.stderr, done.stderr
    if fmt == "gpkg" and VALIDATE_GPKG.exists():
        check = subprocess.run(["python3", str(VALIDATE_GPKG), str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    if fmt == "parquet":
        geopandas = pytest.importorskip("geopandas")
        frame = geopandas.read_parquet(path)
        assert frame.crs.to_epsg() == 32633 and len(frame) == written
        import pyarrow.parquet as pq

        geo = json.loads(pq.ParquetFile(path).schema_arrow.metadata[b"geo"])
        assert geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
        boxes = pq.read_table(path, columns=["bbox"]).column("bbox").combine_chunks()
        np.testing.assert_allclose(boxes.field("xmin"), frame.geometry.bounds["minx"])
        np.testing.assert_allclose(boxes.field("ymax"), frame.geometry.bounds["maxy"])
    if fmt == "geojson":
        doc = json.loads(path.read_text())
        assert doc["source_crs"] == "EPSG:32633" and "crs" not in doc
        first = doc["features"][0]
        from pyproj import Transformer

        gpkg = tmp_path / "ref.gpkg"
        write_vectors(gpkg, "gpkg", info, stream())
        ref = pyogrio.read_dataframe(gpkg).set_index("instance_id").loc[first["properties"]["instance_id"]]
        lon, lat = Transformer.from_crs(32633, 4326, always_xy=True).transform(*ref.geometry.exterior.coords[0])
        coords = np.array(first["geometry"]["coordinates"][0])
        assert np.min(np.hypot(coords[:, 0] - lon, coords[:, 1] - lat)) < 1e-6  # lon, lat order, RFC 7946


def test_geojson_without_a_crs_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="WGS 84"):
        write_vectors(tmp_path / "x.geojson", "geojson", LayerInfo(None, None, "s"), iter(()))
    with pytest.raises(ConfigError, match="unknown vector format"):
        write_vectors(tmp_path / "x.shp", "shp", LayerInfo(None, None, "s"), iter(()))


def test_shapes_joined_only_further_down_and_holes_made_of_several_chunks(tmp_path: Path) -> None:
    labels = np.zeros((40, 40), dtype=np.uint8)
    labels[2:30, 3:6] = 2  # a U: two arms in the first line of chunks, joined in the third
    labels[2:30, 14:17] = 2
    labels[27:30, 3:17] = 2
    yy, xx = np.mgrid[:40, :40]
    ring = (np.hypot(yy - 20, xx - 30) < 9) & (np.hypot(yy - 20, xx - 30) >= 4)
    labels[ring] = 3  # an annulus whose hole lies on the seams of four chunks
    labels[5, 20], labels[6, 21] = 1, 1  # two pixels touching by a corner: two objects
    store = store_of(tmp_path, labels, 10)
    found: dict[int, list[dict[str, Any]]] = {}
    for f in features(store, 10, Affine.identity()).values():
        found.setdefault(f["class_id"], []).append(f)
    (u,), (annulus,) = found[2], found[3]
    assert u["area_px"] == int((labels == 2).sum()) and not u["geometry"].interiors
    assert len(annulus["geometry"].interiors) == 1 and annulus["area_px"] == int(ring.sum())
    assert shapely.Polygon(annulus["geometry"].interiors[0]).area == pytest.approx(float(
        ((np.hypot(yy - 20, xx - 30) < 4)).sum()))
    assert len(found[1]) == 2


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from segflow.synthetic import write_synthetic_scene
    from segflow.tile_infer import TileInferParams, tile_infer

    folder = tmp_path_factory.mktemp("run")
    write_synthetic_scene(folder / "T33UVP.tif", width=300, height=260, seed=4)
    tile_infer(folder / "T33UVP.tif", folder / "out", TileInferParams(model="spectral-landcover", chunk=128,
                                                                      vectorize="gpkg"))
    return folder / "out"


def test_a_run_with_vectorize_publishes_its_objects_and_a_quicklook(run: Path) -> None:
    frame = pyogrio.read_dataframe(run / "instances.gpkg")
    assert len(frame) > 5 and set(frame.scene_id) == {"T33UVP"} and set(frame.model) == {"spectral-landcover"}
    assert frame.crs.to_epsg() == 32633 and frame.geometry.is_valid.all()
    with rasterio.open(run / "labels.tif") as ds:
        labels, transform = ds.read(1), ds.transform
        footprint = shapely.box(*ds.bounds)
    present = (labels > 0) & (labels != LABEL_NODATA)
    assert frame.geometry.area.sum() == pytest.approx(present.sum() * abs(transform.determinant), rel=1e-9)
    assert frame.geometry.within(footprint).all()
    assert (run / "quicklook.png").stat().st_size > 1000


def test_segflow_vectorize_writes_the_same_objects_from_an_existing_run(run: Path, tmp_path: Path) -> None:
    from segflow.cli import main

    before = sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*"))
    assert main(["vectorize", str(run), "-o", str(tmp_path / "objects.parquet")]) == 0
    assert sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*")) == before, "run untouched"
    again = pyogrio.read_dataframe(run / "instances.gpkg").set_index("instance_id").sort_index()
    geopandas = pytest.importorskip("geopandas")
    other = geopandas.read_parquet(tmp_path / "objects.parquet").set_index("instance_id").sort_index()
    assert list(again.index) == list(other.index)
    assert all(shapely.equals(a, b) for a, b in zip(again.geometry, other.geometry, strict=True))
    assert main(["vectorize", str(run), "-o", str(tmp_path / "objects.shp")]) == 2
    assert main(["vectorize", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.gpkg")]) == 2


def test_vector_options_are_refused_before_anything_runs(tmp_path: Path) -> None:
    from segflow.tile_infer import TileInferParams, tile_infer

    from .helpers import random_image, write_geotiff

    plain = write_geotiff(tmp_path / "plain.tif", random_image((4, 40, 40)), crs=None)
    for params, message in ((TileInferParams(vectorize="geojson"), "WGS 84"),
                            (TileInferParams(vectorize="gpkg", vector_options=VectorOptions(simplify=-1)),
                             "--simplify")):
        with pytest.raises(ConfigError, match=message):
            tile_infer(plain, tmp_path / "out", params)
        assert not (tmp_path / "out").exists()


def test_panoptic_ids_are_the_vector_ids_of_the_thing_instances(tmp_path: Path) -> None:
    from segflow.synthetic import write_synthetic_scene
    from segflow.tile_infer import TileInferParams, tile_infer

    write_synthetic_scene(tmp_path / "s.tif", width=320, height=300, seed=9)
    out = tmp_path / "out"
    tile_infer(tmp_path / "s.tif", out, TileInferParams(model="demo-unet-2d", chunk=128, vectorize="gpkg",
                                                        panoptic=True))
    with rasterio.open(out / "panoptic.tif") as ds:
        classes, instances = ds.read(1), ds.read(2)
        assert ds.descriptions == ("class", "instance")
    with rasterio.open(out / "labels.tif") as ds:
        np.testing.assert_array_equal(classes, ds.read(1))
    frame = pyogrio.read_dataframe(out / "instances.gpkg")
    things = frame[frame.kind == "thing"]
    assert len(things) > 3
    assert set(np.unique(instances[instances > 0]).tolist()) == set(things.instance_id.tolist())
    building = 3  # demo-unet-2d's thing class
    components, n = ndimage.label(classes == building)
    assert n == len(things)
    for k in range(1, n + 1):
        mask = components == k
        assert set(np.unique(instances[mask]).tolist()) == {int(np.flatnonzero(mask.ravel())[0]) + 1}
    assert not instances[classes != building].any()
    with pytest.raises(ConfigError, match="no thing class"):
        tile_infer(tmp_path / "s.tif", tmp_path / "o2", TileInferParams(model="spectral-landcover", panoptic=True))
    with pytest.raises(ConfigError, match="--panoptic numbers connected regions"):
        tile_infer(tmp_path / "s.tif", tmp_path / "o3", TileInferParams(
            model="demo-unet-2d", panoptic=True, vectorize="gpkg", vector_options=VectorOptions(separate="watershed")))
    assert not (tmp_path / "o3").exists()


def test_watershed_separates_touching_buildings_the_same_for_every_chunking(tmp_path: Path) -> None:
    labels = np.zeros((60, 90), dtype=np.uint8)
    yy, xx = np.mgrid[:60, :90]
    for cy, cx in ((30, 25), (30, 41), (20, 70)):  # two overlapping disks, one alone
        labels[np.hypot(yy - cy, xx - cx) < 10] = 2
    options = VectorOptions(separate="watershed", min_distance=5)
    found = {c: features(store_of(tmp_path, labels, c), c, Affine.identity(), options) for c in (16, 64)}
    assert found[16].keys() == found[64].keys()
    things = [f for f in found[16].values() if f["class_id"] == 2]
    assert len(things) == 3 and sum(f["area_px"] for f in things) == int((labels == 2).sum())
    for i, f in found[16].items():
        assert shapely.equals(f["geometry"], found[64][i]["geometry"]) and f["geometry"].is_valid
    plain = [f for f in features(store_of(tmp_path, labels, 16), 16, Affine.identity()).values()
             if f["class_id"] == 2]
    assert len(plain) == 2  # without separation the two disks are one object


def test_small_holes_are_filled_and_large_ones_kept(tmp_path: Path) -> None:
    labels = np.zeros((40, 60), dtype=np.uint8)
    labels[5:35, 5:55] = 2
    labels[10:12, 10:12] = 0  # a 4-pixel hole
    labels[15:30, 30:50] = 0  # a 300-pixel hole
    store = store_of(tmp_path, labels, 16)
    (kept,) = features(store, 16, Affine.identity()).values()
    assert len(kept["geometry"].interiors) == 2
    (filled,) = features(store, 16, Affine.identity(), VectorOptions(fill_holes=10.0)).values()
    assert len(filled["geometry"].interiors) == 1 and filled["area"] == kept["area"] + 4
    assert filled["area_px"] == kept["area_px"]


def test_holes_of_exactly_the_limit_in_map_units_are_kept(tmp_path: Path) -> None:
    """``fill_holes`` removes holes *smaller* than the limit, in map units² (a 4-pixel hole of 10 m pixels is
    400 m²)."""
    labels = np.zeros((20, 20), dtype=np.uint8)
    labels[2:18, 2:18] = 2
    labels[8:10, 8:10] = 0
    store = store_of(tmp_path, labels, 8)
    transform = Affine(10, 0, 500000, 0, -10, 5000000)
    (kept,) = features(store, 8, transform, VectorOptions(fill_holes=400.0)).values()
    assert len(kept["geometry"].interiors) == 1 and kept["area"] == (256 - 4) * 100
    (filled,) = features(store, 8, transform, VectorOptions(fill_holes=400.5)).values()
    assert len(filled["geometry"].interiors) == 0 and filled["area"] == 256 * 100


class _Shards:
    def __init__(self, *spatial_chunk: int) -> None:
        self.spatial_chunk = spatial_chunk


@pytest.mark.parametrize(("shard", "expected"), [
    ((512, 512), (2048, 4096)),  # the largest multiples up to (2048, 4096)
    ((1500, 1500), (1500, 3000)),  # one shard fits in 2048 rows, two in 4096 columns
    ((3000, 5000), (2048, 4096)),  # a shard larger than the limit: the limit
    ((2048, 4096), (2048, 4096)),
    ((7, 3), (2044, 4095)),  # 292 × 7 rows, 1365 × 3 columns
])
def test_tracing_chunks_are_whole_shards_up_to_the_limit(shard: tuple[int, int], expected: tuple[int, int]) -> None:
    assert tracing_chunk(_Shards(*shard)) == expected  # type: ignore[arg-type]
    assert tracing_chunk(_Shards(*shard), limit=(shard[0], 2 * shard[1] + 1)) == (shard[0], 2 * shard[1])  # type: ignore[arg-type]


def test_opening_and_closing_smooth_every_output_the_same_for_every_chunking(tmp_path: Path) -> None:
    from segflow.synthetic import write_synthetic_scene
    from segflow.tile_infer import TileInferParams, tile_infer

    write_synthetic_scene(tmp_path / "s.tif", width=260, height=240, seed=6)
    out = {}
    for name, chunk, radius in (("a", 64, 2), ("b", 512, 2), ("raw", 512, 0)):
        tile_infer(tmp_path / "s.tif", tmp_path / name, TileInferParams(model="spectral-landcover", chunk=chunk,
                                                                        opening=radius, closing=radius,
                                                                        vectorize="gpkg"))
        with rasterio.open(tmp_path / name / "labels.tif") as ds:
            out[name] = ds.read(1)
    np.testing.assert_array_equal(out["a"], out["b"])
    assert (out["a"] != out["raw"]).any()
    smooth = pyogrio.read_dataframe(tmp_path / "a" / "instances.gpkg")
    raw = pyogrio.read_dataframe(tmp_path / "raw" / "instances.gpkg")
    assert len(smooth) < len(raw)  # specks opened away
    with pytest.raises(ConfigError, match="--opening"):
        tile_infer(tmp_path / "s.tif", tmp_path / "c", TileInferParams(model="spectral-landcover", opening=-1))
