"""The DICOM series reader in-process (segflow.io.dicom, segflow.io._dicom_series): headers, grid checks, names.

test_dicom.py checks whole series against SimpleITK and the refusals through the CLI; here each
piece is checked on its own, with every message in full: what a header yields (defaults
included), each check's threshold on both sides, the slice order and affine of the grid, the
voxel type of rescaled values at int16's bounds, input names, folder scanning and the
per-slice reader.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from segflow.errors import InputError
from segflow.io._dicom_series import (
    SEG_SOP_CLASS,
    Image,
    check_uniform,
    looks_dicom,
    read_header,
    sorted_geometry,
    value_type,
)
from segflow.io.dicom import (
    SeriesInfo,
    _identity,
    _listing,
    _parse_name,
    _SliceReader,
    dicom_series_name,
    is_dicom_input,
    list_series,
    open_dicom_input,
    open_dicom_series,
)
from tests.test_dicom import TEST_FILES, hu_volume, write_series

WHERE = "DICOM series 1.2 in /d"


def image(**fields: object) -> Image:
    """An axial slice header at z = 0 (1 mm pixels, 8 x 6), with ``fields`` replaced."""
    base = Image(path=Path("/d/a"), shown="a", series_uid="1.2", sop_uid="1.2.3", modality="CT", description="",
                 is_image=True, frames=1, position=(0.0, 0.0, 0.0), orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
                 rows=6, cols=8, pixel_spacing=(1.0, 1.0), slope=1.0, intercept=0.0, bits_stored=16, signed=True,
                 samples=1, transfer_syntax="", frame_of_reference="9.9", study_uid="7.7", sop_class="", units="HU",
                 modality_lut=False, gantry_tilt=0.0)
    return replace(base, **fields)  # type: ignore[arg-type]


def stack(depths: list[float], **fields: object) -> list[Image]:
    """Axial slices at z = ``depths`` (named s0, s1, ... in that order)."""
    return [image(position=(0.0, 0.0, z), shown=f"s{k}", sop_uid=f"1.2.{k}", **fields) for k, z in enumerate(depths)]


def refused(message: str) -> pytest.RaisesContext[InputError]:
    return pytest.raises(InputError, match=f"^{re.escape(message)}$")


def dataset(**fields: object) -> Dataset:
    """A minimal CT header with a file meta group; ``fields`` set, deleted (value None) or given another VR
    (value ``(vr, value)``: text where DICOM wants numbers)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = "1.2.5", "1.2.6", "1.2.7"
    ds.Modality, ds.Rows, ds.Columns = "CT", 4, 5
    for key, value in fields.items():
        if value is None:
            delattr(ds, key)
        elif isinstance(value, tuple):
            ds.add_new(pydicom.datadict.tag_for_keyword(key), *value)
        else:
            setattr(ds, key, value)
    return ds


def header(tmp_path: Path, **fields: object) -> Image | None:
    path = tmp_path / "sub" / "x.dcm"
    path.parent.mkdir(exist_ok=True)
    dataset(**fields).save_as(path, enforce_file_format=True)
    return read_header(path, tmp_path)


# ----------------------------------------------------------------------------- headers


def test_looks_dicom_by_the_marker_or_a_bare_dataset(tmp_path: Path) -> None:
    cases = {"marker": b"\0" * 128 + b"DICM" + b"\0" * 8, "group8": b"\x08\x00\x05\x00CS", "group2": b"\x02\x00\x00",
             "short": b"DICM", "text": b"hello world" * 20, "late": b"\0" * 129 + b"DICM"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    assert {n: looks_dicom(tmp_path / n) for n in cases} == {"marker": True, "group8": True, "group2": True,
                                                            "short": False, "text": False, "late": False}
    assert not looks_dicom(tmp_path / "missing")
    assert not looks_dicom(tmp_path)  # a folder: OSError


def test_a_header_yields_its_fields(tmp_path: Path) -> None:
    got = header(tmp_path, SeriesDescription="  chest \t w/o  contrast ", ImagePositionPatient=[1, 2.5, -3],
                 ImageOrientationPatient=[0, 1, 0, 0, 0, -1], PixelSpacing=[0.7, 0.8], RescaleSlope="2",
                 RescaleIntercept="-1024", BitsAllocated=16, BitsStored=12, PixelRepresentation=1, SamplesPerPixel=1,
                 GantryDetectorTilt="7.5", NumberOfFrames=1, RescaleType="HU")
    assert got == Image(
        path=tmp_path / "sub" / "x.dcm", shown=os.path.join("sub", "x.dcm"), series_uid="1.2.5", sop_uid="1.2.3.4",
        modality="CT", description="chest w/o contrast", is_image=True, frames=1, position=(1.0, 2.5, -3.0),
        orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0), rows=4, cols=5, pixel_spacing=(0.7, 0.8), slope=2.0,
        intercept=-1024.0, bits_stored=12, signed=True, samples=1, transfer_syntax=ExplicitVRLittleEndian,
        frame_of_reference="1.2.7", study_uid="1.2.6", sop_class="1.2.840.10008.5.1.4.1.1.2", units="HU",
        modality_lut=False, gantry_tilt=7.5)


def test_a_header_without_optional_fields_gets_the_defaults(tmp_path: Path) -> None:
    got = header(tmp_path, Modality="MR", StudyInstanceUID=None, FrameOfReferenceUID=None)
    assert got is not None
    assert (got.description, got.frames, got.position, got.orientation, got.pixel_spacing, got.slope,
            got.intercept, got.bits_stored, got.signed, got.samples, got.frame_of_reference, got.study_uid,
            got.units, got.modality_lut, got.gantry_tilt) == ("", 1, None, None, None, 1.0, 0.0, 16, False, 1, "",
                                                              "", "", False, 0.0)
    assert header(tmp_path, BitsAllocated=8).bits_stored == 8  # type: ignore[union-attr]  # no BitsStored
    assert header(tmp_path, BitsStored=10, BitsAllocated=16).bits_stored == 10  # type: ignore[union-attr]
    assert header(tmp_path).units == "HU"  # type: ignore[union-attr]  # CT without RescaleType
    assert header(tmp_path, Modality="PT", RescaleType="BQML").units == "BQML"  # type: ignore[union-attr]
    assert header(tmp_path, NumberOfFrames=4).frames == 4  # type: ignore[union-attr]
    assert header(tmp_path, SOPClassUID=None).sop_class == ""  # type: ignore[union-attr]
    assert header(tmp_path, SamplesPerPixel=3).samples == 3  # type: ignore[union-attr]
    assert header(tmp_path, PixelRepresentation=0).signed is False  # type: ignore[union-attr]
    lut = Dataset()
    lut.LUTDescriptor, lut.ModalityLUTType = [2, 0, 16], "HU"
    assert header(tmp_path, ModalityLUTSequence=[lut]).modality_lut is True  # type: ignore[union-attr]


def test_empty_values_get_the_defaults(tmp_path: Path) -> None:
    got = header(tmp_path, NumberOfFrames=("IS", None), BitsStored=("US", None), BitsAllocated=("US", None),
                 SamplesPerPixel=("US", None), PixelRepresentation=("US", None), Rows=("US", None))
    assert got is not None
    assert (got.frames, got.bits_stored, got.samples, got.signed, got.rows) == (1, 16, 1, False, 0)


def test_what_is_an_image(tmp_path: Path) -> None:
    assert header(tmp_path).is_image  # type: ignore[union-attr]
    assert header(tmp_path, Rows=1, Columns=1).is_image  # type: ignore[union-attr]
    for fields in ({"Rows": 0}, {"Columns": 0}, {"Rows": None}, {"Columns": None}, {"Modality": "SEG"},
                   {"SOPClassUID": SEG_SOP_CLASS}):
        got = header(tmp_path, **fields)
        assert got is not None and not got.is_image, fields
    assert header(tmp_path, Modality=None).modality == ""  # type: ignore[union-attr]


def test_objects_without_a_series_or_an_instance_are_passed_over(tmp_path: Path) -> None:
    assert header(tmp_path, SeriesInstanceUID=None) is None
    assert header(tmp_path, SeriesInstanceUID="") is None
    (tmp_path / "sub" / "notes.txt").write_text("not DICOM\n" * 30)
    assert read_header(tmp_path / "sub" / "notes.txt", tmp_path) is None
    path = tmp_path / "no-sop.dcm"
    ds = dataset()
    del ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=False)
    assert read_header(path, tmp_path) is None


def test_a_bare_dataset_without_preamble_is_read(tmp_path: Path) -> None:
    path = tmp_path / "bare"
    ds = dataset()
    del ds.file_meta
    ds.save_as(path, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[:2] == b"\x08\x00"
    got = read_header(path, tmp_path)
    assert got is not None and got.sop_uid == "1.2.3.4" and got.transfer_syntax == ""


@pytest.mark.filterwarnings("ignore:Expected implicit VR")
def test_a_damaged_dicom_file_is_refused_with_its_cause(tmp_path: Path) -> None:
    good = tmp_path / "good.dcm"
    dataset(SeriesDescription="x" * 40).save_as(good, enforce_file_format=True)
    bad = tmp_path / "bad.dcm"
    data = good.read_bytes()
    bad.write_bytes(data[:132] + b"\x02\x00\x00\x00ZZ\x04\x00" + data[140:])  # an unknown VR in the first element
    with refused(f"{bad} is a DICOM file pydicom cannot read (NotImplementedError: Unknown Value Representation 'ZZ' "
                 "in tag (0002,0000)); remove or replace it"):
        read_header(bad, tmp_path)


def test_a_reader_error_is_cut_to_one_line_of_160_characters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import segflow.io._dicom_series as series

    def failing(path: object, **kwargs: object) -> None:
        raise RuntimeError("bad\n   element " + "y" * 200)

    monkeypatch.setattr(series.pydicom, "dcmread", failing)
    (tmp_path / "a.dcm").write_bytes(b"x")
    cause = ("bad element " + "y" * 200)[:160]
    with refused(f"{tmp_path / 'a.dcm'} is a DICOM file pydicom cannot read (RuntimeError: {cause}); remove or replace "
                 "it"):
        read_header(tmp_path / "a.dcm", tmp_path)


@pytest.mark.parametrize(("fields", "message"), [
    ({"PixelSpacing": ("LO", ["a", "b"])}, "PixelSpacing ['a', 'b'] is not 2 numbers"),
    ({"PixelSpacing": [1.0, 2.0, 3.0]}, "PixelSpacing [1.0, 2.0, 3.0] is not 2 finite numbers"),
    ({"ImagePositionPatient": [1.0, "nan", 0.0]}, "ImagePositionPatient [1.0, nan, 0.0] is not 3 finite numbers"),
    ({"ImageOrientationPatient": [1, 0, 0, 0, 1]}, "ImageOrientationPatient [1.0, 0.0, 0.0, 0.0, 1.0] is not 6 finite"
                                                   " numbers"),
    ({"RescaleSlope": "inf"}, "RescaleSlope [inf] is not 1 finite numbers"),
    ({"RescaleIntercept": ("LO", "x")}, "RescaleIntercept 'x' is not 1 numbers"),
    ({"GantryDetectorTilt": "-inf"}, "GantryDetectorTilt [-inf] is not 1 finite numbers"),
])
@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")  # what these files are written to show
def test_numbers_that_are_not_numbers_are_refused(tmp_path: Path, fields: dict[str, object], message: str) -> None:
    with refused(f"{tmp_path / 'sub' / 'x.dcm'}: {message}; fix or remove the file"):
        header(tmp_path, **fields)


def test_an_empty_number_field_is_absent(tmp_path: Path) -> None:
    got = header(tmp_path, PixelSpacing="", RescaleSlope="", GantryDetectorTilt="")
    assert got is not None and (got.pixel_spacing, got.slope, got.gantry_tilt) == (None, 1.0, 0.0)


# ----------------------------------------------------------------------------- uniform headers


def test_a_uniform_series_passes() -> None:
    check_uniform(stack([0.0, 1.0, 2.0], pixel_spacing=(0.5, 0.7), transfer_syntax=ExplicitVRLittleEndian), WHERE)


@pytest.mark.parametrize(("images", "message"), [
    ([image(), image(frames=3, shown="m")], "m is a multi-frame (enhanced) image of 3 frames; segflow reads series of "
                                            "single-frame images: convert it first (e.g. dcm4che's emf2sf)"),
    ([image(samples=3, shown="rgb")], "rgb has 3 samples per pixel (colour); segflow reads greyscale volumes (CT, MR, "
                                      "PET)"),
    ([image(), image(position=None, pixel_spacing=None, shown="sc")],
     "sc has no ImagePositionPatient, PixelSpacing, so it cannot be placed in a volume (a radiograph, secondary "
     "capture or screenshot?); pick another series or remove it"),
    ([image(orientation=None)], "a has no ImageOrientationPatient, so it cannot be placed in a volume (a radiograph, "
                                "secondary capture or screenshot?); pick another series or remove it"),
    ([image(modality_lut=True, shown="lut")], "lut maps its values by a Modality LUT, which segflow does not apply; "
                                              "convert the series to rescale slope/intercept first"),
    ([image(), image(rows=7), image(cols=9)], "images differ in size (8x6, 9x6, 8x7 pixels); a volume needs one size: "
                                              "pick another series or remove the odd images"),
    ([image(pixel_spacing=(1.0, 2.0)), image(pixel_spacing=(1.0, 2.0003))],
     "images differ in pixel spacing ([1.0, 2.0] to [1.0, 2.0003] mm); resample the series to one grid first"),
    ([image(), image(orientation=(1.0, 0.0, 0.0, 0.0, 0.9985, 0.0548)), image(orientation=(0, 1.0, 0, 0, 0, -1.0))],
     "images have 3 different orientations (ImageOrientationPatient), e.g. a localizer mixed in; keep only the images "
     "of one stack, or pick another series"),
    ([image(orientation=(1.0, 0.0, 0.0, 0.0, 1.002, 0.0))], "ImageOrientationPatient [1.0, 0.0, 0.0, 0.0, 1.002, 0.0]"
                                                            " is not two orthogonal unit vectors; the files' geometry "
                                                            "is damaged"),
    ([image(orientation=(1.002, 0.0, 0.0, 0.0, 1.0, 0.0))], "ImageOrientationPatient [1.002, 0.0, 0.0, 0.0, 1.0, 0.0]"
                                                            " is not two orthogonal unit vectors; the files' geometry "
                                                            "is damaged"),
    ([image(orientation=(1.0, 0.0, 0.0, 0.002, 1.0, 0.0))], "ImageOrientationPatient [1.0, 0.0, 0.0, 0.002, 1.0, 0.0]"
                                                            " is not two orthogonal unit vectors; the files' geometry "
                                                            "is damaged"),
    ([image(), image(frame_of_reference="9.8"), image(frame_of_reference="9.7")],
     "images belong to 3 frames of reference (FrameOfReferenceUID); a volume has one: pick another series"),
    ([image(transfer_syntax="1.2.840.10008.1.2.4.100")],
     "pixel data in transfer syntax 1.2.840.10008.1.2.4.100 (MPEG2 Main Profile / Main Level) cannot be decoded by "
     "pydicom; convert the series to an uncompressed syntax first (e.g. dcmtk's dcmdjpeg)"),
])
def test_series_that_are_not_one_stack_are_refused(images: list[Image], message: str) -> None:
    with refused(f"{WHERE}: {message}"):
        check_uniform(images, WHERE)


def test_a_syntax_pydicom_decodes_only_with_a_plugin_names_what_to_install() -> None:
    from pydicom.pixels import get_decoder

    syntax = "1.2.840.10008.1.2.4.70"  # JPEG Lossless, SV1
    decoder = get_decoder(pydicom.uid.UID(syntax))
    if decoder.is_available:
        pytest.skip("a JPEG Lossless decoder plug-in is installed here")
    with refused(f"{WHERE}: pixel data is JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 "
                 f"[Selection Value 1]), which pydicom decodes only with a plug-in ("
                 f"{'; '.join(decoder.missing_dependencies)}); install one (e.g. pip install pylibjpeg "
                 "pylibjpeg-libjpeg pylibjpeg-openjpeg)"):
        check_uniform([image(transfer_syntax=syntax)], WHERE)


@pytest.mark.parametrize(("images", "needle"), [
    ([image(), image(frames=2, shown="m")], "m is a multi-frame (enhanced) image of 2 frames"),
    ([image(), image(rows=7)], "images differ in size (8x6, 8x7 pixels)"),
    ([image(), image(frame_of_reference="9.8")], "images belong to 2 frames of reference"),
])
def test_two_of_a_kind_are_already_too_many(images: list[Image], needle: str) -> None:
    with pytest.raises(InputError, match=re.escape(needle)):
        check_uniform(images, WHERE)


def test_tolerances_of_the_uniform_checks_at_their_bounds() -> None:
    """Exactly at a tolerance is within it (values chosen so the differences are exact in binary)."""
    check_uniform([image(pixel_spacing=(1.0, 1e-4)), image(pixel_spacing=(1.0, 2e-4))], WHERE)  # 1e-4 of 1 mm
    check_uniform([image(), image(orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 1e-3))], WHERE)
    check_uniform([image(orientation=(1.0, 0.0, 0.0, 1e-3, 1.0, 0.0))], WHERE)  # row . col = 1e-3


def test_tolerances_of_the_uniform_checks_on_their_good_side() -> None:
    check_uniform([image(pixel_spacing=(1.0, 2.0)), image(pixel_spacing=(1.0, 2.00019))], WHERE)  # 1e-4 of 2 mm
    check_uniform([image(), image(orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0009))], WHERE)
    check_uniform([image(orientation=(1.0, 0.0, 0.0, 0.0009, 1.0, 0.0))], WHERE)
    check_uniform([image(orientation=(1.0009, 0.0, 0.0, 0.0, 0.9991, 0.0))], WHERE)


# ----------------------------------------------------------------------------- the grid


def test_slices_are_sorted_along_the_normal_and_the_affine_is_dicoms() -> None:
    row, col = (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)  # sagittal: normal = row x col = (-1, 0, 0)
    images = [image(position=(-x, 5.0, 7.0), orientation=(*row, *col), pixel_spacing=(0.5, 0.25), shown=f"s{x}",
                    sop_uid=f"1.{x}") for x in (3.0, 0.0, 9.0, 6.0)]
    ordered, lps, step = sorted_geometry(images, WHERE)
    assert [i.shown for i in ordered] == ["s0.0", "s3.0", "s6.0", "s9.0"]
    assert step == 3.0
    np.testing.assert_allclose(lps, [[-3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.25, 5.0], [0.0, -0.5, 0.0, 7.0],
                                     [0.0, 0.0, 0.0, 1.0]])


def test_the_step_is_measured_along_the_unit_normal() -> None:
    """Direction cosines a little short of unit length (within the tolerance): the normal is normalised."""
    _, lps, step = sorted_geometry(stack([0.0, 2.0, 4.0], orientation=(1.0, 0.0, 0.0, 0.0, 0.9991, 0.0)), WHERE)
    assert step == 2.0
    np.testing.assert_allclose(lps[:3, 1], [0.0, 0.9991, 0.0])


def test_the_slice_axis_is_the_mean_step_from_first_to_last() -> None:
    _, lps, step = sorted_geometry(stack([0.0, 1.99, 4.01, 6.0, 8.0]), WHERE)
    assert step == 2.0
    np.testing.assert_allclose(lps[:3, 0], [0.0, 0.0, 2.0])
    np.testing.assert_allclose(lps[:3, 3], [0.0, 0.0, 0.0])


def test_a_tie_in_depth_is_ordered_by_uid_before_it_is_refused() -> None:
    images = [image(position=(0.0, 0.0, 0.0), shown="b", sop_uid="1.9"), image(position=(0.0, 0.0, 0.0), shown="a",
                                                                                sop_uid="1.1"),
              image(position=(0.0, 0.0, 2.0), shown="c", sop_uid="1.5")]
    with refused(f"{WHERE}: 2 images lie at one position (0.00 mm along the slice normal, e.g. a and b): the series "
                 "holds several volumes (phases, echoes, repeats); put each volume in a folder of its own"):
        sorted_geometry(images, WHERE)
    with refused(f"{WHERE}: 2 images lie at one position (2.00 mm along the slice normal, e.g. s1 and s2): the series "
                 "holds several volumes (phases, echoes, repeats); put each volume in a folder of its own"):
        sorted_geometry(stack([0.0, 2.0, 2.015]), WHERE)  # within 0.02 mm: one position
    sorted_geometry(stack([0.0, 0.025, 0.05]), WHERE)  # 0.025 mm apart: a (thin) step
    with refused(f"{WHERE}: 2 images lie at one position (0.00 mm along the slice normal, e.g. s0 and s1): the series "
                 "holds several volumes (phases, echoes, repeats); put each volume in a folder of its own"):
        sorted_geometry(stack([0.0, 0.02, 2.0]), WHERE)  # exactly 0.02 mm apart: still one position


def test_one_image_is_not_a_volume() -> None:
    with refused(f"{WHERE}: the series has 1 image, not a volume; give a series of 2 or more slices"):
        sorted_geometry([image()], WHERE)


def test_sideways_drift_is_refused_beyond_the_tolerance() -> None:
    depths = [0.0, 2.0, 4.0, 6.0]
    ok = [image(position=(0.02 * (k == 3), 0.0, z), shown=f"s{k}", sop_uid=f"1.{k}") for k, z in enumerate(depths)]
    sorted_geometry(ok, WHERE)  # exactly 0.02 mm sideways: within
    fine = [image(position=(0.0, 0.03 * (k == 2), z), pixel_spacing=(2.0, 2.0), shown=f"s{k}", sop_uid=f"1.{k}")
            for k, z in enumerate(depths)]  # 2 % of a 2 mm pixel
    sorted_geometry(fine, WHERE)
    tilted = [image(position=(0.0, 0.5 * k, 10.0 + z), shown=f"s{k}", sop_uid=f"1.{k}", gantry_tilt=14.0 * (k == 0))
              for k, z in enumerate(depths)]  # the tilt the first slice states is quoted
    with refused(f"{WHERE}: slices are not stacked along their normal (gantry tilt about 14.0°, GantryDetectorTilt "
                 "14°: s3 is 1.50 mm sideways of the first); the series needs resampling to an orthogonal grid first "
                 "(e.g. dcm2niix corrects gantry tilt; give its NIfTI)"):
        sorted_geometry(tilted, WHERE)
    one = [image(position=(0.05 * (k == 1), 0.0, z), shown=f"s{k}", sop_uid=f"1.{k}") for k, z in enumerate(depths)]
    with refused(f"{WHERE}: slices are not stacked along their normal (gantry tilt about 1.4°: s1 is 0.05 mm sideways "
                 "of the first); the series needs resampling to an orthogonal grid first (e.g. dcm2niix corrects "
                 "gantry tilt; give its NIfTI)"):
        sorted_geometry(one, WHERE)


def test_missing_slices_are_counted() -> None:
    with refused(f"{WHERE}: 1 slice missing between image 2 (s1, 2.00 mm along the slice normal) and image 3 (s2, "
                 "6.00 mm) of 5 in slice order: a gap of 4.00 mm where slices are 2.00 mm apart; add the missing "
                 "images to the folder, or resample the series to a regular grid first"):
        sorted_geometry(stack([0.0, 2.0, 6.0, 8.0, 10.0]), WHERE)
    with refused(f"{WHERE}: 2 slices missing between image 1 (s0, 0.00 mm along the slice normal) and image 2 (s1, "
                 "6.00 mm) of 5 in slice order: a gap of 6.00 mm where slices are 2.00 mm apart; add the missing "
                 "images to the folder, or resample the series to a regular grid first"):
        sorted_geometry(stack([0.0, 6.0, 8.0, 10.0, 12.0]), WHERE)


def test_uneven_spacing_gap_by_gap_and_as_a_whole() -> None:
    with refused(f"{WHERE}: uneven slice spacing, 3.000 mm between image 2 (s1, 2.00 mm along the slice normal) and "
                 "image 3 (s2, 5.00 mm) of 5 in slice order where slices are 2.000 mm apart elsewhere; resample the "
                 "series to a regular grid first (e.g. dcm2niix, SimpleITK)"):
        sorted_geometry(stack([0.0, 2.0, 5.0, 7.0, 9.0]), WHERE)
    sorted_geometry(stack([0.0, 2.035, 4.035, 6.035, 8.035]), WHERE)  # within 2 % of the step
    with pytest.raises(InputError, match=r"uneven slice spacing, 2\.060 mm between image 1"):
        sorted_geometry(stack([0.0, 2.06, 4.06, 6.06, 8.06]), WHERE)
    # each gap within 2 % of the median (2.03 four times, then 2.00), but image 5 is 0.06 mm off the regular grid
    depths = [0.0, 2.03, 4.06, 6.09, 8.12, 10.12, 12.12, 14.12, 16.12]
    with refused(f"{WHERE}: uneven slice spacing, image 5 (s4) is 0.060 mm off a regular 2.015 mm grid; resample the "
                 "series to a regular grid first"):
        sorted_geometry(stack(depths), WHERE)


def test_the_spacing_tolerances_at_their_bounds() -> None:
    """Slices 50 mm apart: 2 % of the step is exactly 1 mm, and integer positions make every difference exact."""
    sorted_geometry(stack([0.0, 50.0, 100.0, 151.0, 201.0, 251.0]), WHERE)  # one gap 1 mm long: within
    sorted_geometry(stack([0.0, 51.0, 101.0, 151.0, 200.0]), WHERE)  # 1 mm off the regular grid: within
    with refused(f"{WHERE}: 1 slice missing between image 2 (s1, 50.00 mm along the slice normal) and image 3 (s2, "
                 "151.00 mm) of 5 in slice order: a gap of 101.00 mm where slices are 50.00 mm apart; add the missing "
                 "images to the folder, or resample the series to a regular grid first"):
        sorted_geometry(stack([0.0, 50.0, 151.0, 201.0, 251.0]), WHERE)  # two steps and 1 mm: a missing slice


def test_a_gap_of_steps_that_is_not_whole_is_uneven() -> None:
    with pytest.raises(InputError, match=r"uneven slice spacing, 5\.000 mm between image 2 "):
        sorted_geometry(stack([0.0, 2.0, 7.0, 9.0, 11.0]), WHERE)  # 2.5 steps


# ----------------------------------------------------------------------------- voxel type


@pytest.mark.parametrize(("fields", "dtype"), [
    ({"bits_stored": 12, "signed": False, "intercept": -1024.0}, np.int16),  # -1024 .. 3071
    ({"bits_stored": 16, "signed": True}, np.int16),  # -32768 .. 32767
    ({"bits_stored": 16, "signed": False}, np.float32),  # 0 .. 65535
    ({"bits_stored": 15, "signed": False}, np.int16),  # 0 .. 32767
    ({"bits_stored": 15, "signed": False, "intercept": 1.0}, np.float32),  # 1 .. 32768
    ({"bits_stored": 16, "signed": True, "intercept": -1.0}, np.float32),  # -32769 ..
    ({"bits_stored": 16, "signed": True, "intercept": 1.0}, np.float32),  # .. 32768
    ({"bits_stored": 12, "signed": False, "intercept": -32768.0}, np.int16),  # -32768 .. -28673
    ({"bits_stored": 12, "signed": False, "intercept": -32769.0}, np.float32),
    ({"bits_stored": 14, "signed": True, "slope": 4.0}, np.int16),  # -32768 .. 32764
    ({"bits_stored": 14, "signed": True, "slope": -4.0}, np.float32),  # -32764 .. 32768
    ({"bits_stored": 12, "signed": False, "slope": 0.5}, np.float32),
    ({"bits_stored": 12, "signed": False, "intercept": 0.5}, np.float32),
])
def test_the_voxel_type_holds_every_rescaled_value(fields: dict[str, object], dtype: type) -> None:
    assert value_type([image(**fields)]) == dtype


def test_the_voxel_type_is_over_every_slice() -> None:
    low = image(bits_stored=12, signed=False, intercept=-1024.0)
    assert value_type([low, low]) == np.int16
    assert value_type([low, image(bits_stored=12, signed=False, intercept=30000.0)]) == np.float32
    assert value_type([image(bits_stored=12, signed=False, intercept=30000.0), low]) == np.float32
    assert value_type([low, image(bits_stored=12, signed=False, slope=1.5)]) == np.float32
    assert value_type([image(bits_stored=12, signed=False, intercept=-40000.0), low]) == np.float32


# ----------------------------------------------------------------------------- names and folders


def test_input_names() -> None:
    assert dicom_series_name("/data/ct") == "DICOM:/data/ct"
    assert dicom_series_name(Path("/data/ct"), "1.2.3") == "DICOM:/data/ct:1.2.3"
    assert _parse_name("DICOM:/data/ct:1.2.3") == (Path("/data/ct"), "1.2.3")
    assert _parse_name("dicom:/data/ct:1.2.3") == (Path("/data/ct"), "1.2.3")
    assert _parse_name("DICOM:/data/ct") == (Path("/data/ct"), None)
    assert _parse_name("DICOM:/data/a:b") == (Path("/data/a:b"), None)  # not a UID after the colon
    assert _parse_name("DICOM:/data/a:b:1.2.3") == (Path("/data/a:b"), "1.2.3")  # the last colon
    assert _parse_name("DICOM::1.2") == (Path(":1.2"), None)  # no folder before it
    assert _parse_name("DICOM:/data/ct:1.2.") == (Path("/data/ct:1.2."), None)
    assert _parse_name("/data/ct") == (Path("/data/ct"), None)


def test_which_inputs_are_dicom(tmp_path: Path) -> None:
    assert is_dicom_input(Path("DICOM:/nowhere")) and is_dicom_input(Path("dicom:/nowhere"))
    for marker in ("zarr.json", ".zgroup", ".zarray"):
        store = tmp_path / marker.strip(".")
        write_series(store, hu_volume((2, 16, 16)))
        (store / marker).write_text("{}")
        assert not is_dicom_input(store), marker
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("hello" * 40)
    assert not is_dicom_input(tmp_path / "text")
    (tmp_path / "text" / "deep").mkdir()
    write_series(tmp_path / "text" / "deep" / "s", hu_volume((2, 16, 16)))
    assert is_dicom_input(tmp_path / "text")
    (tmp_path / "hidden").mkdir()
    write_series(tmp_path / "hidden" / ".cache", hu_volume((2, 16, 16)))
    (tmp_path / "hidden" / "readme").write_text("x" * 200)
    assert not is_dicom_input(tmp_path / "hidden")  # hidden folders are not looked into
    assert not is_dicom_input(tmp_path / "text" / "a.txt")


def test_hidden_files_and_folders_are_skipped_and_nested_ones_found(tmp_path: Path) -> None:
    hu = hu_volume((4, 16, 16))
    slices = write_series(tmp_path / "p" / "study" / "series", hu)
    hidden = tmp_path / "p" / ".trash"
    write_series(hidden, hu_volume((3, 16, 16), seed=5))
    dot = slices[0]["path"].parent / ".x"
    dot.write_bytes(slices[0]["path"].read_bytes())
    scene = open_dicom_series(tmp_path / "p")
    assert scene.data.shape == (1, 4, 16, 16)
    assert scene.meta["files"] == [str(s["path"].resolve()) for s in slices]


def test_series_are_listed_largest_first_then_by_uid(tmp_path: Path) -> None:
    for uid, n in (("1.5", 3), ("1.3", 5), ("1.4", 3)):
        write_series(tmp_path / uid, hu_volume((n, 16, 16)), series_uid=uid, description="" if uid == "1.4" else uid)
    infos = list_series(tmp_path)
    assert infos == [SeriesInfo("1.3", "CT", "1.3", 5), SeriesInfo("1.4", "CT", "", 3), SeriesInfo("1.5", "CT", "1.5",
                                                                                                     3)]
    assert [i.describe() for i in infos] == ["--series 1.3 (CT '1.3', 5 images)", "--series 1.4 (CT, 3 images)",
                                             "--series 1.5 (CT '1.5', 3 images)"]
    assert SeriesInfo("1.6", "", "", 1).describe() == "--series 1.6 (, 1 image)"
    assert SeriesInfo("1.6", "", "d", 2).describe() == "--series 1.6 ('d', 2 images)"
    with refused(f"{tmp_path} holds 3 DICOM image series; pick one: --series 1.3 (CT '1.3', 5 images); --series 1.4 "
                 "(CT, 3 images); --series 1.5 (CT '1.5', 3 images)"):
        open_dicom_series(tmp_path)


def test_a_long_listing_names_ten_and_counts_the_rest() -> None:
    infos = [SeriesInfo(f"1.{k}", "MR", "", 1) for k in range(13)]
    assert _listing(infos) == "; ".join(f"--series 1.{k} (MR, 1 image)" for k in range(10)) + "; and 3 more"
    assert _listing(infos[:10]) == "; ".join(f"--series 1.{k} (MR, 1 image)" for k in range(10))
    assert _listing(infos[:11]).endswith("; and 1 more")


def test_folder_refusals(tmp_path: Path) -> None:
    with refused(f"DICOM input {tmp_path / 'none'} is not a folder; give the folder that holds the series' files"):
        open_dicom_series(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with refused(f"no DICOM images in {tmp_path / 'empty'}; give the folder that holds the series' image files"):
        open_dicom_series(tmp_path / "empty")
    write_series(tmp_path / "one", hu_volume((3, 16, 16)), series_uid="1.8")
    with refused(f"DICOM series 1.9 is not in {tmp_path / 'one'}; it holds: --series 1.8 (CT 'synthetic', 3 images)"):
        open_dicom_series(tmp_path / "one", "1.9")
    assert open_dicom_series(tmp_path / "one", "1.8").meta["series_uid"] == "1.8"
    assert open_dicom_input(Path(f"DICOM:{tmp_path / 'one'}:1.8")).meta["series_uid"] == "1.8"
    assert open_dicom_input(tmp_path / "one").meta["series_uid"] == "1.8"
    (tmp_path / "sr").mkdir()
    for k in range(2):
        (tmp_path / "sr" / f"r{k}.dcm").write_bytes((TEST_FILES / "test-SR.dcm").read_bytes())
    with refused(f"no DICOM images in {tmp_path / 'sr'} (2 DICOM objects, none an image: reports, structure sets, "
                 "DICOMDIR...); give the folder that holds the series' image files"):
        open_dicom_series(tmp_path / "sr")


# ----------------------------------------------------------------------------- the scene and its reader


def test_refusals_of_a_series_name_it_and_its_folder(tmp_path: Path) -> None:
    slices = write_series(tmp_path / "gap", hu_volume((5, 16, 16)), series_uid="1.2.4")
    slices[2]["path"].unlink()
    with refused(f"DICOM series 1.2.4 in {tmp_path / 'gap'}: 1 slice missing between image 2 "
                 f"({slices[1]['path'].name}, 52.00 mm along the slice normal) and image 3 "
                 f"({slices[3]['path'].name}, 56.00 mm) of 4 in slice order: a gap of 4.00 mm where slices are 2.00 mm "
                 "apart; add the missing images to the folder, or resample the series to a regular grid first"):
        open_dicom_series(tmp_path / "gap")
    slices = write_series(tmp_path / "multi", hu_volume((2, 16, 16)), series_uid="1.2.5")
    ds = pydicom.dcmread(slices[1]["path"])
    ds.NumberOfFrames = 2
    ds.save_as(slices[1]["path"])
    with refused(f"DICOM series 1.2.5 in {tmp_path / 'multi'}: {slices[1]['path'].name} is a multi-frame (enhanced) "
                 "image of 2 frames; segflow reads series of single-frame images: convert it first (e.g. dcm4che's "
                 "emf2sf)"):
        open_dicom_series(tmp_path / "multi")


def test_the_scene_meta_dtype_and_chunks(tmp_path: Path) -> None:
    hu = hu_volume((6, 20, 18))
    slices = write_series(tmp_path / "ct", hu, description="abdomen", series_uid="1.2.826.5")
    scene = open_dicom_series(tmp_path / "ct")
    first = pydicom.dcmread(slices[0]["path"])
    files = [str(s["path"].resolve()) for s in slices]
    stats = [(os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    uids = [str(s["uid"]) for s in slices]
    assert scene.meta == {
        "format": "dicom", "folder": str((tmp_path / "ct").resolve()), "series_uid": "1.2.826.5",
        "study_uid": first.StudyInstanceUID, "frame_of_reference_uid": first.FrameOfReferenceUID, "modality": "CT",
        "series_description": "abdomen", "sop_class_uid": first.SOPClassUID, "dtype": "int16",
        "rescale": {"slope": 1.0, "intercept": -1024.0}, "units": "HU", "files": files, "sop_instance_uids": uids,
        "identity": _identity(files, stats, uids)}
    assert scene.source == str(tmp_path / "ct") and scene.band_names == ("ct",) and scene.axes == "CZYX"
    assert scene.scales == () and scene.offsets == ()
    assert scene.data.chunks == ((1,), (6,), (20,), (18,))
    assert scene.data.name.startswith("dicom-")
    np.testing.assert_array_equal(scene.data.compute()[0], hu)
    assert scene.volume is not None and scene.volume.frame == "RAS"
    np.testing.assert_allclose(scene.volume.spacing, (2.0, 0.7, 0.8))
    np.testing.assert_allclose(scene.volume.affine, [[0, 0, -0.8, 100.0], [0, -0.7, 0, 120.0], [2.0, 0, 0, 50.0],
                                                     [0, 0, 0, 1]], atol=1e-9)


def test_the_dask_name_follows_the_files_and_the_voxel_type(tmp_path: Path) -> None:
    slices = write_series(tmp_path / "ct", hu_volume((3, 16, 16)))
    for s in slices:
        os.utime(s["path"], ns=(5, 5))
    scene = open_dicom_series(tmp_path / "ct")
    name = scene.data.name
    assert open_dicom_series(tmp_path / "ct").data.name == name and scene.data.dtype == np.int16
    for s in slices:
        ds = pydicom.dcmread(s["path"])
        ds.RescaleSlope = "9"  # files of the same size and time, whose values need float32
        ds.save_as(s["path"])
        os.utime(s["path"], ns=(5, 5))
    floats = open_dicom_series(tmp_path / "ct")
    assert floats.data.dtype == np.float32 and floats.data.name != name
    os.utime(slices[1]["path"], ns=(6, 6))
    assert open_dicom_series(tmp_path / "ct").data.name != floats.data.name
    shutil.copytree(tmp_path / "ct", tmp_path / "copy")  # the same sizes and times, other paths
    assert open_dicom_series(tmp_path / "copy").data.name != open_dicom_series(tmp_path / "ct").data.name


def test_slabs_hold_16_mib_of_whole_slices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import segflow.io.dicom as dicom

    write_series(tmp_path / "ct", hu_volume((7, 16, 16)))
    monkeypatch.setattr(dicom, "_SLAB_BYTES", 3 * 16 * 16 * 2 + 7)  # whole slices: 3
    assert open_dicom_series(tmp_path / "ct").data.chunks[1] == (3, 3, 1)
    monkeypatch.setattr(dicom, "_SLAB_BYTES", 16 * 16 * 2 - 1)
    assert open_dicom_series(tmp_path / "ct").data.chunks[1] == (1,) * 7
    monkeypatch.setattr(dicom, "_SLAB_BYTES", 100 * 16 * 16 * 2)
    assert open_dicom_series(tmp_path / "ct").data.chunks[1] == (7,)


def test_per_slice_rescale_and_float_values(tmp_path: Path) -> None:
    hu = hu_volume((4, 16, 16))
    a = write_series(tmp_path / "ct", hu[:2], series_uid="1.7", slope=1.0, intercept=-1024.0)
    study = pydicom.dcmread(a[0]["path"]).StudyInstanceUID  # one study, so one frame of reference
    write_series(tmp_path / "ct", hu[2:] - 0.5, series_uid="1.7", slope=0.5, intercept=-1100.5, seed=9,
                 origin=(-100.0, -120.0, 54.0), study_uid=study)  # slices 3 and 4, 2 mm on
    scene = open_dicom_series(tmp_path / "ct")
    assert scene.meta["rescale"] == "per-slice" and scene.meta["dtype"] == "float32"
    assert scene.data.dtype == np.float32
    want = np.concatenate([hu[:2], hu[2:] - 0.5]).astype(np.float32)
    np.testing.assert_array_equal(scene.data.compute()[0], want)


def test_a_scene_of_another_modality_names_its_band(tmp_path: Path) -> None:
    slices = write_series(tmp_path / "mr", hu_volume((3, 16, 16)))
    for s in slices:
        ds = pydicom.dcmread(s["path"])
        ds.Modality = "MR"
        del ds.RescaleType
        ds.save_as(s["path"])
    scene = open_dicom_series(tmp_path / "mr")
    assert scene.band_names == ("mr",) and scene.meta["units"] == ""
    for s in slices:
        ds = pydicom.dcmread(s["path"])
        ds.Modality = ""
        ds.save_as(s["path"])
    assert open_dicom_series(tmp_path / "mr").band_names == ("image",)


def test_the_reader_decodes_only_the_slices_asked_for(tmp_path: Path) -> None:
    hu = hu_volume((5, 16, 16))
    write_series(tmp_path / "ct", hu)
    scene = open_dicom_series(tmp_path / "ct")
    reader = scene.data.dask[next(k for k in scene.data.dask if not isinstance(k, tuple))]
    assert isinstance(reader, _SliceReader) and reader.shape == (1, 5, 16, 16) and reader.ndim == 4
    assert reader.dtype == np.int16 and reader[0, 2].dtype == np.int16 and scene.data.compute().dtype == np.int16
    np.testing.assert_array_equal(reader[0, 2], hu[2])
    np.testing.assert_array_equal(reader[:, 1:4:2, 3:5], hu[np.newaxis, 1:4:2, 3:5])
    np.testing.assert_array_equal(reader[0], hu)
    np.testing.assert_array_equal(reader[(0, 4)], hu[4])
    Path(scene.meta["files"][3]).unlink()
    np.testing.assert_array_equal(reader[0, :3], hu[:3])  # slice 4 is not decoded
    with pytest.raises(InputError, match=rf"^{re.escape(reader.where)}: cannot read the pixels of .*"
                                         rf"{Path(scene.meta['files'][3]).name} \(slice 4 of 5\): FileNotFoundError: "
                                         r".*; check the file$"):
        reader[0, 3]


def test_a_decoder_error_is_one_line_of_at_most_160_characters(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import segflow.io.dicom as dicom

    write_series(tmp_path / "ct", hu_volume((2, 16, 16)))
    scene = open_dicom_series(tmp_path / "ct")

    def failing(path: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError("JPEG  decoder\n  failed: " + "x" * 200)

    monkeypatch.setattr(dicom.pydicom, "dcmread", failing)
    cause = ("JPEG decoder failed: " + "x" * 200)[:160]
    with refused(f"DICOM series {scene.meta['series_uid']} in {tmp_path / 'ct'}: cannot read the pixels of "
                 f"{scene.meta['files'][0]} (slice 1 of 2): RuntimeError: {cause}; check the file"):
        scene.data.compute()


def test_a_slice_that_decodes_to_another_size_is_refused(tmp_path: Path) -> None:
    slices = write_series(tmp_path / "ct", hu_volume((3, 16, 16)))
    scene = open_dicom_series(tmp_path / "ct")
    ds = pydicom.dcmread(slices[1]["path"])
    ds.Rows, ds.PixelData = 8, ds.PixelData[: 8 * 16 * 2]
    ds.save_as(slices[1]["path"])
    with refused(f"DICOM series {scene.meta['series_uid']} in {tmp_path / 'ct'}: {slices[1]['path']} decodes to "
                 "(8, 16) pixels but its header says (16, 16); the file is damaged"):
        scene.data.compute()


def test_an_integer_slope_keeps_int16(tmp_path: Path) -> None:
    hu = hu_volume((3, 16, 16))
    hu = (np.rint((hu + 1024) / 2) * 2 - 1024).astype(np.int16)
    write_series(tmp_path / "ct", hu, slope=2.0, intercept=-1024.0)
    scene = open_dicom_series(tmp_path / "ct")
    values = scene.data.compute()[0]
    assert values.dtype == np.int16 and scene.meta["rescale"] == {"slope": 2.0, "intercept": -1024.0}
    np.testing.assert_array_equal(values, hu)


def test_float_values_are_float32(tmp_path: Path) -> None:
    hu = hu_volume((3, 16, 16)) + 0.5
    write_series(tmp_path / "ct", hu, slope=0.5, intercept=-1023.5)
    values = open_dicom_series(tmp_path / "ct").data.compute()
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values[0], hu.astype(np.float32))


def test_int16_rescale_is_exact_at_its_bounds(tmp_path: Path) -> None:
    hu = np.array([[[-1024, 3071], [0, 1]]] * 2, dtype=np.int16)
    write_series(tmp_path / "ct", hu)
    scene = open_dicom_series(tmp_path / "ct")
    assert scene.data.dtype == np.int16
    np.testing.assert_array_equal(scene.data.compute()[0], hu)


def test_the_identity_is_a_digest_of_names_sizes_times_and_uids() -> None:
    files, stats, uids = ["/a/1", "/a/2"], [(10, 5), (11, 6)], ["1.1", "1.2"]
    text = "/a/1\x0010\x005\x001.1\n/a/2\x0011\x006\x001.2\n"
    assert _identity(files, stats, uids) == hashlib.sha256(text.encode()).hexdigest()
    with pytest.raises(ValueError):
        _identity(files, stats[:1], uids)
