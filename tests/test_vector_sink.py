"""``instances.<format>`` as a sink (VectorSink) and ``segflow vectorize`` on an existing run (vectorize_run),
in-process: the checks made before a run, the columns that come from the run (scene, model, run id), the
scene's grid on the polygons, the read-back refusal, and a run folder that is only read."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyogrio
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS

from segflow.errors import ConfigError, OutputError
from segflow.features import LayerInfo
from segflow.geometry import RasterGeometry, VolumeGeometry
from segflow.io import vector_sink
from segflow.io.mask_store import MaskStore
from segflow.io.vector_sink import VectorSink, scene_id_of, vectorize_run
from segflow.models.package import ModelSpec
from segflow.vectorize import VectorOptions

UTM = CRS.from_epsg(32633).to_wkt()
LOCAL = ('LOCAL_CS["site grid",LOCAL_DATUM["site",32767],UNIT["metre",1],AXIS["Easting",EAST],'
         'AXIS["Northing",NORTH]]')
GRID = (10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)
FINGERPRINT = "0123456789abcdef" + "f" * 48


def spec(version: str = "2.1") -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "roofs", "version": version, "spatial_dims": 2, "weights": "w.pt", "tile": 8,
        "input": {"bands": [{"name": "red"}]},
        "classes": [{"name": "background"}, {"name": "water"}, {"name": "building", "kind": "thing"}]})


def labels() -> np.ndarray:
    out = np.zeros((30, 40), np.uint8)
    out[2:6, 3:9] = 2  # a building of 24 pixels
    out[10:20, 0:40] = 1  # a water band across the scene
    out[22:25, 30:32] = 2  # a second building of 6 pixels
    return out


def store_at(path: Path, data: np.ndarray, attrs: dict[str, Any] | None = None,
             names: tuple[str, ...] = ("background", "water", "building")) -> MaskStore:
    store = MaskStore.create(path, data.shape, (16,) * data.ndim, names, save_scores=False,
                             attrs={"run_fingerprint": FINGERPRINT, **(attrs or {})})
    store.labels[:] = data
    return store


def read(path: Path) -> Any:
    if path.suffix == ".parquet":  # GDAL's (Geo)Parquet reader is not in every build
        import geopandas

        frame = geopandas.read_parquet(path)
    else:
        frame = pyogrio.read_dataframe(path)
    return frame.sort_values("instance_id").reset_index(drop=True)


# ----------------------------------------------------------------------------- scene ids


@pytest.mark.parametrize(("name", "expected"), [
    ("/data/2024/T33UVP.tif", "T33UVP"), ("/vsizip/a.zip/b.tif", "b"), ("C:\\data\\x.tif", "x"),
    ("scenes/run/", "run"), ("scene", "scene"), ("a.b.tif", "a.b"), ("/data/.hidden", ".hidden"),
    ("C:\\runs\\night\\", "night"), ("", "")])
def test_scene_ids_are_the_last_name_without_its_suffix(name: str, expected: str) -> None:
    assert scene_id_of(name) == expected


# ----------------------------------------------------------------------------- checks before a run


def scene(geometry: Any) -> Any:
    return SimpleNamespace(geometry=geometry)


def test_for_scene_takes_the_scenes_crs_and_transform() -> None:
    sink = VectorSink.for_scene(scene(RasterGeometry(UTM, GRID)), spec(), "T1", "fgb")
    assert sink == VectorSink(UTM, GRID, ("background", "water", "building"), ("stuff", "stuff", "thing"), "T1",
                              "roofs", "2.1", "fgb", VectorOptions())
    assert sink.name == "instances.fgb" and sink.entries == ("instances.fgb",)
    options = VectorOptions(min_area=3.0)
    assert VectorSink.for_scene(scene(RasterGeometry(UTM, GRID)), spec(), "T1", options=options).options is options


def test_a_volume_or_a_scene_placed_by_gcps_is_refused() -> None:
    volume = VolumeGeometry(((1.0, 0, 0, 0), (0, 1.0, 0, 0), (0, 0, 1.0, 0), (0, 0, 0, 1.0)), (1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match=r"^--vectorize writes polygons of 2D rasters; for a volume use "
                                          r"instances\.csv and --meshes$"):
        VectorSink.for_scene(scene(volume), spec(), "v")
    placed = RasterGeometry(None, None, gcps=((0.0, 0.0, 10.0, 20.0, 0.0),), gcp_crs=UTM)
    with pytest.raises(ConfigError, match=r"^S2 is georeferenced by ground control points or RPCs, not an affine "
                                          r"transform, so its polygons would be in pixels; warp it first "
                                          r"\(gdalwarp\) and vectorize the warped scene$"):
        VectorSink.for_scene(scene(placed), spec(), "S2")
    rpcs = RasterGeometry(None, None, rpcs={"LINE_OFF": "0"})
    with pytest.raises(ConfigError, match="ground control points or RPCs"):
        VectorSink.for_scene(scene(rpcs), spec(), "S3")
    # a raster with neither (pixel coordinates) is not refused
    plain = VectorSink.for_scene(scene(RasterGeometry(None, None)), spec(), "S4")
    assert plain.transform == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0) and plain.crs_wkt is None


def test_create_checks_the_format_and_the_options_first() -> None:
    with pytest.raises(ConfigError, match="unknown vector format 'shp'"):
        VectorSink.create(UTM, GRID, spec(), "s", "shp")
    with pytest.raises(ConfigError, match="GeoJSON"):
        VectorSink.create(None, GRID, spec(), "s", "geojson")
    with pytest.raises(ConfigError, match="--simplify"):
        VectorSink.create(UTM, GRID, spec(), "s", "gpkg", VectorOptions(simplify=-1))
    options = VectorOptions(min_area=5.0)
    sink = VectorSink.create(UTM, list(GRID), spec("3"), "s", options=options)
    assert sink.fmt == "gpkg" and sink.options is options and sink.transform == GRID
    assert sink.model == "roofs" and sink.model_version == "3"
    assert VectorSink.create(UTM, None, spec(), "s").transform == tuple(Affine.identity())[:6]


@pytest.mark.parametrize(("crs", "epsg"), [(UTM, 32633), (None, None), (LOCAL, None)])
def test_the_layer_has_the_crs_its_epsg_code_and_the_scene_id(crs: str | None, epsg: int | None) -> None:
    assert VectorSink.create(crs, GRID, spec(), "T9").layer() == LayerInfo(crs, epsg, "T9")


# ----------------------------------------------------------------------------- write


def test_write_puts_each_object_on_the_scenes_grid_with_the_runs_columns(tmp_path: Path) -> None:
    store = store_at(tmp_path / "mask.zarr", labels())
    sink = VectorSink.create(UTM, GRID, spec(), "T33UVP", "gpkg")
    path = sink.write(store, tmp_path)
    assert path == tmp_path / "instances.gpkg"
    frame = read(path)
    assert frame.crs.to_epsg() == 32633
    assert list(frame["class_name"]) == ["building", "water", "building"]
    assert set(frame.scene_id) == {"T33UVP"} and set(frame.model) == {"roofs"}
    assert set(frame.model_version) == {"2.1"} and set(frame.run_id) == {"0123456789abcdef"}
    transform = Affine(*GRID)
    assert shapely.equals(frame.geometry[0], shapely.box(*(transform @ (3, 6)), *(transform @ (9, 2))))
    assert frame.geometry.area.tolist() == [2400.0, 40000.0, 600.0]


@pytest.mark.parametrize("fmt", ["gpkg", "parquet", "fgb", "geojson"])
def test_write_reads_back_every_format(tmp_path: Path, fmt: str) -> None:
    path = VectorSink.create(UTM, GRID, spec(), "T", fmt).write(store_at(tmp_path / "mask.zarr", labels()), tmp_path)
    assert path.name == f"instances.{fmt}" and len(read(path)) == 3


def test_write_without_a_fingerprint_leaves_the_run_id_empty(tmp_path: Path) -> None:
    store = MaskStore.create(tmp_path / "mask.zarr", (30, 40), (16, 16), ("background", "water", "building"),
                             save_scores=False, attrs={})
    store.labels[:] = labels()
    frame = read(VectorSink.create(UTM, GRID, spec(), "s", "fgb").write(store, tmp_path))
    assert len(frame) == 3 and set(frame.run_id) == {""}


def test_write_refuses_a_volume_store(tmp_path: Path) -> None:
    store = store_at(tmp_path / "mask.zarr", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ConfigError, match=r"^the mask store is 3-D; polygons need a 2D raster run$"):
        VectorSink.create(UTM, GRID, spec(), "s").write(store, tmp_path)


def test_write_refuses_a_file_that_reads_back_another_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_at(tmp_path / "mask.zarr", labels())
    monkeypatch.setattr(vector_sink, "count_features", lambda path, fmt: 2)
    with pytest.raises(OutputError, match=r"instances\.gpkg holds 2 features but 3 were written; the disk may be "
                                          r"full or failing: check it and run again$"):
        VectorSink.create(UTM, GRID, spec(), "s").write(store, tmp_path)


# ----------------------------------------------------------------------------- segflow vectorize


@pytest.fixture
def models(monkeypatch: pytest.MonkeyPatch) -> dict[str, ModelSpec]:
    """Model names ``resolve_package`` knows in these tests."""
    from segflow.errors import ModelError

    known = {"roofs": spec()}

    def resolve(name: str) -> Any:
        if name not in known:
            raise ModelError(f"no model {name!r}")
        return SimpleNamespace(spec=known[name])

    monkeypatch.setattr("segflow.models.resolve_package", resolve)
    return known


def run_folder(tmp_path: Path, **attrs: Any) -> Path:
    run = tmp_path / "runs" / "night-7"
    store_at(run / "mask.zarr", labels(), {"crs": UTM, "transform": list(GRID), "source": "/in/T33UVP.tif",
                                           "model": "roofs", **attrs})
    return run


def files(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_vectorize_run_writes_the_runs_objects_and_only_reads_the_run(tmp_path: Path,
                                                                      models: dict[str, ModelSpec]) -> None:
    run = run_folder(tmp_path)
    before = files(run)
    out = tmp_path / "out" / "objects.gpkg"
    out.parent.mkdir()
    with warnings.catch_warnings(record=True) as caught:  # recorded: raised from GDAL's callback, it is swallowed
        warnings.simplefilter("always")
        assert vectorize_run(run, out) == 3
    assert [str(w.message) for w in caught] == [], "GDAL warns of a GeoPackage whose name is not *.gpkg"
    assert files(run) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["objects.gpkg"], "no scratch or temporary file left"
    frame = read(out)
    assert frame.crs.to_epsg() == 32633 and set(frame.scene_id) == {"T33UVP"}
    assert set(frame.run_id) == {"0123456789abcdef"} and set(frame.model_version) == {"2.1"}
    assert set(frame.model) == {"roofs"} and frame.geometry.area.tolist() == [2400.0, 40000.0, 600.0]
    # the store itself may be named, and the format given whatever the suffix
    assert vectorize_run(run / "mask.zarr", tmp_path / "out" / "objects.data", fmt="fgb") == 3
    assert len(pyogrio.read_dataframe(tmp_path / "out" / "objects.data")) == 3


@pytest.mark.parametrize(("name", "fmt"), [("x.parquet", "parquet"), ("X.FGB", "fgb"), ("x.GeoJSON", "geojson")])
def test_vectorize_run_takes_the_format_from_the_suffix(tmp_path: Path, models: dict[str, ModelSpec], name: str,
                                                        fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = vector_sink.write_vectors
    monkeypatch.setattr(vector_sink, "write_vectors", lambda path, f, *a: seen.append(f) or real(path, f, *a))
    assert vectorize_run(run_folder(tmp_path), tmp_path / name) == 3
    assert seen == [fmt]


def test_vectorize_run_names_the_scene_after_the_run_folder_without_a_source(tmp_path: Path,
                                                                              models: dict[str, ModelSpec]) -> None:
    run = run_folder(tmp_path, source=None)
    vectorize_run(run, tmp_path / "o.gpkg")
    assert set(read(tmp_path / "o.gpkg").scene_id) == {"night-7"}


def test_vectorize_run_without_a_crs_writes_pixel_coordinates(tmp_path: Path, models: dict[str, ModelSpec]) -> None:
    run = run_folder(tmp_path, crs=None, transform=None)
    vectorize_run(run, tmp_path / "o.fgb")
    frame = read(tmp_path / "o.fgb")
    assert frame.crs is None and frame.geometry.area.tolist() == [24.0, 400.0, 6.0]
    assert shapely.equals(frame.geometry[0], shapely.box(3, 2, 9, 6))


def test_vectorize_run_with_another_available_model(tmp_path: Path, models: dict[str, ModelSpec]) -> None:
    run = run_folder(tmp_path, model="gone")
    with pytest.raises(ConfigError, match=r"^the run's model 'gone' is not available here; pass --model with it "
                                          r"\(a name or a package folder\) so the classes' kinds are known$"):
        vectorize_run(run, tmp_path / "o.gpkg")
    assert vectorize_run(run, tmp_path / "o.gpkg", model="roofs") == 3


def test_vectorize_run_refusals_leave_no_output(tmp_path: Path, models: dict[str, ModelSpec],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_folder(tmp_path)
    with pytest.raises(ConfigError, match=r"^cannot tell the format of objects\.shp from its suffix; use one of "
                                          r"\.gpkg, \.parquet, \.fgb, \.geojson or --format$"):
        vectorize_run(run, tmp_path / "objects.shp")
    models["other"] = ModelSpec.model_validate({**spec().model_dump(), "name": "other",
                                                "classes": [{"name": "a"}, {"name": "b"}]})
    with pytest.raises(ConfigError, match=r"^model 'other' has classes \['a', 'b'\] but the run has "
                                          r"\['background', 'water', 'building'\]; pass the model the run used "
                                          r"\(--model\)$"):
        vectorize_run(run, tmp_path / "o.gpkg", model="other")
    volume = tmp_path / "volume"
    store_at(volume / "mask.zarr", np.zeros((2, 4, 4), np.uint8), {"model": "roofs"})
    with pytest.raises(ConfigError, match=r"volume is a 3-D run; polygons come from 2D raster runs$"):
        vectorize_run(volume, tmp_path / "o.gpkg")
    monkeypatch.setattr(vector_sink, "count_features", lambda path, fmt: 1)
    with pytest.raises(OutputError, match=r"o\.gpkg did not read back with the 3 features written; the disk may "
                                          r"be full or failing: check it and run again$"):
        vectorize_run(run, tmp_path / "o.gpkg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "volume"]


def test_vectorize_run_applies_its_options_and_separates_in_a_scratch_folder_beside_the_output(
        tmp_path: Path, models: dict[str, ModelSpec], monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_folder(tmp_path)
    before = files(run)
    assert vectorize_run(run, tmp_path / "big.gpkg", options=VectorOptions(min_area=1000.0)) == 2  # 600 m² dropped
    assert read(tmp_path / "big.gpkg").geometry.area.tolist() == [2400.0, 40000.0]
    written: list[Path] = []
    real = vector_sink.write_vectors

    def record(path: Path, *args: Any) -> int:
        written.append(path)
        assert sorted(p.name for p in path.parent.iterdir()) == ["work.zarr"]
        return real(path, *args)

    monkeypatch.setattr(vector_sink, "write_vectors", record)
    assert vectorize_run(run, tmp_path / "split.gpkg", options=VectorOptions(separate="watershed")) == 3
    assert files(run) == before, "the watershed's arrays are made in the scratch folder, not in the run"
    (path,) = written
    assert path.name == "split.gpkg" and path.parent.parent == tmp_path and path.parent.name.startswith(".segflow-")
    assert not path.parent.exists()


def test_vectorize_run_of_a_store_without_class_names_takes_the_models(tmp_path: Path,
                                                                       models: dict[str, ModelSpec]) -> None:
    import zarr

    run = run_folder(tmp_path)
    group = zarr.open_group(run / "mask.zarr", mode="r+")
    attrs = dict(group.attrs)
    del attrs["class_names"], attrs["run_fingerprint"]
    group.attrs.clear()
    group.attrs.update(attrs)
    assert vectorize_run(run, tmp_path / "o.gpkg") == 3
    assert set(read(tmp_path / "o.gpkg").run_id) == {""}
