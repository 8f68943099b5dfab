"""``labels.nii.gz`` written and read back in-process (segflow.io.nifti_sink): the header a label map gets
from an input's fields or from a volume geometry, its class table, the streamed voxels, and the read-back
check that refuses a file that does not hold what was written. End-to-end runs are in test_nifti.py."""

from __future__ import annotations

import gzip
import io
import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import pytest

from segflow.errors import OutputError
from segflow.geometry import VolumeGeometry
from segflow.io.dicom import open_dicom_series
from segflow.io.mask_store import MaskStore
from segflow.io.nifti import header_fields, open_nifti
from segflow.io.nifti_sink import (
    NIFTI_INTENT_LABEL,
    NiftiLabelSink,
    _slabs,
    build_header,
    header_from_geometry,
    nifti_label_sink,
    verify_nifti_labels,
    write_nifti_labels,
)
from segflow.io.readers import open_scene
from segflow.models.package import ModelSpec
from segflow.tiling import Box

from .helpers import random_image, write_geotiff
from .test_dicom import CT5N

SHAPE = (5, 4, 3)  # (z, y, x): NIfTI (i, j, k) = (3, 4, 5)
NAMES = ("background", "liver", "tumour")
COLORS: tuple[tuple[int, int, int] | None, ...] = (None, (200, 80, 0), (255, 255, 0))
# a sheared, translated (z, y, x, 1) -> RAS affine: columns z, y, x
ZYX_AFFINE = ((0.0, 0.3, 0.8, -12.5), (0.0, 0.9, 0.0, 4.0), (2.5, 0.0, 0.0, 30.25), (0.0, 0.0, 0.0, 1.0))


def _labels(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return (np.arange(math.prod(shape)).reshape(shape) % 3).astype(np.uint8)


def _store(tmp: Path, labels: np.ndarray, *, planes: np.ndarray | None = None) -> MaskStore:
    shape = labels.shape if planes is None else planes.shape[1:]
    store = MaskStore.create(tmp / "mask.zarr", shape, (2, *shape[1:]), NAMES, save_scores=False, attrs={},
                             thresholds=None if planes is None else [0.5] * len(NAMES))
    if planes is None:
        store.labels[:] = labels
    else:
        store.present[:] = planes
    return store


def _input_fields(version: int = 1, affine: np.ndarray | None = None, units: int = 2,
                  shape: tuple[int, ...] = SHAPE[::-1]) -> dict[str, Any]:
    """Header fields of an input image of (i, j, k) ``shape``."""
    hdr = nib.Nifti2Header() if version == 2 else nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    matrix = np.diag([0.5, 0.75, 2.0, 1.0]) if affine is None else affine
    if affine is None:
        matrix[:3, 3] = (-10.0, 20.0, -5.0)
    hdr.set_qform(matrix, code=2)
    hdr.set_sform(matrix, code=4)
    hdr["xyzt_units"] = units
    hdr["dim_info"] = 57
    return header_fields(hdr)


def _header(fields: dict[str, Any] | None = None, shape: tuple[int, ...] = SHAPE, **kw: Any) -> nib.Nifti1Header:
    return build_header(fields or _input_fields(), shape, NAMES, COLORS, "organs", **kw)


def _load(path: Path) -> nib.Nifti1Image:
    return cast(nib.Nifti1Image, nib.load(str(path)))


# ----------------------------------------------------------------------------- headers from a geometry


def test_a_volume_geometry_becomes_sform_and_qform_of_code_1_in_mm(tmp_path: Path) -> None:
    geometry = VolumeGeometry.from_matrix(ZYX_AFFINE, (2.5, 0.9, 0.8))
    fields = header_from_geometry(geometry, SHAPE)
    ijk = np.asarray(ZYX_AFFINE)[:, [2, 1, 0, 3]]  # NIfTI's i, j, k are the store's x, y, z
    assert fields["version"] == 1 and fields["shape"] == [3, 4, 5] and fields["dtype"] == "|u1"
    assert (fields["qform_code"], fields["sform_code"], fields["xyzt_units"]) == (1, 1, 2)  # 2: NIFTI_UNITS_MM
    np.testing.assert_allclose(fields["srow"], ijk[:3], rtol=1e-7)  # the sform keeps the shear
    store = _store(tmp_path, _labels())
    write_nifti_labels(store, tmp_path / "l.nii.gz", _header(fields))
    image = _load(tmp_path / "l.nii.gz")
    np.testing.assert_allclose(image.header.get_sform(), ijk, rtol=1e-7)
    qform = image.header.get_qform()  # shears dropped from the qform only: its columns stay orthogonal
    assert abs(float(qform[:3, 0] @ qform[:3, 1])) < 1e-6 and not np.allclose(qform, ijk)
    np.testing.assert_array_equal(np.asarray(image.dataobj), _labels().transpose(2, 1, 0))


@pytest.mark.parametrize(("columns", "version"), [(32767, 1), (32768, 2)])
def test_nifti_2_only_where_a_dimension_exceeds_nifti_1(columns: int, version: int) -> None:
    geometry = VolumeGeometry.from_matrix(np.eye(4).tolist(), (1.0, 1.0, 1.0))
    assert header_from_geometry(geometry, (1, 1, columns))["version"] == version
    assert header_from_geometry(geometry, (columns, 1, 1))["version"] == version


@pytest.mark.parametrize(("frame", "shape", "message"), [
    ("LPS", SHAPE, r"^volume affines are RAS\+ by convention, got frame 'LPS'$"),
    ("RAS", (4, 3), r"^a NIfTI label map needs a \(z, y, x\) volume, got shape \(4, 3\)$"),
])
def test_geometries_a_label_map_cannot_take_are_refused(frame: str, shape: tuple[int, ...], message: str) -> None:
    geometry = VolumeGeometry.from_matrix(np.eye(4).tolist(), (1.0, 1.0, 1.0), frame)
    with pytest.raises(ValueError, match=message):
        header_from_geometry(geometry, shape)


# ----------------------------------------------------------------------------- headers from an input's fields


def test_the_input_geometry_fields_are_copied_and_the_rest_says_labels(tmp_path: Path) -> None:
    turn = np.radians(30.0)  # a qform with a rotation: quaternion parameters that are not all zero
    rotated = np.array([[0.5 * np.cos(turn), -0.75 * np.sin(turn), 0.0, -10.0],
                        [0.5 * np.sin(turn), 0.75 * np.cos(turn), 0.0, 20.0], [0.0, 0.0, 2.0, -5.0], [0, 0, 0, 1]])
    fields = _input_fields(units=10, affine=rotated)  # mm and seconds
    assert min(abs(v) for v in fields["quatern"][2:]) > 0.2 and fields["qoffset"] == [-10.0, 20.0, -5.0]
    hdr = _header(fields)
    assert isinstance(hdr, nib.Nifti1Header) and not isinstance(hdr, nib.Nifti2Header)
    assert hdr.get_data_shape() == (3, 4, 5) and hdr.get_data_dtype() == np.uint8
    for key in ("qform_code", "sform_code", "xyzt_units", "dim_info"):
        assert int(hdr[key]) == fields[key], key
    np.testing.assert_array_equal(hdr["pixdim"], np.float32(fields["pixdim"]))
    np.testing.assert_array_equal([hdr[f"quatern_{a}"] for a in "bcd"], np.float32(fields["quatern"]))
    np.testing.assert_array_equal([hdr[f"qoffset_{a}"] for a in "xyz"], np.float32(fields["qoffset"]))
    np.testing.assert_array_equal([hdr[f"srow_{a}"] for a in "xyz"], np.float32(fields["srow"]))
    assert int(hdr["intent_code"]) == NIFTI_INTENT_LABEL == 1002 and hdr["intent_name"].item() == b"labels"
    assert (float(hdr["scl_slope"]), float(hdr["scl_inter"])) == (1.0, 0.0)
    write_nifti_labels(_store(tmp_path, _labels()), tmp_path / "l.nii.gz", hdr)
    image = _load(tmp_path / "l.nii.gz")
    assert image.header.get_slope_inter() == (None, None) and int(image.header["xyzt_units"]) == 10
    raw = nib.Nifti1Header.from_fileobj(io.BytesIO(gzip.decompress((tmp_path / "l.nii.gz").read_bytes())))
    assert (float(raw["scl_slope"]), float(raw["scl_inter"])) == (1.0, 0.0)  # nibabel's image shows them as None


def test_missing_numbers_are_written_as_zero() -> None:
    fields = _input_fields()
    fields["quatern"] = [None, 0.0, None]
    fields["pixdim"] = [1.0, None, 0.75, 2.0, 0.0, 0.0, 0.0, 0.0]
    hdr = _header(fields)
    assert [float(hdr[f"quatern_{a}"]) for a in "bcd"] == [0.0, 0.0, 0.0] and float(hdr["pixdim"][1]) == 0.0


def test_a_store_of_another_shape_than_the_input_is_refused() -> None:
    with pytest.raises(RuntimeError, match=r"^mask store \(z, y, x\) \(5, 4, 4\) does not match the NIfTI "
                                           r"input's \(i, j, k\) \(3, 4, 5\)$"):
        _header(shape=(5, 4, 4))
    with pytest.raises(RuntimeError, match=r"input's \(i, j, k\) \(3, 4, 5\)$"):  # a 4D input: its spatial axes
        _header(_input_fields(shape=(3, 4, 5, 2)), shape=(5, 4, 4))


@pytest.mark.parametrize(("version", "affine", "shape", "nifti2"), [
    (2, None, SHAPE[::-1], False),  # NIfTI-2 whose numbers are float32 and dimensions small: NIfTI-1
    (2, np.diag([0.1, 1.0, 1.0, 1.0]), SHAPE[::-1], True),  # 0.1 is not a float32: NIfTI-2 keeps it exactly
    (2, None, (3, 4, 32768), True),  # a dimension NIfTI-1 cannot hold
    (2, None, (3, 4, 32767), False),
    (1, None, (3, 4, 32767), False),
])
def test_nifti_2_inputs_give_nifti_1_where_it_holds_them_exactly(version: int, affine: np.ndarray | None,
                                                                 shape: tuple[int, ...], nifti2: bool) -> None:
    fields = _input_fields(version, None if affine is None else affine.copy(), shape=shape)
    hdr = _header(fields, shape=shape[::-1])
    assert isinstance(hdr, nib.Nifti2Header) == nifti2
    if nifti2 and affine is not None:
        assert float(hdr["pixdim"][1]) == 0.1 and float(hdr["srow_x"][0]) == 0.1  # float64 fields


def test_a_4d_input_gives_nifti_1_whatever_its_fourth_dimension() -> None:
    """Only the spatial dimensions are written: a NIfTI-2 series of 40000 volumes still gives a NIfTI-1 map."""
    fields = _input_fields(2, shape=(*SHAPE[::-1], 40000))
    assert fields["shape"][3] == 40000 and fields["version"] == 2
    assert type(_header(fields)) is nib.Nifti1Header


# ----------------------------------------------------------------------------- the class table


def test_descrip_lists_the_ids_and_the_extension_the_whole_table(tmp_path: Path) -> None:
    hdr = _header()
    assert hdr["descrip"].item() == b"segflow organs: 0 background; 1 liver; 2 tumour; 255 none"
    (extension,) = hdr.extensions
    assert extension.get_code() == 6  # NIFTI_ECODE_COMMENT
    content = extension.get_content()
    assert (len(content) + 8) % 16 == 0 and content.endswith(b" ")  # esize: padded with JSON whitespace
    assert json.loads(content) == {"segflow": {
        "labels": {"0": {"name": "background", "color": None}, "1": {"name": "liver", "color": [200, 80, 0]},
                   "2": {"name": "tumour", "color": [255, 255, 0]}},
        "nodata": 255, "model": "organs"}}
    write_nifti_labels(_store(tmp_path, _labels()), tmp_path / "l.nii.gz", hdr)
    (read,) = _load(tmp_path / "l.nii.gz").header.extensions
    assert json.loads(read.get_content())["segflow"]["labels"]["1"]["name"] == "liver"


def test_a_long_or_non_ascii_class_table_is_cut_in_descrip_and_whole_in_the_extension() -> None:
    names = ("fond", "Leber-Läsion", *(f"class number {n}" for n in range(2, 9)))
    hdr = build_header(_input_fields(), SHAPE, names, (None,) * len(names), "m")
    descrip = hdr["descrip"].item()
    assert len(descrip) == 79 and descrip.endswith(b"...")
    assert descrip.startswith(b"segflow m: 0 fond; 1 Leber-L?sion; 2")  # ASCII only: non-ASCII letters as '?'
    table = json.loads(hdr.extensions[0].get_content())["segflow"]["labels"]
    assert [table[str(n)]["name"] for n in range(len(names))] == list(names)
    assert '"Leber-Läsion"'.encode() in hdr.extensions[0].get_content()  # UTF-8 as such, legible in header dumps
    with pytest.raises(ValueError, match="zip"):
        build_header(_input_fields(), SHAPE, names, (None,) * (len(names) - 1), "m")  # a colour per class
    exactly = build_header(_input_fields(), SHAPE, ("a" * 56,), (None,), "m")["descrip"].item()
    assert exactly == b"segflow m: 0 " + b"a" * 56 + b"; 255 none"  # 79 bytes: not cut
    longer = build_header(_input_fields(), SHAPE, ("a" * 57,), (None,), "m")["descrip"].item()
    assert longer == b"segflow m: 0 " + b"a" * 57 + b"; 255 ..."  # 80 bytes: the first 76 and "..."


def test_a_multilabel_header_is_4d_with_one_volume_per_class_and_no_time_unit() -> None:
    fields = _input_fields(units=10)
    fields["pixdim"][4] = 2.5  # a repetition time: not the class axis's
    hdr = _header(fields, multilabel=True)
    assert hdr.get_data_shape() == (3, 4, 5, 3) and float(hdr["pixdim"][4]) == 1.0
    assert int(hdr["xyzt_units"]) == 2  # mm kept, seconds dropped
    assert hdr["descrip"].item() == b"segflow organs multi-label: t0 background; t1 liver; t2 tumour"
    table = json.loads(hdr.extensions[0].get_content())["segflow"]
    assert table["multilabel"] is True and table["values"] == {"0": "absent", "1": "present"}
    assert table["labels"]["2"] == {"name": "tumour", "color": [255, 255, 0]} and table["nodata"] == 255


# ----------------------------------------------------------------------------- the voxels


@pytest.mark.parametrize("slab_bytes", [1, 12, 25, 1 << 20])
def test_the_file_is_the_same_bytes_whatever_the_slabs(tmp_path: Path, slab_bytes: int) -> None:
    store = _store(tmp_path, _labels())
    write_nifti_labels(store, tmp_path / "a.nii.gz", _header(), slab_bytes=slab_bytes)
    write_nifti_labels(store, tmp_path / "b.nii.gz", _header())
    data = (tmp_path / "a.nii.gz").read_bytes()
    assert data == (tmp_path / "b.nii.gz").read_bytes()  # no name, mtime 0: the same labels, the same bytes
    assert data[3] == 0 and data[4:8] == b"\0\0\0\0"  # gzip FLG (no FNAME) and MTIME
    np.testing.assert_array_equal(np.asarray(_load(tmp_path / "a.nii.gz").dataobj), _labels().transpose(2, 1, 0))


def test_slabs_hold_as_many_slices_as_the_budget_allows_and_at_least_one() -> None:
    """Memory: a slice over the budget is read alone, never two at a time."""
    assert _slabs((5, 4, 3), 24) == [Box((0, 0, 0), (2, 4, 3)), Box((2, 0, 0), (4, 4, 3)), Box((4, 0, 0), (5, 4, 3))]
    assert _slabs((3, 4, 3), 11) == [Box((z, 0, 0), (z + 1, 4, 3)) for z in range(3)]  # a slice is 12 bytes
    assert _slabs((3, 1, 1), 2) == [Box((0, 0, 0), (2, 1, 1)), Box((2, 0, 0), (3, 1, 1))]  # one-voxel slices
    assert _slabs((2, 0, 3), 5) == [Box((0, 0, 0), (2, 0, 3))]  # no voxels: one slab of every slice


def test_a_multilabel_store_streams_class_after_class(tmp_path: Path) -> None:
    planes = np.stack([(_labels() == k).astype(np.uint8) for k in range(3)])
    planes[1, 0, 0, 0] = 255  # no prediction
    store = _store(tmp_path, _labels(), planes=planes)
    write_nifti_labels(store, tmp_path / "m.nii.gz", _header(multilabel=True), slab_bytes=12)
    data = np.asarray(_load(tmp_path / "m.nii.gz").dataobj)
    assert data.shape == (3, 4, 5, 3)
    np.testing.assert_array_equal(data, planes.transpose(3, 2, 1, 0))


def test_the_sink_writes_its_name_and_refuses_the_other_kind_of_store(tmp_path: Path) -> None:
    sink = NiftiLabelSink(_input_fields(), NAMES, COLORS, "organs")
    assert sink.entries == ("labels.nii.gz",)
    store = _store(tmp_path, _labels())
    assert sink.write(store, tmp_path) == tmp_path / "labels.nii.gz"
    assert _load(tmp_path / "labels.nii.gz").header["descrip"].item().startswith(b"segflow organs: 0 background")
    with pytest.raises(RuntimeError, match=r"^the sink is for multi-label masks but .*mask\.zarr is not$"):
        NiftiLabelSink(_input_fields(), NAMES, COLORS, multilabel=True).write(store, tmp_path)
    (tmp_path / "multi").mkdir()
    multi = _store(tmp_path / "multi", _labels(), planes=np.zeros((3, *SHAPE), dtype=np.uint8))
    with pytest.raises(RuntimeError, match=r"^the sink is for single-label masks but .*mask\.zarr is not$"):
        sink.write(multi, tmp_path)
    written = NiftiLabelSink(_input_fields(), NAMES, COLORS, "organs", name="o.nii.gz", multilabel=True)
    assert written.write(multi, tmp_path) == tmp_path / "o.nii.gz"
    assert _load(tmp_path / "o.nii.gz").shape == (3, 4, 5, 3)


def _model(multilabel: bool = False) -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "organs", "version": "3", "spatial_dims": 3, "weights": "m.ts", "tile": 8,
        "input": {"bands": [{"name": "ct"}]},
        "classes": [{"name": n, **({"color": list(c)} if c else {})} for n, c in zip(NAMES, COLORS, strict=True)],
        **({"output": {"activation": "sigmoid", "multilabel": True}} if multilabel else {})})


def test_a_nifti_inputs_sink_keeps_its_header_fields(tmp_path: Path) -> None:
    """A NIfTI input's own fields (its qform, units and dim_info), not fields rebuilt from its geometry."""
    image = nib.Nifti1Image(np.zeros(SHAPE[::-1], np.int16), None)
    affine = np.array([[0.5, 0.1, 0.0, -10.0], [0.0, 0.75, 0.0, 20.0], [0.0, 0.0, 2.0, -5.0], [0, 0, 0, 1.0]])
    image.set_qform(np.diag([0.5, 0.75, 2.0, 1.0]), code=2)
    image.set_sform(affine, code=4)
    image.header["dim_info"] = 57
    image.header["xyzt_units"] = 10  # mm and seconds
    nib.save(image, tmp_path / "ct.nii.gz")
    scene = open_nifti(tmp_path / "ct.nii.gz")
    sink = nifti_label_sink(scene, _model())
    assert sink.header is scene.meta["header"] and (sink.header["dim_info"], sink.header["qform_code"]) == (57, 2)
    assert sink.header != header_from_geometry(scene.volume, scene.spatial_shape)  # type: ignore[arg-type]
    assert (sink.class_names, sink.colors, sink.model, sink.multilabel) == (NAMES, COLORS, "organs", False)
    assert nifti_label_sink(scene, _model(multilabel=True)).multilabel
    written = _load(sink.write(_store(tmp_path, _labels()), tmp_path))
    assert (int(written.header["dim_info"]), int(written.header["xyzt_units"])) == (57, 10)
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (2, 4)
    np.testing.assert_array_equal(written.header.get_sform(), affine.astype(np.float32))  # NIfTI-1 stores float32


def test_other_volumes_get_their_geometrys_fields_and_rasters_are_refused(tmp_path: Path) -> None:
    scene = open_dicom_series(CT5N)
    assert scene.meta["format"] == "dicom"
    sink = nifti_label_sink(scene, _model())
    assert sink.header == header_from_geometry(scene.volume, scene.spatial_shape)  # type: ignore[arg-type]
    fake = replace(scene, meta={**scene.meta, "header": {"not": "used"}})  # only a NIfTI input's header is taken
    assert nifti_label_sink(fake, _model()).header == sink.header
    write_geotiff(tmp_path / "r.tif", random_image((2, 8, 8)))
    with pytest.raises(ValueError, match=r"^a NIfTI label map is made for volume scenes only$"):
        nifti_label_sink(open_scene(tmp_path / "r.tif"), _model())


# ----------------------------------------------------------------------------- reading back


def _written(tmp: Path, hdr: nib.Nifti1Header | None = None) -> tuple[Path, MaskStore, bytes, list[Box],
                                                                        nib.Nifti1Header]:
    hdr = hdr or _header()
    store = _store(tmp, _labels())
    path = tmp / "l.nii.gz"
    write_nifti_labels(store, path, hdr)
    with gzip.open(path) as stream:
        head = stream.read(int(hdr["vox_offset"]))
    boxes = [Box((z, 0, 0), (min(z + 2, 5), 4, 3)) for z in range(0, 5, 2)]
    return path, store, head, boxes, hdr


def _damaged(path: Path, detail: str) -> str:
    return (rf"^{re.escape(str(path))} does not read back as written \({detail}\); the disk may be full or "
            r"failing: check the filesystem and run again \(nothing was published\)$")


def test_a_file_that_holds_what_was_written_passes(tmp_path: Path) -> None:
    path, store, head, boxes, hdr = _written(tmp_path)
    assert len(head) == int(hdr["vox_offset"]) and int(hdr["vox_offset"]) % 16 == 0
    verify_nifti_labels(path, store, head, boxes, hdr)


def test_voxels_that_differ_are_counted_in_their_slab(tmp_path: Path) -> None:
    path, store, head, boxes, hdr = _written(tmp_path)
    store.labels[3, 1, 2] = 7
    store.labels[2, 0, 0] = 7
    with pytest.raises(OutputError, match=_damaged(path, "2 voxels differ from mask.zarr in z 2:4")):
        verify_nifti_labels(path, store, head, boxes, hdr)


def test_a_different_header_is_refused(tmp_path: Path) -> None:
    path, store, head, boxes, hdr = _written(tmp_path)
    with pytest.raises(OutputError, match=_damaged(path, "the header differs from the one written")):
        verify_nifti_labels(path, store, head[:-1] + b"\1", boxes, hdr)


def _rewrite(path: Path, content: bytes) -> None:
    path.write_bytes(gzip.compress(content, mtime=0))


def test_missing_and_extra_voxels_are_refused(tmp_path: Path) -> None:
    path, store, head, boxes, hdr = _written(tmp_path)
    content = gzip.decompress(path.read_bytes())
    _rewrite(path, content + b"\0")
    with pytest.raises(OutputError, match=_damaged(path, "bytes after the last voxel")):
        verify_nifti_labels(path, store, head, boxes, hdr)
    short = bytearray(content[:-5])  # the last slab (z 4:5, 12 voxels) lacks 5, and 1 of its first 7 differs
    short[-1] ^= 1
    _rewrite(path, bytes(short))
    with pytest.raises(OutputError, match=_damaged(path, "6 voxels differ from mask.zarr in z 4:5")):
        verify_nifti_labels(path, store, head, boxes, hdr)


@pytest.mark.parametrize(("damage", "detail"), [
    (lambda data: data[:-12], "Compressed file ended before the end-of-stream marker was reached"),
    (lambda data: data[:-8] + b"\0\0\0\0" + data[-4:], r"CRC check failed 0x0 != 0x[0-9a-f]+"),
    (lambda data: b"not gzip" + data, r"Not a gzipped file \(b'no'\)"),
])
def test_a_damaged_gzip_stream_is_refused(tmp_path: Path, damage: Any, detail: str) -> None:
    path, store, head, boxes, hdr = _written(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(OutputError, match=_damaged(path, detail)):
        verify_nifti_labels(path, store, head, boxes, hdr)


def test_what_nibabel_reads_is_checked_against_the_header(tmp_path: Path) -> None:
    """Headers whose bytes were written as given but which do not describe the store: nibabel's view is checked."""
    store = _store(tmp_path, _labels())
    boxes = [Box((0, 0, 0), SHAPE)]
    cases: list[tuple[nib.Nifti1Header, str]] = []
    turned = _header()
    turned.set_data_shape((4, 3, 5))
    cases.append((turned, r"nibabel reads shape \(4, 3, 5\), expected \(3, 4, 5\)"))
    signed = _header()
    signed.set_data_dtype(np.int8)
    cases.append((signed, r"nibabel reads dtype \|i1, expected \|u1"))
    for n, (hdr, detail) in enumerate(cases):
        path = tmp_path / f"{n}.nii.gz"
        with pytest.raises(OutputError, match=_damaged(path, detail)):
            write_nifti_labels(store, path, hdr)
    (tmp_path / "w").mkdir()
    path, store, head, boxes, hdr = _written(tmp_path / "w")
    codes = _header()
    codes["qform_code"] = 1
    with pytest.raises(OutputError, match=_damaged(path, r"nibabel reads qform/sform codes \(2, 4\), expected "
                                                         r"\(1, 4\)")):
        verify_nifti_labels(path, store, head, boxes, codes)
    moved = _header()
    moved["srow_x"] = [0.5, 0.0, 0.0, -9.0]
    with pytest.raises(OutputError, match=_damaged(path, r"nibabel reads the affine \[\[0\.5, 0\.0, 0\.0, -10\.0\], "
                                                         r".*\], expected \[\[0\.5, 0\.0, 0\.0, -9\.0\], .*\]")):
        verify_nifti_labels(path, store, head, boxes, moved)
