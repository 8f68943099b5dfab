"""The NIfTI reader in-process (segflow.io.nifti), piece by piece, every message in full.

test_nifti.py checks whole volumes end to end (world coordinates against SimpleITK, nibabel's
own test images, refusals through the CLI); here: names, the header fields a label map copies,
the slab reader's indexing, the slab size, the dask name, the scene's meta and scaling per
channel, and each refusal's exact line.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segflow.errors import InputError
from segflow.io.nifti import SLAB_BYTES, _one_line, _SlabReader, header_fields, is_nifti_name, open_nifti
from tests.test_nifti import LPS, OBLIQUE, RAS, SHAPE, affine, cube_volume, raw_header, write_nifti


def refused(message: str) -> pytest.RaisesContext[InputError]:
    return pytest.raises(InputError, match=f"^{re.escape(message)}$")


def test_nifti_names() -> None:
    for name in ("a.nii", "a.nii.gz", "A.NII", "b/A.Nii.Gz", Path("x.nii.gz")):
        assert is_nifti_name(name), name
    for name in ("a.nii.bz2", "a.gz", "a.niigz", "a.tif", "nii", "a.nii.gz.tmp"):
        assert not is_nifti_name(name), name


def test_one_line_of_an_exception() -> None:
    assert _one_line(ValueError("a\n  b\tc ")) == "a b c"
    assert _one_line(ValueError("x" * 400)) == "x" * 300
    assert _one_line(EOFError()) == "EOFError"
    assert _one_line(OSError("  ")) == "OSError"


def test_header_fields(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "h.nii", np.zeros((2, 3, 4), np.int16), qform=(LPS, 2), sform=(OBLIQUE, 4),
                       slope=2.0, inter=-3.0, fields={"dim_info": 57})
    hdr = raw_header(path)
    fields = header_fields(hdr)
    assert fields == {
        "version": 1, "shape": [2, 3, 4], "dtype": "<i2", "datatype": 4,
        "pixdim": [float(v) for v in hdr["pixdim"]], "xyzt_units": 10, "dim_info": 57, "qform_code": 2,
        "quatern": [float(hdr[f"quatern_{a}"]) for a in "bcd"], "qoffset": [40.0, 12.5, -30.0], "sform_code": 4,
        "srow": [[float(v) for v in hdr[f"srow_{a}"]] for a in "xyz"],
        "affine": [[float(v) for v in row] for row in hdr.get_best_affine()], "scl_slope": 2.0, "scl_inter": -3.0}
    assert fields["pixdim"][1:4] == pytest.approx([0.8, 0.8, 2.5])
    np.testing.assert_allclose(fields["srow"], OBLIQUE[:3], atol=1e-6)
    np.testing.assert_allclose(fields["affine"], OBLIQUE, atol=1e-6)
    assert all(type(v) is float for v in [*fields["pixdim"], *fields["quatern"], *fields["qoffset"]])


def test_header_fields_of_nifti2_big_endian_unscaled_and_non_finite(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "h.nii", np.zeros((2, 3, 4, 5), np.float32), qform=(RAS, 1), version=2,
                       fields={"srow_y": [0.0, np.nan, np.inf, 1.0], "scl_slope": np.nan})
    fields = header_fields(raw_header(path))
    assert (fields["version"], fields["shape"], fields["dtype"], fields["datatype"]) == (2, [2, 3, 4, 5], "<f4", 16)
    big = write_nifti(tmp_path / "b.nii", np.zeros((2, 3, 4), np.int16), qform=(RAS, 1), endian=">", dtype=">i2")
    assert (header_fields(raw_header(big))["dtype"], header_fields(raw_header(big))["version"]) == (">i2", 1)
    assert (fields["scl_slope"], fields["scl_inter"], fields["sform_code"]) == (None, None, 0)
    assert fields["srow"][1] == [0.0, None, None, 1.0]


def test_the_slab_reader_indexes_like_numpy(tmp_path: Path) -> None:
    data = np.arange(np.prod(SHAPE), dtype=">i2").reshape(SHAPE)
    path = write_nifti(tmp_path / "r.nii", data, qform=(RAS, 1), dtype=">i2", endian=">")
    offset = int(nib.load(path).dataobj.offset)  # type: ignore[attr-defined]
    reader = _SlabReader(str(path), SHAPE, np.dtype(">i2"), offset, None)
    want = data.transpose(2, 1, 0)[np.newaxis].astype("=i2")
    assert reader.shape == (1, 14, 18, 20) and reader.ndim == 4 and reader.dtype == np.dtype("=i2")
    for key in [(0, 3), (slice(None), slice(2, 5), 4), (0, slice(1, 3), slice(None), 7), 0, (slice(0, 1),),
                (0, 13, 17, 19), (slice(None), slice(None), slice(2, 9, 3), slice(None, None, 2))]:
        got = reader[key]
        assert got.dtype == np.dtype("=i2") and got.dtype.isnative, key
        np.testing.assert_array_equal(got, want[key], err_msg=str(key))


@pytest.mark.parametrize(("shape", "axis"), [((*SHAPE, 3), 3), ((*SHAPE, 1, 3), 4), ((*SHAPE, 2, 1), 3)])
def test_the_slab_reader_takes_channels_from_their_axis(tmp_path: Path, shape: tuple[int, ...], axis: int) -> None:
    data = np.arange(np.prod(shape), dtype="<f4").reshape(shape)
    path = write_nifti(tmp_path / "c.nii", data, qform=(RAS, 1))
    offset = int(nib.load(path).dataobj.offset)  # type: ignore[attr-defined]
    reader = _SlabReader(str(path), shape, np.dtype("<f4"), offset, axis)
    channels = shape[axis]
    want = np.moveaxis(data.reshape(*SHAPE, channels), 3, 0).transpose(0, 3, 2, 1)
    assert reader.shape == (channels, 14, 18, 20)
    for key in [(1, 3), (slice(None), slice(2, 5)), (0,), (slice(1, 2), 0, 0, 0), (1, slice(None), 4, slice(3, 8))]:
        np.testing.assert_array_equal(reader[key], want[key], err_msg=str(key))


def test_slabs_default_to_64_mib_compressed_and_16_uncompressed(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import segflow.io.nifti as nifti

    plane = SHAPE[0] * SHAPE[1] * 4
    monkeypatch.setattr(nifti, "SLAB_BYTES", 8 * plane)
    gz = write_nifti(tmp_path / "a.nii.gz", cube_volume(), qform=(RAS, 1))
    plain = write_nifti(tmp_path / "a.nii", cube_volume(), qform=(RAS, 1))
    assert open_nifti(gz).data.chunks[1] == (8, 6) and open_nifti(gz).meta["slab"] == 8
    assert open_nifti(plain).data.chunks[1] == (2,) * 7
    assert open_nifti(plain, slab_bytes=5 * plane).data.chunks[1] == (5, 5, 4)
    assert open_nifti(plain, slab_bytes=plane - 1).data.chunks[1] == (1,) * 14
    assert open_nifti(plain, slab_bytes=100 * plane).data.chunks[1] == (14,)
    four = write_nifti(tmp_path / "c.nii", np.zeros((*SHAPE, 3), np.float32), qform=(RAS, 1))
    assert open_nifti(four, slab_bytes=3 * plane * 2).data.chunks == ((3,), (2,) * 7, (18,), (20,))
    assert SLAB_BYTES == 64 << 20


def test_the_scene_meta_band_names_and_dask_name(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "m.nii.gz", np.zeros((*SHAPE, 2), np.int16), qform=(RAS, 1), slope=0.5, inter=3.0)
    scene = open_nifti(path)
    assert scene.meta == {"format": "nifti", "header": header_fields(raw_header(path)), "compressed": True,
                          "slab": 14}
    assert scene.band_names == ("band1", "band2") and scene.source == str(path) and scene.axes == "CZYX"
    assert scene.scales == (0.5, 0.5) and scene.offsets == (3.0, 3.0)
    assert scene.data.name.startswith("nifti-") and scene.data.dtype == np.int16
    assert open_nifti(path).data.name == scene.data.name
    assert open_nifti(path, slab_bytes=SHAPE[0] * SHAPE[1] * 2).data.name != scene.data.name
    os.utime(path, ns=(1, 1))
    assert open_nifti(path).data.name != scene.data.name
    plain = write_nifti(tmp_path / "m.nii", np.zeros(SHAPE, np.uint8), qform=(RAS, 1), fields={"scl_slope": np.nan})
    assert open_nifti(plain).meta["compressed"] is False
    assert open_nifti(plain).scales == () and open_nifti(plain).offsets == ()
    stated = write_nifti(tmp_path / "s.nii", np.zeros(SHAPE, np.uint8), qform=(RAS, 1), slope=1.0, inter=0.0)
    assert open_nifti(stated).scales == (1.0,) and open_nifti(stated).offsets == (0.0,)  # as nibabel's header says


def test_an_intercept_without_a_slope_is_not_scaling(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "i.nii", np.zeros(SHAPE, np.int16), qform=(RAS, 1), slope=1.0, inter=-5.0)
    scene = open_nifti(path)
    assert scene.scales == (1.0,) and scene.offsets == (-5.0,)


def test_a_singular_sform_is_refused(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "s.nii", np.zeros(SHAPE, np.int16), sform=(affine(np.diag([1.0, 0.0, 1.0]),
                                                                                    (0, 0, 0)), 1))
    with refused(f"{path}: its voxel-to-world affine (from the sform) is singular (columns [[1.,0.,0.], [0.,0.,0.], "
                 "[0.,0.,1.]], determinant 0): voxels have no volume in the world; fix the header's qform/sform (e.g. "
                 "nibabel img.set_sform(affine, code=1)) and save it again"):
        open_nifti(path)


@pytest.mark.parametrize(("which", "opts"), [
    ("qform", {"qform": (RAS, 1), "fields": {"qoffset_x": np.nan}}),
    ("pixdim (no qform/sform code)", {"fields": {"pixdim": [1, 1, np.inf, 1, 1, 1, 1, 1]}}),
])
def test_a_non_finite_affine_names_its_source(tmp_path: Path, which: str, opts: dict[str, object]) -> None:
    path = write_nifti(tmp_path / "s.nii", np.zeros(SHAPE, np.int16), **opts)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: its voxel-to-world affine \(from the "
                                         rf"{re.escape(which)}\) is not finite: \[\[.*\]\]; fix the header's "
                                         r"qform/sform \(e\.g\. nibabel img\.set_sform\(affine, code=1\)\) and save it "
                                         r"again$"):
        open_nifti(path)


def test_a_nearly_singular_affine_is_refused_and_a_thin_one_is_not(tmp_path: Path) -> None:
    thin = write_nifti(tmp_path / "t.nii", np.zeros(SHAPE, np.int16), sform=(affine(np.diag([1.0, 1.0, 2e-6]),
                                                                                       (0, 0, 0)), 1))
    assert open_nifti(thin).volume.spacing[0] == pytest.approx(2e-6)  # type: ignore[union-attr]
    flat = np.eye(3)
    flat[:, 2] = [1.0, 0.0, 1e-7]  # a column nearly parallel to the first
    path = write_nifti(tmp_path / "f.nii", np.zeros(SHAPE, np.int16), sform=(affine(flat, (0, 0, 0)), 1))
    with pytest.raises(InputError, match=r"is singular .*determinant 1e-07\)"):
        open_nifti(path)


def test_a_non_finite_affine_is_printed_on_one_line(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "f.nii", np.zeros(SHAPE, np.int16), sform=(RAS, 1),
                       fields={"srow_y": [0.0, 1.0, 0.0, np.nan]})
    with refused(f"{path}: its voxel-to-world affine (from the sform) is not finite: [[  1.,  0.,  0.,-10.], "
                 "[  0.,  1.,  0., nan], [  0.,  0.,  1., -5.], [  0.,  0.,  0.,  1.]]; fix the header's qform/sform "
                 "(e.g. nibabel img.set_sform(affine, code=1)) and save it again"):
        open_nifti(path)


@pytest.mark.parametrize(("fields", "cause"), [
    ({"quatern_b": 2.0, "quatern_c": 0.0, "quatern_d": 0.0}, "w2 should be positive, but is -3.000000e+00"),
    ({"scl_slope": 2.0, "scl_inter": np.inf}, "Valid slope but invalid intercept inf"),
    ({"datatype": 999}, "data code 999 not recognized"),
])
def test_a_header_nibabel_cannot_use_is_refused_with_its_cause(tmp_path: Path, fields: dict[str, object],
                                                               cause: str) -> None:
    path = write_nifti(tmp_path / "q.nii", np.zeros(SHAPE, np.int16), qform=(RAS, 1))
    hdr = raw_header(path)
    for key, value in fields.items():
        hdr[key] = value
    path.write_bytes(hdr.binaryblock + path.read_bytes()[348:])
    with refused(f"{path}: its header cannot be used ({cause}); fix the header (qform/sform, datatype, "
                 "scl_slope/scl_inter) and save it again"):
        open_nifti(path)


def test_file_refusals_in_full(tmp_path: Path) -> None:
    with refused(f"input file not found: {tmp_path / 'no.nii'}; check the path"):
        open_nifti(tmp_path / "no.nii")
    (tmp_path / "d.nii").mkdir()
    with refused(f"{tmp_path / 'd.nii'}: is not a file; pass a .nii or .nii.gz NIfTI file"):
        open_nifti(tmp_path / "d.nii")
    (tmp_path / "e.nii").write_bytes(b"")
    with refused(f"{tmp_path / 'e.nii'}: is empty (0 bytes); re-create or re-download it"):
        open_nifti(tmp_path / "e.nii")
    good = write_nifti(tmp_path / "g.nii.gz", cube_volume(), qform=(RAS, 1))
    (tmp_path / "g.nii").write_bytes(good.read_bytes())
    with refused(f"{tmp_path / 'g.nii'}: is gzip-compressed but named .nii; rename it to .nii.gz"):
        open_nifti(tmp_path / "g.nii")
    (tmp_path / "G.NII.GZ").write_bytes(gzip.decompress(good.read_bytes()))
    with refused(f"{tmp_path / 'G.NII.GZ'}: is named .nii.gz but is not gzip-compressed; rename it to .nii if it is "
                 "NIfTI"):
        open_nifti(tmp_path / "G.NII.GZ")
    (tmp_path / "u.NII.GZ").write_bytes(good.read_bytes())
    assert open_nifti(tmp_path / "u.NII.GZ").meta["compressed"] is True


def test_a_cut_or_corrupt_stream_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import segflow.io.nifti as nifti

    good = write_nifti(tmp_path / "g.nii.gz", cube_volume(), qform=(RAS, 1)).read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(good[: len(good) // 2])
    with refused(f"{tmp_path / 'cut.nii.gz'}: the gzip stream is truncated or corrupt (Python's gzip: Compressed file "
                 "ended before the end-of-stream marker was reached); re-create or re-download the file"):
        open_nifti(tmp_path / "cut.nii.gz")
    bad = bytearray(good)
    bad[-8] ^= 0xFF  # the CRC
    (tmp_path / "crc.nii.gz").write_bytes(bytes(bad))
    with pytest.raises(InputError, match=r"crc\.nii\.gz: the gzip stream is truncated or corrupt \(Python's gzip: CRC "
                                         r"check failed"):
        open_nifti(tmp_path / "crc.nii.gz")
    monkeypatch.setattr(nifti, "_PIECE", 7)  # read by small pieces: the same size
    assert nifti._gzip_payload_size(tmp_path / "g.nii.gz") == len(gzip.decompress(good))


def test_the_check_at_open_decompresses_by_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory does not grow with the file: the stream is read 4 MiB at a time, never whole."""
    import segflow.io.nifti as nifti

    sizes: list[object] = []
    real = gzip.open

    def recording(*args: object, **kwargs: object) -> object:
        stream = real(*args, **kwargs)  # type: ignore[call-overload]
        read = stream.read

        def counted(size: object = -1) -> bytes:
            sizes.append(size)
            return read(size)

        stream.read = counted
        return stream

    monkeypatch.setattr(nifti.gzip, "open", recording)
    path = write_nifti(tmp_path / "g.nii.gz", cube_volume(), qform=(RAS, 1))
    assert nifti._gzip_payload_size(path) == len(gzip.decompress(path.read_bytes()))
    assert sizes == [4 << 20, 4 << 20]  # the payload, then the end


def test_a_truncated_payload_says_what_is_needed(tmp_path: Path) -> None:
    data = write_nifti(tmp_path / "t.nii", cube_volume(), qform=(RAS, 1)).read_bytes()
    (tmp_path / "t.nii").write_bytes(data[:-1])
    need = 352 + int(np.prod(SHAPE)) * 4
    with refused(f"{tmp_path / 't.nii'}: is truncated: its size is {need - 1} bytes but the header's 20x18x14 float32 "
                 f"voxels from byte 352 need {need}; re-create or re-download the file"):
        open_nifti(tmp_path / "t.nii")
    (tmp_path / "t.nii.gz").write_bytes(gzip.compress(data[:-1]))
    with refused(f"{tmp_path / 't.nii.gz'}: is truncated: its decompressed size is {need - 1} bytes but the header's "
                 f"20x18x14 float32 voxels from byte 352 need {need}; re-create or re-download the file"):
        open_nifti(tmp_path / "t.nii.gz")
    (tmp_path / "x.nii").write_bytes(data + b"\0" * 10)  # longer is fine
    assert open_nifti(tmp_path / "x.nii").data.shape == (1, 14, 18, 20)


def test_shape_and_type_refusals_in_full(tmp_path: Path) -> None:
    flat = write_nifti(tmp_path / "f.nii", np.zeros((20, 18), np.int16), qform=(RAS, 1))
    with refused(f"{flat}: is a 2D NIfTI image (shape (20, 18)); segflow reads NIfTI files as volumes; for a 3D model "
                 "save it as a volume of one slice (shape (20, 18, 1)), for a 2D model convert it to a GeoTIFF"):
        open_nifti(flat)
    empty = write_nifti(tmp_path / "e.nii", np.zeros(SHAPE, np.int16), qform=(RAS, 1),
                        fields={"dim": [3, 20, 0, 14, 1, 1, 1, 1]})
    with refused(f"{empty}: has a dimension of size 0 (shape (20, 0, 14)); re-create the file with every dimension "
                 ">= 1"):
        open_nifti(empty)
    two = write_nifti(tmp_path / "tv.nii", np.zeros((*SHAPE, 1, 2, 3), np.int16), qform=(RAS, 1))
    with refused(f"{two}: has shape (20, 18, 14, 1, 2, 3): 2 non-spatial dimensions larger than 1 (dims 5, 6) but "
                 "segflow reads one channel dimension; keep one, e.g. one time point: nibabel img.slicer[..., t, :]"):
        open_nifti(two)
    complex_ = write_nifti(tmp_path / "c.nii", np.zeros(SHAPE, np.complex64), qform=(RAS, 1))
    with refused(f"{complex_}: holds complex64 voxels, not one real number per voxel; convert it, e.g. complex to "
                 "magnitude, RGB to a 4th dimension of 3 channels"):
        open_nifti(complex_)
    line = write_nifti(tmp_path / "l.nii", np.zeros(20, np.int16), qform=(RAS, 1))
    with pytest.raises(InputError, match=re.escape("is a 1D NIfTI image (shape (20,)); segflow reads NIfTI files as "
                                                   "volumes; for a 3D model save it as a volume of one slice (shape "
                                                   "(20, 1, 1)), for a 2D model")):
        open_nifti(line)
    for shape in ((*SHAPE, 1), (*SHAPE, 1, 1, 1)):  # one volume stored 4D or more: one channel
        data = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(shape)
        scene = open_nifti(write_nifti(tmp_path / f"one{len(shape)}.nii", data, qform=(RAS, 1)))
        assert scene.data.shape == (1, 14, 18, 20) and scene.band_names == ("band1",)
        np.testing.assert_array_equal(scene.data.compute()[0], data.reshape(SHAPE).transpose(2, 1, 0))
    assert open_nifti(write_nifti(tmp_path / "b.nii", np.zeros(SHAPE, np.uint8), qform=(RAS, 1))).data.dtype == np.uint8


def test_a_file_nibabel_cannot_read_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.nii").write_bytes(b"\0" * 400)
    with refused(f"{tmp_path / 'x.nii'}: is not a NIfTI-1/NIfTI-2 image nibabel can read (Cannot work out file type of "
                 f'"{tmp_path / "x.nii"}"); expected a .nii or .nii.gz NIfTI file'):
        open_nifti(tmp_path / "x.nii")


def test_a_cifti2_file_is_refused_as_not_a_volume_image(tmp_path: Path) -> None:
    from nibabel import cifti2

    brain = cifti2.BrainModelAxis.from_mask(np.ones((2, 2, 2), bool), affine=np.eye(4))
    path = tmp_path / "c.dscalar.nii"
    image = cifti2.Cifti2Image(np.zeros((1, len(brain)), np.float32), header=(cifti2.ScalarAxis(["a"]), brain))
    image.to_filename(path)
    with refused(f"{path}: is a Cifti2Image, not a single-file NIfTI image; convert it to NIfTI (.nii or .nii.gz)"):
        open_nifti(path)
