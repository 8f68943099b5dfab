"""Vectorizing paths the whole-run tests reach only through slow end-to-end runs, checked in-process: an instance
model's objects, multi-label class planes with their scores, batches, the watershed's work group, objects yielded as
soon as they are complete, map-unit options below one unit, the polygon repair, and every refusal in full."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
import zarr
from affine import Affine

from segflow import vectorize as vectorize_module
from segflow.detect.paint import INSTANCE_SCORES, SOURCE
from segflow.errors import ConfigError, InputError, OutputError
from segflow.io.mask_store import MaskStore
from segflow.trace_values import class_values
from segflow.vectorize import VectorOptions, _valid, trace_objects, vectorize
from tests.test_vectorize import KINDS, NAMES, blobs, features, store_of

CONSTANTS = {"scene_id": "s", "model": "m", "model_version": "1", "run_id": "r"}


def _batches(store: MaskStore, chunk: int, transform: Affine | None = None,
             options: VectorOptions | None = None, **kw: Any) -> list[dict[str, list[Any]]]:
    out = []
    for batch in vectorize(store, (chunk, chunk), transform or Affine.identity(), NAMES, KINDS,
                           options or VectorOptions(), **CONSTANTS, **kw):
        out.append({**batch.columns, "geometry": batch.geometry})
    return out


def test_an_instance_models_objects_keep_their_detection_number_and_score(tmp_path: Path) -> None:
    labels = np.zeros((20, 24), dtype=np.uint8)
    ids = np.zeros((20, 24), dtype=np.uint32)
    labels[2:12, 3:17], ids[2:12, 3:17] = 2, 2  # detection 2: across four 8-pixel chunks
    labels[14:18, 18:22], ids[14:18, 18:22] = 3, 1  # detection 1, lower down
    store = store_of(tmp_path, labels, 8)
    array = store.group.create_array("instances", shape=ids.shape, dtype="uint32", chunks=(8, 8), fill_value=0)
    array[:] = ids
    array.attrs.update(source=SOURCE, count=2)
    scores = store.group.create_array(INSTANCE_SCORES, shape=(2,), dtype="float32", chunks=(2,))
    scores[:] = [0.75, 0.5]
    (batch,) = _batches(store, 8)
    rows = {n: {k: v[i] for k, v in batch.items()} for i, n in enumerate(batch["instance_id"])}
    assert rows[2]["class_id"] == 2 and rows[2]["area_px"] == 140 and rows[2]["mean_score"] == 0.5
    assert rows[1]["class_id"] == 3 and rows[1]["area_px"] == 16 and rows[1]["mean_score"] == 0.75
    assert sorted(rows) == [1, 2]  # a detector's labels are its painted instances: nothing else is traced
    assert shapely.equals(rows[2]["geometry"], shapely.box(3, 2, 17, 12))


def test_a_multilabel_stores_objects_are_per_class_with_their_own_planes_score(tmp_path: Path) -> None:
    shape = (16, 20)
    store = MaskStore.create(tmp_path / "m.zarr", shape, (8, 8), NAMES, save_scores=True, attrs={},
                             thresholds=[0.5] * 4)
    present = np.zeros((4, *shape), dtype=np.uint8)
    present[1, 2:10, 2:12] = 1  # water
    present[2, 6:14, 8:18] = 1  # a building overlapping it
    present[3, 0, 0] = 255
    store.present[:] = present
    rng = np.random.default_rng(4)
    scores = rng.uniform(size=(4, *shape)).astype(np.float16)
    assert store.scores is not None
    store.scores[:] = scores
    (batch,) = _batches(store, 8, Affine(2, 0, 0, 0, -2, 0))
    assert batch["class_id"] == [1, 2] and batch["area_px"] == [80, 80]
    pixels = 16 * 20
    assert batch["instance_id"] == [1 * pixels + 2 * 20 + 2 + 1, 2 * pixels + 6 * 20 + 8 + 1]  # offset per class
    for k, (cls, score) in enumerate(zip(batch["class_id"], batch["mean_score"], strict=True)):
        want = float(scores[cls].astype(np.float64)[present[cls] == 1].mean())
        assert score == pytest.approx(want, rel=1e-12), k
        assert batch["area"][k] == 80 * 4
    with pytest.raises(ConfigError, match=r"^--separate watershed splits objects of one label map, but this run is "
                                          r"multi-label \(its classes may overlap\); use --separate none$"):
        _batches(store, 8, options=VectorOptions(separate="watershed"))
    with pytest.raises(InputError, match=r"^the mask holds 4 class planes but the model has 3 classes; vectorize "
                                         r"with the model the run used \(--model\)$"):
        list(vectorize(store, (8, 8), Affine.identity(), NAMES[:3], KINDS[:3], VectorOptions(), **CONSTANTS))


def test_a_class_planes_objects_come_from_its_plane_whatever_the_values_given(tmp_path: Path) -> None:
    """Class 0 is a class like the others in a multi-label run (no background): its plane's objects are traced
    (as class values they would be 0, the background), and ``values`` is ignored for a plane."""
    store = MaskStore.create(tmp_path / "m.zarr", (16, 20), (8, 8), NAMES, save_scores=False, attrs={},
                             thresholds=[0.5] * 4)
    present = np.zeros((4, 16, 20), dtype=np.uint8)
    present[0, 10:16, 0:5] = 1
    present[1, 2:10, 2:12] = 1
    store.present[:] = present

    def nothing(box: Any, labels: np.ndarray) -> np.ndarray:
        return np.zeros(labels.shape, dtype=np.uint8)

    for values in (class_values, nothing):
        assert [(o.class_id, o.pixels, o.first) for o in trace_objects(store, (8, 8), values, plane=0)] == [
            (0, 30, 10 * 20 + 0)]
        assert [(o.class_id, o.pixels, o.first) for o in trace_objects(store, (8, 8), values, plane=1)] == [
            (1, 80, 2 * 20 + 2)]


def test_features_come_in_batches_of_batch_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_of(tmp_path, blobs((40, 40), 3), 16)
    whole = _batches(store, 16)
    monkeypatch.setattr(vectorize_module, "BATCH", 4)
    batches = _batches(store, 16)
    count = len(whole[0]["instance_id"])
    assert count > 9 and [len(b["instance_id"]) for b in batches] == [4] * (count // 4) + ([count % 4] if count % 4
                                                                                          else [])
    for name in whole[0]:
        joined = [v for b in batches for v in b[name]]
        if name == "geometry":
            assert all(shapely.equals_exact(a, b, 0) for a, b in zip(joined, whole[0][name], strict=True))
        else:
            assert joined == whole[0][name], name


def test_the_watershed_writes_into_the_work_group_and_leaves_the_run_alone(tmp_path: Path) -> None:
    labels = np.zeros((30, 40), dtype=np.uint8)
    yy, xx = np.mgrid[:30, :40]
    for cy, cx in ((15, 12), (15, 26)):
        labels[np.hypot(yy - cy, xx - cx) < 8] = 2
    store = store_of(tmp_path, labels, 16)
    before = sorted(store.group.keys())
    work = zarr.open_group(str(tmp_path / "work.zarr"), mode="w")
    (batch,) = _batches(store, 16, options=VectorOptions(separate="watershed", min_distance=4), work=work)
    assert sum(c == 2 for c in batch["class_id"]) == 2
    assert sorted(store.group.keys()) == before and list(work.keys())


def test_min_area_uses_the_pixel_area_of_a_sheared_transform(tmp_path: Path) -> None:
    labels = np.zeros((12, 30), dtype=np.uint8)
    labels[1:4, 1:4] = 2  # 9 pixels
    labels[6:11, 10:20] = 3  # 50 pixels
    store = store_of(tmp_path, labels, 8)
    transform = Affine(0.5, 0.2, 100, 0.1, -0.7, 50)  # |a·e − b·d| = 0.37 (0.33 with the sign wrong)
    kept = _batches(store, 8, transform, VectorOptions(min_area=9 * 0.37))[0]
    assert sorted(kept["area_px"]) == [9, 50]
    (bigger,) = _batches(store, 8, transform, VectorOptions(min_area=9 * 0.37 + 1e-9))
    assert bigger["area_px"] == [50] and bigger["area"] == [pytest.approx(50 * 0.37)]


def test_fill_holes_and_simplify_below_one_map_unit(tmp_path: Path) -> None:
    labels = np.zeros((20, 20), dtype=np.uint8)
    labels[2:18, 2:18] = 2
    labels[8:10, 8:10] = 0
    labels[2:4, 2:10] = 0  # a notch for simplify to cut
    store = store_of(tmp_path, labels, 8)
    transform = Affine(0.1, 0, 0, 0, -0.1, 0)  # pixels of 0.01 map units²: the hole is 0.04
    (exact,) = _batches(store, 8, transform)
    (filled,) = _batches(store, 8, transform, VectorOptions(fill_holes=0.5))
    assert len(exact["geometry"][0].interiors) == 1 and len(filled["geometry"][0].interiors) == 0
    (simple,) = _batches(store, 8, transform, VectorOptions(simplify=0.5))
    assert shapely.get_num_coordinates(simple["geometry"][0]) < shapely.get_num_coordinates(exact["geometry"][0])


def test_simplify_keeps_topology_as_shapely_does(tmp_path: Path) -> None:
    store = store_of(tmp_path, blobs((60, 60), 12), 32)
    transform = Affine(10, 0, 500000, 0, -10, 5000000)
    exact = features(store, 32, transform)
    simple = features(store, 32, transform, VectorOptions(simplify=25.0))
    for n, f in exact.items():
        want = shapely.orient_polygons(shapely.simplify(f["geometry"], 25.0, preserve_topology=True))
        assert shapely.equals_exact(simple[n]["geometry"], want, 1e-9), n
    assert any(not shapely.equals_exact(shapely.simplify(f["geometry"], 25.0, preserve_topology=False),
                                        shapely.simplify(f["geometry"], 25.0, preserve_topology=True), 1e-9)
               for f in exact.values()), "the scene tells the two simplifications apart"


def test_objects_are_yielded_as_soon_as_their_chunk_row_is_done(tmp_path: Path) -> None:
    """Memory stays at the pieces of unfinished objects: an object that ends in a chunk row comes out before
    the next row is read."""
    labels = blobs((48, 40), 21)
    store = store_of(tmp_path, labels, 16)
    reads: list[int] = []
    read_labels = store.read_labels
    store.read_labels = lambda box: (reads.append(box.start[0]), read_labels(box))[1]  # type: ignore[method-assign]
    seen = 0
    for obj in trace_objects(store, (16, 16)):
        bottom = int(shapely.bounds(obj.polygon)[3])  # its last row ends there; one on a chunk row's lower
        assert max(reads) <= 16 * (bottom // 16), (bottom, max(reads))  # edge waits for the row below
        seen += 1
    assert seen > 10


def test_labels_the_model_does_not_have_are_refused(tmp_path: Path) -> None:
    labels = np.zeros((8, 8), dtype=np.uint8)
    labels[2:4, 2:4] = 4
    with pytest.raises(InputError, match=r"^the mask holds label 4 but the model has 4 classes; vectorize with the "
                                         r"model the run used \(--model\)$"):
        _batches(store_of(tmp_path, labels, 8), 8)
    volume = MaskStore.create(tmp_path / "v.zarr", (2, 8, 8), (2, 8, 8), NAMES, save_scores=False, attrs={})
    with pytest.raises(ConfigError, match=r"^the mask store is 3-D; polygons need a 2D raster run$"):
        list(trace_objects(volume, (8, 8)))


def test_an_invalid_traced_ring_is_repaired_into_one_polygon() -> None:
    """A ring that touches itself at a corner (as some GDAL versions trace pixels meeting diagonally inside an
    object) becomes one valid polygon with a hole touching the shell at that point; the valid one is kept."""
    touching = shapely.Polygon([(0, 0), (3, 0), (3, 2), (2, 2), (2, 1), (1, 1), (1, 2), (2, 2), (2, 3), (0, 3)])
    square = shapely.box(5, 5, 6, 6)
    assert not touching.is_valid
    fixed = _valid(np.array([square, touching], dtype=object))
    assert fixed[1].is_valid and len(fixed[1].interiors) == 1 and fixed[1].area == touching.area == 7.0
    assert shapely.equals_exact(fixed[0], shapely.normalize(square), 0)
    spike = shapely.Polygon([(0, 0), (2, 0), (2, 2), (0, 2), (0, 1), (-1, 1), (0, 1)])  # a dangling edge
    assert not spike.is_valid  # make_valid: the square and a line, which is no part of the object's area
    repaired = _valid(np.array([spike], dtype=object))[0]
    assert isinstance(repaired, shapely.Polygon) and shapely.equals(repaired, shapely.box(0, 0, 2, 2))
    bowtie = shapely.Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])
    with pytest.raises(OutputError, match=r"^an object traced into 2 polygons instead of one; this is a bug, please "
                                          r"report it with the scene$"):
        _valid(np.array([bowtie], dtype=object))
