"""``panoptic.tif`` written in-process (segflow.io.panoptic): class and instance bands against scipy's labelling,
the ids of ``mask.zarr``'s instances array, georeferencing, layout, tags, overviews, chunk invariance and every
refusal. The end-to-end run (ids equal to the vector output's) is in test_vectorize.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from scipy import ndimage

from segflow import vectorize as vectorize_module
from segflow.errors import ConfigError, OutputError
from segflow.geometry import RasterGeometry
from segflow.io import panoptic
from segflow.io.dicom import open_dicom_series
from segflow.io.mask_store import MaskStore
from segflow.io.panoptic import PanopticSink, overview_factors
from segflow.io.readers import open_scene
from segflow.labels import LABEL_NODATA
from segflow.models.package import ModelSpec

from .helpers import random_image, write_geotiff
from .test_dicom import CT5N
from .test_instances import reference

NAMES = ("background", "building", "water", "tree")
KINDS = ("stuff", "thing", "stuff", "thing")
UTM = CRS.from_epsg(32633).to_wkt()
TRANSFORM = (10.0, 0.0, 500000.0, 0.0, -10.0, 5200000.0)


def _labels(shape: tuple[int, int] = (70, 90), seed: int = 5) -> np.ndarray:
    """Buildings (1) and trees (3) as blobs, some touching others of their class, water (2), a nodata band."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    labels[ndimage.gaussian_filter(rng.random(shape), 3) > 0.52] = 1
    labels[ndimage.gaussian_filter(rng.random(shape), 3) > 0.53] = 3
    labels[:, :8] = 2
    labels[-3:, :] = LABEL_NODATA
    return labels


def _store(tmp: Path, labels: np.ndarray, chunk: tuple[int, int] = (32, 32)) -> MaskStore:
    store = MaskStore.create(tmp / "mask.zarr", labels.shape, chunk, NAMES, save_scores=False, attrs={})
    store.labels[:] = labels
    return store


def _reference(labels: np.ndarray, things: tuple[int, ...]) -> np.ndarray:
    """scipy's face-connected components of each thing class (test_instances.py's reference, numbered by rank of
    first pixel), each numbered 1 + its first pixel's flat index instead."""
    ranks, _ = reference(labels, list(things), 1)
    numbers, first = np.unique(ranks.ravel(), return_index=True)
    lookup = np.zeros(int(ranks.max()) + 1, np.uint32)
    lookup[numbers] = first + 1
    lookup[0] = 0
    return lookup[ranks]


def _spec(kinds: tuple[str, ...] = KINDS) -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "m", "spatial_dims": 2, "weights": "m.ts", "tile": 64, "input": {"bands": [{"name": "b"}]},
        "classes": [{"name": n, "kind": k} for n, k in zip(NAMES, kinds, strict=True)]})


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(path) as src:
        return src.read(1), src.read(2)


def test_bands_are_the_classes_and_scipys_instances_numbered_by_their_first_pixel(tmp_path: Path) -> None:
    labels = _labels()
    sink = PanopticSink(RasterGeometry(UTM, TRANSFORM), (1, 3))
    store = _store(tmp_path, labels)
    path = sink.write(store, tmp_path)
    assert path == tmp_path / "panoptic.tif" and sink.entries == ("panoptic.tif",)
    classes, instances = _read(path)
    want = _reference(labels, (1, 3))
    assert len(np.unique(want)) > 10  # many objects, several classes
    np.testing.assert_array_equal(classes, labels.astype(np.uint32))
    np.testing.assert_array_equal(instances, want)
    ids = store.group["instances"]
    np.testing.assert_array_equal(np.asarray(ids[:]), want)  # mask.zarr's instances: the same ids
    assert ids.dtype == np.uint32 and dict(ids.attrs) == {"things": [1, 3],
                                                          "id": "1 + flat index of the instance's first pixel"}
    with rasterio.open(path) as src:
        assert src.count == 2 and src.dtypes == ("uint32", "uint32") and src.descriptions == ("class", "instance")
        assert src.crs == CRS.from_wkt(UTM) and tuple(src.transform)[:6] == TRANSFORM
        assert src.tags(1)["nodata"] == "255"
        assert src.tags(2)["instance_id"] == "1 + row * width + col of the instance's first pixel; 0 = none"
        assert src.profile["tiled"] and src.block_shapes == [(512, 512)] * 2
        assert src.compression.value == "DEFLATE" and src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
        assert src.overviews(1) == src.overviews(2) == []  # smaller than 512 pixels a side


def test_the_file_and_the_ids_are_the_same_whatever_the_chunks(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    labels = _labels()
    sink = PanopticSink(RasterGeometry(UTM, TRANSFORM), (1, 3))
    (tmp_path / "whole").mkdir()
    whole = _read(sink.write(_store(tmp_path / "whole", labels), tmp_path / "whole"))
    monkeypatch.setattr(vectorize_module, "tracing_chunk", lambda store: (16, 24))  # many seams
    store = _store(tmp_path, labels, (16, 24))
    chunked = _read(sink.write(store, tmp_path))
    np.testing.assert_array_equal(chunked[0], whole[0])
    np.testing.assert_array_equal(chunked[1], whole[1])
    assert store.group["instances"].chunks == (16, 24)


def test_an_ungeoreferenced_scene_gets_no_crs_and_stuff_classes_no_instances(tmp_path: Path) -> None:
    labels = _labels()
    path = PanopticSink(RasterGeometry(None, None), (3,)).write(_store(tmp_path, labels), tmp_path)
    _, instances = _read(path)
    np.testing.assert_array_equal(instances, _reference(labels, (3,)))  # buildings are not things here
    with rasterio.open(path) as src:
        assert src.crs is None and src.transform.is_identity


@pytest.mark.parametrize(("side", "factors"), [(511, []), (512, [2]), (1100, [2, 4])])
def test_overviews_down_to_256_pixels_hold_only_ids_of_the_full_resolution(tmp_path: Path, side: int,
                                                                           factors: list[int]) -> None:
    labels = _labels((side, side + 10), seed=side)
    path = PanopticSink(RasterGeometry(UTM, TRANSFORM), (1, 3)).write(_store(tmp_path, labels, (256, 256)), tmp_path)
    with rasterio.open(path) as src:
        assert src.overviews(1) == src.overviews(2) == factors
        full = src.read(2)
        for k in range(len(factors)):
            with rasterio.open(path, overview_level=k) as level:
                classes, ids = level.read(1), level.read(2)
            assert set(np.unique(ids)) <= set(np.unique(full))  # nearest: no averaged ids
            assert set(np.unique(classes)) <= set(np.unique(labels))


@pytest.mark.parametrize(("shape", "factors"), [
    ((511, 9000), []), ((9000, 512), [2]), ((1023, 1024), [2]), ((1024, 1024), [2, 4]), ((2048, 2048), [2, 4, 8]),
    ((4095, 5000), [2, 4, 8]), ((4096, 5000), [2, 4, 8, 16]), ((8192, 8192), [2, 4, 8, 16, 32]),
    ((16383, 20000), [2, 4, 8, 16, 32]), ((16384, 16384), [2, 4, 8, 16, 32, 64]),
    ((99999, 99999), [2, 4, 8, 16, 32, 64]),
])
def test_overview_levels_keep_256_pixels_on_the_shorter_side(shape: tuple[int, int], factors: list[int]) -> None:
    assert overview_factors(*shape) == factors


def test_writing_again_into_a_store_replaces_its_instances(tmp_path: Path) -> None:
    """A run resumed or repeated paints its instances again: the array is replaced, ids as the labels say now."""
    sink = PanopticSink(RasterGeometry(UTM, TRANSFORM), (1, 3))
    store = _store(tmp_path, _labels())
    sink.write(store, tmp_path)
    labels = _labels(seed=6)
    store.labels[:] = labels
    _, instances = _read(sink.write(store, tmp_path))
    np.testing.assert_array_equal(instances, _reference(labels, (1, 3)))
    ids = store.group["instances"]
    np.testing.assert_array_equal(np.asarray(ids[:]), instances)
    assert ids.metadata.dimension_names == ("y", "x") and ids.fill_value == 0  # as the labels array


def test_a_file_that_does_not_read_back_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = write_geotiff(tmp_path / "other.tif", random_image((1, 70, 90)))
    opened = rasterio.open

    def reading_another(path: Any, mode: str = "r", **kw: Any) -> Any:
        return opened(other) if mode == "r" else opened(path, mode, **kw)

    monkeypatch.setattr(panoptic.rasterio, "open", reading_another)
    with pytest.raises(OutputError) as err:
        PanopticSink(RasterGeometry(UTM, TRANSFORM), (1,)).write(_store(tmp_path, _labels()), tmp_path)
    assert str(err.value) == f"{tmp_path / 'panoptic.tif'} does not read back as written; check the disk and run again"


def test_for_scene_takes_the_thing_classes_but_the_background(tmp_path: Path) -> None:
    write_geotiff(tmp_path / "s.tif", random_image((1, 20, 30)))
    scene = open_scene(tmp_path / "s.tif")
    sink = PanopticSink.for_scene(scene, _spec())
    assert sink.things == (1, 3) and sink.geometry == scene.geometry and sink.name == "panoptic.tif"
    assert PanopticSink.for_scene(scene, _spec(("thing", "stuff", "stuff", "thing"))).things == (3,)


def test_for_scene_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert panoptic.MAX_PIXELS == 2**32 - 1  # ids are 1 + a flat pixel index, in uint32
    with pytest.raises(ConfigError) as err:
        PanopticSink.for_scene(open_dicom_series(CT5N), _spec())
    assert str(err.value) == ("--panoptic writes a raster of class and instance ids for 2D rasters; volumes get "
                              "instances.csv and the instances array of mask.zarr")
    write_geotiff(tmp_path / "s.tif", random_image((1, 20, 30)))
    scene = open_scene(tmp_path / "s.tif")
    with pytest.raises(ConfigError) as err:
        PanopticSink.for_scene(scene, _spec(("thing", "stuff", "stuff", "stuff")))
    assert str(err.value) == "model 'm' has no thing class, so --panoptic would have no instances; leave it out"
    monkeypatch.setattr(panoptic, "MAX_PIXELS", 600)
    with pytest.raises(ConfigError) as err:
        PanopticSink.for_scene(scene, _spec())
    assert str(err.value) == ("--panoptic numbers instances by pixel, which uint32 holds only below 600 pixels; "
                              "split the scene")
    monkeypatch.setattr(panoptic, "MAX_PIXELS", 601)
    assert PanopticSink.for_scene(scene, _spec()).things == (1, 3)  # 20 x 30 = 600 pixels: below the limit
