"""ct-tissue follows its stated HU rule exactly, runs as tile-infer's default for volumes, and refuses non-CT."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pydicom
import pydicom.data
import pytest
import torch
import yaml

from segflow.bands import assemble_scene
from segflow.cli import main
from segflow.errors import ConfigError, InputError, ModelError
from segflow.geometry import VolumeGeometry
from segflow.io import readers
from segflow.io.mask_store import MaskStore
from segflow.io.readers import open_scene
from segflow.models import resolve_package
from segflow.models.expects import PLANES, check_expected_input, sample_values
from segflow.models.hounsfield import HounsfieldModel, build_hounsfield
from segflow.models.loading import load_module
from segflow.models.package import ModelSpec
from segflow.scene import Scene
from segflow.synthetic.volume import synthesize_volume
from segflow.tile_infer import DEFAULT_MODELS, TileInferParams, tile_infer

BACKGROUND, AIR, FAT, SOFT, BONE = range(5)
# The rule as the description and docstring state it, written out here (not read from model.yaml):
# background < -1200 <= air < -190 <= fat < -29 <= soft tissue < 300 <= bone.
BOUNDS = [(-1200, AIR), (-190, FAT), (-29, SOFT), (300, BONE)]


def classes_of(values: np.ndarray | list[float]) -> np.ndarray:
    """Classes the built-in ct-tissue module gives a 1-D list of HU values, checking the one-hot property."""
    module = load_module(resolve_package("ct-tissue"))
    x = torch.as_tensor(np.asarray(values, dtype=np.float32)).reshape(1, 1, 1, 1, -1)
    with torch.no_grad():
        scores = module(x)[0, :, 0, 0, :].numpy()
    assert scores.dtype == np.float32 and set(np.unique(scores)) <= {0.0, 1.0}
    np.testing.assert_array_equal(scores.sum(0), 1.0)  # exactly one class per voxel
    return scores.argmax(0)


def reference(hu: np.ndarray) -> np.ndarray:
    """The stated rule with plain comparisons, for any array of HU."""
    out = np.full(hu.shape, BACKGROUND, dtype=np.uint8)
    with np.errstate(invalid="ignore"):
        for bound, cls in BOUNDS:
            out[np.isfinite(hu) & (hu >= bound)] = cls
    return out


# ----------------------------------------------------------------------------- the rule, exactly


def test_the_package_declares_the_stated_bounds_kinds_and_contract() -> None:
    spec = resolve_package("ct-tissue").spec
    assert spec.architecture is not None and spec.architecture.args == {"lower_bounds": [b for b, _ in BOUNDS]}
    assert spec.class_names == ("background", "air", "fat", "soft_tissue", "bone")
    assert [c.kind for c in spec.classes] == ["stuff", "stuff", "stuff", "stuff", "thing"]
    assert spec.spatial_dims == 3 and spec.overlap == 0.0 and spec.weights is None
    assert spec.input.normalization.mode == "none" and spec.output.activation == "none"
    assert DEFAULT_MODELS[3] == "ct-tissue"
    description = " ".join(spec.description.split())
    for phrase in ("HU < -1200", "-1200 <= HU < -190", "-190 <= HU < -29", "-29 <= HU < 300", "HU >= 300",
                   "not finite"):
        assert phrase in description, phrase


@pytest.mark.parametrize(("bound", "above"), BOUNDS)
def test_every_bound_belongs_to_the_class_above_it_and_the_value_just_below_to_the_class_below(
        bound: int, above: int) -> None:
    just_below = np.nextafter(np.float32(bound), np.float32(-np.inf))
    got = classes_of([bound, just_below, bound - 1, bound + 1])
    assert got.tolist() == [above, above - 1, above - 1, above]


def test_the_extremes_and_undefined_values() -> None:
    values = [np.nan, np.inf, -np.inf, -3.4e38, 3.4e38, -3024, -2048, -2000, -1201, -1024, -1000, 0, 3071, 30000]
    expected = [BACKGROUND, BACKGROUND, BACKGROUND, BACKGROUND, BONE, BACKGROUND, BACKGROUND, BACKGROUND,
                BACKGROUND, AIR, AIR, SOFT, BONE, BONE]
    assert classes_of(values).tolist() == expected


def test_every_integer_hu_and_random_floats_match_the_reference() -> None:
    rng = np.random.default_rng(4)
    values = np.concatenate([np.arange(-3100, 3200, dtype=np.float32),  # every integer HU, fill to metal
                             rng.uniform(-1300, 400, 50000).astype(np.float32),
                             np.float32(rng.integers(-1300, 400, 2000)) + np.float32(0.5)])
    np.testing.assert_array_equal(classes_of(values), reference(values))
    ints = np.arange(-3100, 3200)
    got = classes_of(ints)
    # the body-composition ranges on integer HU: fat -190..-30 inclusive, soft tissue from -29
    assert set(ints[got == FAT]) == set(range(-190, -29))
    assert ints[got == SOFT].min() == -29 and ints[got == BONE].min() == 300


def test_the_rule_is_the_same_in_any_spatial_shape_and_batch() -> None:
    rng = np.random.default_rng(5)
    hu = rng.uniform(-1500, 1500, (3, 1, 5, 6, 7)).astype(np.float32)
    hu[0, 0, 0, 0, :3] = [np.nan, -190, 300]
    out = HounsfieldModel([b for b, _ in BOUNDS])(torch.from_numpy(hu)).numpy()
    assert out.shape == (3, 5, 5, 6, 7) and out.dtype == np.float32
    np.testing.assert_array_equal(out.argmax(1), reference(hu[:, 0]))
    np.testing.assert_array_equal(out.sum(1), 1.0)


def test_bad_arguments_are_refused_with_a_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="strictly increasing"):
        build_hounsfield(1, 4, lower_bounds=[-190, -1200, 300])
    with pytest.raises(ConfigError, match="strictly increasing"):
        build_hounsfield(1, 3, lower_bounds=[0, float("nan")])
    with pytest.raises(ConfigError, match="reads one band"):
        build_hounsfield(2, 5, lower_bounds=[-1200, -190, -29, 300])
    with pytest.raises(ConfigError, match=r"makes 5 classes .* declares 4 classes"):
        build_hounsfield(1, 4, lower_bounds=[-1200, -190, -29, 300])
    with pytest.raises(ConfigError, match="takes only 'lower_bounds', got window"):
        build_hounsfield(1, 5, lower_bounds=[-1200, -190, -29, 300], window=400)
    with pytest.raises(ConfigError, match="needs lower_bounds"):
        build_hounsfield(1, 5)
    raw = yaml.safe_load((resolve_package("ct-tissue").root / "model.yaml").read_text(encoding="utf-8"))
    raw["architecture"]["args"]["lower_bounds"] = [-1200, -190, -29]
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ModelError, match=r"cannot build architecture 'hounsfield'.*makes 4 classes"):
        load_module(resolve_package(tmp_path / "m"))


# ----------------------------------------------------------------------------- through tile-infer


@pytest.fixture
def volume_reader(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, dict[str, Any]]]:
    """A reader for ``.npy`` volumes (z, y, x) registered for this test only; ``meta[path name]`` sets Scene.meta."""
    meta: dict[str, dict[str, Any]] = {}

    def opener(path: Path) -> Scene:
        array = np.load(path)
        geometry = VolumeGeometry.from_matrix(np.diag([2.0, 0.8, 0.8, 1.0]), (2.0, 0.8, 0.8))
        scene = Scene.from_array(array[None], chunks=(1, 8, 64, 64), band_names=["ct"], volume=geometry,
                                 meta=dict(meta.get(path.name, {})))
        return replace(scene, source=str(path))

    monkeypatch.setattr(readers, "_READERS", list(readers._READERS))
    readers.register_reader("npy-volume", lambda p: p.suffix == ".npy", opener)
    yield meta


def bone_column(shape: tuple[int, int, int]) -> np.ndarray:
    _, y, x = np.indices(shape)
    return (y - 44 * shape[1] // 64) ** 2 + (x - shape[2] // 2) ** 2 < 36


def with_bone(seed: int = 3, shape: tuple[int, int, int] = (40, 64, 64)) -> np.ndarray:
    """A synthetic CT volume (int16 HU) with a spine-like bone column (about 700 HU) added inside the body."""
    image, _ = synthesize_volume(shape, seed=seed)
    noise = np.random.default_rng(seed).normal(0, 80, shape)
    return np.where(bone_column(shape), np.rint(700 + noise), image).astype(np.int16)


def test_default_model_for_a_volume_labels_a_synthetic_ct_where_its_hu_say(
        tmp_path: Path, volume_reader: dict[str, dict[str, Any]]) -> None:
    image, truth = synthesize_volume((40, 64, 64), seed=3)
    image = with_bone()
    image[:, :, :6] = -3024  # fill outside the field of view
    np.save(tmp_path / "ct.npy", image)
    volume_reader["ct.npy"] = {"modality": "CT"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # overlap 0 is no oversampling: no warning
        result = tile_infer(tmp_path / "ct.npy", tmp_path / "out", TileInferParams(save_scores=True))
    assert result.windows_total == 1  # a 128^3 tile covers the volume: one window
    store = MaskStore.open(tmp_path / "out" / "mask.zarr")
    labels = np.asarray(store.labels[...])
    np.testing.assert_array_equal(labels, reference(image.astype(np.float32)))
    counts = np.bincount(labels.ravel(), minlength=5)
    assert all(counts > 0), counts  # every class is there: fill, air, fat, soft tissue, bone
    assert (labels[:, :, :6] == BACKGROUND).all()
    organ = (truth == 1) & ~bone_column(image.shape)
    organ[:, :, :6] = False
    assert np.mean(labels[organ] == SOFT) > 0.99  # the organ (about 105 HU) is soft tissue
    assert np.mean(labels[:, :2, 10:54] == AIR) > 0.95  # the rows outside the body are air
    assert np.mean(labels[bone_column(image.shape)] == BONE) > 0.99  # the column (700 +- 80 HU) is bone
    assert np.mean(labels[~bone_column(image.shape)] == BONE) < 0.001  # and nothing else is


def test_overlapping_windows_blend_to_the_same_classes(tmp_path: Path,
                                                       volume_reader: dict[str, dict[str, Any]]) -> None:
    image = with_bone(seed=5, shape=(24, 48, 40))
    np.save(tmp_path / "ct.npy", image)
    expected = reference(image.astype(np.float32))
    for overlap in (0.0, 0.5, 0.75):
        out = tmp_path / f"o{overlap}"
        result = tile_infer(tmp_path / "ct.npy", out, TileInferParams(model="ct-tissue", tile=16, overlap=overlap,
                                                                      chunk=20, save_scores=True))
        assert result.windows_total > 1
        store = MaskStore.open(out / "mask.zarr")
        np.testing.assert_array_equal(np.asarray(store.labels[...]), expected, err_msg=f"overlap {overlap}")
        scores = np.asarray(store.scores[...], dtype=np.float32)
        np.testing.assert_array_equal(scores.max(0), 1.0)  # blended one-hots stay one-hot
        np.testing.assert_array_equal(scores.sum(0), 1.0)


# ----------------------------------------------------------------------------- not CT: refused


def ct_scene(image: np.ndarray, **meta: Any) -> Scene:
    return Scene.from_array(image[None], band_names=["ct"], meta=meta,
                            volume=VolumeGeometry.from_matrix(np.eye(4), (1.0, 1.0, 1.0)))


CT_SPEC = resolve_package("ct-tissue").spec


def refused(image: np.ndarray, *needles: str, **meta: Any) -> str:
    with pytest.raises(InputError) as info:
        check_expected_input(CT_SPEC, ct_scene(image, **meta), "vol.nii.gz")
    message = str(info.value)
    assert "\n" not in message and "--model" in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def mr_like(seed: int = 3) -> np.ndarray:
    """A T1-like MR volume from the synthetic anatomy: magnitudes >= 0, in the thousands, dark air."""
    image, _ = synthesize_volume((40, 64, 64), seed=seed)
    rng = np.random.default_rng(seed)
    mr = np.interp(image, [-1024, -100, 45, 105], [0, 3200, 1100, 1500]) + rng.normal(0, 20, image.shape)
    return np.abs(mr).astype(np.float32)


def test_an_mr_like_volume_is_refused_naming_what_was_seen() -> None:
    refused(mr_like(), "vol.nii.gz does not look like CT values in HU, which model 'ct-tissue' expects",
            "values above 3071 HU (at most 1 % may be) and 0.00% at or below -100 HU (at least 1 % must be)",
            "min ", "1st percentile", "median", "99th percentile", "max ")


def test_normalised_8_bit_and_unrescaled_volumes_are_refused() -> None:
    image = with_bone()
    refused(((image.astype(np.float32) + 1024) / 4095).clip(0, 1), "at or below -100 HU")  # [0, 1]
    refused(((image.astype(np.float32) + 1024) / 16).clip(0, 255).astype(np.uint8))  # 8-bit
    refused((image.astype(np.int32) + 1024).astype(np.uint16))  # stored numbers without the -1024 intercept
    refused(((image - image.mean()) / image.std()).astype(np.float32))  # z-scores
    refused(image.astype(np.float32) * 10, "above 3071 HU")  # not HU: ten times too large


def test_a_dicom_modality_other_than_ct_is_refused_before_any_pixel_is_read() -> None:
    image = with_bone()
    message = refused(image, "vol.nii.gz has DICOM Modality MR but model 'ct-tissue' takes CT",
                      "pass a model made for MR images with --model", modality="MR")
    assert "percentile" not in message
    check_expected_input(CT_SPEC, ct_scene(image, modality="ct"))
    check_expected_input(CT_SPEC, ct_scene(image))  # NIfTI: no modality recorded


def test_real_ct_shapes_are_accepted() -> None:
    image = with_bone()
    check_expected_input(CT_SPEC, ct_scene(image))
    padded = image.copy()
    padded[:, :, :28] = -3024  # 44 % fill outside the field of view
    check_expected_input(CT_SPEC, ct_scene(padded))
    metal = image.astype(np.float32)
    metal[20, 30:34, 30:34] = 12000  # a small implant on an extended-range scanner
    check_expected_input(CT_SPEC, ct_scene(metal))
    with_nan = image.astype(np.float32)
    with_nan[:5] = np.nan
    check_expected_input(CT_SPEC, ct_scene(with_nan))


def test_a_ct_cropped_inside_one_organ_is_refused_as_documented() -> None:
    image, truth = synthesize_volume((40, 64, 64), seed=3)
    inner = image[16:24, 28:36, 28:36]
    assert (truth[16:24, 28:36, 28:36] >= 1).all() and inner.min() > -100, "premise: organ (and lesion) only"
    refused(inner, "at or below -100 HU")


def test_the_mni152_template_is_refused() -> None:
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=2)
    zyx = np.asarray(template.get_fdata(), dtype=np.float32).transpose(2, 1, 0)
    refused(zyx, "does not look like CT")


def test_tile_infer_refuses_mr_before_writing_anything(tmp_path: Path,
                                                       volume_reader: dict[str, dict[str, Any]]) -> None:
    np.save(tmp_path / "mr.npy", mr_like())
    with pytest.raises(InputError, match=r"mr.npy does not look like CT .*--model"):
        tile_infer(tmp_path / "mr.npy", tmp_path / "out")
    np.save(tmp_path / "series.npy", with_bone())
    volume_reader["series.npy"] = {"modality": "MR"}
    with pytest.raises(InputError, match=r"has DICOM Modality MR .*--model"):
        tile_infer(tmp_path / "series.npy", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pydicoms_ct_series_is_accepted_and_the_same_series_as_mr_refused(tmp_path: Path) -> None:
    ct5n = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"
    scene = open_scene(ct5n)
    assert scene.meta["modality"] == "CT" and scene.spatial_shape == (5, 16, 16)
    check_expected_input(CT_SPEC, assemble_scene(CT_SPEC, {"image": scene}))
    for path in sorted(ct5n.iterdir()):
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(tmp_path / path.name)
    with pytest.raises(InputError, match=r"has DICOM Modality MR but model 'ct-tissue' takes CT; .*--model"):
        tile_infer(tmp_path, tmp_path / "out")


def test_tile_infer_refuses_the_mni152_template_through_the_nifti_reader(tmp_path: Path) -> None:
    pytest.importorskip("segflow.io.nifti", reason="the NIfTI reader is not in this tree yet")
    from nilearn.datasets import load_mni152_template

    load_mni152_template(resolution=2).to_filename(tmp_path / "mni.nii.gz")
    with pytest.raises(InputError, match=r"does not look like CT .*--model"):
        tile_infer(tmp_path / "mni.nii.gz", tmp_path / "out")


class CountingArray:
    """An array-like that counts the elements dask reads from it."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape, self.dtype, self.ndim, self.read = array, array.shape, array.dtype, array.ndim, 0

    def __getitem__(self, key: Any) -> np.ndarray:
        out = self.array[key]
        self.read += out.size
        return out


def test_the_check_reads_a_sample_not_the_volume() -> None:
    image = np.repeat(with_bone(shape=(20, 64, 64)), 10, axis=0)  # 200 slices
    source = CountingArray(image[None])
    scene = Scene.from_array(da.from_array(source, chunks=(1, 4, 64, 64)), band_names=["ct"])
    check_expected_input(CT_SPEC, scene)
    assert 0 < source.read <= PLANES * 4 * 64 * 64  # at most one 4-slice chunk per sampled plane
    values = sample_values(scene, planes=3, per_plane=1024)[0]
    z = np.linspace(0, 199, 3).round().astype(int)
    np.testing.assert_array_equal(values, image[z, ::2, ::2].ravel().astype(np.float64))


# ----------------------------------------------------------------------------- the contract fields


def spec_with(**changes: Any) -> ModelSpec:
    raw = yaml.safe_load((resolve_package("demo-unet-3d").root / "model.yaml").read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return ModelSpec.model_validate(raw)


def test_demo_unet_3d_declares_spacing_and_orientation_and_show_prints_them(
        capsys: pytest.CaptureFixture[str]) -> None:
    spec = resolve_package("demo-unet-3d").spec
    assert spec.spacing == (4.0, 4.0, 4.0) and spec.orientation == "RAS"
    assert main(["models", "show", "demo-unet-3d"]) == 0
    assert "spacing (dz, dy, dx): [4.0, 4.0, 4.0] mm   orientation: RAS" in capsys.readouterr().out
    assert main(["models", "show", "ct-tissue"]) == 0
    assert "expects: CT, HU in [-1024, 3071], 1st percentile <= -100" in capsys.readouterr().out


@pytest.mark.parametrize(("changes", "needle"), [
    ({"orientation": "RAX"}, "orientation must be 3 letters"),
    ({"orientation": "RRS"}, "one of R/L, one of A/P and one of S/I"),
    ({"orientation": "ras"}, "orientation must be 3 letters"),
    ({"spacing": [1.0, 0.0, 1.0]}, "spacing must be 3 positive"),
    ({"spacing": [1.0, 1.0]}, "spacing"),
    ({"spatial_dims": 2, "tile": 64, "orientation": None}, "spacing and orientation are for volumes"),
])
def test_bad_spacing_or_orientation_is_refused(changes: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        spec_with(**changes)


def test_any_axis_permutation_is_a_valid_orientation() -> None:
    for code in ("RAS", "LPS", "LPI", "ASL", "SRA"):
        assert spec_with(orientation=code).orientation == code


@pytest.mark.parametrize(("expects", "needle"), [
    ({"unit": "HU", "range": [3071, -1024]}, "low < high"),
    ({"unit": "HU", "range": [-1024, 3071], "p1_at_most": -2000}, "must lie in expects.range"),
    ({"unit": "HU", "range": [-1024, 3071], "modality": []}, "modality"),
    ({"range": [-1024, 3071]}, "unit"),
])
def test_bad_expects_are_refused(expects: dict[str, Any], needle: str) -> None:
    raw = yaml.safe_load((resolve_package("ct-tissue").root / "model.yaml").read_text(encoding="utf-8"))
    raw["input"]["expects"] = expects
    with pytest.raises(ValueError, match=needle):
        ModelSpec.model_validate(raw)
