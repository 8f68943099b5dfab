"""``instances.csv`` and the ``instances`` array (segflow.io.instances_sink), in-process: the area column of
each kind of CRS, sheared rasters in closed form, NaN intensities, scores at nodata, an instance model's
detections measured as they are numbered, the array's attributes, and every read-back refusal."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from affine import Affine
from rasterio.crs import CRS

from segflow.errors import InputError, OutputError
from segflow.io import instances_sink
from segflow.io.instances_sink import InstancesSink, _corners, area_column, instance_rows, labelling_chunk
from segflow.io.mask_store import MaskStore
from segflow.models.package import ModelSpec
from segflow.scene import Scene

UTM = CRS.from_epsg(32633).to_wkt()
SHEARED = Affine(2.0, 0.5, 1000.0, 0.25, -3.0, 2000.0)


def spec(kinds: list[str], dims: int = 2) -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "t", "spatial_dims": dims, "weights": "w.pt", "tile": 8, "input": {"bands": [{"name": "image"}]},
        "classes": [{"name": f"c{i}", "kind": k} for i, k in enumerate(kinds)]})


def raster_store(tmp_path: Path, labels: np.ndarray, scores: np.ndarray | None = None,
                 chunk: tuple[int, int] = (8, 8), classes: int = 3) -> MaskStore:
    store = MaskStore.create(tmp_path / "mask.zarr", labels.shape, chunk, [f"c{i}" for i in range(classes)],
                             save_scores=scores is not None, attrs={})
    store.labels[:] = labels
    if scores is not None:
        assert store.scores is not None
        store.scores[:] = scores
    return store


def rows_of(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    return table[0], [dict(zip(table[0], r, strict=True)) for r in table[1:]]


def two_houses() -> np.ndarray:
    labels = np.zeros((20, 24), np.uint8)
    labels[1:4, 2:7] = 2  # 15 pixels of c2
    labels[10:12, 20:24] = 1  # 8 pixels of c1
    labels[15, 0:3] = 2  # 3 pixels of c2
    return labels


# ----------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(("crs", "column"), [
    (UTM, "area_m2"), ("EPSG:4326", "area_deg2"), ("EPSG:2229", "area_crs2"),  # US survey feet
    ("EPSG:3857", "area_m2"), (None, "area_crs2"), ("", "area_crs2"),
    ('LOCAL_CS["grid",UNIT["metre",1]]', "area_m2"), ('LOCAL_CS["grid",UNIT["Meter",1]]', "area_m2"),
    ('LOCAL_CS["grid",UNIT["m",1]]', "area_m2"), ('LOCAL_CS["grid",UNIT["kilometre",1000]]', "area_crs2"),
    ('LOCAL_CS["grid",UNIT["foot",0.3048]]', "area_crs2"), ("EPSG:4978", "area_m2"),  # geocentric, metres
    ("EPSG:32633+5773", "area_m2"), ("EPSG:4326+5773", "area_deg2")])  # compound: UTM or WGS 84 + EGM96 height
def test_the_area_column_names_the_crs_unit(crs: str | None, column: str) -> None:
    assert area_column(crs) == column


@pytest.mark.parametrize(("chunk", "limit", "expected"), [
    ((8, 8), 64, (8, 8)), ((8, 8), 63, (4, 8)), ((9, 4), 20, (5, 4)), ((1, 1, 1), 0, (1, 1, 1)),
    ((3, 2, 2), 1, (1, 1, 1)), ((2, 7), 4, (2, 2)), ((6, 6, 6), 100, (3, 3, 6))])
def test_the_labelling_chunk_halves_its_largest_axis_rounding_up(chunk: tuple[int, ...], limit: int,
                                                                 expected: tuple[int, ...]) -> None:
    assert labelling_chunk(chunk, limit) == expected
    assert all(isinstance(n, int) for n in labelling_chunk(np.array(chunk, np.int64), limit))


def test_corners_of_boxes() -> None:
    start, stop = np.array([[0.0, 1.0], [5.0, 6.0]]), np.array([[2.0, 3.0], [7.0, 9.0]])
    np.testing.assert_array_equal(_corners(start, stop), [[[0, 1], [0, 3], [2, 1], [2, 3]],
                                                          [[5, 6], [5, 9], [7, 6], [7, 9]]])
    assert _corners(np.zeros((1, 3)), np.ones((1, 3))).shape == (1, 8, 3)


# ----------------------------------------------------------------------------- rasters


def test_a_sheared_raster_in_closed_form(tmp_path: Path) -> None:
    labels = two_houses()
    image = np.arange(20 * 24, dtype=np.float32).reshape(1, 20, 24)
    scene = Scene.from_array(image, transform=tuple(SHEARED)[:6], crs=UTM)
    (tmp_path / "out").mkdir()
    path = InstancesSink(scene, spec(["stuff", "thing", "thing"])).write(raster_store(tmp_path, labels),
                                                                      tmp_path / "out")
    assert path.read_bytes().count(b"\n") == 4 and b"\r" not in path.read_bytes()  # Unix line ends
    header, rows = rows_of(path)
    assert header == ["id", "class", "pixels", "area_m2", "centroid_x", "centroid_y", "bbox_min_x", "bbox_min_y",
                      "bbox_max_x", "bbox_max_y", "mean_intensity", "max_intensity", "mean_score"]
    assert [(r["id"], r["class"], r["pixels"]) for r in rows] == [("1", "c2", "15"), ("2", "c1", "8"),
                                                                   ("3", "c2", "3")]
    cell = abs(SHEARED.determinant)
    assert [float(r["area_m2"]) for r in rows] == [15 * cell, 8 * cell, 3 * cell]
    for row, (c0, r0, c1, r1) in zip(rows, [(2, 1, 7, 4), (20, 10, 24, 12), (0, 15, 3, 16)], strict=True):
        cx, cy = SHEARED @ ((c0 + c1) / 2, (r0 + r1) / 2)  # the mean pixel centre of a full box is its centre
        assert (float(row["centroid_x"]), float(row["centroid_y"])) == pytest.approx((cx, cy), abs=1e-9)
        corners = np.array([SHEARED @ (c, r) for c in (c0, c1) for r in (r0, r1)])
        assert [float(row[k]) for k in ("bbox_min_x", "bbox_min_y")] == pytest.approx(corners.min(0), abs=1e-9)
        assert [float(row[k]) for k in ("bbox_max_x", "bbox_max_y")] == pytest.approx(corners.max(0), abs=1e-9)
        values = image[0, r0:r1, c0:c1]
        assert float(row["mean_intensity"]) == pytest.approx(values.mean(), rel=1e-12)
        assert row["max_intensity"] == repr(float(values.max())) and row["mean_score"] == ""


def test_a_raster_without_a_transform_is_refused(tmp_path: Path) -> None:
    scene = Scene.from_array(np.zeros((1, 20, 24), np.float32))
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match=r"^<array> has no affine transform, so instances cannot be placed in the "
                                         r"world; georeference the raster \(gdalwarp\) first$"):
        InstancesSink(scene, spec(["stuff", "thing", "thing"])).write(raster_store(tmp_path, two_houses()),
                                                                       tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_nan_intensities_make_their_instances_measures_nan(tmp_path: Path) -> None:
    image = np.ones((1, 20, 24), np.float32)
    image[0, 2, 3] = np.nan  # inside the first instance
    scene = Scene.from_array(image, transform=tuple(SHEARED)[:6], crs=None)
    (tmp_path / "out").mkdir()
    header, rows = rows_of(InstancesSink(scene, spec(["stuff", "thing", "thing"])).write(
        raster_store(tmp_path, two_houses()), tmp_path / "out"))
    assert header[3] == "area_crs2"
    assert [(r["mean_intensity"], r["max_intensity"]) for r in rows] == [("nan", "nan"), ("1.0", "1.0"),
                                                                         ("1.0", "1.0")]


def test_scores_are_the_instances_own_class_and_nodata_reads_no_score(tmp_path: Path) -> None:
    labels = two_houses()
    labels[0, :] = 255  # a nodata row
    rng = np.random.default_rng(2)
    scores = rng.uniform(size=(3, *labels.shape)).astype(np.float16)
    store = raster_store(tmp_path, labels, scores)
    read = instances_sink._score_reader(store)
    from segflow.tiling import Box

    got = read(Box((0, 0), labels.shape))
    own = np.take_along_axis(scores, np.minimum(labels, 2)[None].astype(np.intp), 0)[0]
    np.testing.assert_array_equal(got, own)
    scene = Scene.from_array(np.zeros((1, *labels.shape), np.float32), transform=tuple(SHEARED)[:6], crs=UTM)
    (tmp_path / "out").mkdir()
    _, rows = rows_of(InstancesSink(scene, spec(["stuff", "thing", "thing"])).write(store, tmp_path / "out"))
    for row, (r0, r1, c0, c1, k) in zip(rows, [(1, 4, 2, 7, 2), (10, 12, 20, 24, 1), (15, 16, 0, 3, 2)],
                                        strict=True):
        assert float(row["mean_score"]) == pytest.approx(scores[k, r0:r1, c0:c1].astype(np.float64).mean(),
                                                         rel=1e-12)


def test_the_instances_array_records_its_things_connectivity_count_and_table(tmp_path: Path) -> None:
    labels = np.zeros((12, 12), np.uint8)
    labels[2, 2] = labels[3, 3] = 1  # diagonal neighbours: 2 instances by faces, 1 with corners
    labels[8:10, 8:10] = 2
    scene = Scene.from_array(np.zeros((1, 12, 12), np.float32), transform=tuple(SHEARED)[:6], crs=UTM)
    for connectivity, count in ((1, 3), (2, 2)):
        folder = tmp_path / str(connectivity)
        (folder / "out").mkdir(parents=True)
        store = raster_store(folder, labels, chunk=(4, 4))
        sink = InstancesSink(scene, spec(["stuff", "thing", "thing"]), connectivity=connectivity, name="objects.csv")
        assert sink.entries == ("objects.csv",)
        path = sink.write(store, folder / "out")
        assert path == folder / "out" / "objects.csv" and len(rows_of(path)[1]) == count
        ids = zarr.open_array(folder / "mask.zarr" / "instances", mode="r")
        assert dict(ids.attrs) == {"things": ["c1", "c2"], "connectivity": connectivity, "count": count,
                                   "table": "objects.csv"}
        assert ids.dtype == np.uint32 and ids.chunks == (4, 4) and ids.fill_value == 0
        assert ids.metadata.dimension_names == ("y", "x")
    # a stuff class gets no instances; a second write into the same store (a retried sink) replaces the array
    store = MaskStore.open(tmp_path / "1" / "mask.zarr", mode="r+")
    InstancesSink(scene, spec(["stuff", "stuff", "thing"])).write(store, tmp_path / "1" / "out")
    ids = zarr.open_array(tmp_path / "1" / "mask.zarr" / "instances", mode="r")
    assert ids.attrs["things"] == ["c2"] and int(np.asarray(ids[:]).max()) == 1


def test_a_volume_array_names_its_three_axes(tmp_path: Path) -> None:
    from segflow.geometry import VolumeGeometry

    labels = np.zeros((4, 6, 6), np.uint8)
    labels[1:3, 1:3, 1:3] = 1
    store = MaskStore.create(tmp_path / "mask.zarr", labels.shape, (2, 6, 6), ["c0", "c1"], save_scores=False,
                             attrs={})
    store.labels[:] = labels
    scene = Scene.from_array(np.zeros((1, *labels.shape), np.int16),
                             volume=VolumeGeometry.from_matrix(np.eye(4).tolist(), (1.0, 1.0, 1.0)))
    (tmp_path / "out").mkdir()
    _, rows = rows_of(InstancesSink(scene, spec(["stuff", "thing"], 3)).write(store, tmp_path / "out"))
    assert [r["voxels"] for r in rows] == ["8"] and rows[0]["volume_ml"] == repr(8 / 1000)
    ids = zarr.open_array(tmp_path / "mask.zarr" / "instances", mode="r")
    assert ids.metadata.dimension_names == ("z", "y", "x") and ids.chunks == (2, 6, 6)


def test_a_scene_of_another_shape_is_refused(tmp_path: Path) -> None:
    scene = Scene.from_array(np.zeros((1, 20, 25), np.float32), transform=tuple(SHEARED)[:6], crs=UTM)
    with pytest.raises(InputError, match=r"^the scene is \(20, 25\) but the mask store is \(20, 24\); pass the "
                                         r"scene the store was made from$"):
        InstancesSink(scene, spec(["stuff", "thing", "thing"])).write(raster_store(tmp_path, two_houses()), tmp_path)


# ----------------------------------------------------------------------------- an instance model's detections


def detected_store(tmp_path: Path, labels: np.ndarray, ids: np.ndarray, scores: list[float]) -> MaskStore:
    from segflow.detect.paint import INSTANCE_SCORES, SOURCE

    store = raster_store(tmp_path, labels)
    array = store.group.create_array("instances", shape=labels.shape, dtype="uint32", chunks=(8, 8), fill_value=0)
    array[:] = ids
    array.attrs.update({"source": SOURCE})
    store.group.create_array(INSTANCE_SCORES, shape=(len(scores),), dtype="float32")[:] = np.float32(scores)
    return store


def test_detections_are_measured_as_numbered_with_their_detection_scores(tmp_path: Path) -> None:
    labels = np.zeros((12, 12), np.uint8)
    labels[1:5, 1:9] = 2  # two touching detections of c2, and one of c1
    labels[9:11, 9:12] = 1
    ids = np.zeros(labels.shape, np.uint32)
    ids[1:5, 1:5], ids[1:5, 5:9], ids[9:11, 9:12] = 1, 2, 3
    store = detected_store(tmp_path, labels, ids, [0.5, 0.25, 0.75])
    image = np.arange(144, dtype=np.float32).reshape(1, 12, 12)
    scene = Scene.from_array(image, transform=(1.0, 0.0, 0.0, 0.0, -1.0, 12.0), crs=UTM)
    (tmp_path / "out").mkdir()
    _, rows = rows_of(InstancesSink(scene, spec(["stuff", "thing", "thing"])).write(store, tmp_path / "out"))
    assert [(r["class"], r["pixels"], r["mean_score"]) for r in rows] == [("c2", "16", "0.5"), ("c2", "16", "0.25"),
                                                                          ("c1", "6", "0.75")]
    assert [float(r["mean_intensity"]) for r in rows] == [image[0, 1:5, 1:5].mean(), image[0, 1:5, 5:9].mean(),
                                                          image[0, 9:11, 9:12].mean()]
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "mask.zarr" / "instances", mode="r")[:], ids)
    assert zarr.open_array(tmp_path / "mask.zarr" / "instances", mode="r").attrs["table"] == "instances.csv"


def test_detections_and_scores_of_different_counts_are_refused(tmp_path: Path) -> None:
    labels = np.zeros((12, 12), np.uint8)
    labels[1:3, 1:3] = 1
    ids = (labels > 0).astype(np.uint32)
    store = detected_store(tmp_path, labels, ids, [0.5, 0.6])
    scene = Scene.from_array(np.zeros((1, 12, 12), np.float32), transform=tuple(SHEARED)[:6], crs=UTM)
    with pytest.raises(InputError, match=r"mask\.zarr holds 1 detected instances but 2 scores; run tile-infer "
                                         r"again$"):
        InstancesSink(scene, spec(["stuff", "thing"])).write(store, tmp_path)


# ----------------------------------------------------------------------------- read-back


def verify(tmp_path: Path, text: str, header: list[str], rows: list[list[str]], ids: Any, voxels: list[int]) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text, encoding="utf-8")
    instances_sink._verify(path, header, rows, ids, (4, 4), np.array(voxels))


def test_the_read_back_accepts_exactly_what_was_written(tmp_path: Path) -> None:
    ids = np.zeros((6, 6), np.uint32)
    ids[0, 0], ids[5, 5:] = 1, 2
    verify(tmp_path, "id,n\n1,a\n2,\"b,c\"\n", ["id", "n"], [["1", "a"], ["2", "b,c"]], ids, [1, 1])
    verify(tmp_path, "id\n", ["id"], [], np.zeros((6, 6), np.uint32), [])


@pytest.mark.parametrize(("text", "ids_of", "voxels", "what"), [
    ("id,n\n1,a\n", "good", [1, 1], "the table differs"),
    ("id,n\n1,a\n2,b\n", "beyond", [1, 1], r"instances chunk at \[4, 4\] holds ids beyond 2"),
    ("id,n\n1,a\n2,b\n", "good", [1, 2], "the instances array's voxel counts differ from the table"),
    ("id,n\n1,a\n2,b\n", "good", [2, 1], "the instances array's voxel counts differ from the table"),
    ("id,n\n1,a\n2,b\n", "broken", [1, 1], r"instances chunk at \[0, 4\]: no block here"),
])
def test_the_read_back_refuses_a_damaged_table_or_array(tmp_path: Path, text: str, ids_of: str, voxels: list[int],
                                                        what: str) -> None:
    ids = np.zeros((6, 6), np.uint32)
    ids[0, 0], ids[5, 5] = 1, 2
    if ids_of == "beyond":
        ids[5, 4] = 3

    class Broken:
        shape = ids.shape

        def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
            if key[1].start == 4 and key[0].start == 0:
                raise ValueError("  no block here  ")
            return ids[key]

    with pytest.raises(OutputError, match=rf"^{tmp_path}/t\.csv does not read back as written \({what}\); the disk "
                                          r"may be full or failing: check the filesystem and run again \(nothing "
                                          r"was published\)$"):
        verify(tmp_path, text, ["id", "n"], [["1", "a"], ["2", "b"]], Broken() if ids_of == "broken" else ids, voxels)


def test_a_damaged_instances_chunk_message_is_cut_to_one_short_line(tmp_path: Path) -> None:
    class Broken:
        shape = (4, 4)

        def __getitem__(self, key: Any) -> np.ndarray:
            raise OSError("x" * 300)

    with pytest.raises(OutputError) as caught:
        verify(tmp_path, "id\n", ["id"], [], Broken(), [])
    assert f"instances chunk at [0, 0]: {'x' * 160})" in str(caught.value) and "x" * 161 not in str(caught.value)


def test_rows_of_no_instance(tmp_path: Path) -> None:
    from segflow.instances import label_instances

    ids = np.zeros((5, 5), np.uint32)
    found = label_instances(np.zeros((5, 5), np.uint8), ids, (5, 5), [1], values={"intensity": np.zeros((5, 5)),
                                                                                 "score": np.zeros((5, 5))})
    scene = Scene.from_array(np.zeros((1, 5, 5), np.float32), transform=tuple(SHEARED)[:6], crs="EPSG:4326")
    header, rows = instance_rows(found, ["a", "b"], scene, scores=True)
    assert rows == [] and header[2:4] == ["pixels", "area_deg2"]
