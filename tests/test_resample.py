"""The model grid of a volume: world positions exact against scipy, any orientation, back to the input grid."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from nibabel.orientations import aff2axcodes
from scipy.ndimage import map_coordinates

from segflow.geometry import VolumeGeometry
from segflow.resample import model_grid, model_scene, scores_to_source
from segflow.scene import Scene
from segflow.tile_infer import TileInferParams, tile_infer
from segflow.tiling import Box


def _affine(perm: tuple[int, int, int], signs: tuple[int, int, int], spacing: tuple[float, float, float],
            angle: float) -> np.ndarray:
    """A voxel (z, y, x) → world affine: voxel axis a runs along world axis perm[a] * signs[a], rotated by angle."""
    cols = np.zeros((3, 3))
    for a in range(3):
        cols[perm[a], a] = signs[a] * spacing[a]
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    out = np.eye(4)
    out[:3, :3] = rot @ cols
    out[:3, 3] = [12.0, -7.0, 30.0]
    return out


def _world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    idx = np.array(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).reshape(3, -1)
    return (affine @ np.vstack([idx, np.ones(idx.shape[1])]))[:3]


def _smooth(world: np.ndarray) -> np.ndarray:
    return np.sin(world[0] / 7.0) + np.cos(world[1] / 5.0) + world[2] / 40.0


orientations = st.tuples(st.permutations([0, 1, 2]), st.tuples(*[st.sampled_from([-1, 1])] * 3),
                         st.tuples(*[st.sampled_from([0.7, 1.0, 2.5])] * 3), st.sampled_from([0.0, 0.2]),
                         st.sampled_from(["RAS", "LPS", "PIR"]), st.sampled_from([1.0, 1.5]))


@settings(max_examples=25, deadline=None)
@given(orientations)
@example(([0, 2, 1], (1, -1, -1), (1.0, 1.0, 1.0), 0.2, "PIR", 1.0))  # already on the grid, oblique
@example(([0, 2, 1], (1, -1, -1), (1.0, 1.0, 1.0), 0.0, "PIR", 1.0))  # already on the grid, array axes permuted
def test_model_grid_voxels_sit_at_their_world_positions(case: tuple) -> None:  # type: ignore[type-arg]
    perm, signs, spacing, angle, codes, target = case
    affine = _affine(tuple(perm), signs, spacing, angle)  # type: ignore[arg-type]
    shape = (9, 14, 11)
    volume = _smooth(_world(affine, shape)).reshape(shape)[None].astype(np.float32)
    geometry = VolumeGeometry.from_matrix(affine.tolist(), spacing)
    grid = model_grid(geometry, shape, (target,) * 3, codes)
    if grid is None:  # only when the volume is already on the model grid: its voxel axes already grow toward
        # the asked axis codes (the closest ones when oblique: the model grid keeps a rotation, it does not
        # resample it away) at the asked spacing
        assert aff2axcodes(affine[:, [2, 1, 0, 3]]) == tuple(codes) and set(spacing) == {target}
        return
    model_affine = np.array(grid.geometry.affine)
    # the model grid's voxel axes grow toward the asked axis codes (closest ones when oblique)
    assert aff2axcodes(model_affine[:, [2, 1, 0, 3]]) == tuple(codes)
    assert np.allclose(np.sqrt((model_affine[:3, :3] ** 2).sum(axis=0)), target)
    got = model_scene(Scene.from_array(volume, volume=geometry), grid, chunk=5).data.compute()[0]
    source = (np.linalg.inv(affine) @ np.vstack([_world(model_affine, grid.shape), np.ones(got.size)]))[:3]
    want = map_coordinates(volume[0], source, order=1, mode="nearest").reshape(grid.shape)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the field of view is kept: the model grid spans the input's extent along each axis within a voxel
    for t in range(3):
        extent_in = shape[grid.axis[t]] * spacing[grid.axis[t]]
        assert abs(grid.shape[t] * target - extent_in) <= target / 2 + 1e-9


def test_a_volume_already_on_the_model_grid_is_left_alone() -> None:
    affine = _affine((2, 1, 0), (1, 1, 1), (2.0, 1.0, 1.0), 0.0)  # z → S, y → A, x → R: RAS
    geometry = VolumeGeometry.from_matrix(affine.tolist(), (2.0, 1.0, 1.0))
    assert model_grid(geometry, (4, 5, 6), (2.0, 1.0, 1.0), "RAS") is None
    assert model_grid(geometry, (4, 5, 6), None, None) is None
    assert model_grid(geometry, (4, 5, 6), (2.0, 1.0, 1.0), "LAS") is not None


@pytest.mark.parametrize("codes", ["RAS", "LPI"])
def test_scores_come_back_to_the_input_grid(codes: str) -> None:
    affine = _affine((0, 2, 1), (1, -1, 1), (2.5, 0.8, 1.1), 0.3)
    shape = (12, 40, 30)
    volume = _smooth(_world(affine, shape)).reshape(shape)[None].astype(np.float32)
    geometry = VolumeGeometry.from_matrix(affine.tolist(), (2.5, 0.8, 1.1))
    grid = model_grid(geometry, shape, (1.0, 1.0, 1.0), codes)
    assert grid is not None
    model = model_scene(Scene.from_array(volume, volume=geometry), grid, chunk=16).data.compute()[0]
    scores = np.stack([model, -model])

    def read(box: Box) -> np.ndarray:
        return scores[(slice(None), *box.slices)]

    valid = np.ones(shape, dtype=bool)
    valid[0, 0, 0] = False
    labels, back = scores_to_source(grid, read, Box((0, 0, 0), shape), valid)
    assert labels.shape == shape and back.shape == (2, *shape)
    # twice interpolated linearly: close to the original inside, exact where the function is linear
    assert np.abs(back[0] - volume[0])[1:-1, 2:-2, 2:-2].max() < 0.05
    assert labels[0, 0, 0] == 255 and np.isnan(back[:, 0, 0, 0]).all()
    want = (volume[0] < 0).astype(np.uint8)
    assert np.mean(labels[valid] == want[valid]) > 0.99
    # box by box equals all at once (chunk invariance of the way back)
    parts = np.empty(shape, np.uint8)
    for z in range(0, shape[0], 5):
        for y in range(0, shape[1], 17):
            box = Box((z, y, 0), (min(z + 5, shape[0]), min(y + 17, shape[1]), shape[2]))
            parts[box.slices] = scores_to_source(grid, read, box, valid[box.slices])[0]
    np.testing.assert_array_equal(parts, labels)


class _Threshold(torch.nn.Module):
    """Class 1 where the input exceeds 500: a per-voxel stand-in model needing no weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid((x[:, :1] - 500.0) / 50.0)
        return torch.cat([1 - p, p], dim=1)


def _threshold_package(root: Path, **contract: object) -> Path:
    root.mkdir()
    torch.jit.script(_Threshold()).save(str(root / "model.ts"))
    spec = {"name": "threshold-3d", "version": "1", "spatial_dims": 3, "weights": "model.ts",
            "input": {"bands": [{"name": "ct", "index": 1}]}, "tile": 32, "overlap": 0.25,
            "output": {"activation": "none"},
            "classes": [{"name": "background"}, {"name": "bright", "kind": "thing"}], **contract}
    (root / "model.yaml").write_text(yaml.safe_dump(spec))
    return root


@pytest.mark.parametrize("affine", [
    np.diag([1.0, 1.0, 3.0, 1.0]),  # RAS, anisotropic
    np.array([[-1.2, 0, 0, 40], [0, 0, 2.0, -30], [0, -0.9, 0, 25], [0, 0, 0, 1]]),  # L, then S, then P: permuted
])
def test_a_structure_lands_at_its_world_position_through_the_model_grid(affine: np.ndarray, tmp_path: Path) -> None:
    """Input grid → model grid (2 mm, LPS) → model → back: the cube is found where it is in the world."""
    shape_ijk = (40, 36, 24)
    data = np.zeros(shape_ijk, np.float32)
    centre_world = np.array([15.0, 8.0, 12.0])  # inside both fields of view, 7 mm from their edges at least
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape_ijk], indexing="ij"), axis=-1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    inside = (np.abs(world - centre_world) <= 7.0).all(axis=1).reshape(shape_ijk)  # a 14 mm cube
    data[inside] = 1000.0
    src = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), src)
    pkg = _threshold_package(tmp_path / "pkg", spacing=[2.0, 2.0, 2.0], orientation="LPS")
    tile_infer(src, tmp_path / "out", TileInferParams(model=str(pkg), chunk=16))
    out = nib.load(tmp_path / "out" / "labels.nii.gz")
    assert out.shape == shape_ijk and np.allclose(out.affine, affine)
    labels = np.asarray(out.dataobj)
    found = world[(labels == 1).reshape(-1)]
    assert abs(found.mean(axis=0) - centre_world).max() < 1.0  # mm
    # every voxel more than one model voxel (2 mm) away from the cube's faces is classified right
    distance = np.abs(world - centre_world).max(axis=1).reshape(shape_ijk)
    assert (labels[distance <= 7.0 - 2.5] == 1).all() and (labels[distance >= 7.0 + 2.5] == 0).all()
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["effective"]["model_grid"]["spacing"] == [2.0, 2.0, 2.0]
    assert not (tmp_path / "out" / "model-grid.zarr").exists()
