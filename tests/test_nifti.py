"""NIfTI in, ``labels.nii.gz`` out: axes, world geometry, header codes, values, and bad input.

Inputs are written byte by byte here (header fields set one by one), so that what a test
declares (qform only, big-endian, scl_slope...) is exactly what the file holds. The stand-in
model is a TorchScript threshold (class 1 where the input > t, strictly): its labels are known
voxel for voxel, so a flipped, shifted or transposed output cannot pass.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import yaml
import zarr

from segflow.cli import main
from segflow.errors import InputError
from segflow.io.nifti import open_nifti
from segflow.io.readers import open_scene
from segflow.tile_infer import TileInferParams, tile_infer

from . import helpers
from .helpers import random_image, write_geotiff

SHAPE = (20, 18, 14)  # (i, j, k)
CUBE = (slice(11, 14), slice(4, 7), slice(8, 11))  # a 3×3×3 cube, centre voxel (12, 5, 9)
CENTRE = np.array([12.0, 5.0, 9.0, 1.0])
INSIDE, OUTSIDE, T = 100.0, 10.0, 50.0


# ----------------------------------------------------------------------------- writing inputs

def write_nifti(path: Path, data: np.ndarray, *, qform: tuple[np.ndarray, int] | None = None,
                sform: tuple[np.ndarray, int] | None = None, dtype: Any = None, endian: str = "<",
                slope: float | None = None, inter: float | None = None, version: int = 1,
                fields: dict[str, Any] | None = None) -> Path:
    """A single-file NIfTI written field by field: data ``(i, j, k[, ...])`` stored in Fortran order."""
    hdr = (nib.Nifti2Header if version == 2 else nib.Nifti1Header)(endianness=endian)
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(dtype or data.dtype)
    hdr["qform_code"] = hdr["sform_code"] = 0
    if qform is not None:
        hdr.set_qform(qform[0], code=qform[1])
    if sform is not None:
        hdr.set_sform(sform[0], code=sform[1])
    hdr.set_xyzt_units("mm", "sec")
    if slope is not None:
        hdr["scl_slope"], hdr["scl_inter"] = slope, inter or 0.0
    for key, value in (fields or {}).items():
        hdr[key] = value
    hdr["vox_offset"] = hdr.single_vox_offset
    stored = np.asarray(data, dtype=hdr.get_data_dtype())
    payload = hdr.binaryblock + b"\0" * 4 + stored.tobytes(order="F")
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path


def cube_volume(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    data = np.full(shape, OUTSIDE, dtype=np.float32)
    data[CUBE] = INSIDE
    data[0, 0, 0] = INSIDE  # a corner voxel: a flip of any axis moves it
    return data


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    a = math.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def affine(linear: np.ndarray, origin: tuple[float, float, float]) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = linear, origin
    return out


RAS = affine(np.eye(3), (-10.0, 20.0, -5.0))
LPS = affine(np.diag([-0.8, -0.8, 2.5]), (40.0, 12.5, -30.0))  # x and y flipped, as a DICOM axial series
OBLIQUE = affine(rotation(np.array([1.0, 2.0, 0.5]), 27.0) @ np.diag([0.7, 0.9, 2.0]), (3.0, -7.5, 11.0))
ANISO = affine(np.diag([0.5, 1.0, 3.0]), (0.0, -4.0, 9.0))
# parked in a form whose code is 0: another rotation and origin, the same voxel sizes (pixdim is shared
# by both forms, and ITK reads an sform whose scales disagree with pixdim as broken: see below)
WRONG_Q = affine(rotation(np.array([0.0, 0.0, 1.0]), 90.0) @ np.diag([0.8, 0.8, 2.5]), (100.0, 100.0, 100.0))
WRONG_S = affine(np.diag([5.0, 5.0, 5.0]), (100.0, 100.0, 100.0))

KINDS: dict[str, dict[str, Any]] = {
    "ras": {"qform": (RAS, 1), "sform": (RAS, 1)},
    "lps": {"qform": (LPS, 1), "sform": (LPS, 1)},
    "oblique": {"qform": (OBLIQUE, 1), "sform": (OBLIQUE, 1)},
    "anisotropic": {"qform": (ANISO, 2), "sform": (ANISO, 2)},
    "qform-only": {"qform": (OBLIQUE, 1), "sform": (WRONG_S, 0)},
    "sform-only": {"qform": (WRONG_Q, 0), "sform": (LPS, 4)},
    "big-endian": {"qform": (LPS, 1), "sform": (LPS, 1), "endian": ">", "dtype": np.int16},
    "nifti2": {"qform": (ANISO, 1), "sform": (ANISO, 1), "version": 2},  # float32-exact: written as NIfTI-1
    "nifti2-float64": {"qform": (OBLIQUE, 1), "sform": (OBLIQUE, 1), "version": 2},  # stays NIfTI-2
}


# ----------------------------------------------------------------------------- the stand-in model

def threshold_package(root: Path, t: float = T, **kw: Any) -> Path:
    return helpers.threshold_package(root, t, **kw)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return threshold_package(tmp_path_factory.mktemp("pkg") / "threshold")


def run(source: Path, out: Path, model: Path, **kw: Any) -> Any:
    return tile_infer(source, out, TileInferParams(model=str(model), device="cpu", amp=False,
                                                   **{"chunk": 8, **kw}))


def load(path: Path | str) -> nib.Nifti1Image:
    return cast(nib.Nifti1Image, nib.load(path))


def raw_header(path: Path) -> nib.Nifti1Header:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    cls = nib.Nifti2Header if int.from_bytes(data[:4], "little") in (540, 540 << 24) else nib.Nifti1Header
    return cls.from_fileobj(io.BytesIO(data))


GEOMETRY_FIELDS = ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                   "qoffset_z", "srow_x", "srow_y", "srow_z", "pixdim", "xyzt_units", "dim_info")


def sitk_world_of(path: Path, index_ijk: np.ndarray) -> np.ndarray:
    """World RAS of continuous voxel indices ``(n, 3)`` as ITK places them (ITK's world is LPS)."""
    image = sitk.ReadImage(str(path))
    lps = np.array([image.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx]) for idx in index_ijk])
    return lps * np.array([-1.0, -1.0, 1.0])


# ----------------------------------------------------------------------------- reading

@pytest.mark.parametrize("kind", sorted(KINDS))
def test_reader_axes_affine_and_values(kind: str, tmp_path: Path) -> None:
    opts = dict(KINDS[kind])
    data = random_image(SHAPE, seed=3, dtype="int16")
    path = write_nifti(tmp_path / "in.nii.gz", data, **opts)
    scene = open_scene(path)
    img = load(path)
    assert scene.axes == "CZYX" and scene.spatial_shape == SHAPE[::-1] and scene.data.dtype.isnative
    np.testing.assert_array_equal(scene.data.compute()[0], data.transpose(2, 1, 0))
    expected = (opts["sform"] if opts["sform"][1] else opts["qform"])[0]
    np.testing.assert_allclose(img.affine, expected, atol=2e-5)  # the premise: nibabel's rule
    zyx = np.asarray(scene.volume.affine)  # type: ignore[union-attr]
    for z, y, x in [(0, 0, 0), (13, 17, 19), (4, 9, 2)]:
        np.testing.assert_array_equal(zyx @ [z, y, x, 1], img.affine @ [x, y, z, 1])
    np.testing.assert_allclose(scene.volume.spacing, np.linalg.norm(expected[:3, :3], axis=0)[::-1],  # type: ignore[union-attr]
                               rtol=1e-6)
    assert scene.meta["format"] == "nifti" and json.loads(json.dumps(scene.meta)) == scene.meta


def test_scl_slope_and_inter_are_nibabels(tmp_path: Path) -> None:
    stored = random_image(SHAPE, seed=5, dtype="int16")
    path = write_nifti(tmp_path / "s.nii", stored, qform=(RAS, 1), slope=0.25, inter=-1024.0)
    scene = open_scene(path)
    assert scene.scales == (0.25,) and scene.offsets == (-1024.0,)
    np.testing.assert_array_equal(scene.data.compute()[0], stored.transpose(2, 1, 0))  # stored values
    values = scene.scaled().data.compute()[0]
    reference = load(path).get_fdata(dtype=np.float32).transpose(2, 1, 0)
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values, stored.transpose(2, 1, 0) * np.float32(0.25) - np.float32(1024))
    np.testing.assert_allclose(values, reference, rtol=0, atol=np.spacing(np.abs(reference)).max())
    zero = write_nifti(tmp_path / "z.nii", stored, qform=(RAS, 1), slope=0.0, inter=5.0)  # slope 0: no scaling
    assert open_scene(zero).scales == () and open_scene(zero).scaled().data.dtype == np.int16


@pytest.mark.parametrize(("shape", "channel_axis"), [((*SHAPE, 3), 3), ((*SHAPE, 1, 3), 4), ((*SHAPE, 3, 1), 3)])
def test_channels_from_the_4th_or_5th_dimension(shape: tuple[int, ...], channel_axis: int, tmp_path: Path) -> None:
    data = random_image(shape, seed=7, dtype="int16")
    scene = open_scene(write_nifti(tmp_path / "c.nii.gz", data, qform=(RAS, 1)))
    assert scene.num_bands == 3 and scene.spatial_shape == SHAPE[::-1]
    channels = np.moveaxis(data.reshape(*SHAPE, 3), 3, 0)
    np.testing.assert_array_equal(scene.data.compute(), channels.transpose(0, 3, 2, 1))


def test_reads_by_slabs_and_boxes(tmp_path: Path) -> None:
    data = random_image(SHAPE, seed=9, dtype="uint16")
    path = write_nifti(tmp_path / "s.nii", data, qform=(RAS, 1))
    scene = open_nifti(path, slab_bytes=SHAPE[0] * SHAPE[1] * 2 * 3)
    assert scene.data.chunks[1] == (3, 3, 3, 3, 2) and scene.meta["slab"] == 3
    from segflow.tiling import Box
    values, valid = scene.read(Box((2, 5, 7), (9, 11, 19)))
    np.testing.assert_array_equal(values[0], data.transpose(2, 1, 0)[2:9, 5:11, 7:19])
    assert valid is None


def test_nan_voxels_are_nodata_and_stay_255(model: Path, tmp_path: Path) -> None:
    data = cube_volume()
    data[2, 3, 4] = np.nan
    out = tmp_path / "out"
    run(write_nifti(tmp_path / "n.nii.gz", data, qform=(LPS, 1), sform=(LPS, 1)), out, model)
    labels = np.asarray(load(out / "labels.nii.gz").dataobj)
    assert labels[2, 3, 4] == 255 and (labels != 255).sum() == labels.size - 1


# ----------------------------------------------------------------------------- end to end: the world

@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_cube_lands_at_the_same_world_coordinates(kind: str, model: Path, tmp_path: Path) -> None:
    opts = dict(KINDS[kind])
    data = cube_volume()
    if kind == "big-endian":
        data = data.astype(np.int16)
    source = write_nifti(tmp_path / ("in.NII.GZ" if kind == "ras" else "in.nii.gz"), data, **opts)
    out = tmp_path / "out"
    run(source, out, model)
    assert sorted(p.name for p in out.iterdir()) == ["labels.nii.gz", "mask.zarr", "run.json"]
    labels_path = out / "labels.nii.gz"
    img_in, img_out = load(source), load(labels_path)
    # voxel for voxel, and the header's geometry field for field
    labels = np.asarray(img_out.dataobj)
    assert labels.dtype == np.uint8 and labels.shape == SHAPE
    np.testing.assert_array_equal(labels, (data > T).astype(np.uint8))
    h_in, h_out = raw_header(source), raw_header(labels_path)
    for key in GEOMETRY_FIELDS:
        np.testing.assert_array_equal(h_out[key], h_in[key], err_msg=key)
    assert isinstance(h_out, nib.Nifti2Header) == (kind == "nifti2-float64")
    assert int(h_out["intent_code"]) == 1002 and list(h_out["dim"][:4]) == [3, *SHAPE]
    np.testing.assert_array_equal(img_out.affine, img_in.affine)
    np.testing.assert_array_equal(img_out.header.get_qform(), img_in.header.get_qform())
    np.testing.assert_array_equal(img_out.header.get_sform(), img_in.header.get_sform())
    # the cube: known world coordinates in, the same world coordinates out (nibabel and ITK)
    truth = np.asarray(opts["sform"][0] if opts["sform"][1] else opts["qform"][0])
    want = (truth @ CENTRE)[:3]
    found = np.argwhere(labels == 1)
    found = found[(found != 0).any(axis=1)]  # the corner voxel is the other structure
    centre = found.mean(axis=0)
    np.testing.assert_allclose((img_out.affine @ [*centre, 1])[:3], want, atol=1e-4)
    if kind == "nifti2-float64":
        return  # SimpleITK 2.5 reads no NIfTI-2 file (neither this input nor nibabel's example_nifti2.nii.gz)
    np.testing.assert_allclose(sitk_world_of(labels_path, centre[None])[0], want, atol=1e-3)
    np.testing.assert_allclose(sitk_world_of(labels_path, np.array([[0.0, 0.0, 0.0]]))[0], truth[:3, 3], atol=1e-3)
    # ITK opens input and label map aligned: same grid, and the label voxels where the cube voxels are
    image_out = sitk.ReadImage(str(labels_path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image_out), labels.transpose(2, 1, 0))  # (k, j, i)
    if kind != "nifti2":  # SimpleITK 2.5 cannot read the NIfTI-2 input itself
        image_in = sitk.ReadImage(str(source))
        assert image_out.GetSize() == image_in.GetSize() == SHAPE
        np.testing.assert_allclose(image_out.GetOrigin(), image_in.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(image_out.GetSpacing(), image_in.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(image_out.GetDirection(), image_in.GetDirection(), atol=1e-6)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image_out),
                                      (sitk.GetArrayFromImage(image_in) > T).astype(np.uint8))
    # mask.zarr: labels (z, y, x) and the (z, y, x) → world affine in its attributes
    group = zarr.open_group(str(out / "mask.zarr"), mode="r")
    np.testing.assert_array_equal(np.asarray(group["labels"]), labels.transpose(2, 1, 0))
    zyx = np.asarray(group.attrs["affine"])
    np.testing.assert_array_equal(zyx[:, [2, 1, 0, 3]], img_in.affine)
    assert group.attrs["frame"] == "RAS" and group.attrs["axes"] == "ZYX"


def test_a_header_that_itk_reads_otherwise_is_copied_so_each_tool_overlays_it(model: Path, tmp_path: Path) -> None:
    """pixdim (5 mm, from the unused qform) disagrees with the sform's 0.8/0.8/2.5 mm: nibabel takes the
    sform, ITK declares the sform broken and takes the qform. The label map keeps that header, so in
    each tool it overlays the input exactly (a "repaired" header would be misplaced in one of them)."""
    source = write_nifti(tmp_path / "odd.nii.gz", cube_volume(), qform=(WRONG_S, 0), sform=(LPS, 2))
    out = tmp_path / "out"
    run(source, out, model)
    labels_path = out / "labels.nii.gz"
    np.testing.assert_array_equal(load(labels_path).affine, load(source).affine)
    np.testing.assert_allclose(load(source).affine, LPS, atol=1e-6)
    image_in, image_out = sitk.ReadImage(str(source)), sitk.ReadImage(str(labels_path))
    assert not np.allclose(image_in.GetSpacing(), [0.8, 0.8, 2.5])  # the premise: ITK reads it otherwise
    for get in ("GetOrigin", "GetSpacing", "GetDirection"):
        np.testing.assert_array_equal(getattr(image_out, get)(), getattr(image_in, get)(), err_msg=get)


def test_class_table_in_the_header(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(write_nifti(tmp_path / "in.nii", cube_volume(), qform=(RAS, 1)), out, model)
    hdr = load(out / "labels.nii.gz").header
    assert hdr["descrip"].item().decode() == "segflow threshold: 0 background; 1 bright; 255 none"
    (extension,) = [e for e in hdr.extensions if e.get_code() == 6]
    table = json.loads(extension.get_content().decode())
    assert table["segflow"]["labels"] == {"0": {"name": "background", "color": [0, 0, 0]},
                                          "1": {"name": "bright", "color": [255, 0, 0]}}
    assert table["segflow"]["nodata"] == 255
    assert gzip.decompress((out / "labels.nii.gz").read_bytes())[:4] == (348).to_bytes(4, "little")


def test_4d_channels_feed_the_band_the_model_asks_for(tmp_path: Path) -> None:
    decoy = np.full(SHAPE, OUTSIDE, dtype=np.float32)
    decoy[2:5, 10:15, 1:4] = INSIDE
    data = np.stack([decoy, cube_volume(), decoy[::-1]], axis=-1)[..., np.newaxis, :]  # 5D: time 1, 3 components
    package = threshold_package(tmp_path / "band2", band=2)
    out = tmp_path / "out"
    run(write_nifti(tmp_path / "vec.nii.gz", data, qform=(OBLIQUE, 1), sform=(OBLIQUE, 1)), out, package)
    img = load(out / "labels.nii.gz")
    assert img.shape == SHAPE
    np.testing.assert_array_equal(np.asarray(img.dataobj), (cube_volume() > T).astype(np.uint8))


# ----------------------------------------------------------------------------- real data

def test_mni152_template_end_to_end(tmp_path: Path) -> None:
    from nilearn.datasets import load_mni152_template

    source = tmp_path / "mni152.nii.gz"
    nib.save(load_mni152_template(resolution=2), source)  # uint8 on disk, scl_slope/scl_inter set by nibabel
    img = load(source)
    assert raw_header(source).get_slope_inter()[0] not in (None, 1.0)  # the premise: real scaling in the file
    values = img.get_fdata(dtype=np.float32)
    levels = np.unique(values)
    t = float((levels[100] + levels[101]) / 2)  # between two stored levels: no value is near t
    out = tmp_path / "out"
    run(source, out, threshold_package(tmp_path / "t", t, tile=24), chunk=40)
    labels = load(out / "labels.nii.gz")
    np.testing.assert_array_equal(np.asarray(labels.dataobj), (values > t).astype(np.uint8))
    assert 0.05 < (values > t).mean() < 0.6
    np.testing.assert_array_equal(labels.affine, img.affine)
    for key in GEOMETRY_FIELDS:
        np.testing.assert_array_equal(raw_header(out / "labels.nii.gz")[key], raw_header(source)[key], err_msg=key)


def test_labels_do_not_depend_on_the_chunking(tmp_path: Path) -> None:
    from nilearn.datasets import load_mni152_gm_template

    source = tmp_path / "gm.nii.gz"
    nib.save(load_mni152_gm_template(resolution=2), source)
    values = load(source).get_fdata(dtype=np.float32)
    package = threshold_package(tmp_path / "t", 0.5, tile=20)
    labels = []
    for chunk in (24, 64):
        run(source, tmp_path / f"out{chunk}", package, chunk=chunk)
        labels.append(np.asarray(load(tmp_path / f"out{chunk}" / "labels.nii.gz").dataobj))
    np.testing.assert_array_equal(labels[0], labels[1])
    np.testing.assert_array_equal(labels[0], (values > 0.5).astype(np.uint8))
    assert (tmp_path / "out24" / "labels.nii.gz").read_bytes() == (tmp_path / "out64" / "labels.nii.gz").read_bytes()


@pytest.mark.parametrize("name", ["example4d.nii.gz", "example_nifti2.nii.gz", "anatomical.nii"])
def test_nibabel_test_images(name: str, tmp_path: Path) -> None:
    from nibabel.testing import data_path

    source = Path(str(data_path)) / name
    img = load(source)
    values = img.get_fdata(dtype=np.float32)
    first = values if values.ndim == 3 else values[..., 0]
    t = float(np.median(first)) + 0.5
    out = tmp_path / "out"
    run(source, out, threshold_package(tmp_path / "t", t, band=1, tile=16), chunk=32)
    labels = load(out / "labels.nii.gz")
    assert labels.shape == img.shape[:3] and type(labels.header) is nib.Nifti1Header  # NIfTI-2 fits NIfTI-1 here
    np.testing.assert_array_equal(np.asarray(labels.dataobj), (first > t).astype(np.uint8))
    np.testing.assert_array_equal(labels.affine, img.affine)
    for key in GEOMETRY_FIELDS:
        np.testing.assert_array_equal(labels.header[key], raw_header(source)[key], err_msg=key)
    corners = np.array([[0, 0, 0], [s - 1 for s in labels.shape]], dtype=float)
    want = np.array([img.affine @ [*c, 1] for c in corners])[:, :3]
    np.testing.assert_allclose(sitk_world_of(out / "labels.nii.gz", corners), want, atol=1e-3)


# ----------------------------------------------------------------------------- bad input

def _truncated(path: Path) -> Path:
    data = write_nifti(path, cube_volume(), qform=(RAS, 1)).read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


BAD: dict[str, tuple[Any, list[str]]] = {
    "truncated-gz": (lambda d: _truncated(d / "t.nii.gz"), ["t.nii.gz", "gzip stream is truncated or corrupt"]),
    "truncated-nii": (lambda d: _truncated(d / "t.nii"), ["t.nii", "is truncated", "re-download"]),
    "singular": (lambda d: write_nifti(d / "s.nii.gz", cube_volume(), sform=(affine(np.diag([1.0, 0.0, 1.0]),
                                                                                      (0, 0, 0)), 1)),
                 ["s.nii.gz", "(from the sform) is singular", "set_sform"]),
    "non-finite": (lambda d: write_nifti(d / "f.nii", cube_volume(), sform=(RAS, 1),
                                         fields={"srow_y": [0.0, 1.0, 0.0, np.nan]}), ["is not finite"]),
    "2d-nifti": (lambda d: write_nifti(d / "flat.nii.gz", cube_volume()[:, :, 0], qform=(RAS, 1)),
                 ["is a 2D NIfTI image", "(20, 18, 1)"]),
    "2d-raster": (lambda d: write_geotiff(d / "r.tif", random_image((1, 30, 30))), ["is 3D but", "2D"]),
    "not-nifti": (lambda d: _text(d / "x.nii"), ["x.nii", "is not a NIfTI-1/NIfTI-2 image"]),
    "not-gzip": (lambda d: _text(d / "x.nii.gz"), ["is named .nii.gz but is not gzip-compressed"]),
    "gzip-named-nii": (lambda d: _renamed(d), ["is gzip-compressed but named .nii", "rename it to .nii.gz"]),
    "size-0": (lambda d: write_nifti(d / "e.nii", cube_volume(), qform=(RAS, 1), fields={"dim": [3, 20, 18, 0,
                                                                                               1, 1, 1, 1]}),
               ["size 0"]),
    "time-and-vector": (lambda d: write_nifti(d / "tv.nii", np.zeros((*SHAPE, 2, 3), np.int16), qform=(RAS, 1)),
                        ["2 non-spatial dimensions larger than 1"]),
    "rgb": (lambda d: write_nifti(d / "rgb.nii", np.zeros(SHAPE, np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])),
                                  qform=(RAS, 1)), ["RGB", "not one real number per voxel"]),
}


def _text(path: Path) -> Path:
    path.write_text("not an image\n" * 40)
    return path


def _renamed(folder: Path) -> Path:
    target = folder / "g.nii"
    target.write_bytes(write_nifti(folder / "g.nii.gz", cube_volume(), qform=(RAS, 1)).read_bytes())
    return target


@pytest.fixture(scope="module")
def published(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("published")
    run(write_nifti(folder / "good.nii.gz", cube_volume(), qform=(LPS, 1), sform=(LPS, 1)), folder / "out", model)
    return folder / "out"


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_leaves_outputs(case: str, model: Path, published: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    make, needles = BAD[case]
    source = make(tmp_path)
    before = {p.relative_to(published): p.read_bytes() for p in published.rglob("*") if p.is_file()}
    code = main(["run", "tile-infer", "--input", str(source), "--output", str(published), "--model", str(model),
                 "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("segflow: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    after = {p.relative_to(published): p.read_bytes() for p in published.rglob("*") if p.is_file()}
    assert after == before


def test_a_volume_given_to_a_2d_model_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_nifti(tmp_path / "v.nii.gz", cube_volume(), qform=(RAS, 1))
    code = main(["run", "tile-infer", "--input", str(source), "--output", str(tmp_path / "out"), "--model",
                 "ndwi-water", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "is 2D but" in err and "3D" in err, err
    assert not (tmp_path / "out" / "labels.nii.gz").exists()


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="input file not found"):
        open_nifti(tmp_path / "nope.nii.gz")


def test_a_single_slice_volume_runs_with_windows_of_depth_1(model: Path, tmp_path: Path) -> None:
    data = cube_volume()[:, :, 9:10]  # (20, 18, 1): one slice through the cube, stored 3D
    out = tmp_path / "out"
    run(write_nifti(tmp_path / "slice.nii.gz", data, qform=(OBLIQUE, 1), sform=(OBLIQUE, 1)), out, model)
    labels = load(out / "labels.nii.gz")
    assert labels.shape == (20, 18, 1)
    np.testing.assert_array_equal(np.asarray(labels.dataobj), (data > T).astype(np.uint8))
    assert json.loads((out / "run.json").read_text())["effective"]["tile"] == [1, 12, 12]


def test_a_volume_from_another_format_gets_a_header_from_its_geometry(tmp_path: Path) -> None:
    """A volume not read from NIfTI (a DICOM series): qform and sform from the affine, code 1 (scanner)."""
    from segflow.geometry import VolumeGeometry
    from segflow.io.mask_store import MaskStore
    from segflow.io.sinks import sinks_for
    from segflow.models.package import ModelSpec
    from segflow.scene import Scene

    zyx = OBLIQUE[:, [2, 1, 0, 3]]
    geometry = VolumeGeometry.from_matrix(zyx.tolist(), np.linalg.norm(zyx[:3, :3], axis=0))
    labels = (cube_volume() > T).astype(np.uint8).transpose(2, 1, 0)
    scene = Scene.from_array(labels[np.newaxis], volume=geometry)
    spec = ModelSpec.model_validate(yaml.safe_load((threshold_package(tmp_path / "m") / "model.yaml").read_text()))
    store = MaskStore.create(tmp_path / "mask.zarr", labels.shape, (8, 8, 8), spec.class_names, save_scores=False,
                             attrs=geometry.attrs())
    store.labels[...] = labels
    names = [s.name for s in sinks_for(scene, spec)]
    assert names == ["labels.nii.gz"]
    path = sinks_for(scene, spec)[0].write(store, tmp_path)
    img = load(path)
    assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 1)
    np.testing.assert_allclose(img.affine, OBLIQUE, atol=1e-5)
    np.testing.assert_allclose(img.header.get_qform(), OBLIQUE, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), labels.transpose(2, 1, 0))
    corners = np.array([[0.0, 0.0, 0.0], [19.0, 17.0, 13.0]])
    np.testing.assert_allclose(sitk_world_of(path, corners), [(OBLIQUE @ [*c, 1])[:3] for c in corners], atol=1e-3)


def test_a_damaged_label_map_is_not_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read-back catches a file that was written wrong without an error (here: one byte changed)."""
    from segflow.errors import OutputError
    from segflow.io import nifti_sink

    source = write_nifti(tmp_path / "in.nii.gz", cube_volume(), qform=(RAS, 1))
    real_open = gzip.GzipFile

    class Flipping(real_open):  # type: ignore[misc, valid-type]
        def write(self, data: Any) -> int:
            raw = bytearray(memoryview(data).cast("B"))
            if len(raw) > 100:
                raw[50] ^= 1
            return super().write(bytes(raw))

    monkeypatch.setattr(nifti_sink.gzip, "GzipFile", Flipping)
    package = threshold_package(tmp_path / "m")
    with pytest.raises(OutputError, match="does not read back as written"):
        run(source, tmp_path / "out", package)
    assert not (tmp_path / "out" / "labels.nii.gz").exists()
