"""The parts of segflow.io.meshes one by one, in-process: mesh measures in closed form, the PLY writer and
reader byte for byte and their refusals, the instance boxes and their refusals, the chunk cache's bound,
file names, the sink's refusals and its replacing an earlier attempt, and the read-back checks."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from segflow.errors import ConfigError, InputError, OutputError
from segflow.geometry import VolumeGeometry
from segflow.io import meshes
from segflow.io.mask_store import MaskStore
from segflow.io.meshes import (
    Mesh,
    MeshesSink,
    _ChunkCache,
    _file_name,
    instance_boxes,
    instance_mesh,
    read_ply,
    write_ply,
)
from segflow.models.package import ModelSpec
from segflow.scene import Scene
from segflow.tiling import Box

# a unit tetrahedron wound outward: volume 1/6, area 3 × 1/2 + √3/2
TETRA = Mesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32),
             np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int32))


def spec(kinds: list[str], names: list[str] | None = None) -> ModelSpec:
    names = names or [f"c{i}" for i in range(len(kinds))]
    return ModelSpec.model_validate({
        "name": "organs", "spatial_dims": 3, "weights": "w.pt", "tile": 8, "input": {"bands": [{"name": "ct"}]},
        "classes": [{"name": n, "kind": k} for n, k in zip(names, kinds, strict=True)]})


def volume_scene(shape: tuple[int, int, int], affine: np.ndarray | None = None) -> Scene:
    affine = np.eye(4) if affine is None else affine
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    geometry = VolumeGeometry.from_matrix(affine.tolist(), spacing)
    return Scene.from_array(np.zeros((1, *shape), np.int16), volume=geometry)


def store_with(tmp_path: Path, labels: np.ndarray, ids: np.ndarray, count: int | None = None,
               chunk: tuple[int, int, int] = (4, 4, 4)) -> MaskStore:
    store = MaskStore.create(tmp_path / "mask.zarr", labels.shape, chunk, ["c0", "c1", "c2"], save_scores=False,
                             attrs={})
    store.labels[:] = labels
    array = store.group.create_array("instances", shape=labels.shape, dtype="uint32", chunks=chunk, fill_value=0)
    array[:] = ids
    array.attrs["count"] = int(ids.max()) if count is None else count
    return store


def two_boxes() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((6, 8, 10), np.uint8)
    ids = np.zeros(labels.shape, np.uint32)
    labels[1:3, 2:5, 3:9], ids[1:3, 2:5, 3:9] = 2, 1
    labels[4:6, 0:2, 0:1], ids[4:6, 0:2, 0:1] = 1, 2  # on three faces of the volume
    return labels, ids


# ----------------------------------------------------------------------------- measures


def test_measures_of_a_tetrahedron_and_its_mirror() -> None:
    assert TETRA.volume == pytest.approx(1 / 6, rel=1e-12)
    assert TETRA.area == pytest.approx(1.5 + np.sqrt(3) / 2, rel=1e-12)
    inward = Mesh(TETRA.vertices, TETRA.faces[:, ::-1].copy())
    assert inward.volume == pytest.approx(-1 / 6, rel=1e-12) and inward.area == pytest.approx(TETRA.area, rel=1e-12)
    far = Mesh(TETRA.vertices * 2 + np.float32(312345.67), TETRA.faces)  # no cancellation far from the origin
    assert far.volume == pytest.approx(8 / 6, rel=1e-9) and far.area == pytest.approx(4 * TETRA.area, rel=1e-9)
    empty = Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32))
    assert empty.volume == 0.0 and empty.area == 0.0


def test_measures_far_from_the_origin_have_no_cancellation() -> None:
    """A sphere 10⁵ mm from the origin (an offset scanner frame): the sums are taken about the mean vertex, as
    here with numpy in float64; summing about the origin is off by 1e-8 of the volume."""
    z, y, x = np.mgrid[:20, :20, :20]
    field = (((z - 9.5) ** 2 + (y - 9.3) ** 2 + (x - 9.7) ** 2) < 40).astype(np.float32)
    affine = np.diag([0.7, 0.9, 1.3, 1.0])
    affine[:3, 3] = 1e5 + 0.37
    mesh = instance_mesh(field, (0, 0, 0), affine)
    v = mesh.vertices.astype(np.float64)
    t = (v - v.mean(axis=0))[mesh.faces]
    assert mesh.volume == pytest.approx(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6,
                                        rel=1e-13)
    assert mesh.area == pytest.approx(0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]),
                                                           axis=1).sum(), rel=1e-13)


def test_cross_products_are_numpys() -> None:
    rng = np.random.default_rng(0)
    u, w = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    np.testing.assert_array_equal(meshes._cross(u, w), np.cross(u, w))


@pytest.mark.parametrize("mirror", [1.0, -1.0])
def test_an_instance_mesh_is_placed_by_its_origin_and_the_affine_and_wound_outward(mirror: float) -> None:
    field = np.zeros((4, 5, 6), np.float32)
    field[1:3, 1:4, 1:5] = 1  # a box of 2 × 3 × 4 voxels
    affine = np.array([[0, 0, 2.0 * mirror, 10.0], [0, 0.5, 0, -3.0], [1.5, 0, 0, 7.0], [0, 0, 0, 1]])
    mesh = instance_mesh(field, (10, 20, 30), affine)
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int32 and mesh.volume > 0
    zyx = np.linalg.solve(affine[:3, :3], (mesh.vertices.astype(np.float64) - affine[:3, 3]).T).T
    np.testing.assert_allclose(zyx.min(axis=0), [10.5, 20.5, 30.5], atol=1e-4)  # level 0.5 between 0 and 1
    np.testing.assert_allclose(zyx.max(axis=0), [12.5, 23.5, 34.5], atol=1e-4)


# ----------------------------------------------------------------------------- PLY


def test_a_ply_is_written_byte_for_byte_and_reads_back(tmp_path: Path) -> None:
    path = write_ply(tmp_path / "t.ply", TETRA, ["made by a test", "units mm"])
    head = (b"ply\nformat binary_little_endian 1.0\ncomment made by a test\ncomment units mm\nelement vertex 4\n"
            b"property float x\nproperty float y\nproperty float z\nelement face 4\n"
            b"property list uchar int vertex_indices\nend_header\n")
    data = path.read_bytes()
    assert data[:len(head)] == head and len(data) == len(head) + 4 * 12 + 4 * 13
    assert data[len(head):len(head) + 12] == np.float32([0, 0, 0]).astype("<f4").tobytes()
    assert data[len(head) + 48:len(head) + 61] == b"\x03" + np.int32([0, 2, 1]).astype("<i4").tobytes()
    back, comments = read_ply(path)
    np.testing.assert_array_equal(back.vertices, TETRA.vertices)
    np.testing.assert_array_equal(back.faces, TETRA.faces)
    assert back.vertices.dtype == np.float32 and back.faces.dtype == np.int32
    assert comments == ["made by a test", "units mm"]
    # a comment holding the header's last line, and float64 vertices (written as float32)
    tricky = write_ply(tmp_path / "c.ply", Mesh(TETRA.vertices.astype(np.float64), TETRA.faces), ["class end_header"])
    assert tricky.read_bytes().endswith(data[len(head):])
    back, comments = read_ply(tricky)
    np.testing.assert_array_equal(back.vertices, TETRA.vertices)
    assert comments == ["class end_header"]
    # a vertex whose 12 bytes spell the header's last line: the header ends at its first such line
    spelled = np.frombuffer(b"\nend_header\n", "<f4").reshape(1, 3)
    odd = Mesh(np.concatenate([TETRA.vertices, spelled]), TETRA.faces)
    back, _ = read_ply(write_ply(tmp_path / "o.ply", odd))
    assert back.vertices.tobytes() == odd.vertices.tobytes()
    empty = read_ply(write_ply(tmp_path / "e.ply", Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32))))
    assert empty[0].vertices.shape == (0, 3) and empty[0].faces.shape == (0, 3) and empty[1] == []


@pytest.mark.parametrize("comment", ["two\nlines", "a\rb", "café"])
def test_a_comment_that_is_not_one_line_of_ascii_is_refused(tmp_path: Path, comment: str) -> None:
    with pytest.raises(ConfigError, match=r"^PLY comment .* must be one line of ASCII$"):
        write_ply(tmp_path / "t.ply", TETRA, ["fine", comment])
    assert not (tmp_path / "t.ply").exists()


def damage(data: bytes, how: str) -> bytes:
    head, body = data.split(b"end_header\n")
    if how == "magic":
        return b"plx" + data[3:]
    if how == "no end":
        return head
    if how == "layout":
        return head.replace(b"property float z", b"property double z") + b"end_header\n" + body
    if how == "ascii":
        return head.replace(b"binary_little_endian", b"ascii") + b"end_header\n" + body
    if how == "short":
        return data[:-1]
    if how == "long":
        return data + b"\0"
    face = 4 * 12  # first face record
    if how == "quad":
        return head + b"end_header\n" + body[:face] + b"\x04" + body[face + 1:]
    index = {"negative": -1, "beyond": 4}[how]
    return head + b"end_header\n" + body[:face + 1] + np.int32([index]).tobytes() + body[face + 5:]


@pytest.mark.parametrize(("how", "message"), [
    ("magic", r"is not a PLY file \(no 'ply' magic or no end_header\)"),
    ("no end", r"is not a PLY file \(no 'ply' magic or no end_header\)"),
    ("layout", r"has an unexpected PLY layout: \['ply', 'format binary_little_endian 1.0', 'element vertex 4', "
               r"'property float x', 'property float y', 'property double z'"),
    ("ascii", r"has an unexpected PLY layout: \['ply', 'format ascii 1.0'"),
    ("short", r"holds 99 bytes after its header, expected 100 for 4 vertices and 4 faces"),
    ("long", r"holds 101 bytes after its header, expected 100 for 4 vertices and 4 faces"),
    ("quad", "has faces that are not triangles of its vertices"),
    ("negative", "has faces that are not triangles of its vertices"),
    ("beyond", "has faces that are not triangles of its vertices")])
def test_a_damaged_ply_is_refused(tmp_path: Path, how: str, message: str) -> None:
    path = write_ply(tmp_path / "t.ply", TETRA, ["c"])
    path.write_bytes(damage(path.read_bytes(), how))
    with pytest.raises(ValueError, match=rf"^{tmp_path}/t\.ply {message}"):
        read_ply(path)


def test_a_ply_without_its_element_counts_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nend_header\n")
    with pytest.raises(ValueError, match="unexpected PLY layout"):
        read_ply(tmp_path / "t.ply")


def test_the_read_back_refuses_a_mesh_that_differs_or_does_not_parse(tmp_path: Path) -> None:
    path = write_ply(tmp_path / "t.ply", TETRA)
    meshes._verify_ply(path, TETRA)
    moved = Mesh(TETRA.vertices + np.float32(1), TETRA.faces)
    with pytest.raises(OutputError, match=r"t\.ply does not read back as written \(the mesh differs\); the disk may "
                                          r"be full or failing: check the filesystem and run again \(nothing was "
                                          r"published\)$"):
        meshes._verify_ply(path, moved)
    turned = Mesh(TETRA.vertices, TETRA.faces[:, ::-1].copy())
    with pytest.raises(OutputError, match="the mesh differs"):
        meshes._verify_ply(path, turned)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(OutputError, match=rf"^{tmp_path}/t\.ply does not read back as written \({tmp_path}/t\.ply "
                                          r"holds 99 bytes after its header"):
        meshes._verify_ply(path, TETRA)
    path.unlink()
    with pytest.raises(OutputError, match=r"does not read back as written \(\[Errno 2\] No such file"):
        meshes._verify_ply(path, TETRA)
    long = tmp_path / ("x" * 200 + ".ply")  # the reason is cut to 160 characters
    with pytest.raises(OutputError) as caught:
        meshes._verify_ply(long, TETRA)
    reason = f"[Errno 2] No such file or directory: '{long}'"[:160]
    assert str(caught.value).startswith(f"{long} does not read back as written ({reason}); the disk")


# ----------------------------------------------------------------------------- instance boxes


def test_instance_boxes_are_the_voxel_boxes_and_classes_of_each_id(tmp_path: Path) -> None:
    labels, ids = two_boxes()
    labels[0, 6:8, 8], ids[0, 6:8, 8] = 2, 3  # in the first plane only (its last index is 0)
    start, stop, owner = instance_boxes(store_with(tmp_path, labels, ids, chunk=(4, 3, 5)))
    np.testing.assert_array_equal(start, [[1, 2, 3], [4, 0, 0], [0, 6, 8]])
    np.testing.assert_array_equal(stop, [[3, 5, 9], [6, 2, 1], [1, 8, 9]])
    np.testing.assert_array_equal(owner, [2, 1, 2])
    assert start.dtype == stop.dtype == owner.dtype == np.int64


def test_no_instance_gives_empty_boxes(tmp_path: Path) -> None:
    labels = np.zeros((4, 4, 4), np.uint8)
    start, stop, owner = instance_boxes(store_with(tmp_path, labels, labels.astype(np.uint32), count=0))
    assert start.shape == stop.shape == (0, 3) and owner.shape == (0,)
    store = store_with(tmp_path / "x", labels, labels.astype(np.uint32))
    del store.group["instances"].attrs["count"]
    assert instance_boxes(store)[2].shape == (0,)


def test_instance_boxes_refuse_a_store_without_instances_or_damaged_ones(tmp_path: Path) -> None:
    labels, ids = two_boxes()
    plain = MaskStore.create(tmp_path / "plain.zarr", labels.shape, (4, 4, 4), ["c0", "c1", "c2"],
                             save_scores=False, attrs={})
    with pytest.raises(InputError, match=r"plain\.zarr has no instances array; meshes are made from it, so the "
                                         r"instances sink \(instances\.csv\) must run first$"):
        instance_boxes(plain)

    def refused(store: MaskStore, what: str) -> None:
        with pytest.raises(OutputError, match=rf"mask\.zarr does not read back as written \({what}\); the disk may be "
                                              r"full or failing: check the filesystem and run again \(nothing was "
                                              r"published\)$"):
            instance_boxes(store)

    refused(store_with(tmp_path / "a", labels, ids, count=1), r"instance ids beyond its count 1 at \[4, 0, 0\]")
    mixed = labels.copy()
    mixed[2, 4, 8] = 1  # one voxel of instance 1 of the other class, in a later chunk
    refused(store_with(tmp_path / "b", mixed, ids), r"an instance spans two classes at \[0, 4, 8\]")
    later = labels.copy()
    later[1:3, 4, 8] = 1  # every voxel of instance 1 in a later chunk of the other class: one class per chunk
    refused(store_with(tmp_path / "b2", later, ids), r"an instance spans two classes at \[0, 4, 8\]")
    zero = labels.copy()
    zero[1:3, 2:4, 3:8] = 0  # instance 1 of class 0 in its first chunk, of class 2 in later ones
    refused(store_with(tmp_path / "b3", zero, ids), r"an instance spans two classes at \[0, 0, 8\]")
    within = labels.copy()
    within[1, 2, 3] = 1  # two classes within one chunk
    refused(store_with(tmp_path / "c", within, ids), r"an instance spans two classes at \[0, 0, 0\]")
    refused(store_with(tmp_path / "d", labels, ids, count=3), "instance 3 of 3 has no voxel")
    flat, flat_ids = labels.copy(), ids.copy()
    flat[0, 6:8, 8], flat_ids[0, 6:8, 8] = 2, 3  # instance 3 lies in plane 0 only: its last z index is 0
    refused(store_with(tmp_path / "d2", flat, flat_ids, count=4), "instance 4 of 4 has no voxel")
    gap = ids.copy()
    gap[gap == 1] = 0
    refused(store_with(tmp_path / "e", labels, gap, count=2), "instance 1 of 2 has no voxel")


# ----------------------------------------------------------------------------- the chunk cache


class Counting:
    """An array that counts its reads."""

    def __init__(self, data: np.ndarray, chunks: tuple[int, ...]):
        self.data, self.chunks, self.shape, self.reads = data, chunks, data.shape, 0

    def __getitem__(self, key: Any) -> np.ndarray:
        self.reads += 1
        return self.data[key]


def test_the_cache_keeps_chunks_up_to_its_limit_least_recently_used_first() -> None:
    array = Counting(np.arange(4 * 4 * 4, dtype=np.uint32).reshape(4, 4, 4), (2, 2, 4))  # 4 chunks of 16
    cache = _ChunkCache(array, limit=32)
    assert cache.limit == 32 and _ChunkCache(array).limit == meshes.CACHE_VOXELS
    for index in ((0, 0, 0), (0, 1, 0), (0, 0, 0)):
        np.testing.assert_array_equal(cache.chunk(index), array.data[cache.grid.box(index).slices])
    assert array.reads == 2 and list(cache.kept) == [(0, 1, 0), (0, 0, 0)]
    cache.chunk((1, 0, 0))  # a third: the least recently used goes
    assert array.reads == 3 and list(cache.kept) == [(0, 0, 0), (1, 0, 0)]
    cache.chunk((0, 1, 0))
    assert array.reads == 4 and list(cache.kept) == [(1, 0, 0), (0, 1, 0)]
    tiny = _ChunkCache(array, limit=1)  # one chunk is always kept, and only one
    tiny.chunk((0, 0, 0))
    tiny.chunk((0, 0, 0))
    assert list(tiny.kept) == [(0, 0, 0)] and array.reads == 5
    tiny.chunk((0, 1, 0))
    tiny.chunk((1, 1, 0))
    assert list(tiny.kept) == [(1, 1, 0)] and array.reads == 7


def test_the_cache_field_is_one_on_the_instance_and_zero_beyond_the_array() -> None:
    ids = np.zeros((4, 5, 6), np.uint32)
    ids[0:2, 3:5, 4:6] = 7
    ids[3, 0, 0] = 2
    cache = _ChunkCache(Counting(ids, (3, 2, 4)))
    field = cache.field(7, Box((-1, 2, 3), (3, 6, 7)))  # reaches one voxel beyond on every side it can
    assert field.dtype == np.float32 and field.shape == (4, 4, 4)
    expected = np.zeros((4, 4, 4), np.float32)
    expected[1:3, 1:3, 1:3] = 1
    np.testing.assert_array_equal(field, expected)
    assert not cache.field(7, Box((10, 10, 10), (12, 12, 12))).any()
    np.testing.assert_array_equal(cache.field(2, Box((0, 0, 0), (4, 5, 6))), ids == 2)


# ----------------------------------------------------------------------------- the sink


@pytest.mark.parametrize(("name", "expected"), [("liver", "3_liver.ply"), ("a b/c\\d", "3_a-b-c-d.ply"),
                                                ("Tumör.v2_x-y", "3_Tum-r.v2_x-y.ply")])
def test_file_names_keep_only_portable_characters(name: str, expected: str) -> None:
    assert _file_name(3, name) == expected


def test_the_sink_refuses_a_raster_or_a_model_without_things() -> None:
    raster = Scene.from_array(np.zeros((1, 8, 8), np.float32), transform=(1.0, 0, 0, 0, -1.0, 0))
    with pytest.raises(ConfigError, match=r"^--meshes makes surface meshes of a volume's instances, but <array> is a "
                                          r"2D raster; drop --meshes$"):
        MeshesSink.for_scene(raster, spec(["stuff", "thing"]))
    with pytest.raises(ConfigError, match=r"^--meshes: model 'organs' has no thing class, so no instances to mesh; "
                                          r"drop --meshes or use a model with a thing class$"):
        MeshesSink.for_scene(volume_scene((4, 4, 4)), spec(["stuff", "stuff"]))
    sink = MeshesSink.for_scene(volume_scene((4, 4, 4)), spec(["stuff", "thing"], ["bg", "nodule"]))
    assert sink.class_names == ("bg", "nodule") and sink.entries == ("meshes",) and sink.name == "meshes"


def read_index(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_the_sink_writes_a_ply_per_instance_with_its_header_and_an_exact_index(tmp_path: Path) -> None:
    labels, ids = two_boxes()
    affine = np.array([[0, 0, 0.5, 1.0], [0, 2.0, 0, 2.0], [3.0, 0, 0, 3.0], [0, 0, 0, 1]])
    store = store_with(tmp_path, labels, ids)
    sink = MeshesSink(VolumeGeometry.from_matrix(affine.tolist(), (3.0, 2.0, 0.5)), ("bg", "lymph node", "Läsion"))
    (tmp_path / "out").mkdir()
    folder = sink.write(store, tmp_path / "out")
    assert folder == tmp_path / "out" / "meshes"
    assert sorted(p.name for p in folder.iterdir()) == ["1_L-sion.ply", "2_lymph-node.ply", "index.csv"]
    rows = read_index(folder / "index.csv")
    assert b"\r" not in (folder / "index.csv").read_bytes()  # Unix line ends
    assert rows[0] == ["id", "class", "file", "vertices", "faces", "area_mm2", "volume_mm3"]
    for row, (instance, name, file, box) in zip(rows[1:], [(1, "Läsion", "1_L-sion.ply", (2, 3, 6)),
                                                           (2, "lymph node", "2_lymph-node.ply", (2, 2, 1))],
                                                strict=True):
        mesh, comments = read_ply(folder / file)
        assert comments == ["segflow instance surface (marching cubes, level 0.5)", "SPACE=RAS", "units mm",
                            f"instance_id {instance}", f"class {name.encode('ascii', 'replace').decode()}"]
        assert row == [str(instance), name, file, str(len(mesh.vertices)), str(len(mesh.faces)), repr(mesh.area),
                       repr(mesh.volume)]
        # the voxel box's surface less its rounded edges: between the inner and the outer box, in mm³
        voxel = 3.0 * 2.0 * 0.5
        dz, dy, dx = box
        assert (dz - 1) * (dy - 1) * max(dx - 1, 0) * voxel < mesh.volume < dz * dy * dx * voxel
    # the same mesh as instance_mesh of the padded box gives
    expected = instance_mesh((ids[0:4, 1:6, 2:10] == 1).astype(np.float32), (0, 1, 2), affine)
    np.testing.assert_array_equal(read_ply(folder / "1_L-sion.ply")[0].vertices, expected.vertices)


def test_the_sink_replaces_an_earlier_attempt_and_refuses_a_damaged_index(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    labels, ids = two_boxes()
    store = store_with(tmp_path, labels, ids)
    sink = MeshesSink(VolumeGeometry.from_matrix(np.eye(4).tolist(), (1.0, 1.0, 1.0)), ("a", "b", "c"))
    (tmp_path / "out" / "meshes").mkdir(parents=True)
    (tmp_path / "out" / "meshes" / "9_old.ply").write_bytes(b"old")
    sink.write(store, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "meshes").iterdir()) == ["1_c.ply", "2_b.ply", "index.csv"]
    real = meshes.atomic_write_text
    monkeypatch.setattr(meshes, "atomic_write_text", lambda path, text: real(path, text.replace("1_c", "1_x")))
    with pytest.raises(OutputError, match=r"index\.csv does not read back as written \(the table differs\)"):
        sink.write(store, tmp_path / "out")


def test_the_sink_meshes_come_from_the_stored_instances(tmp_path: Path) -> None:
    labels, ids = two_boxes()
    store = store_with(tmp_path, labels, ids)
    ids_array = zarr.open_array(tmp_path / "mask.zarr" / "instances", mode="r")
    assert int(np.asarray(ids_array[:]).max()) == 2
    sink = MeshesSink(VolumeGeometry.from_matrix(np.eye(4).tolist(), (1.0, 1.0, 1.0)), ("a", "b", "c"))
    (tmp_path / "out").mkdir()
    rows = read_index(sink.write(store, tmp_path / "out") / "index.csv")
    box_volume = [float(r[6]) for r in rows[1:]]
    # marching cubes at level 0.5 cuts each outer voxel's corner: a box of 2×3×6 is below 36, above 2×3×6 less edges
    assert 20 < box_volume[0] < 36 and 1 < box_volume[1] < 4
