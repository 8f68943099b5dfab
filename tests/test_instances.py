"""Instances across chunk seams (segflow.instances) against scipy.ndimage on the whole array, and instances.csv."""

from __future__ import annotations

import csv
import tracemalloc
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.transform import Affine
from scipy import ndimage

from segflow.errors import ConfigError, InputError
from segflow.geometry import VolumeGeometry
from segflow.instances import label_instances
from segflow.io.instances_sink import InstancesSink, labelling_chunk
from segflow.io.mask_store import MaskStore
from segflow.io.sinks import sinks_for
from segflow.models.package import ModelSpec, resolve_package
from segflow.scene import Scene
from segflow.tile_infer import TileInferParams, tile_infer
from segflow.tiling import Box

from .helpers import threshold_package

# ----------------------------------------------------------------------------- the reference


def reference(labels: np.ndarray, things: list[int], connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """scipy.ndimage.label per thing class on the whole array, combined, renumbered by first voxel (C order).

    Returns the ids (int64) and the class of each id (row i = id i + 1).
    """
    structure = ndimage.generate_binary_structure(labels.ndim, connectivity)
    ids = np.zeros(labels.shape, np.int64)
    owner: list[int] = []
    for c in sorted(things):
        lab, n = ndimage.label(labels == c, structure)
        ids[lab > 0] = lab[lab > 0] + len(owner)
        owner += [c] * n
    if not owner:
        return ids, np.zeros(0, np.int64)
    values, first = np.unique(ids.ravel(), return_index=True)
    values, first = values[values > 0], first[values > 0]
    order = values[np.argsort(first)]  # old ids in order of first voxel
    new = np.zeros(len(owner) + 1, np.int64)
    new[order] = np.arange(1, len(owner) + 1)
    return new[ids], np.asarray(owner)[order - 1]


def check_measures(inst: Any, ref: np.ndarray, owner: np.ndarray, value: np.ndarray) -> None:
    """Every measure equals scipy.ndimage's on the whole array."""
    n = int(ref.max())
    assert len(inst) == n
    if n == 0:
        return
    index = np.arange(1, n + 1)
    ones = np.ones(ref.shape)
    np.testing.assert_array_equal(inst.class_id, owner)
    np.testing.assert_array_equal(inst.voxels, ndimage.sum_labels(ones, ref, index))
    np.testing.assert_allclose(inst.centroid, np.array(ndimage.center_of_mass(ones, ref, index)).reshape(n, ref.ndim),
                               rtol=1e-12, atol=1e-9)
    objects = ndimage.find_objects(ref)
    np.testing.assert_array_equal(inst.bbox_start, [[s.start for s in o] for o in objects])
    np.testing.assert_array_equal(inst.bbox_stop, [[s.stop for s in o] for o in objects])
    np.testing.assert_allclose(inst.sums["v"], ndimage.sum_labels(value, ref, index), rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(inst.maxima["v"], ndimage.maximum(value, ref, index))
    np.testing.assert_allclose(inst.mean("v"), ndimage.mean(value, ref, index), rtol=1e-12, atol=1e-9)
    flat = ref.ravel()
    np.testing.assert_array_equal(inst.first, [np.flatnonzero(flat == i)[0] for i in index])


# ----------------------------------------------------------------------------- property test


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.integers(1, 40 if ndim == 2 else 14)) for _ in range(ndim))
    classes = draw(st.integers(2, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):  # blobs, which cross many seams
        noise = ndimage.gaussian_filter(rng.random(shape), draw(st.sampled_from([1.0, 2.0])))
        labels = np.digitize(noise, np.quantile(noise, np.linspace(0, 1, classes + 1)[1:-1])).astype(np.uint8)
    else:
        labels = rng.integers(0, classes, shape).astype(np.uint8)
    return {
        "labels": labels,
        "chunk": tuple(draw(st.integers(1, s)) for s in shape),
        "things": sorted(draw(st.sets(st.integers(0, classes - 1)))),
        "connectivity": draw(st.integers(1, ndim)),
        "value": rng.normal(size=shape),
        "as_reader": draw(st.booleans()),
    }


@settings(max_examples=200)
@given(cases())
def test_ids_and_measures_equal_scipy_on_the_whole_array(case: dict[str, Any]) -> None:
    labels, things, conn = case["labels"], case["things"], case["connectivity"]
    out = np.full(labels.shape, 7, np.uint32)  # garbage: every voxel must be written
    source = (lambda box: labels[box.slices]) if case["as_reader"] else labels
    inst = label_instances(source, out, case["chunk"], things, connectivity=conn, values={"v": case["value"]})
    ref, owner = reference(labels, things, conn)
    np.testing.assert_array_equal(out, ref)
    if len(things) == 1:  # one thing class: exactly scipy's own numbering
        np.testing.assert_array_equal(
            out, ndimage.label(labels == things[0], ndimage.generate_binary_structure(labels.ndim, conn))[0])
    check_measures(inst, ref, owner, case["value"])


# ----------------------------------------------------------------------------- shapes that stress the seams


def spiral(size: int) -> np.ndarray:
    """A one-pixel-wide square spiral path (one 4-connected component) in a ``size``² image, rings 1 pixel apart."""
    image = np.zeros((size, size), np.uint8)
    y, x, heading = 0, 0, 0
    image[0, 0] = 1
    steps = ((0, 1), (1, 0), (0, -1), (-1, 0))
    while True:
        dy, dx = steps[heading]
        moved = False
        while 0 <= y + dy < size and 0 <= x + dx < size:
            ahead = (y + 2 * dy, x + 2 * dx)
            if 0 <= ahead[0] < size and 0 <= ahead[1] < size and image[ahead]:
                break  # keep one pixel of gap to the ring outside
            y, x = y + dy, x + dx
            image[y, x] = 1
            moved = True
        if not moved:
            return image
        heading = (heading + 1) % 4


@pytest.mark.parametrize("chunk", [(3, 3), (4, 7), (5, 5), (1, 41)])
def test_a_spiral_through_many_chunks_is_one_instance(chunk: tuple[int, int]) -> None:
    image = spiral(41)
    assert ndimage.label(image)[1] == 1 and image.sum() > 800  # the fixture really is one long component
    out = np.zeros(image.shape, np.uint32)
    inst = label_instances(image, out, chunk, [1])
    assert len(inst) == 1
    np.testing.assert_array_equal(out, image)
    assert inst.voxels[0] == image.sum()


def test_a_u_shape_joined_only_in_the_last_chunk() -> None:
    """Two long arms that meet only at the far end: each chunk but the last sees two pieces."""
    labels = np.zeros((40, 9, 9), np.uint8)
    labels[:, 2, 2] = 2
    labels[:, 6, 6] = 2
    labels[39, 2, 2:7] = 2
    labels[39, 2:7, 6] = 2
    labels[10, 4, 4] = 2  # an island in between
    out = np.zeros(labels.shape, np.uint32)
    inst = label_instances(labels, out, (4, 9, 9), [2])
    assert len(inst) == 2
    np.testing.assert_array_equal(out, ndimage.label(labels == 2)[0])
    np.testing.assert_array_equal(inst.bbox_start, [[0, 2, 2], [10, 4, 4]])
    np.testing.assert_array_equal(inst.bbox_stop, [[40, 7, 7], [11, 5, 5]])


@pytest.mark.parametrize(("connectivity", "expected"), [(1, 4), (2, 3), (3, 2)])
def test_corner_and_edge_neighbours_across_diagonal_chunks(connectivity: int, expected: int) -> None:
    """Voxel pairs touching only by a corner or an edge, each voxel in a different chunk of 4³."""
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[3, 3, 3] = labels[4, 4, 4] = 1  # corner: chunks (0, 0, 0) and (1, 1, 1)
    labels[3, 3, 6] = labels[4, 4, 6] = 1  # edge: chunks (0, 0, 1) and (1, 1, 1)
    out = np.zeros(labels.shape, np.uint32)
    inst = label_instances(labels, out, 4, [1], connectivity=connectivity)
    assert len(inst) == expected
    np.testing.assert_array_equal(
        out, ndimage.label(labels, ndimage.generate_binary_structure(3, connectivity))[0])


@pytest.mark.parametrize("things", [[], [5]])
def test_nothing_to_label(things: list[int]) -> None:
    labels = np.random.default_rng(0).integers(0, 3, (9, 10)).astype(np.uint8)
    out = np.full(labels.shape, 9, np.uint32)
    inst = label_instances(labels, out, (4, 4), things, values={"v": labels})
    assert len(inst) == 0 and not out.any()
    assert inst.centroid.shape == (0, 2) and inst.sums["v"].shape == (0,)


def test_everything_one_thing() -> None:
    labels = np.full((6, 7, 9), 3, np.uint8)
    out = np.zeros(labels.shape, np.uint32)
    value = np.arange(labels.size, dtype=np.float64).reshape(labels.shape)
    inst = label_instances(labels, out, (2, 3, 4), [3], connectivity=3, values={"v": value})
    assert len(inst) == 1 and (out == 1).all()
    np.testing.assert_array_equal(inst.bbox_start, [[0, 0, 0]])
    np.testing.assert_array_equal(inst.bbox_stop, [[6, 7, 9]])
    np.testing.assert_allclose(inst.centroid, [[2.5, 3.0, 4.0]])
    assert inst.maxima["v"][0] == labels.size - 1 and inst.sums["v"][0] == labels.size * (labels.size - 1) / 2


def test_nan_values_are_not_skipped() -> None:
    labels = np.zeros((4, 4), np.uint8)
    labels[0, :2] = labels[3, 2:] = 1
    value = np.ones((4, 4))
    value[0, 1] = np.nan
    inst = label_instances(labels, np.zeros((4, 4), np.uint32), 2, [1], values={"v": value})
    assert np.isnan(inst.sums["v"][0]) and np.isnan(inst.maxima["v"][0])
    assert inst.sums["v"][1] == 2 and inst.maxima["v"][1] == 1


def test_bad_arguments_are_one_line_errors() -> None:
    labels = np.zeros((4, 4), np.uint8)
    out = np.zeros((4, 4), np.uint32)
    with pytest.raises(ConfigError, match="connectivity must be 1"):
        label_instances(labels, out, 2, [1], connectivity=3)
    with pytest.raises(InputError, match="reader returned shape"):
        label_instances(lambda box: np.zeros((1, 1)), out, 2, [1])
    with pytest.raises(ConfigError, match="cannot hold uint32"):
        label_instances(labels, out.astype(np.uint16), 2, [1])
    with pytest.raises(ConfigError, match="labels are"):
        label_instances(labels[:3], out, 2, [1])


# ----------------------------------------------------------------------------- memory


@pytest.mark.slow
def test_memory_stays_bounded_by_the_chunk(tmp_path: Path) -> None:
    """512×512×256 labels in 128³ chunks: the peak of traced allocations is a small part of one whole-array copy."""
    shape, chunk = (256, 512, 512), (128, 128, 128)
    labels = zarr.create_array(tmp_path / "labels.zarr", shape=shape, chunks=chunk, dtype="uint8", fill_value=0)
    coarse = ndimage.gaussian_filter(np.random.default_rng(3).random((64, 128, 128)), 1.0)
    coarse = np.digitize(coarse, np.quantile(coarse, [0.45, 0.7])).astype(np.uint8)
    for z in range(0, 64, 8):  # blobs of two classes crossing every seam, written slab by slab
        labels[4 * z:4 * z + 32] = coarse[z:z + 8].repeat(4, 0).repeat(4, 1).repeat(4, 2)
    out = zarr.create_array(tmp_path / "ids.zarr", shape=shape, chunks=chunk, dtype="uint32", fill_value=0)
    tracemalloc.start()
    inst = label_instances(labels, out, chunk, [1, 2], connectivity=1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    whole = int(np.prod(shape)) * 4  # one uint32 copy of the ids: what a whole-array labeller needs at least
    assert peak < whole / 6, f"traced peak {peak / 2**20:.0f} MiB"  # measured: 30 MiB (15 bytes per chunk voxel)
    # the same instances as scipy on the whole array, checked in O(voxels) (np.unique would sort 64 M ids)
    ids, classes = np.asarray(out[:]), np.asarray(labels[:])
    found = []
    for c in (1, 2):
        mask = classes == c
        ref_c, n = ndimage.label(mask)
        table = np.zeros(n + 1, np.int64)
        table[ref_c[mask]] = ids[mask]
        np.testing.assert_array_equal(ids[mask], table[ref_c[mask]])  # one id per scipy component
        np.testing.assert_array_equal(inst.class_id[table[1:] - 1], c)
        found.append(table[1:])
        del mask, ref_c
    assert not ids[(classes != 1) & (classes != 2)].any()
    np.testing.assert_array_equal(np.sort(np.concatenate(found)), np.arange(1, len(inst) + 1))  # one-to-one
    assert len(inst) > 100
    flat = ids.ravel()  # numbered by first voxel: each id is at most one more than every id before it
    assert flat[0] <= 1 and (flat[1:] <= np.maximum.accumulate(flat)[:-1] + 1).all()
    np.testing.assert_array_equal(flat[inst.first], np.arange(1, len(inst) + 1))


# ----------------------------------------------------------------------------- instances.csv


def spec_with(kinds: list[str], spatial_dims: int = 3) -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "t", "spatial_dims": spatial_dims, "weights": "w.pt", "tile": 8,
        "input": {"bands": [{"name": "image"}]},
        "classes": [{"name": f"c{i}", "kind": k} for i, k in enumerate(kinds)]})


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return list(rows[0]) if rows else path.read_text().splitlines()[0].split(","), rows


OBLIQUE = np.array([[0.0, -0.8, 0.3, 12.5],  # over (z, y, x, 1): rows are world x, y, z
                    [0.2, 0.0, -1.1, -40.0],
                    [2.5, 0.1, 0.0, 7.0],
                    [0.0, 0.0, 0.0, 1.0]])


def volume_store(tmp_path: Path, labels: np.ndarray, scores: np.ndarray | None, chunk: tuple[int, ...]) -> MaskStore:
    store = MaskStore.create(tmp_path / "mask.zarr", labels.shape, chunk, ["c0", "c1", "c2"],
                             save_scores=scores is not None, attrs={})
    from segflow.tiling import ChunkGrid

    for _, box in ChunkGrid.create(labels.shape, chunk):
        store.write(box, labels[box.slices], None if scores is None else scores[(slice(None), *box.slices)])
    return store


@pytest.mark.parametrize("with_scores", [True, False])
def test_instances_csv_of_a_volume(tmp_path: Path, with_scores: bool) -> None:
    rng = np.random.default_rng(5)
    noise = ndimage.gaussian_filter(rng.random((20, 24, 28)), 1.5)
    labels = np.digitize(noise, np.quantile(noise, [0.5, 0.75])).astype(np.uint8)  # classes 0, 1, 2
    labels[0, 0, :3] = 255  # nodata is no instance
    intensity = rng.normal(100, 20, labels.shape).astype(np.float32)
    scores = rng.random((3, *labels.shape)).astype(np.float16) if with_scores else None
    store = volume_store(tmp_path, labels, scores, (8, 10, 12))
    geometry = VolumeGeometry.from_matrix(OBLIQUE.tolist(), np.linalg.norm(OBLIQUE[:3, :3], axis=0).tolist())
    scene = Scene.from_array(intensity[None], volume=geometry)
    spec = spec_with(["stuff", "thing", "thing"])
    (tmp_path / "out").mkdir()
    path = InstancesSink(scene, spec).write(store, tmp_path / "out")

    ref, owner = reference(labels, [1, 2], 1)
    n = int(ref.max())
    header, rows = read_csv(path)
    assert header == ["id", "class", "voxels", "volume_ml", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
                      "bbox_min_x_mm", "bbox_min_y_mm", "bbox_min_z_mm", "bbox_max_x_mm", "bbox_max_y_mm",
                      "bbox_max_z_mm", "mean_intensity", "max_intensity", "mean_score"]
    assert len(rows) == n > 5
    ids = zarr.open_array(tmp_path / "mask.zarr" / "instances", mode="r")
    np.testing.assert_array_equal(np.asarray(ids[:]), ref)
    assert ids.attrs["count"] == n
    index = np.arange(1, n + 1)
    got = {k: np.array([float(r[k]) if r[k] else np.nan for r in rows]) for k in header if k != "class"}
    np.testing.assert_array_equal(got["id"], index)
    assert [r["class"] for r in rows] == [f"c{c}" for c in owner]
    voxels = ndimage.sum_labels(np.ones(labels.shape), ref, index)
    np.testing.assert_array_equal(got["voxels"], voxels)
    voxel_ml = abs(np.linalg.det(OBLIQUE[:3, :3])) / 1000
    np.testing.assert_allclose(got["volume_ml"], voxels * voxel_ml, rtol=1e-12)
    # the world through nibabel's own apply_affine of the (z, y, x) centroid
    centroid = np.array(ndimage.center_of_mass(np.ones(labels.shape), ref, index))
    world = nib.affines.apply_affine(OBLIQUE, centroid)
    np.testing.assert_allclose(np.c_[got["centroid_x_mm"], got["centroid_y_mm"], got["centroid_z_mm"]], world,
                               atol=1e-9)
    for i, obj in enumerate(ndimage.find_objects(ref)):  # the 8 outer corners of each voxel box
        corners = np.array([[s.start - 0.5 if b else s.stop - 0.5 for s, b in zip(obj, bits, strict=True)]
                            for bits in np.ndindex(2, 2, 2)])
        w = nib.affines.apply_affine(OBLIQUE, corners)
        np.testing.assert_allclose([got[f"bbox_min_{a}_mm"][i] for a in "xyz"], w.min(axis=0), atol=1e-9)
        np.testing.assert_allclose([got[f"bbox_max_{a}_mm"][i] for a in "xyz"], w.max(axis=0), atol=1e-9)
    np.testing.assert_allclose(got["mean_intensity"], ndimage.mean(intensity.astype(np.float64), ref, index),
                               rtol=1e-9)
    np.testing.assert_array_equal(got["max_intensity"], ndimage.maximum(intensity, ref, index))
    if with_scores:
        assert scores is not None
        own = np.take_along_axis(scores, np.minimum(labels, 2)[None].astype(np.intp), 0)[0].astype(np.float64)
        np.testing.assert_allclose(got["mean_score"], ndimage.mean(own, ref, index), rtol=1e-9)
    else:
        assert all(r["mean_score"] == "" for r in rows)


def test_a_box_in_a_diagonal_volume_closed_form(tmp_path: Path) -> None:
    labels = np.zeros((10, 12, 14), np.uint8)
    labels[2:5, 3:9, 4:6] = 1  # 3 × 6 × 2 voxels
    spacing = (2.0, 0.5, 0.75)  # (dz, dy, dx)
    affine = np.array([[0, 0, -0.75, 30.0], [0, 0.5, 0, -10.0], [2.0, 0, 0, 5.0], [0, 0, 0, 1]])  # x flipped
    store = volume_store(tmp_path, labels, None, (4, 5, 6))
    geometry = VolumeGeometry.from_matrix(affine.tolist(), spacing)
    scene = Scene.from_array(np.full((1, *labels.shape), 40, np.int16), volume=geometry)
    (tmp_path / "out").mkdir()
    _, rows = read_csv(InstancesSink(scene, spec_with(["stuff", "thing", "stuff"])).write(store, tmp_path / "out"))
    (row,) = rows
    assert row["voxels"] == "36" and float(row["volume_ml"]) == pytest.approx(36 * 2.0 * 0.5 * 0.75 / 1000)

    def world(x: float, y: float, z: float) -> list[float]:  # voxel (z, y, x) index -> world (x, y, z) mm
        return [30 - 0.75 * x, -10 + 0.5 * y, 5 + 2 * z]

    assert [float(row[f"centroid_{a}_mm"]) for a in "xyz"] == pytest.approx(world(4.5, 5.5, 3))
    assert [float(row[f"bbox_min_{a}_mm"]) for a in "xyz"] == pytest.approx(world(5.5, 2.5, 1.5))  # x flipped
    assert [float(row[f"bbox_max_{a}_mm"]) for a in "xyz"] == pytest.approx(world(3.5, 8.5, 4.5))
    assert row["mean_intensity"] == "40.0" and row["max_intensity"] == "40.0" and row["class"] == "c1"


@pytest.mark.parametrize("ndim", [2, 3])
def test_no_instance_at_all_is_a_table_with_its_header(tmp_path: Path, ndim: int) -> None:
    """A scan without the thing class (a CT without bone) gets an empty table, not an error."""
    shape = (6, 7, 8)[-ndim:]
    labels = np.zeros(shape, np.uint8)
    if ndim == 3:
        store = volume_store(tmp_path, labels, None, (4, 5, 6))
        scene = Scene.from_array(np.zeros((1, *shape), np.int16),
                                 volume=VolumeGeometry.from_matrix(np.eye(4).tolist(), (1.0, 1.0, 1.0)))
    else:
        store = MaskStore.create(tmp_path / "mask.zarr", shape, (4, 5), ["c0", "c1"], save_scores=False, attrs={})
        store.write(Box((0, 0), shape), labels)
        scene = Scene.from_array(np.zeros((1, *shape), np.int16), crs="EPSG:32633",
                                 transform=(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0))
    (tmp_path / "out").mkdir()
    header, rows = read_csv(InstancesSink(scene, spec_with(["stuff", "thing"], ndim)).write(store, tmp_path / "out"))
    assert rows == [] and header[:2] == ["id", "class"]


def test_instances_csv_of_a_raster(tmp_path: Path) -> None:
    labels = np.zeros((30, 40), np.uint8)
    labels[2:6, 3:12] = 1
    labels[20:29, 30:33] = 1
    store = MaskStore.create(tmp_path / "mask.zarr", labels.shape, (16, 16), ["bg", "house"], save_scores=False,
                             attrs={})
    store.labels[:] = labels
    transform = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4100000.0)
    scene = Scene.from_array(np.ones((1, 30, 40), np.float32), transform=tuple(transform)[:6],
                             crs=CRS.from_epsg(32633).to_wkt())
    (tmp_path / "out").mkdir()
    header, rows = read_csv(InstancesSink(scene, spec_with(["stuff", "thing"], 2)).write(store, tmp_path / "out"))
    assert header[:6] == ["id", "class", "pixels", "area_m2", "centroid_x", "centroid_y"]
    assert [r["pixels"] for r in rows] == ["36", "27"]
    assert float(rows[0]["area_m2"]) == 36 * 0.25
    cx, cy = transform * (3 + 9 / 2, 2 + 4 / 2)  # mean pixel centre = box centre
    assert (float(rows[0]["centroid_x"]), float(rows[0]["centroid_y"])) == pytest.approx((cx, cy))
    x0, y1 = transform * (30, 20)
    x1, y0 = transform * (33, 29)
    assert [float(rows[1][k]) for k in ("bbox_min_x", "bbox_min_y", "bbox_max_x", "bbox_max_y")] == [x0, y0, x1, y1]


def test_labelling_chunk_is_bounded() -> None:
    assert labelling_chunk((512, 512, 512)) == (128, 128, 256)
    assert labelling_chunk((96, 96, 96)) == (96, 96, 96)
    assert labelling_chunk((2048, 2048)) == (2048, 2048)
    assert labelling_chunk((4096, 4096)) == (2048, 2048)


def test_sinks_for_volumes_with_thing_classes() -> None:
    geometry = VolumeGeometry.from_matrix(np.eye(4).tolist(), (1.0, 1.0, 1.0))
    scene = Scene.from_array(np.zeros((1, 16, 16, 16), np.int16), volume=geometry)
    demo = resolve_package("demo-unet-3d").spec
    assert [c.name for c in demo.classes if c.kind == "thing"] == ["lesion"]
    assert any(isinstance(s, InstancesSink) for s in sinks_for(scene, demo))
    assert not any(isinstance(s, InstancesSink) for s in sinks_for(scene, spec_with(["stuff", "stuff"])))


# ----------------------------------------------------------------------------- end to end


def test_tile_infer_writes_instances_of_a_nifti_volume(tmp_path: Path) -> None:
    pkg = threshold_package(tmp_path / "pkg", 100.0, second={"name": "blob", "kind": "thing"})
    rng = np.random.default_rng(11)
    noise = ndimage.gaussian_filter(rng.random((30, 26, 22)), 2.0)  # (x, y, z) on disk: NIfTI's i, j, k
    image = np.where(noise > np.quantile(noise, 0.8), 150, 20).astype(np.int16) + rng.integers(0, 5, noise.shape,
                                                                                               dtype=np.int16)
    affine = np.array([[-0.9, 0.1, 0.0, 40.0], [0.0, 1.2, 0.2, -30.0], [0.1, 0.0, 2.5, 10.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "ct.nii.gz")
    affine = nib.Nifti1Image.from_filename(tmp_path / "ct.nii.gz").affine  # as stored (float32 sform)
    result = tile_infer(tmp_path / "ct.nii.gz", tmp_path / "out",
                        TileInferParams(model=str(pkg), device="cpu", amp=False, chunk=8, save_scores=True))
    assert "instances.csv" in result.outputs
    _, rows = read_csv(tmp_path / "out" / "instances.csv")
    # the reference in the file's own (i, j, k) order, placed by nibabel's affine
    ref, _ = reference(np.ascontiguousarray(np.transpose(image > 100, (2, 1, 0))).astype(np.uint8), [1], 1)
    n = int(ref.max())
    assert len(rows) == n > 3
    stored = np.asarray(zarr.open_array(tmp_path / "out" / "mask.zarr" / "instances", mode="r")[:])
    np.testing.assert_array_equal(stored, ref)
    index = np.arange(1, n + 1)
    zyx = np.array(ndimage.center_of_mass(np.ones(ref.shape), ref, index))
    world = nib.affines.apply_affine(affine, zyx[:, ::-1])  # (z, y, x) -> (i, j, k) = (x, y, z)
    got = np.array([[float(r[f"centroid_{a}_mm"]) for a in "xyz"] for r in rows])
    np.testing.assert_allclose(got, world, atol=1e-9)
    kji = np.transpose(image, (2, 1, 0)).astype(np.float64)
    np.testing.assert_allclose([float(r["mean_intensity"]) for r in rows], ndimage.mean(kji, ref, index), rtol=1e-9)
    np.testing.assert_allclose([float(r["volume_ml"]) for r in rows],
                               ndimage.sum_labels(np.ones(ref.shape), ref, index)
                               * abs(np.linalg.det(affine[:3, :3])) / 1000, rtol=1e-9)
    assert all(float(r["mean_score"]) == 1.0 for r in rows)  # the stand-in is certain


def test_measures_of_numbered_instances_equal_those_of_labelling() -> None:
    """measure_instances over ids numbered as label_instances numbers them gives label_instances' measures,
    whatever the chunk; ids out of raster order, or one id over two classes, are refused."""
    from segflow.errors import InputError
    from segflow.instances_numbered import measure_instances

    rng = np.random.default_rng(3)
    labels = np.where(rng.random((61, 47)) > 0.55, 2, 0).astype(np.uint8)
    labels[rng.random(labels.shape) > 0.85] = 1
    value = rng.random(labels.shape)
    ids = np.zeros(labels.shape, np.uint32)
    want = label_instances(labels, ids, (16, 20), [1, 2], values={"v": value})
    for chunk in ((7, 9), (61, 47), (30, 5)):
        got = measure_instances(ids, labels, chunk, values={"v": value})
        for name in ("class_id", "voxels", "first", "bbox_start", "bbox_stop"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        np.testing.assert_allclose(got.centroid, want.centroid)
        np.testing.assert_allclose(got.sums["v"], want.sums["v"])
        np.testing.assert_array_equal(got.maxima["v"], want.maxima["v"])
    swapped = ids.copy()
    swapped[ids == 1], swapped[ids == 2] = 2, 1
    with pytest.raises(InputError, match=r"^the instance ids are not 1\.\.\d+ in raster order of first pixel; number "
                                         r"them as label_instances does$"):
        measure_instances(swapped, labels, (16, 16))
    big = int(np.argmax(np.bincount(ids.ravel())[1:])) + 1  # an instance of several pixels
    mixed = labels.copy()
    y, x = np.argwhere(ids == big)[-1]
    mixed[y, x] = 3 - mixed[y, x]  # one of its pixels of the other class
    with pytest.raises(InputError, match="holds pixels of two classes"):
        measure_instances(ids, mixed, (16, 16))


def test_numbered_instances_refusals_name_what_was_wrong() -> None:
    """A reader of the wrong shape is named (ids, labels, a value source); of two classes the instance is named
    even when its odd pixel is neither its first nor its last; no instance at all is an empty result."""
    from segflow.errors import InputError
    from segflow.instances_numbered import measure_instances

    ids = np.zeros((6, 8), np.uint32)
    ids[1:3, 1:4], ids[4:6, 2:7] = 1, 2
    labels = np.where(ids > 0, 1, 0).astype(np.uint8)

    class Wrong:  # a reader (with a shape, as ids need) that returns one pixel whatever the box
        shape = ids.shape

        def __call__(self, box: Any) -> np.ndarray:
            return np.zeros((1, 1))

    wrong = Wrong()
    for kwargs, what in (({"ids": wrong}, "ids"), ({"labels": wrong}, "labels"),
                         ({"values": {"ct": wrong}}, "value source 'ct'")):
        args: dict[str, Any] = {"ids": ids, "labels": labels, **kwargs}
        with pytest.raises(InputError, match=rf"^{what} reader returned shape \(1, 1\) for box"):
            measure_instances(args.pop("ids"), args.pop("labels"), (6, 8), **args)
    mixed = labels.copy()
    mixed[5, 4] = 2  # inside instance 2, which is not the first id of the chunk
    with pytest.raises(InputError, match=r"^instance 2 holds pixels of two classes near \(0, 0\); the ids and labels "
                                         r"are not of one run$"):
        measure_instances(ids, mixed, (6, 8))
    none = measure_instances(np.zeros((6, 8), np.uint32), labels, (3, 3), values={"ct": np.ones((6, 8))})
    assert len(none) == 0 and none.class_id.shape == (0,) and none.sums["ct"].shape == (0,)
    small = measure_instances(ids.astype(np.uint8), labels, (6, 8))  # any integer type of ids
    np.testing.assert_array_equal(small.voxels, [6, 10])
    assert small.class_id.dtype == np.int64 and small.class_id.tolist() == [1, 1]
