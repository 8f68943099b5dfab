"""``meshes/``: one closed surface mesh per instance, in world millimetres (RAS+), as binary PLY.

The sink reads the ``instances`` array that :class:`~segflow.io.instances_sink.InstancesSink`
adds to ``mask.zarr`` (so it runs after that sink) and the store's ``labels`` (for each
instance's class). It writes, into the folder ``meshes/`` (published as one entry):

- ``<id>_<class>.ply`` per instance, ``id`` as in ``instances.csv`` and the ``instances`` array,
  ``class`` the class name with every character other than ``A-Z a-z 0-9 . _ -`` replaced by ``-``;
- ``index.csv``: ``id, class, file, vertices, faces, area_mm2, volume_mm3``, one row per instance
  in id order (area and enclosed volume computed from the vertices as written, in float64).

The surface: ``skimage.measure.marching_cubes`` at level 0.5 over ``(ids == id)`` as 0/1 on the
voxel grid with unit spacing, over the instance's bounding box padded by one voxel of zeros on
every side (also beyond the volume's edge), so every surface is closed: it runs midway between
the instance's voxel centres and its neighbours'. Vertex voxel coordinates ``(z, y, x)`` are then
mapped through ``VolumeGeometry.affine`` (rows world x, y, z) to RAS+ millimetres — exact for
oblique and sheared affines, which marching cubes' own ``spacing=`` (a scaling per array axis)
is not. Triangles are wound counter-clockwise seen from outside (normals by the right-hand rule
point outward): an affine with a negative determinant mirrors the surface and so reverses its
winding; each mesh is checked by its signed volume (divergence theorem) and its faces reversed
when that is negative, which makes the written volume positive whatever the affine.

Why PLY and not STL: PLY shares vertices between triangles (STL repeats three per triangle and
has no index), states its element counts in a text header that the read-back checks, and carries
comments: ``SPACE=RAS`` (which 3D Slicer reads to place the model — it assumes LPS for a mesh file
without it), the units, the instance id and its class. Vertices are float32 (about 0.1 µm at
1 m from the origin), faces ``list uchar int``; 3D Slicer, ParaView, MeshLab, VTK and trimesh read it.

Memory: one instance at a time: its padded bounding box as float32 (4 bytes per voxel, the
array marching cubes works on) and its mesh, plus a cache of decoded ``instances`` chunks of
at most :data:`CACHE_VOXELS` voxels (instances are numbered in raster order, so consecutive ones
mostly share chunks). An instance whose box spans the whole volume therefore costs about 4 bytes
per voxel of the volume; finding the boxes first is one pass over the store, chunk by chunk.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, InputError, OutputError
from ..geometry import VolumeGeometry
from ..tiling import Box, ChunkGrid
from .atomic import atomic_write_text
from .mask_store import MaskStore

if TYPE_CHECKING:
    from ..models.package import ModelSpec
    from ..scene import Scene

__all__ = ["CACHE_VOXELS", "Mesh", "MeshesSink", "instance_boxes", "instance_mesh", "read_ply", "write_ply"]

CACHE_VOXELS = 1 << 25
"""Most voxels of decoded ``instances`` chunks kept between instances (128 MiB of uint32)."""

INDEX = "index.csv"
INDEX_HEADER = ["id", "class", "file", "vertices", "faces", "area_mm2", "volume_mm3"]
_FACE = np.dtype([("n", "u1"), ("v", "<i4", (3,))])  # packed: 13 bytes, PLY's "list uchar int"


@dataclass(frozen=True, eq=False)
class Mesh:
    """A triangle mesh: ``vertices`` (V, 3) float32 world x, y, z in mm; ``faces`` (F, 3) int32 vertex
    indices, counter-clockwise seen from outside."""

    vertices: np.ndarray
    faces: np.ndarray

    @cached_property
    def _measures(self) -> tuple[float, float]:
        v = self.vertices.astype(np.float64)
        v -= v.mean(axis=0) if len(v) else 0.0  # translation-free sums: no cancellation far from the origin
        a, b, c = (v[self.faces[:, k]] for k in range(3))
        doubled = _cross(b - a, c - a)  # twice each triangle's vector area
        return (float(0.5 * np.sqrt((doubled * doubled).sum(axis=1)).sum()),
                float((a * _cross(b, c)).sum() / 6.0))

    @property
    def area(self) -> float:
        """Surface area in mm²."""
        return self._measures[0]

    @property
    def volume(self) -> float:
        """Signed enclosed volume in mm³ (divergence theorem): positive when the faces wind outward."""
        return self._measures[1]


def _cross(u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Row-wise cross products of (N, 3) arrays (``np.cross`` without its per-call overhead)."""
    return np.stack([u[:, 1] * w[:, 2] - u[:, 2] * w[:, 1], u[:, 2] * w[:, 0] - u[:, 0] * w[:, 2],
                     u[:, 0] * w[:, 1] - u[:, 1] * w[:, 0]], axis=1)


def instance_mesh(field: np.ndarray, origin: Sequence[int], affine: np.ndarray) -> Mesh:
    """The level-0.5 surface of ``field`` (a 0/1 float32 array over voxel axes z, y, x whose element
    ``[0, 0, 0]`` is voxel index ``origin``; it must be 0 on its outer faces for the surface to be
    closed) in world millimetres through ``affine`` (4×4 over (z, y, x, 1)), wound outward."""
    from skimage.measure import marching_cubes  # scikit-image is imported for meshes only

    verts, faces, _, _ = marching_cubes(field, 0.5, spacing=(1.0, 1.0, 1.0), allow_degenerate=False)
    index = verts.astype(np.float64) + np.asarray(origin, dtype=np.float64)
    world = (index @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32)
    mesh = Mesh(world, np.ascontiguousarray(faces, dtype=np.int32))
    if mesh.volume < 0:  # mirrored by the affine (or marching cubes' own winding): turn the faces outward
        mesh = Mesh(world, np.ascontiguousarray(mesh.faces[:, ::-1]))
    return mesh


def _ply_header(vertices: int, faces: int, comments: Sequence[str]) -> bytes:
    lines = ["ply", "format binary_little_endian 1.0", *(f"comment {c}" for c in comments),
             f"element vertex {vertices}", "property float x", "property float y", "property float z",
             f"element face {faces}", "property list uchar int vertex_indices", "end_header"]
    return ("\n".join(lines) + "\n").encode("ascii")


def write_ply(path: Path, mesh: Mesh, comments: Sequence[str] = ()) -> Path:
    """Write ``mesh`` as a binary little-endian PLY with ``comments`` (ASCII, one line each) in its header."""
    for c in comments:
        if "\n" in c or "\r" in c or not c.isascii():
            raise ConfigError(f"PLY comment {c!r} must be one line of ASCII")
    body = np.empty(len(mesh.faces), _FACE)
    body["n"] = 3
    body["v"] = mesh.faces
    with open(path, "wb") as f:
        f.write(_ply_header(len(mesh.vertices), len(mesh.faces), comments))
        f.write(np.ascontiguousarray(mesh.vertices, dtype="<f4").tobytes())
        f.write(body.tobytes())
    return path


def read_ply(path: Path) -> tuple[Mesh, list[str]]:
    """Read a PLY written by :func:`write_ply` (binary little-endian, float x y z, triangles as
    ``list uchar int``); returns the mesh and the header's comments. Anything else is an error."""
    data = Path(path).read_bytes()
    end = data.find(b"\nend_header\n") + 1  # a line of its own: a comment may hold the words (class end_header)
    if not data.startswith(b"ply\n") or end < 1:
        raise ValueError(f"{path} is not a PLY file (no 'ply' magic or no end_header)")
    lines = data[:end].decode("ascii").splitlines()
    comments = [line[len("comment "):] for line in lines if line.startswith("comment ")]
    shape = [line for line in lines if not line.startswith("comment ")]
    counts = {line.split()[1]: int(line.split()[2]) for line in shape if line.startswith("element ")}
    expected = _ply_header(counts.get("vertex", -1), counts.get("face", -1), []).decode("ascii").splitlines()[:-1]
    if shape != expected:
        raise ValueError(f"{path} has an unexpected PLY layout: {shape}")
    nv, nf = counts["vertex"], counts["face"]
    body = data[end + len(b"end_header\n"):]
    if len(body) != nv * 12 + nf * _FACE.itemsize:
        raise ValueError(f"{path} holds {len(body)} bytes after its header, expected {nv * 12 + nf * _FACE.itemsize} "
                         f"for {nv} vertices and {nf} faces")
    vertices = np.frombuffer(body, "<f4", nv * 3).reshape(nv, 3)
    faces = np.frombuffer(body, _FACE, nf, offset=nv * 12)
    if nf and (np.any(faces["n"] != 3) or faces["v"].min() < 0 or faces["v"].max() >= nv):
        raise ValueError(f"{path} has faces that are not triangles of its vertices")
    return Mesh(vertices.astype(np.float32), faces["v"].astype(np.int32)), comments


def instance_boxes(store: MaskStore) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From ``mask.zarr``'s ``instances`` array, one pass chunk by chunk: each instance's voxel box
    ``start`` / ``stop`` (M, 3) int64 (half-open, axes z, y, x) and its class (M,) label value; row i = id i + 1."""
    if "instances" not in store.group:
        raise InputError(f"{store.path} has no instances array; meshes are made from it, so the instances sink "
                         "(instances.csv) must run first")
    ids: Any = store.group["instances"]
    count = int(ids.attrs.get("count", 0))
    ndim = len(store.shape)
    lo = np.full((count + 1, ndim), np.iinfo(np.int64).max, np.int64)
    hi = np.full((count + 1, ndim), -1, np.int64)
    owner = np.full(count + 1, -1, np.int64)
    for _, box in ChunkGrid.create(store.shape, tuple(ids.chunks)):
        flat = np.asarray(ids[box.slices]).ravel()
        nz = np.flatnonzero(flat)
        if not len(nz):
            continue
        v = flat[nz].astype(np.int64)
        if int(v.max()) > count:
            raise _damaged(store.path, f"instance ids beyond its count {count} at {list(box.start)}")
        classes = store.read_labels(box).ravel()[nz].astype(np.int64)
        before = owner[v]
        owner[v] = classes
        if np.any((before >= 0) & (before != classes)) or np.any(owner[v] != classes):
            raise _damaged(store.path, f"an instance spans two classes at {list(box.start)}")
        coords = np.unravel_index(nz, box.shape)
        for a in range(ndim):
            np.minimum.at(lo[:, a], v, coords[a] + box.start[a])
            np.maximum.at(hi[:, a], v, coords[a] + box.start[a])
    if count and np.any(hi[1:, 0] < 0):
        missing = int(np.flatnonzero(hi[1:, 0] < 0)[0]) + 1
        raise _damaged(store.path, f"instance {missing} of {count} has no voxel")
    return lo[1:], hi[1:] + 1, owner[1:]


def _damaged(path: Path, what: str) -> OutputError:
    return OutputError(f"{path} does not read back as written ({what}); the disk may be full or failing: "
                       "check the filesystem and run again (nothing was published)")


class _ChunkCache:
    """Decoded chunks of the ``instances`` array, least recently used dropped beyond ``limit`` voxels."""

    def __init__(self, array: Any, limit: int | None = None):
        self.array, self.limit = array, CACHE_VOXELS if limit is None else limit
        self.grid = ChunkGrid.create(tuple(array.shape), tuple(array.chunks))
        self.kept: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()

    def chunk(self, index: tuple[int, ...]) -> np.ndarray:
        if index in self.kept:
            self.kept.move_to_end(index)
            return self.kept[index]
        data = np.asarray(self.array[self.grid.box(index).slices])
        self.kept[index] = data
        while len(self.kept) > 1 and sum(a.size for a in self.kept.values()) > self.limit:
            self.kept.popitem(last=False)
        return data

    def field(self, instance: int, box: Box) -> np.ndarray:
        """``box`` (may reach beyond the array: zeros there) as float32, 1 where the id is ``instance``."""
        out = np.zeros(box.shape, np.float32)
        inside = box.intersect(Box((0,) * box.ndim, self.grid.shape))
        if inside is None:
            return out
        for index in self.grid.indices_touching(inside):
            part = self.grid.box(index).intersect(inside)
            if part is not None:
                out[part.relative_to(box)] = self.chunk(index)[part.relative_to(self.grid.box(index))] == instance
        return out


def _file_name(instance: int, class_name: str) -> str:
    return f"{instance}_{re.sub(r'[^A-Za-z0-9._-]', '-', class_name)}.ply"


def _num(value: float) -> str:
    return repr(float(value))


@dataclass(frozen=True, eq=False)
class MeshesSink:
    """``meshes/``: a binary PLY surface per instance of ``mask.zarr``'s ``instances`` array, and ``index.csv``."""

    geometry: VolumeGeometry
    class_names: tuple[str, ...]
    name: str = "meshes"

    @classmethod
    def for_scene(cls, scene: Scene, spec: ModelSpec) -> MeshesSink:
        if not isinstance(scene.geometry, VolumeGeometry):
            raise ConfigError(f"--meshes makes surface meshes of a volume's instances, but {scene.source} is a 2D "
                              "raster; drop --meshes")
        if not any(c.kind == "thing" for c in spec.classes):
            raise ConfigError(f"--meshes: model {spec.name!r} has no thing class, so no instances to mesh; drop "
                              "--meshes or use a model with a thing class")
        return cls(scene.geometry, tuple(spec.class_names))

    @property
    def entries(self) -> tuple[str, ...]:
        return (self.name,)

    def write(self, store: MaskStore, folder: Path) -> Path:
        affine = np.asarray(self.geometry.affine, dtype=np.float64)
        start, stop, owner = instance_boxes(store)
        target = folder / self.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)  # an earlier attempt's
        target.mkdir()
        cache = _ChunkCache(store.group["instances"])
        rows: list[list[str]] = []
        for i in range(len(owner)):
            instance, class_name = i + 1, self.class_names[int(owner[i])]
            box = Box(tuple(int(s) - 1 for s in start[i]), tuple(int(s) + 1 for s in stop[i]))  # one voxel of 0s
            mesh = instance_mesh(cache.field(instance, box), box.start, affine)
            name = _file_name(instance, class_name)
            comments = ["segflow instance surface (marching cubes, level 0.5)", "SPACE=RAS", "units mm",
                        f"instance_id {instance}", f"class {class_name.encode('ascii', 'replace').decode()}"]
            path = write_ply(target / name, mesh, [" ".join(c.split()) for c in comments])
            _verify_ply(path, mesh)
            rows.append([str(instance), class_name, name, str(len(mesh.vertices)), str(len(mesh.faces)),
                         _num(mesh.area), _num(mesh.volume)])
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows([INDEX_HEADER, *rows])
        index = atomic_write_text(target / INDEX, text.getvalue())
        with open(index, encoding="utf-8", newline="") as f:
            if list(csv.reader(f)) != [INDEX_HEADER, *rows]:
                raise _damaged(index, "the table differs")
        return target


def _verify_ply(path: Path, mesh: Mesh) -> None:
    try:
        back, _ = read_ply(path)
    except (OSError, ValueError) as exc:
        raise _damaged(path, str(exc)[:160]) from None
    if not (np.array_equal(back.vertices, mesh.vertices) and np.array_equal(back.faces, mesh.faces)):
        raise _damaged(path, "the mesh differs")

