"""Training on NIfTI image/label pairs: chips on the model grid (spacing, orientation), foreground
oversampling, refusals, and a tiny 3D U-Net trained end to end and run by tile-infer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from scipy.ndimage import map_coordinates

from segflow.errors import ConfigError, InputError
from segflow.geometry import VolumeGeometry
from segflow.models.arch import build_architecture
from segflow.resample import model_grid, read_model_box
from segflow.scene import Scene
from segflow.synthetic.volume import synthesize_volume
from segflow.tile_infer import TileInferParams, tile_infer
from segflow.tiling import Box
from segflow.training.config import load_train_config, train_config_from_dict
from segflow.training.data_config import NiftiConfig
from segflow.training.loop import train
from segflow.training.nifti import NiftiSource, VolumeTarget, expand_pairs, open_pair, resolve_target
from segflow.training.sampling import ChipSampler, Holdout, grid_cells

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train-nifti-3d.yaml"
BANDS = [("ct", 1)]


def _save(path: Path, zyx: np.ndarray, affine: np.ndarray) -> Path:
    """Write a (z, y, x) array as NIfTI (stored (i, j, k) = (x, y, z)) with the (i, j, k) affine."""
    nib.save(nib.Nifti1Image(np.ascontiguousarray(zyx.transpose(2, 1, 0)), affine), path)
    return path


def _oblique(spacing: float, angle: float, origin: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    affine = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    affine[:3, :3] *= spacing
    affine[:3, 3] = origin
    return affine


def _world_zyx(affine_ijk: np.ndarray, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """World (x, y, z) mm of every voxel, (3, z, y, x)."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape_zyx], indexing="ij")
    ijk1 = np.stack([x, y, z, np.ones_like(x)]).reshape(4, -1).astype(float)
    return (affine_ijk @ ijk1)[:3].reshape(3, *shape_zyx)


def _sphere_pair(root: Path, name: str, affine: np.ndarray, shape: tuple[int, int, int],
                 centre: np.ndarray, radius: float) -> tuple[Path, Path]:
    """A ball of ``radius`` mm at world ``centre`` (label 1, 100 HU) in a smooth background."""
    world = _world_zyx(affine, shape)
    inside = np.linalg.norm(world - centre[:, None, None, None], axis=0) <= radius
    image = (100.0 * inside + np.sin(world[0] / 9.0)).astype(np.float32)
    return (_save(root / f"{name}.nii.gz", image, affine),
            _save(root / f"{name}_seg.nii.gz", inside.astype(np.uint8), affine))


def _source(image: Path, labels: Path, spacing: tuple[float, float, float], orientation: str = "RAS",
            classes: int = 2) -> NiftiSource:
    return NiftiSource(open_pair(image, labels, BANDS), VolumeTarget(spacing, orientation), classes)


# --------------------------------------------------------------------------- chips on the model grid


def test_a_chip_spans_the_same_millimetres_in_volumes_of_different_spacing(tmp_path: Path) -> None:
    centre, radius = np.array([24.0, 20.0, 30.0]), 9.0
    a = _sphere_pair(tmp_path, "fine", np.diag([1.0, 1.0, 2.0, 1.0]), (30, 44, 48), centre, radius)  # 1x1x2 RAS
    lps = np.diag([-2.0, -2.0, 2.0, 1.0])
    lps[:3, 3] = [48.0, 44.0, 0.0]
    b = _sphere_pair(tmp_path, "coarse", lps, (30, 22, 24), centre, radius)  # 2 mm LPS, same field of view
    target, chip = (1.5, 1.5, 1.5), 16
    ball = 4.0 / 3.0 * np.pi * radius**3  # mm³
    counts, stored = [], []
    for image, labels in (a, b):
        source = _source(image, labels, target)
        affine = np.asarray(source.geometry.affine)  # model grid: (z, y, x, 1) -> world
        assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), target)
        middle = np.rint(np.linalg.solve(affine, np.append(centre, 1.0))[:3]).astype(int)
        start = tuple(int(v) - chip // 2 for v in middle)
        got = source.read(start, (chip,) * 3)
        assert got.image.shape == (1, chip, chip, chip) and got.valid.all()
        # the chip's edges lie chip * 1.5 mm apart along each of its axes, in both volumes
        for t in range(3):
            step = np.zeros(4)
            step[t] = chip
            assert np.isclose(np.linalg.norm(affine[:3, :4] @ step), chip * 1.5)
        # the whole ball is inside the chip: its voxel count is the ball's volume in model voxels
        counts.append(int((got.labels == 1).sum()))
        assert abs(counts[-1] * 1.5**3 - ball) < 0.08 * ball
        idx = np.argwhere(got.labels == 1) + np.array(start)
        found = (affine[:3, :3] @ idx.T.astype(float)).T + affine[:3, 3]
        assert np.abs(found.mean(axis=0) - centre).max() < 0.75  # mm
        stored.append(int(np.asarray(nib.Nifti1Image.from_filename(labels).dataobj).sum()))
    assert abs(counts[0] - counts[1]) <= 0.05 * counts[0]
    assert stored[0] > 3 * stored[1]  # while the files hold very different voxel counts


def test_chips_of_a_flipped_volume_are_the_mirror_of_its_ras_twin(tmp_path: Path) -> None:
    image, truth = synthesize_volume((16, 24, 30), seed=7)
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    las = np.diag([-1.0, 1.0, 1.0, 1.0])  # the same voxels, x declared to grow toward the Left
    las[0, 3] = 29.0
    a = _source(_save(tmp_path / "a.nii", image, ras), _save(tmp_path / "a_seg.nii", truth, ras), (1.5,) * 3, classes=3)
    b = _source(_save(tmp_path / "b.nii", image, las), _save(tmp_path / "b_seg.nii", truth, las), (1.5,) * 3, classes=3)
    assert a.spatial_shape == b.spatial_shape == (11, 16, 20)
    whole_a, whole_b = a.read((0, 0, 0), a.spatial_shape), b.read((0, 0, 0), b.spatial_shape)
    np.testing.assert_allclose(whole_b.image, whole_a.image[..., ::-1], atol=1e-3)
    np.testing.assert_array_equal(whole_b.labels, whole_a.labels[..., ::-1])
    assert not np.array_equal(whole_b.labels, whole_a.labels)  # the orientation made a difference
    start, shape = (2, 3, 5), (8, 8, 8)
    mirrored = (2, 3, a.spatial_shape[2] - 5 - 8)
    np.testing.assert_array_equal(b.read(start, shape).labels, a.read(mirrored, shape).labels[..., ::-1])
    # a twin stored flipped in x and y but placed at the same world positions gives identical chips
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps[:2, 3] = [29.0, 23.0]
    c = _source(_save(tmp_path / "c.nii", image[:, ::-1, ::-1], lps),
                _save(tmp_path / "c_seg.nii", truth[:, ::-1, ::-1], lps), (1.5,) * 3, classes=3)
    whole_c = c.read((0, 0, 0), c.spatial_shape)
    np.testing.assert_allclose(whole_c.image, whole_a.image, atol=1e-3)
    np.testing.assert_array_equal(whole_c.labels, whole_a.labels)


def test_label_volumes_are_resampled_by_nearest_neighbour() -> None:
    affine_zyx = np.zeros((4, 4))
    affine_zyx[:3, :3] = np.array([[0, 0, 1.1], [0, -0.7, 0], [2.5, 0, 0]])  # columns: z -> S, y -> P, x -> R
    affine_zyx[:3, 3] = [5.0, 12.0, -3.0]
    affine_zyx[3, 3] = 1.0
    shape = (9, 20, 14)
    labels = np.random.default_rng(3).integers(0, 4, size=shape).astype(np.uint8)
    geometry = VolumeGeometry.from_matrix(affine_zyx.tolist(), (2.5, 0.7, 1.1))
    grid = model_grid(geometry, shape, (0.9, 0.9, 0.9), "RAS")  # no input coordinate falls half-way (a tie)
    assert grid is not None
    scene = Scene.from_array(labels[None], volume=geometry)
    box = Box((1, 2, 3), (grid.shape[0] - 1, grid.shape[1] - 2, grid.shape[2] - 1))
    got, valid = read_model_box(scene, grid, box, labels=True)
    assert got.dtype == np.uint8 and valid is None
    model = np.asarray(grid.geometry.affine)
    idx = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(box.start, box.stop, strict=True)],
                               indexing="ij")).reshape(3, -1)
    source = (np.linalg.inv(affine_zyx) @ model @ np.vstack([idx, np.ones(idx.shape[1])]))[:3]
    want = map_coordinates(labels, source, order=0, mode="nearest").reshape(box.shape)
    np.testing.assert_array_equal(got[0], want)
    linear, _ = read_model_box(scene, grid, box)
    assert linear.dtype == np.float32 and not np.allclose(linear, np.round(linear))  # the intensity path differs


# --------------------------------------------------------------------------- refusals and patterns


def test_mismatched_image_and_labels_are_refused(tmp_path: Path) -> None:
    image, truth = synthesize_volume(16, seed=1)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    img = _save(tmp_path / "img.nii.gz", image, affine)
    smaller = _save(tmp_path / "small.nii.gz", truth[:, :, :-1], affine)
    with pytest.raises(InputError, match=r"\(16, 16, 15\).*share shape and affine") as err:
        open_pair(img, smaller, BANDS)
    assert "\n" not in str(err.value)
    moved = affine.copy()
    moved[0, 3] = 0.5
    shifted = _save(tmp_path / "shifted.nii.gz", truth, moved)
    with pytest.raises(InputError, match=r"different voxel-to-world affines.*0\.5 mm"):
        open_pair(img, shifted, BANDS)
    two = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([truth.transpose(2, 1, 0)] * 2, axis=-1), affine), two)
    with pytest.raises(InputError, match="2 channels"):
        open_pair(img, two, BANDS)
    with pytest.raises(InputError, match="channel 2 but"):
        open_pair(img, _save(tmp_path / "ok.nii.gz", truth, affine), [("ct", 2)])
    bad = _save(tmp_path / "bad.nii.gz", np.where(truth == 1, 7, truth).astype(np.uint8), affine)
    source = _source(img, bad, (2.0, 1.0, 1.0), classes=3)
    scan = r"bad\.nii\.gz holds label 7 at voxel \(i, j, k\) \(\d+, \d+, \d+\): expected class ids 0\.\.2 or 255"
    with pytest.raises(InputError, match=scan):
        source.class_locations()  # the scan of a training volume
    with pytest.raises(InputError, match=r"holds label 7 at model-grid voxel"):
        source.read((0, 0, 0), source.spatial_shape)  # a chip


def test_patterns_pair_images_with_their_labels(tmp_path: Path) -> None:
    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / folder).mkdir()
    for case in ("b", "a"):
        (tmp_path / f"imagesTr/{case}_0000.nii.gz").touch()
        (tmp_path / f"labelsTr/{case}.nii.gz").touch()
    entry = NiftiConfig(image=str(tmp_path / "imagesTr/*_0000.nii.gz"), labels=str(tmp_path / "labelsTr/*.nii.gz"))
    assert expand_pairs([entry]) == [(tmp_path / f"imagesTr/{c}_0000.nii.gz", tmp_path / f"labelsTr/{c}.nii.gz")
                                     for c in ("a", "b")]
    (tmp_path / "imagesTr/c_0000.nii.gz").touch()
    with pytest.raises(InputError, match=r"c_0000.nii.gz .* has no labels .*labelsTr/c.nii.gz"):
        expand_pairs([entry])
    with pytest.raises(InputError, match="matches no file"):
        expand_pairs([NiftiConfig(image=str(tmp_path / "none/*.nii"), labels="*.nii")])
    with pytest.raises(ValueError, match="both patterns"):
        NiftiConfig(image="a/*.nii", labels="b/seg.nii")


def test_config_checks(tmp_path: Path) -> None:
    raw: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    config = load_train_config(CONFIG)
    assert config.model.orientation == "RAS" and config.model.spacing is None and config.sampling.foreground == 0.33
    changes: list[tuple[dict[str, Any], str]] = [
        ({"spacing": [1.0, 0.0, 1.0]}, "spacing must be 3 positive"),
        ({"orientation": "RAR"}, "orientation must be 3 letters"),
        ({"spatial_dims": 2, "chip": 48, "tile": 64, "orientation": None}, "NIfTI pairs are volumes"),
    ]
    for change, words in changes:
        bad = {**raw, "model": {**raw["model"], **change}}
        with pytest.raises(ConfigError, match=words):
            train_config_from_dict(bad)
    only_synthetic = {**raw, "data": {"synthetic": {"kind": "volumes", "count": 2, "size": 64}},
                      "validation": {"nifti": raw["data"]["nifti"]}}
    with pytest.raises(ConfigError, match=r"needs model\.spacing"):
        train_config_from_dict(only_synthetic)


# --------------------------------------------------------------------------- sampling


def test_foreground_chips_are_class_balanced_and_avoid_held_out_cells(tmp_path: Path) -> None:
    shape = (32, 48, 48)
    labels = np.zeros(shape, np.uint8)
    labels[4:28, 6:42, 6:42] = 1  # a big class
    labels[20:22, 30:32, 10:12] = 2  # 8 voxels of a rare one
    image = labels.astype(np.float32) * 50
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    source = _source(_save(tmp_path / "i.nii", image, affine), _save(tmp_path / "l.nii", labels, affine),
                     (2.0, 1.0, 1.0), classes=3)
    locations = source.class_locations()
    assert sorted(locations) == [1, 2] and len(locations[2]) == 8
    assert len(locations[1]) == 10_000  # a sample of the 24*36*36 voxels
    for k, where in locations.items():  # every recorded position holds its class
        for z, y, x in where[:50]:
            assert source.read((int(z), int(y), int(x)), (1, 1, 1)).labels.item() == k
    chip = (8, 8, 8)
    mask = np.zeros(grid_cells(source.spatial_shape, chip), dtype=bool)  # (4, 6, 6) cells
    mask[1:3, 1:5, 3:6] = True  # held out: much of class 1, none of the chips centred on class 2
    holdout = Holdout(chip, (mask,))
    sampler = ChipSampler([source], chip, holdout, foreground=1.0)
    assert sampler.foreground_classes == (1, 2)
    rare = 0
    for n in range(100):
        i, start = sampler.sample(np.random.default_rng([5, n]))
        assert not holdout.overlaps(i, start)
        got = source.read(start, chip).labels
        assert (got > 0).any()
        rare += bool((got == 2).any())
    assert 35 <= rare <= 65  # half the centred chips hold the rare class (binomial(100, 1/2): 3 sigma)
    uniform = ChipSampler([source], chip, holdout, foreground=0.0)
    hits = sum(bool((source.read(s, chip).labels == 2).any())
               for _, s in (uniform.sample(np.random.default_rng([6, n])) for n in range(100)))
    assert hits < 15
    everything = Holdout(chip, (np.ones_like(mask),))
    assert everything.overlaps_many(0, np.array([[0, 0, 0]])).all()
    starts = np.random.default_rng(1).integers(0, 44, size=(300, 3))
    assert list(holdout.overlaps_many(0, starts)) == [holdout.overlaps(0, tuple(int(v) for v in s)) for s in starts]
    # a class whose centred chips all touch held-out cells is not drawn
    only_rare_held = mask.copy()
    only_rare_held[2, 3:5, 0:3] = True
    assert ChipSampler([source], chip, Holdout(chip, (only_rare_held,)), foreground=1.0).foreground_classes == (1,)


# --------------------------------------------------------------------------- end to end


def _volumes(root: Path) -> None:
    """Three synthetic CT pairs: 1x1x2 mm RAS, 2 mm LPS, 1.5 mm oblique (nnU-Net layout)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    lps = np.diag([-2.0, -2.0, 2.0, 1.0])
    cases: list[tuple[tuple[int, int, int], np.ndarray]] = [
        ((16, 40, 40), np.diag([1.0, 1.0, 2.0, 1.0])), ((16, 24, 24), lps), ((20, 32, 32), _oblique(1.5, 0.3))]
    for k, (shape, affine) in enumerate(cases):
        image, truth = synthesize_volume(shape, seed=20 + k)
        _save(root / f"imagesTr/case{k}_0000.nii.gz", image, affine)
        _save(root / f"labelsTr/case{k}.nii.gz", truth, affine)


def test_train_on_nifti_pairs_then_tile_infer_on_another_grid(tmp_path: Path) -> None:
    _volumes(tmp_path / "data")
    # a fourth volume on yet another grid (1.2 x 0.9 x 0.9 mm, x toward the Left): test data, then tile-infer's input
    image, truth = synthesize_volume((20, 30, 30), seed=99)
    affine = np.diag([-0.9, 0.9, 1.2, 1.0])
    src = _save(tmp_path / "new.nii.gz", image, affine)
    test_pair = {"image": str(src), "labels": str(_save(tmp_path / "new_seg.nii.gz", truth, affine))}
    raw: dict[str, Any] = yaml.safe_load(CONFIG.read_text())  # the shipped example, shrunk
    raw["model"].update(architecture={"name": "unet", "args": {"channels": [4, 8]}}, chip=16, tile=16)
    raw["data"]["nifti"] = [{"image": str(tmp_path / "data/imagesTr/*_0000.nii.gz"),
                             "labels": str(tmp_path / "data/labelsTr/*.nii.gz")}]
    raw.update(validation={"fraction": 0.1, "chips": 4}, epochs=3, batch_size=2, chips_per_epoch=8,
               optimizer={"lr": 0.01}, device="cpu", output=str(tmp_path / "run"), loss="ce", class_weights=None,
               test={"nifti": [test_pair]})
    config = train_config_from_dict(raw)
    result = train(config)
    losses = [r.train_loss for r in result.history]
    assert losses[-1] < losses[0]
    spec = yaml.safe_load((result.package_dir / "model.yaml").read_text())
    # the per-axis median of (2, 1, 1), (2, 2, 2) and (1.5, 1.5, 1.5) mm along (z, y, x) of the RAS grid
    assert spec["spacing"] == [2.0, 1.5, 1.5] and spec["orientation"] == "RAS"
    assert spec["input"]["values"] == "scaled" and spec["input"]["normalization"]["mode"] == "meanstd"
    assert -1000 < spec["input"]["normalization"]["mean"][0] < 200
    readme = (result.package_dir / "README.md").read_text()
    assert "median of 3 training volume(s)" in readme and "-> model grid" in readme
    torch.manual_seed(config.seed)
    initial = build_architecture("unet", spatial_dims=3, in_channels=1, out_channels=3, channels=[4, 8]).state_dict()
    trained = load_file(str(result.package_dir / "model.safetensors"))
    assert trained.keys() == initial.keys()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial if initial[k].is_floating_point())
    # scored by sliding windows on the training's model grid: 20 * 1.2 / 2 = 12 by 30 * 0.9 / 1.5 = 18 by 18 voxels
    assert result.test is not None and result.test.pixels == 12 * 18 * 18
    tile_infer(src, tmp_path / "out", TileInferParams(model=str(result.package_dir), chunk=32, device="cpu"))
    out = nib.Nifti1Image.from_filename(tmp_path / "out" / "labels.nii.gz")
    assert out.shape == (30, 30, 20) and np.allclose(out.affine, affine)
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2}
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["effective"]["model_grid"]["spacing"] == [2.0, 1.5, 1.5]


def test_resolve_target_takes_the_config_spacing_or_the_median(tmp_path: Path) -> None:
    centre = np.array([10.0, 10.0, 10.0])
    sagittal = np.array([[0, 0, 5.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])  # i -> A, j -> S, k -> R
    pairs = []
    for name, affine, shape in (("p", np.diag([0.8, 0.8, 3.0, 1.0]), (8, 25, 25)),  # (z, y, x) 3, 0.8, 0.8 mm
                                ("q", sagittal, (4, 20, 20)),  # along R, A, S: 5, 1, 1 mm; as stored (k, j, i) 5, 1, 1
                                ("r", np.diag([1.0, 1.0, 1.0, 1.0]), (20, 20, 20))):
        pairs.append(open_pair(*_sphere_pair(tmp_path, name, affine, shape, centre, 4.0), BANDS))
    model = load_train_config(CONFIG).model
    # medians along the RAS grid's (z, y, x) = (S, A, R): (3, 1, 1), (0.8, 1, 1), (0.8, 5, 1)
    target = resolve_target(model, pairs)
    assert target.spacing == (1.0, 1.0, 1.0) and target.orientation == "RAS"
    assert "median of 3" in target.origin
    given = model.model_copy(update={"spacing": [1.0, 2.0, 3.0], "orientation": "LPS"})
    assert resolve_target(given, pairs) == VolumeTarget((1.0, 2.0, 3.0), "LPS")
