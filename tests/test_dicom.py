"""DICOM series in (segflow.io.dicom), DICOM SEG out (segflow.io.dicom_seg).

Real data: pydicom's own test files (a 5-slice CT series, a CT series with 161 slices
missing, a scout series of two orientations, a folder of 13 series, a multi-frame RT dose).
Synthetic series are written here from segflow.synthetic.volume as minimal CT Image IODs
with chosen positions, orientations and rescale; SimpleITK (GDCM) is the independent
reference for the voxel values and geometry of a series.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from segflow.cli import main
from segflow.errors import InputError, OutputError
from segflow.io.dicom import dicom_series_name, is_dicom_input, list_series, open_dicom_series
from segflow.io.dicom_seg import DicomSegSink, segment_codes
from segflow.io.mask_store import MaskStore
from segflow.io.readers import open_scene
from segflow.models.package import ModelSpec
from segflow.synthetic.volume import synthesize_volume
from segflow.tile_infer import TileInferParams, tile_infer
from segflow.tiling import Box

TEST_FILES = Path(str(pydicom.data.get_testdata_file("CT_small.dcm"))).parent
DICOMDIR_TESTS = TEST_FILES / "dicomdirtests"
CT5N = DICOMDIR_TESTS / "98892001" / "CT5N"  # 5 axial CT slices, 16 x 16, 2.5 mm apart
CT2_GAP = DICOMDIR_TESTS / "77654033" / "CT2"  # 4 CT slices: one at -99.48 mm, three from 103.02 mm
CT2N_SCOUT = DICOMDIR_TESTS / "98892001" / "CT2N"  # 2 scout images, sagittal and coronal
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
BOUNDS = (-500.0, 0.0, 80.0)  # the stand-in model's class bounds in HU
CLASSES = ("background", "fat", "soft_tissue", "liver")


# ----------------------------------------------------------------------------- writing series


def write_series(folder: Path, hu: np.ndarray, *, spacing: tuple[float, float, float] = (2.0, 0.7, 0.8),
                 row: tuple[float, ...] = (1.0, 0.0, 0.0), col: tuple[float, ...] = (0.0, 1.0, 0.0),
                 origin: tuple[float, float, float] = (-100.0, -120.0, 50.0), slope: float = 1.0,
                 intercept: float = -1024.0, positions: list[np.ndarray] | None = None,
                 series_uid: str | None = None, study_uid: str | None = None, description: str = "synthetic",
                 seed: int = 0) -> list[dict[str, Any]]:
    """Write ``hu`` (z, y, x) as a CT series, one file per slice under a random name (directory order
    is not slice order); slice ``k`` at ``origin + k * dz * (row × col)`` unless ``positions`` are given.
    Returns per slice (in ``hu``'s order): path, SOPInstanceUID, position (LPS)."""
    folder.mkdir(parents=True, exist_ok=True)
    depth, rows, cols = hu.shape
    normal = np.cross(row, col)
    stored = np.rint((hu.astype(np.float64) - intercept) / slope)
    assert stored.min() >= 0 and stored.max() < 2**16
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid(entropy_srcs=["study", str(seed)])
    frame_uid = generate_uid(entropy_srcs=["frame", study_uid])
    names = [f"{n:08x}" for n in random.Random(seed).sample(range(16**6), depth)]
    out = []
    for k in range(depth):
        pos = np.asarray(origin, dtype=np.float64) + k * spacing[0] * normal if positions is None else positions[k]
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Synthetic", "SYN001", "19700101", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, "20260101", "120000"
        ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", ""
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", series_uid, 3
        ds.SeriesDescription = description
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        ds.Manufacturer = "segflow tests"
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[2]:g}"]
        ds.SliceThickness = f"{spacing[0]:g}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if stored.max() >= 2**12:
            ds.BitsStored, ds.HighBit = 16, 15
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = f"{intercept:g}", f"{slope:g}", "HU"
        ds.KVP, ds.AcquisitionNumber = "120", 1
        ds.PixelData = stored[k].astype(np.uint16).tobytes()
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        out.append({"path": path, "uid": ds.SOPInstanceUID, "position": pos})
    return out


def hu_volume(shape: tuple[int, int, int] = (12, 24, 20), seed: int = 3) -> np.ndarray:
    """A CT-like volume in HU (int16), cropped from a synthetic one of at least 16 voxels a side."""
    image = synthesize_volume(tuple(max(16, s) for s in shape), seed=seed)[0]
    return image[tuple(slice((n - s) // 2, (n - s) // 2 + s) for n, s in zip(image.shape, shape, strict=True))]


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    code = main([str(a) for a in args])
    _, err = capsys.readouterr()
    return code, err


def assert_refused(capsys: pytest.CaptureFixture[str], folder: str | Path, out: Path, model: Path,
                   *needles: str) -> str:
    """tile-infer on ``folder`` is exit 2 with one line naming ``needles``, and writes nothing."""
    code, err = cli(capsys, "run", "tile-infer", "--input", folder, "--output", out, "--model", model)
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("segflow: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())
    return lines[0]


# ----------------------------------------------------------------------------- a 3D stand-in model


class Threshold(torch.nn.Module):
    """Class ``i`` where ``bounds[i-1] <= HU < bounds[i]``, as one-hot probabilities ``(B, K, Z, Y, X)``."""

    bounds: torch.Tensor

    def __init__(self, bounds: tuple[float, ...]):
        super().__init__()
        self.classes = len(bounds) + 1
        self.register_buffer("bounds", torch.tensor(bounds, dtype=torch.float32).view(1, -1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = (x >= self.bounds).sum(dim=1)
        return torch.nn.functional.one_hot(index, self.classes).permute(0, 4, 1, 2, 3).float()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hu-model")
    torch.jit.trace(Threshold(BOUNDS).eval(), torch.zeros(1, 1, 8, 16, 16)).save(str(root / "model.ts"))
    spec = {"name": "hu-threshold", "version": "2.1", "spatial_dims": 3, "weights": "model.ts",
            "input": {"bands": [{"name": "ct", "index": 1}], "normalization": {"mode": "none"}},
            "tile": [8, 16, 16], "overlap": 0.25, "output": {"activation": "none"},
            "classes": [{"name": n, "color": [40 * i, 200 - 30 * i, 90]} for i, n in enumerate(CLASSES)]}
    (root / "model.yaml").write_text(yaml.safe_dump(spec))
    return root


def expected_labels(hu: np.ndarray) -> np.ndarray:
    return np.digitize(hu, BOUNDS).astype(np.uint8)


# ----------------------------------------------------------------------------- reading: pydicom's real series


def sitk_reference(folder: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """SimpleITK's (GDCM's) reading: voxels (z, y, x) in modality units and the LPS affine over (z, y, x, 1)."""
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    image = sitk.ReadImage(files, sitk.sitkFloat32)
    direction = np.array(image.GetDirection()).reshape(3, 3)  # columns: world direction of index x, y, z
    affine = np.eye(4)
    affine[:3, :3] = (direction * np.array(image.GetSpacing()))[:, ::-1]  # to (z, y, x)
    affine[:3, 3] = image.GetOrigin()
    return sitk.GetArrayFromImage(image), affine, list(files)


def ras_affine(scene: Any) -> np.ndarray:
    return np.array(scene.volume.affine)


def test_pydicoms_ct_series_matches_simpleitk_and_the_slice_positions() -> None:
    scene = open_dicom_series(CT5N)
    assert scene.axes == "CZYX" and scene.data.shape == (1, 5, 16, 16)
    assert scene.meta["format"] == "dicom" and scene.meta["modality"] == "CT"
    files = [Path(f) for f in scene.meta["files"]]
    # sorted along the slice normal (+z here): the files are named in the opposite order
    assert [f.name for f in files] == ["3353", "3023", "2693", "2392", "2062"]
    reference, lps, sitk_files = sitk_reference(CT5N)
    assert [Path(f).name for f in sitk_files] == [f.name for f in files]
    values = scene.data.compute()[0]
    np.testing.assert_array_equal(values, reference)
    affine = ras_affine(scene)
    np.testing.assert_allclose(affine[:3], LPS_TO_RAS @ lps[:3], atol=1e-5)
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        np.testing.assert_array_equal(values[k], ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
        # voxel (k, 0, 0) is the centre of the slice's first pixel: ImagePositionPatient, in RAS
        np.testing.assert_allclose(affine @ [k, 0, 0, 1], [*(LPS_TO_RAS @ np.array(ds.ImagePositionPatient,
                                                                                      dtype=float)), 1], atol=1e-5)
        assert scene.meta["sop_instance_uids"][k] == ds.SOPInstanceUID
    assert scene.volume is not None
    np.testing.assert_allclose(scene.volume.spacing, (2.5, 0.488281, 0.488281))


def test_a_single_series_folder_opens_through_open_scene_and_a_zarr_folder_is_not_claimed(tmp_path: Path) -> None:
    scene = open_scene(CT5N)
    assert scene.meta["series_uid"] == "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6"
    (tmp_path / "store.zarr").mkdir()
    (tmp_path / "store.zarr" / "zarr.json").write_text("{}")
    assert not is_dicom_input(tmp_path / "store.zarr")
    assert is_dicom_input(CT5N) and is_dicom_input(tmp_path / "empty") is False  # missing: not a folder
    (tmp_path / "empty").mkdir()
    assert is_dicom_input(tmp_path / "empty")  # so that the DICOM reader says what is wrong


# ----------------------------------------------------------------------------- reading: synthetic series


@pytest.mark.parametrize(("slope", "intercept", "dtype"), [(1.0, -1024.0, np.int16), (0.5, -1024.0, np.float32),
                                                         (1.0, -1024.5, np.float32)])
def test_values_are_rescaled_in_slice_order_whatever_the_file_order(tmp_path: Path, slope: float, intercept: float,
                                                                    dtype: type) -> None:
    hu = hu_volume()
    hu = (np.rint((hu - intercept) / slope) * slope + intercept)  # representable values
    slices = write_series(tmp_path / "ct", hu, slope=slope, intercept=intercept)
    scene = open_dicom_series(tmp_path / "ct")
    assert scene.data.dtype == dtype
    np.testing.assert_array_equal(scene.data.compute()[0], hu.astype(dtype))
    assert scene.meta["files"] == [str(s["path"].resolve()) for s in slices]
    assert sorted(p.name for p in (tmp_path / "ct").iterdir()) != [Path(f).name for f in scene.meta["files"]]
    assert scene.meta["rescale"] == {"slope": slope, "intercept": intercept}
    # lazily read by slabs: a box reads only its slices
    box = scene.data[0, 3:5, 2:7, 4:9].compute()
    np.testing.assert_array_equal(box, hu[3:5, 2:7, 4:9].astype(dtype))


def rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    a = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    t = np.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


@pytest.mark.parametrize(("row", "col"), [
    (tuple(rotation((1, 2, 3), 37)[:, 0]), tuple(rotation((1, 2, 3), 37)[:, 1])),  # oblique
    ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),  # sagittal
    ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),  # coronal
])
def test_oblique_and_non_axial_series_map_each_voxel_to_its_patient_position(tmp_path: Path, row: tuple[float, ...],
                                                                             col: tuple[float, ...]) -> None:
    hu = hu_volume((6, 20, 18))
    spacing = (1.5, 0.6, 0.9)
    slices = write_series(tmp_path / "ct", hu, spacing=spacing, row=row, col=col, origin=(12.0, -40.0, 7.5))
    scene = open_dicom_series(tmp_path / "ct")
    np.testing.assert_array_equal(scene.data.compute()[0], hu)
    affine = ras_affine(scene)
    r, c = np.asarray(row), np.asarray(col)
    for k, s in enumerate(slices):
        for y, x in [(0, 0), (19, 0), (0, 17), (11, 5)]:  # DICOM: IPP + x * dx * row + y * dy * col (LPS)
            lps = s["position"] + x * spacing[2] * r + y * spacing[1] * c
            np.testing.assert_allclose(affine @ [k, y, x, 1], [*(LPS_TO_RAS @ lps), 1], atol=1e-4)
    _, reference, _ = sitk_reference(tmp_path / "ct")
    np.testing.assert_allclose(affine[:3], LPS_TO_RAS @ reference[:3], atol=1e-4)
    np.testing.assert_allclose(scene.volume.spacing, spacing, atol=1e-6)  # type: ignore[union-attr]


def test_a_series_stacked_against_its_normal_is_sorted_along_it(tmp_path: Path) -> None:
    hu = hu_volume((5, 16, 16))
    normal = np.cross((1, 0, 0), (0, 1, 0))
    positions = [np.array([0.0, 0.0, 30.0]) - k * 3.0 * normal for k in range(5)]  # slice 0 is the highest
    write_series(tmp_path / "ct", hu, positions=positions)
    scene = open_dicom_series(tmp_path / "ct")
    np.testing.assert_array_equal(scene.data.compute()[0], hu[::-1])
    np.testing.assert_allclose(ras_affine(scene) @ [0, 0, 0, 1], [0, 0, 18.0, 1])
    np.testing.assert_allclose(ras_affine(scene)[:3, 0], [0, 0, 3.0])


def test_a_series_is_picked_by_uid_from_a_folder_of_several(tmp_path: Path) -> None:
    a = write_series(tmp_path / "study" / "a", hu_volume(seed=1), description="arterial", seed=1)
    write_series(tmp_path / "study" / "b", hu_volume((7, 24, 20), seed=2), description="venous", seed=2)
    shutil.copy(TEST_FILES / "test-SR.dcm", tmp_path / "study" / "report.dcm")  # not an image: passed over
    infos = list_series(tmp_path / "study")
    assert [(i.description, i.images) for i in infos] == [("arterial", 12), ("venous", 7)]
    uid = str(pydicom.dcmread(a[0]["path"]).SeriesInstanceUID)
    for scene in (open_dicom_series(tmp_path / "study", uid), open_scene(dicom_series_name(tmp_path / "study", uid))):
        assert scene.meta["series_uid"] == uid and scene.data.shape == (1, 12, 24, 20)
    with pytest.raises(InputError, match=r"DICOM series 1\.2\.3 is not in .* it holds: --series "):
        open_dicom_series(tmp_path / "study", "1.2.3")


# ----------------------------------------------------------------------------- refusals: one line, exit 2


def test_real_refusals_several_series_missing_slices_two_orientations(capsys: pytest.CaptureFixture[str],
                                                                       tmp_path: Path, model: Path) -> None:
    line = assert_refused(capsys, DICOMDIR_TESTS, tmp_path / "o1", model, "holds 13 DICOM image series; pick one:",
                          "--series 1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6 (CT 'SmartScore - Gated 0.5 "
                          "sec', 5 images)", "and 3 more")
    assert line.count("--series ") == 10
    assert_refused(capsys, CT2_GAP, tmp_path / "o2", model, "161 slices missing between image 1 (17106, -99.48 mm",
                   "image 2 (17136, 103.02 mm) of 4", "slices are 1.25 mm apart", "add the missing images")
    assert_refused(capsys, CT2N_SCOUT, tmp_path / "o3", model, "2 different orientations", "localizer")


def test_synthetic_refusals(capsys: pytest.CaptureFixture[str], tmp_path: Path, model: Path) -> None:
    hu = hu_volume((8, 16, 16))
    (tmp_path / "empty").mkdir()
    assert_refused(capsys, tmp_path / "empty", tmp_path / "o0", model, f"no DICOM images in {tmp_path / 'empty'}")

    (tmp_path / "report").mkdir()
    shutil.copy(TEST_FILES / "test-SR.dcm", tmp_path / "report" / "sr.dcm")
    assert_refused(capsys, tmp_path / "report", tmp_path / "o1", model, "no DICOM images", "1 DICOM objects, none")

    write_series(tmp_path / "two" / "a", hu, seed=1)
    write_series(tmp_path / "two" / "b", hu, seed=2)
    line = assert_refused(capsys, tmp_path / "two", tmp_path / "o2", model, "holds 2 DICOM image series; pick one:")
    assert line.count("(CT 'synthetic', 8 images)") == 2

    slices = write_series(tmp_path / "gap", hu)
    slices[5]["path"].unlink()
    assert_refused(capsys, tmp_path / "gap", tmp_path / "o3", model, "1 slice missing between image 5",
                   f"and image 6 ({slices[6]['path'].name}, 62.00 mm) of 7", "gap of 4.00 mm", "2.00 mm apart")

    positions = [np.array([0.0, 0.0, 2.0 * k + (0.7 if k >= 4 else 0.0)]) for k in range(8)]
    write_series(tmp_path / "uneven", hu, positions=positions)
    assert_refused(capsys, tmp_path / "uneven", tmp_path / "o4", model,
                   "uneven slice spacing, 2.700 mm between image 4", "2.000 mm apart", "resample")

    positions = [np.array([0.0, 2.0 * k * np.tan(np.radians(15)), 2.0 * k]) for k in range(8)]  # 15° gantry tilt
    write_series(tmp_path / "tilt", hu, positions=positions)
    assert_refused(capsys, tmp_path / "tilt", tmp_path / "o5", model, "gantry tilt about 15.0°",
                   "needs resampling to an orthogonal grid first")

    positions = [np.array([0.0, 0.0, 2.0 * (k // 2)]) for k in range(8)]  # two volumes interleaved
    write_series(tmp_path / "phases", hu, positions=positions)
    assert_refused(capsys, tmp_path / "phases", tmp_path / "o6", model, "2 images lie at one position",
                   "several volumes")

    (tmp_path / "dose").mkdir()
    shutil.copy(TEST_FILES / "rtdose.dcm", tmp_path / "dose" / "dose.dcm")
    assert_refused(capsys, tmp_path / "dose", tmp_path / "o7", model, "multi-frame (enhanced) image")

    assert_refused(capsys, dicom_series_name(tmp_path / "two", "1.2.3"), tmp_path / "o8", model,
                   "DICOM series 1.2.3 is not in")


# ----------------------------------------------------------------------------- SEG out


def dciodvfy(path: Path) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    assert "Segmentation" in text
    assert not [line for line in text.splitlines() if line.startswith("Error")], text


def test_tile_infer_on_a_dicom_series_writes_a_valid_seg_that_reads_back_exactly(tmp_path: Path, model: Path) -> None:
    hu = hu_volume((12, 24, 20))
    slices = write_series(tmp_path / "ct", hu, row=tuple(rotation((0, 0, 1), 20)[:, 0]),
                          col=tuple(rotation((0, 0, 1), 20)[:, 1]))
    result = tile_infer(tmp_path / "ct", tmp_path / "out", TileInferParams(model=str(model), chunk=8))
    assert "seg.dcm" in result.outputs and (tmp_path / "out" / "seg.dcm").is_file()
    labels = MaskStore.open(tmp_path / "out" / "mask.zarr").read_labels(Box((0, 0, 0), hu.shape))
    np.testing.assert_array_equal(labels, expected_labels(hu))  # the stand-in model's closed form
    assert set(np.unique(labels)) == {0, 1, 2, 3}

    seg = hd.seg.segread(tmp_path / "out" / "seg.dcm")
    uids = [s["uid"] for s in slices]
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    np.testing.assert_array_equal(got, labels)
    # each frame references the source image at its own position
    by_uid = {s["uid"]: s["position"] for s in slices}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float),
                                   by_uid[ref], atol=1e-4)
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == pydicom.dcmread(slices[0]["path"]).StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(slices[0]["path"]).SeriesInstanceUID
    described = [(d.SegmentNumber, d.SegmentLabel, d.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning,
                  d.SegmentedPropertyTypeCodeSequence[0].CodeValue) for d in seg.SegmentSequence]
    assert described == [(1, "fat", "Tissue", "55603005"), (2, "soft_tissue", "Tissue", "87784001"),
                         (3, "liver", "Anatomical Structure", "10200004")]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("hu-threshold", "2.1")
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    dciodvfy(tmp_path / "out" / "seg.dcm")
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["input"]["format"] == "dicom" and record["input"]["sop_instance_uids"] == uids
    shutil.copy(tmp_path / "out" / "seg.dcm", tmp_path / "ct" / "seg.dcm")  # a SEG is not an image series
    assert open_dicom_series(tmp_path / "ct").meta["sop_instance_uids"] == uids


def test_a_source_image_replaced_before_the_seg_is_written_is_refused(tmp_path: Path) -> None:
    slices = write_series(tmp_path / "ct", hu_volume((4, 16, 16)))
    scene = open_dicom_series(tmp_path / "ct")
    spec = ModelSpec.model_validate({"name": "m", "spatial_dims": 3, "weights": "m.ts", "tile": 8,
                                     "input": {"bands": [{"name": "ct"}]},
                                     "classes": [{"name": "background"}, {"name": "organ"}]})
    store = MaskStore.create(tmp_path / "mask.zarr", (4, 16, 16), (4, 16, 16), spec.class_names, save_scores=False,
                             attrs={})
    store.write(Box((0, 0, 0), (4, 16, 16)), np.ones((4, 16, 16), np.uint8))
    ds = pydicom.dcmread(slices[2]["path"])
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(slices[2]["path"])
    with pytest.raises(InputError, match=rf"{slices[2]['path'].name} \(slice 3\) changed since the run read it"):
        DicomSegSink.for_scene(scene, spec).write(store, tmp_path)
    assert not (tmp_path / "seg.dcm").exists()


def test_the_seg_of_pydicoms_ct_series_is_valid_and_the_read_back_catches_a_wrong_voxel(tmp_path: Path) -> None:
    scene = open_dicom_series(CT5N)
    spec = ModelSpec.model_validate({"name": "m", "version": "1", "spatial_dims": 3, "weights": "m.ts",
                                     "input": {"bands": [{"name": "ct"}]}, "tile": 8,
                                     "classes": [{"name": n} for n in ("background", "bone", "kidney", "thing x")]})
    store = MaskStore.create(tmp_path / "mask.zarr", (5, 16, 16), (5, 16, 16), spec.class_names, save_scores=False,
                             attrs={})
    labels = np.zeros((5, 16, 16), np.uint8)
    labels[0:3, 3:9, 2:7] = 1
    labels[3, 10:14, 10:13] = 2  # not symmetric in z: a reversed slice order shows
    store.write(Box((0, 0, 0), (5, 16, 16)), labels)
    sink = DicomSegSink.for_scene(scene, spec)
    path = sink.write(store, tmp_path)
    dciodvfy(path)
    seg = hd.seg.segread(path)
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=scene.meta["sop_instance_uids"],
                                            combine_segments=True)
    np.testing.assert_array_equal(got, labels)
    assert list(seg.get_segment_numbers()) == [1, 2, 3]  # the empty class too
    labels[4, 0, 0] = 3
    store.write(Box((0, 0, 0), (5, 16, 16)), labels)
    with pytest.raises(OutputError, match=r"does not read back as written \(1 voxels differ"):
        sink._verify(path, store)


def test_segment_codes_by_table_by_the_standards_context_groups_and_the_fallback() -> None:
    def pair(name: str) -> tuple[str, str]:
        category, kind = segment_codes(name)
        return category.meaning, kind.value

    assert pair("Fat") == ("Tissue", "55603005")
    assert pair("bone") == ("Tissue", "3138006")
    assert pair("Kidney") == ("Anatomical Structure", "64033007")
    assert pair("lesion") == ("Morphologically Abnormal Structure", "52988006")
    assert pair("tumour") == ("Morphologically Abnormal Structure", "108369006")
    assert pair("air") == ("Substance", "15158005")
    assert pair("class 7") == ("Tissue", "85756007")
