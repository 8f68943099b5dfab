"""Surface meshes per instance (segflow.io.meshes): closed forms on oblique, flipped, anisotropic grids, and end to end.

The PLY files are parsed here by a reader of our own (below), not by the module's, and every
measure is recomputed from the parsed vertices and faces.
"""

from __future__ import annotations

import csv
import inspect
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import zarr
from scipy import ndimage
from scipy.spatial.transform import Rotation

from segflow.cli import main
from segflow.errors import ConfigError
from segflow.geometry import VolumeGeometry
from segflow.io import meshes as meshes_module
from segflow.io.instances_sink import InstancesSink
from segflow.io.mask_store import MaskStore
from segflow.io.meshes import MeshesSink
from segflow.io.sinks import sinks_for
from segflow.models.package import ModelSpec
from segflow.scene import Scene
from segflow.tile_infer import TileInferParams, tile_infer
from segflow.tiling import ChunkGrid

from .helpers import make_ts_package, random_image, threshold_package, write_geotiff

# ----------------------------------------------------------------------------- helpers


def parse_ply(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(vertices (V, 3) float64, faces (F, 3) int64, comments) of a binary little-endian triangle PLY."""
    data = path.read_bytes()
    head, body = data.split(b"end_header\n", 1)
    lines = head.decode("ascii").splitlines()
    assert lines[0] == "ply" and lines[1] == "format binary_little_endian 1.0"
    counts = {ln.split()[1]: int(ln.split()[2]) for ln in lines if ln.startswith("element ")}
    props = [ln for ln in lines if ln.startswith("property ")]
    assert props == ["property float x", "property float y", "property float z",
                     "property list uchar int vertex_indices"]
    nv, nf = counts["vertex"], counts["face"]
    assert len(body) == 12 * nv + 13 * nf
    vertices = np.frombuffer(body[:12 * nv], "<f4").reshape(nv, 3).astype(np.float64)
    faces = np.frombuffer(body[12 * nv:], np.dtype([("n", "u1"), ("v", "<i4", (3,))]))
    assert np.all(faces["n"] == 3)
    return vertices, faces["v"].astype(np.int64), [ln[8:] for ln in lines if ln.startswith("comment ")]


def signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    t = (v - v.mean(axis=0))[f]
    return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6)


def area(v: np.ndarray, f: np.ndarray) -> float:
    t = v[f]
    return float(0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1).sum())


def assert_closed_and_consistent(f: np.ndarray) -> None:
    """Every directed edge once, and its reverse once: a closed surface wound consistently."""
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    forward = {tuple(e) for e in edges.tolist()}
    assert len(forward) == len(edges)
    assert forward == {(b, a) for a, b in forward}


def spec_with(names: list[str], kinds: list[str], spatial_dims: int = 3) -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "t", "spatial_dims": spatial_dims, "weights": "w.pt", "tile": 8,
        "input": {"bands": [{"name": "image"}]},
        "classes": [{"name": n, "kind": k} for n, k in zip(names, kinds, strict=True)]})


def store_of(path: Path, labels: np.ndarray, chunk: tuple[int, ...], names: Sequence[str]) -> MaskStore:
    store = MaskStore.create(path, labels.shape, chunk, names, save_scores=False, attrs={})
    for _, box in ChunkGrid.create(labels.shape, chunk):
        store.write(box, labels[box.slices])
    return store


def write_meshes(tmp_path: Path, labels: np.ndarray, affine: np.ndarray, spec: ModelSpec,
                 chunk: tuple[int, ...]) -> Path:
    """instances.csv then meshes/ for ``labels`` on the grid of ``affine`` (over z, y, x, 1); the output folder."""
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    scene = Scene.from_array(np.zeros((1, *labels.shape), np.int16),
                             volume=VolumeGeometry.from_matrix(affine.tolist(), spacing))
    store = store_of(tmp_path / "mask.zarr", labels, chunk, spec.class_names)
    out = tmp_path / "out"
    out.mkdir()
    InstancesSink(scene, spec).write(store, out)
    assert MeshesSink.for_scene(scene, spec).write(store, out) == out / "meshes"
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def oblique(flip: int) -> np.ndarray:
    """An oblique, anisotropic (dz, dy, dx) = (1.5, 0.8, 0.6) mm affine over (z, y, x, 1); ``flip`` = -1
    mirrors the x axis. Its determinant is negative for flip = 1 ((z, y, x) is left-handed) and positive for -1."""
    rot = Rotation.from_euler("zyx", [25, -17, 40], degrees=True).as_matrix()
    a = np.eye(4)
    a[:3, :3] = np.stack([1.5 * rot[:, 2], 0.8 * rot[:, 1], 0.6 * flip * rot[:, 0]], axis=1)
    return a


# ----------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("flip", [1, -1])
def test_a_sphere_on_an_oblique_anisotropic_grid(tmp_path: Path, flip: int) -> None:
    shape, r, centre = (24, 36, 44), 9.0, np.array([12.0, -30.0, 55.0])
    affine = oblique(flip)
    assert np.sign(np.linalg.det(affine[:3, :3])) == -flip
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.array(shape) - 1) / 2 + [0.3, -0.2, 0.1])
    world = np.indices(shape).reshape(3, -1).T @ affine[:3, :3].T + affine[:3, 3]
    labels = (np.linalg.norm(world - centre, axis=1) < r).reshape(shape).astype(np.uint8)
    out = write_meshes(tmp_path, labels, affine, spec_with(["bg", "ball"], ["stuff", "thing"]), (10, 12, 16))
    assert sorted(p.name for p in (out / "meshes").iterdir()) == ["1_ball.ply", "index.csv"]
    v, f, comments = parse_ply(out / "meshes" / "1_ball.ply")
    assert {"SPACE=RAS", "units mm", "instance_id 1", "class ball"} <= set(comments)
    assert_closed_and_consistent(f)
    d = np.linalg.norm(v - centre, axis=1)  # vertices lie midway between voxel centres in and out
    assert np.abs(d - r).max() <= 1.5 / 2 + 1e-4 and abs(d.mean() - r) < 0.1
    volume = signed_volume(v, f)
    assert volume == pytest.approx(4 / 3 * np.pi * r ** 3, rel=0.02)  # positive: wound outward
    t = v[f]
    normals = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    assert np.all(np.einsum("ij,ij->i", normals, t.mean(axis=1) - centre) > 0)  # every face faces outward
    # marching cubes over a 0/1 mask runs along the voxel staircase: the area is over by up to ~15 %
    assert 1.0 < area(v, f) / (4 * np.pi * r ** 2) < 1.16
    (row,) = read_csv(out / "meshes" / "index.csv")
    assert row == {"id": "1", "class": "ball", "file": "1_ball.ply", "vertices": str(len(v)), "faces": str(len(f)),
                   "area_mm2": row["area_mm2"], "volume_mm3": row["volume_mm3"]}
    assert float(row["volume_mm3"]) == pytest.approx(volume, rel=1e-9)
    assert float(row["area_mm2"]) == pytest.approx(area(v, f), rel=1e-9)


def test_two_instances_named_by_id_and_class_reach_the_box_edges(tmp_path: Path) -> None:
    labels = np.zeros((10, 12, 14), np.uint8)
    labels[2:5, 3:9, 4:6] = 1  # 3 × 6 × 2 voxels
    labels[6:10, 0:2, 9:14] = 2  # touches three faces of the volume: closed by the padding
    affine = np.array([[0, 0, -0.75, 30.0], [0, 0.5, 0, -10.0], [2.0, 0, 0, 5.0], [0, 0, 0, 1]])  # x flipped
    spec = spec_with(["bg", "blob", "cyst/nodule 2"], ["stuff", "thing", "thing"])
    out = write_meshes(tmp_path, labels, affine, spec, (4, 5, 6))
    files = ["1_blob.ply", "2_cyst-nodule-2.ply"]
    assert sorted(p.name for p in (out / "meshes").iterdir()) == [*files, "index.csv"]
    instances = read_csv(out / "instances.csv")
    index = read_csv(out / "meshes" / "index.csv")
    assert [(r["id"], r["class"], r["file"]) for r in index] == [("1", "blob", files[0]),
                                                                  ("2", "cyst/nodule 2", files[1])]
    for inst, row, name in zip(instances, index, files, strict=True):
        v, f, comments = parse_ply(out / "meshes" / name)
        assert f"instance_id {row['id']}" in comments and f"class {row['class']}" in comments
        assert_closed_and_consistent(f)
        assert (int(row["vertices"]), int(row["faces"])) == (len(v), len(f))
        assert signed_volume(v, f) > 0 and float(row["volume_mm3"]) == pytest.approx(signed_volume(v, f), rel=1e-9)
        # a box's surface reaches its outer voxel faces: exactly the bounding box of instances.csv
        np.testing.assert_allclose(v.min(axis=0), [float(inst[f"bbox_min_{a}_mm"]) for a in "xyz"], atol=1e-4)
        np.testing.assert_allclose(v.max(axis=0), [float(inst[f"bbox_max_{a}_mm"]) for a in "xyz"], atol=1e-4)


def test_the_chunk_cache_does_not_change_the_meshes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    labels = (ndimage.gaussian_filter(rng.random((20, 22, 24)), 1.5) > 0.52).astype(np.uint8)
    spec, affine = spec_with(["bg", "blob"], ["stuff", "thing"]), oblique(1)
    big = write_meshes(tmp_path / "a", labels, affine, spec, (7, 6, 9))
    monkeypatch.setattr(meshes_module, "CACHE_VOXELS", 1)  # one chunk kept at a time
    small = write_meshes(tmp_path / "b", labels, affine, spec, (7, 6, 9))
    index = read_csv(big / "meshes" / "index.csv")
    assert len(index) > 3 and index == read_csv(small / "meshes" / "index.csv")
    ids = np.asarray(zarr.open_array(tmp_path / "a" / "mask.zarr" / "instances", mode="r")[:])
    for row in index:
        assert (big / "meshes" / row["file"]).read_bytes() == (small / "meshes" / row["file"]).read_bytes()
        v, f, _ = parse_ply(big / "meshes" / row["file"])
        assert_closed_and_consistent(f)
        assert signed_volume(v, f) > 0
        # every vertex lies within half a voxel step of the instance's own voxels
        zyx = np.argwhere(ids == int(row["id"]))
        lo, hi = zyx.min(axis=0) - 0.5, zyx.max(axis=0) + 0.5
        index_coords = np.linalg.solve(affine[:3, :3], (v - affine[:3, 3]).T).T
        assert np.all(index_coords >= lo - 1e-3) and np.all(index_coords <= hi + 1e-3)


def test_no_instance_gives_an_index_with_its_header(tmp_path: Path) -> None:
    out = write_meshes(tmp_path, np.zeros((5, 6, 7), np.uint8), oblique(1),
                       spec_with(["bg", "blob"], ["stuff", "thing"]), (4, 4, 4))
    assert [p.name for p in (out / "meshes").iterdir()] == ["index.csv"]
    assert (out / "meshes" / "index.csv").read_text() == "id,class,file,vertices,faces,area_mm2,volume_mm3\n"


# ----------------------------------------------------------------------------- choosing the sink


def test_sinks_for_puts_meshes_after_instances_and_refuses_what_has_none() -> None:
    volume = Scene.from_array(np.zeros((1, 8, 8, 8), np.int16),
                              volume=VolumeGeometry.from_matrix(np.eye(4).tolist(), (1.0, 1.0, 1.0)))
    names = [type(s).__name__ for s in sinks_for(volume, spec_with(["bg", "blob"], ["stuff", "thing"]), meshes=True)]
    assert names.index("MeshesSink") == len(names) - 1 and "InstancesSink" in names
    assert not any(isinstance(s, MeshesSink) for s in sinks_for(volume, spec_with(["bg", "blob"], ["stuff", "thing"])))
    with pytest.raises(ConfigError, match="no thing class, so no instances to mesh"):
        sinks_for(volume, spec_with(["bg", "organ"], ["stuff", "stuff"]), meshes=True)
    raster = Scene.from_array(np.zeros((1, 8, 8), np.float32), crs="EPSG:32633",
                              transform=(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0))
    with pytest.raises(ConfigError, match="2D raster; drop --meshes"):
        sinks_for(raster, spec_with(["bg", "house"], ["stuff", "thing"], 2), meshes=True)


def test_cli_refuses_meshes_for_a_raster_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tif = write_geotiff(tmp_path / "scene.tif", random_image((3, 40, 40)))
    pkg = make_ts_package(tmp_path / "pkg")
    code = main(["run", "tile-infer", "-i", str(tif), "--model", str(pkg), "--device", "cpu", "--meshes",
                 "--output", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "2D raster; drop --meshes" in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_the_flow_takes_meshes() -> None:
    from pipelines.tile_infer_flow import tile_infer_flow

    assert inspect.signature(tile_infer_flow.fn).parameters["meshes"].default is False
    assert TileInferParams().meshes is False


# ----------------------------------------------------------------------------- end to end


def test_tile_infer_publishes_a_mesh_per_instance_of_a_nifti(tmp_path: Path) -> None:
    pkg = threshold_package(tmp_path / "pkg", 100.0, second={"name": "blob", "kind": "thing"})
    rng = np.random.default_rng(5)
    noise = ndimage.gaussian_filter(rng.random((26, 22, 18)), 2.0)  # (i, j, k) on disk
    image = np.where(noise > np.quantile(noise, 0.85), 150, 20).astype(np.int16)
    affine = np.array([[-0.9, 0.1, 0.0, 40.0], [0.0, 1.2, 0.2, -30.0], [0.1, 0.0, 2.5, 10.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "ct.nii.gz")
    stored = nib.Nifti1Image.from_filename(tmp_path / "ct.nii.gz").affine  # as stored (float32 sform)
    result = tile_infer(tmp_path / "ct.nii.gz", tmp_path / "out",
                        TileInferParams(model=str(pkg), device="cpu", amp=False, chunk=8, meshes=True))
    out = tmp_path / "out"
    assert result.outputs["meshes"] == out / "meshes" and (out / "meshes").is_dir()
    instances, index = read_csv(out / "instances.csv"), read_csv(out / "meshes" / "index.csv")
    assert len(index) == len(instances) > 2
    assert [(r["id"], r["class"], r["file"]) for r in index] == [(r["id"], "blob", f"{r['id']}_blob.ply")
                                                                  for r in instances]
    assert sorted(p.name for p in (out / "meshes").iterdir()) == sorted([r["file"] for r in index] + ["index.csv"])
    ijk_of = np.linalg.inv(stored)
    for inst, row in zip(instances, index, strict=True):
        v, f, comments = parse_ply(out / "meshes" / row["file"])
        assert "SPACE=RAS" in comments
        assert_closed_and_consistent(f)
        assert signed_volume(v, f) > 0
        # placed by nibabel's own affine: inside the instance's voxel box (i, j, k), half a voxel around it
        ijk = v @ ijk_of[:3, :3].T + ijk_of[:3, 3]
        low = [float(inst[f"bbox_min_{a}_mm"]) for a in "xyz"]
        high = [float(inst[f"bbox_max_{a}_mm"]) for a in "xyz"]
        assert np.all(v >= np.array(low) - 1e-3) and np.all(v <= np.array(high) + 1e-3)
        assert np.all(ijk > -0.5 - 1e-3) and np.all(ijk < np.array(image.shape) - 0.5 + 1e-3)
    total = sum(float(r["volume_mm3"]) for r in index)
    voxels = sum(int(r["voxels"]) for r in instances) * abs(np.linalg.det(stored[:3, :3]))
    assert 0.5 * voxels < total < 1.1 * voxels  # blobs of a few hundred voxels: chamfered edges and corners

