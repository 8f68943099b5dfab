"""``seg.dcm`` written and read back in-process (segflow.io.dicom_seg): what each segment says of itself, the
UIDs a run gets, the frames left out, multi-label segments, store slabs, and every refusal. The end-to-end
run over a series, dciodvfy and the coded concepts are in test_dicom.py; the PACS round trip in test_pacs.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest

from segflow import __version__
from segflow.errors import InputError, OutputError
from segflow.io import dicom_seg
from segflow.io.dicom import open_dicom_series
from segflow.io.dicom_seg import DicomSegSink, segment_codes
from segflow.io.mask_store import MaskStore
from segflow.labels import LABEL_NODATA
from segflow.models.package import ModelSpec

from .test_dicom import CT5N, hu_volume, write_series

NAMES = ("background", "bone", "kidney", "thing x")
COLORS = ((0, 0, 0), (255, 0, 0), None, (0, 128, 255))


def _spec(names: tuple[str, ...] = NAMES, colors: tuple[tuple[int, int, int] | None, ...] = COLORS,
          multilabel: bool = False, name: str = "organs", version: str = "1.2") -> ModelSpec:
    classes = [{"name": n, **({"color": list(c)} if c is not None else {})} for n, c in zip(names, colors, strict=True)]
    return ModelSpec.model_validate({
        "name": name, "version": version, "spatial_dims": 3, "weights": "m.ts", "tile": 8,
        "input": {"bands": [{"name": "ct"}]}, "classes": classes,
        **({"output": {"activation": "sigmoid", "multilabel": True}} if multilabel else {})})


def _store(tmp: Path, labels: np.ndarray, *, fingerprint: str | None = "run-1", planes: np.ndarray | None = None,
           names: tuple[str, ...] = NAMES) -> MaskStore:
    shape = labels.shape if planes is None else planes.shape[1:]
    store = MaskStore.create(tmp / "mask.zarr", shape, (2, *shape[1:]), names, save_scores=False,
                             attrs={"run_fingerprint": fingerprint} if fingerprint else {},
                             thresholds=None if planes is None else [0.5] * len(names))
    if planes is None:
        store.labels[:] = labels
    else:
        store.present[:] = planes
    return store


def _labels() -> np.ndarray:
    """CT5N's (5, 16, 16) grid: class 1 in slices 0-2, class 3 in slice 3 (not symmetric in z), class 2 empty."""
    labels = np.zeros((5, 16, 16), np.uint8)
    labels[0:3, 3:9, 2:7] = 1
    labels[3, 10:14, 10:13] = 3
    return labels


def _read(path: Path, uids: list[str], combine: bool = True) -> np.ndarray:
    seg = hd.seg.segread(path)
    return np.asarray(seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=combine,
                                                        dtype=np.uint8))


@pytest.fixture
def ct5n() -> tuple[DicomSegSink, list[str]]:
    scene = open_dicom_series(CT5N)
    return DicomSegSink.for_scene(scene, _spec()), list(scene.meta["sop_instance_uids"])


# ----------------------------------------------------------------------------- the sink of a scene


def test_for_scene_takes_the_series_the_classes_and_the_model(ct5n: tuple[DicomSegSink, list[str]]) -> None:
    sink, uids = ct5n
    scene = open_dicom_series(CT5N)
    assert sink.files == tuple(scene.meta["files"]) and sink.sop_instance_uids == tuple(uids)
    assert sink.series_uid == pydicom.dcmread(scene.meta["files"][0]).SeriesInstanceUID
    assert (sink.class_names, sink.colors, sink.model_name, sink.model_version) == (NAMES, COLORS, "organs", "1.2")
    assert (sink.name, sink.entries, sink.multilabel) == ("seg.dcm", ("seg.dcm",), False)
    assert DicomSegSink.for_scene(scene, _spec(multilabel=True)).multilabel


def test_class_names_are_keyed_by_words_whatever_their_case_spaces_and_hyphens() -> None:
    assert dicom_seg._key("  Soft-Tissue  ") == dicom_seg._key("soft tissue") == "soft_tissue"
    assert dicom_seg._key("Blood -Vessel") == "blood_vessel"
    category, kind = segment_codes(" Soft-Tissue ")
    assert (category.meaning, kind.meaning) == ("Tissue", "Soft tissue")
    assert segment_codes("Kidneys")[1].meaning == "Kidney"  # a table entry, by its key


# ----------------------------------------------------------------------------- what the file says


def test_segments_describe_their_class_colour_and_algorithm(tmp_path: Path, ct5n: tuple[DicomSegSink, list[str]]
                                                           ) -> None:
    sink, uids = ct5n
    path = sink.write(_store(tmp_path, _labels()), tmp_path)
    assert path == tmp_path / "seg.dcm"
    seg = hd.seg.segread(path)
    described = [(d.SegmentNumber, d.SegmentLabel, d.SegmentAlgorithmType) for d in seg.SegmentSequence]
    coded = [(c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning) for d in seg.SegmentSequence[:1]
             for c in (d.SegmentedPropertyCategoryCodeSequence[0], d.SegmentedPropertyTypeCodeSequence[0])]
    assert coded == [("85756007", "SCT", "Tissue"), ("3138006", "SCT", "Bone")]
    assert described == [(1, "bone", "AUTOMATIC"), (2, "kidney", "AUTOMATIC"), (3, "thing x", "AUTOMATIC")]
    red, blue = (hd.color.CIELabColor.from_rgb(*c).value for c in (COLORS[1], COLORS[3]))
    assert [int(v) for v in seg.SegmentSequence[0].RecommendedDisplayCIELabValue] == list(red)
    assert "RecommendedDisplayCIELabValue" not in seg.SegmentSequence[1]  # a class without a colour
    assert [int(v) for v in seg.SegmentSequence[2].RecommendedDisplayCIELabValue] == list(blue)
    for d in seg.SegmentSequence:
        algorithm = d.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("organs", "1.2")
        assert algorithm.AlgorithmSource == f"segflow {__version__}"
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # DCM Artificial Intelligence
    assert (seg.Manufacturer, seg.ManufacturerModelName, seg.SoftwareVersions) == (
        "segflow", "organs", f"segflow {__version__}")
    assert (seg.DeviceSerialNumber, seg.ContentLabel, seg.ContentDescription) == ("0", "SEGFLOW", "organs 1.2")
    assert (seg.SeriesDescription, int(seg.SeriesNumber), int(seg.InstanceNumber)) == ("segflow organs", 1, 1)
    assert seg.SegmentationType == "BINARY" and seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    np.testing.assert_array_equal(_read(path, uids), _labels())


def test_names_longer_than_dicom_allows_are_cut_to_64_characters(tmp_path: Path) -> None:
    long = "x" * 70
    scene = open_dicom_series(CT5N)
    sink = DicomSegSink.for_scene(scene, _spec(("background", "organ " + long), (None, None),
                                               name="m" + long, version="v" + long))
    labels = np.zeros((5, 16, 16), np.uint8)
    labels[2, 4:8, 4:8] = 1
    seg = hd.seg.segread(sink.write(_store(tmp_path, labels, names=sink.class_names), tmp_path))
    assert seg.SegmentSequence[0].SegmentLabel == ("organ " + long)[:64]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (("m" + long)[:64], ("v" + long)[:64])
    assert seg.ManufacturerModelName == ("m" + long)[:64]
    assert seg.SeriesDescription == f"segflow m{long}"[:64]
    assert seg.ContentDescription == f"m{long} v{long}"[:64]


def test_frames_without_a_voxel_of_their_segment_are_left_out(tmp_path: Path,
                                                               ct5n: tuple[DicomSegSink, list[str]]) -> None:
    sink, uids = ct5n
    seg = hd.seg.segread(sink.write(_store(tmp_path, _labels()), tmp_path))
    frames = [(int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
               f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
              for f in seg.PerFrameFunctionalGroupsSequence]
    assert sorted(frames) == sorted([(1, uids[0]), (1, uids[1]), (1, uids[2]), (3, uids[3])])
    assert int(seg.NumberOfFrames) == 4


def test_uids_come_from_the_runs_fingerprint(tmp_path: Path, ct5n: tuple[DicomSegSink, list[str]]) -> None:
    sink, _ = ct5n

    def uids(fingerprint: str | None, folder: str) -> tuple[str, str]:
        (tmp_path / folder).mkdir()
        seg = pydicom.dcmread(sink.write(_store(tmp_path / folder, _labels(), fingerprint=fingerprint),
                                         tmp_path / folder))
        return str(seg.SeriesInstanceUID), str(seg.SOPInstanceUID)

    first, again, other = uids("run-1", "a"), uids("run-1", "b"), uids("run-2", "c")
    assert first == again  # the same run written twice: a PACS stores it once
    assert first[0] != first[1] and other[0] != first[0] and other[1] != first[1]
    assert first == (pydicom.uid.generate_uid(entropy_srcs=["run-1", "series"]),
                     pydicom.uid.generate_uid(entropy_srcs=["run-1", "instance"]))
    unnamed, unnamed_again = uids(None, "d"), uids(None, "e")
    assert unnamed != unnamed_again and unnamed[0] != unnamed[1]  # no fingerprint: new UIDs each time


def test_nodata_voxels_are_in_no_segment_and_slabs_of_one_slice_give_the_same_file(
        tmp_path: Path, ct5n: tuple[DicomSegSink, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    sink, uids = ct5n
    labels = _labels()
    labels[4, 0:2, :] = LABEL_NODATA
    labels[0, 3, 2] = LABEL_NODATA  # inside the class-1 block
    (tmp_path / "whole").mkdir()
    whole = sink.write(_store(tmp_path / "whole", labels), tmp_path / "whole")
    want = np.where(labels == LABEL_NODATA, 0, labels)
    np.testing.assert_array_equal(_read(whole, uids), want)
    monkeypatch.setattr(dicom_seg, "_SLAB_BYTES", 16 * 16)  # one slice per read and per comparison
    assert sink._slab(_store(tmp_path, labels)) == 1
    (tmp_path / "slabs").mkdir()
    store = _store(tmp_path / "slabs", labels)
    np.testing.assert_array_equal(sink._labels(store), want)
    sliced = sink.write(store, tmp_path / "slabs")
    np.testing.assert_array_equal(_read(sliced, uids), want)
    monkeypatch.setattr(dicom_seg, "_SLAB_BYTES", 3 * 16 * 16 - 1)  # two slices: the last slab is short
    assert sink._slab(store) == 2
    np.testing.assert_array_equal(sink._labels(store), want)


def test_slabs_hold_as_many_slices_as_the_budget_allows(ct5n: tuple[DicomSegSink, list[str]]) -> None:
    sink, _ = ct5n
    assert sink._slab(SimpleNamespace(shape=(5, 16, 16))) == 16 * 2**20 // 256  # type: ignore[arg-type]
    assert sink._slab(SimpleNamespace(shape=(5, 8192, 8192))) == 1  # type: ignore[arg-type]  # over the budget: one
    assert sink._slab(SimpleNamespace(shape=(5, 0, 16))) == 16 * 2**20  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- multi-label


def test_a_multilabel_store_gives_one_possibly_overlapping_segment_per_class_class_0_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scene = open_dicom_series(CT5N)
    names = ("body", "bone", "kidney")
    sink = DicomSegSink.for_scene(scene, _spec(names, (None, (1, 2, 3), None), multilabel=True))
    planes = np.zeros((3, 5, 16, 16), np.uint8)
    planes[0, :, 2:14, 2:14] = 1  # body
    planes[1, 1:3, 4:8, 4:8] = 1  # bone, inside the body
    planes[2, 3, 9:12, 9:12] = 1  # kidney, inside the body
    planes[:, 4, 0, :] = LABEL_NODATA
    monkeypatch.setattr(dicom_seg, "_SLAB_BYTES", 2 * 3 * 16 * 16)  # two slices of three planes per read
    store = _store(tmp_path, np.zeros((5, 16, 16), np.uint8), planes=planes, names=names)
    want = np.moveaxis(planes == 1, 0, -1).astype(np.uint8)
    built = sink._labels(store)
    assert built.dtype == np.uint8  # one byte per voxel and class in memory, not eight
    np.testing.assert_array_equal(built, want)
    path = sink.write(store, tmp_path)
    seg = hd.seg.segread(path)
    assert [(d.SegmentNumber, d.SegmentLabel) for d in seg.SegmentSequence] == [(1, "body"), (2, "bone"),
                                                                                 (3, "kidney")]
    np.testing.assert_array_equal(_read(path, list(sink.sop_instance_uids), combine=False), want)


def test_a_sink_refuses_a_store_of_the_other_kind(tmp_path: Path, ct5n: tuple[DicomSegSink, list[str]]) -> None:
    sink, _ = ct5n
    planes = np.zeros((4, 5, 16, 16), np.uint8)
    (tmp_path / "multi").mkdir()
    with pytest.raises(RuntimeError, match=r"^the sink is for single-label masks but .*mask\.zarr is not$"):
        sink._labels(_store(tmp_path / "multi", np.zeros((5, 16, 16), np.uint8), planes=planes))
    multi = DicomSegSink.for_scene(open_dicom_series(CT5N), _spec(multilabel=True))
    with pytest.raises(RuntimeError, match=r"^the sink is for multi-label masks but .*mask\.zarr is not$"):
        multi._labels(_store(tmp_path, _labels()))


# ----------------------------------------------------------------------------- refusals


def test_a_store_of_another_slice_count_or_class_count_is_refused(tmp_path: Path,
                                                                   ct5n: tuple[DicomSegSink, list[str]]) -> None:
    sink, _ = ct5n
    (tmp_path / "short").mkdir()
    with pytest.raises(InputError) as err:
        sink.write(_store(tmp_path / "short", np.zeros((4, 16, 16), np.uint8)), tmp_path)
    assert str(err.value) == (f"the label volume has 4 slices but DICOM series {sink.series_uid} has 5 images; "
                              "run again")
    labels = _labels()
    labels[1, 1, 1] = 4  # a class the model does not have
    with pytest.raises(OutputError) as out:
        sink.write(_store(tmp_path, labels), tmp_path)
    assert str(out.value) == ("the label volume holds class 4 but the model has 4 classes; the store does not "
                              "belong to this model: run again into a new folder")
    assert not (tmp_path / "seg.dcm").exists()


def test_a_source_image_gone_or_of_another_size_is_refused(tmp_path: Path) -> None:
    slices = write_series(tmp_path / "ct", hu_volume((4, 16, 16)))
    sink = DicomSegSink.for_scene(open_dicom_series(tmp_path / "ct"), _spec(("background", "organ"), (None, None)))
    store = _store(tmp_path, np.ones((4, 16, 16), np.uint8), names=("background", "organ"))
    first = next(k for k, f in enumerate(sink.files) if Path(f) == slices[1]["path"])
    ds = pydicom.dcmread(slices[1]["path"])
    ds.Columns = 17
    ds.save_as(slices[1]["path"])
    with pytest.raises(InputError) as err:
        sink.write(store, tmp_path)
    assert str(err.value) == (f"{slices[1]['path']} (slice {first + 1}) changed since the run read it (it now holds "
                              f"{slices[1]['uid']}, expected {slices[1]['uid']}); run again")
    slices[1]["path"].unlink()
    with pytest.raises(InputError) as err:
        sink.write(store, tmp_path)
    assert str(err.value).startswith(f"cannot read the source image {slices[1]['path']} again to build seg.dcm "
                                     "(FileNotFoundError: [Errno 2] No such file or directory: ")
    assert str(err.value).endswith("); it must stay in place until the run ends")
    del ds.SOPInstanceUID
    ds.Columns = 16
    ds.save_as(slices[1]["path"], enforce_file_format=False)
    with pytest.raises(InputError, match=r"it now holds no SOPInstanceUID, expected "):
        sink.write(store, tmp_path)
    assert not (tmp_path / "seg.dcm").exists()


def test_highdicoms_refusal_is_one_input_error(tmp_path: Path, ct5n: tuple[DicomSegSink, list[str]]) -> None:
    sink, _ = ct5n
    sources = sink._sources(_store(tmp_path, _labels()))
    with pytest.raises(InputError) as err:
        sink._segmentation(sources, np.zeros((4, 16, 16), np.uint8), "run-1")  # one slice short
    message = str(err.value)
    with pytest.raises(ValueError) as cause:
        hd.seg.Segmentation(source_images=sources, pixel_array=np.zeros((4, 16, 16), np.uint8),
                            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                            segment_descriptions=sink._descriptions(), series_instance_uid=pydicom.uid.generate_uid(),
                            series_number=1, sop_instance_uid=pydicom.uid.generate_uid(), instance_number=1,
                            manufacturer="m", manufacturer_model_name="m", software_versions="1",
                            device_serial_number="0")
    assert message.endswith(" ".join(str(cause.value).split())[:200])  # highdicom's reason, on one line
    assert message.startswith(f"cannot build a DICOM SEG on series {sink.series_uid}: highdicom says ")
    assert "\n" not in message and len(message) <= len(f"cannot build a DICOM SEG on series {sink.series_uid}: "
                                                        "highdicom says ") + 200


# ----------------------------------------------------------------------------- read-back


def test_the_read_back_refuses_a_damaged_file_and_wrong_segments(tmp_path: Path,
                                                                  ct5n: tuple[DicomSegSink, list[str]]) -> None:
    sink, _ = ct5n
    store = _store(tmp_path, _labels())
    path = sink.write(store, tmp_path)
    sink._verify(path, store)
    good = path.read_bytes()

    def refused(detail: str) -> None:
        with pytest.raises(OutputError) as err:
            sink._verify(path, store)
        assert str(err.value) == (f"{path} does not read back as written ({detail}); the disk may be full or "
                                  "failing: check the filesystem and run again (nothing was published)")

    path.write_bytes(good[: len(good) // 2])
    try:
        hd.seg.segread(path, lazy_frame_retrieval=True).get_pixels_by_source_instance(
            source_sop_instance_uids=list(sink.sop_instance_uids), combine_segments=True)
    except Exception as exc:  # what highdicom says of the truncated file, quoted on one line
        refused(f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}")
    else:
        pytest.fail("highdicom read a truncated SEG")
    path.write_bytes(good)
    store.labels[4, 0, 0] = 3
    refused("1 voxels differ from mask.zarr in slices 0:5")
    store.labels[4, 0, 0] = 0
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(good))
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3"
    ds.save_as(path)
    refused("SOP class 1.2.840.10008.5.1.4.1.1.66.4, referenced series ['1.2.3']")
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(good))
    ds.SegmentSequence[1].SegmentLabel = "liver"
    ds.save_as(path)
    refused("segments [(1, 'bone'), (2, 'liver'), (3, 'thing x')]")


@pytest.mark.parametrize(("multilabel", "slab_slices", "reads"), [
    (False, 1, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]),
    (False, 2, [(0, 2), (2, 4), (4, 5)]),
    (True, 1, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]),  # a slab's budget covers every class's plane
    (True, 2, [(0, 2), (2, 4), (4, 5)]),
])
def test_the_store_is_read_and_compared_slab_by_slab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     multilabel: bool, slab_slices: int,
                                                     reads: list[tuple[int, int]]) -> None:
    """Memory: the label volume is built and read back in slabs of slices (each class's plane counted)."""
    scene = open_dicom_series(CT5N)
    sink = DicomSegSink.for_scene(scene, _spec(multilabel=multilabel))
    classes = len(NAMES) if multilabel else 1
    monkeypatch.setattr(dicom_seg, "_SLAB_BYTES", slab_slices * classes * 16 * 16)
    planes = np.zeros((len(NAMES), 5, 16, 16), np.uint8)
    planes[:, :, 4:9, 4:9] = 1
    store = _store(tmp_path, _labels(), planes=planes if multilabel else None)
    boxes: list[tuple[int, int]] = []
    read = "read_present" if multilabel else "read_labels"
    original = getattr(MaskStore, read)

    def recorded(self: MaskStore, box: Any, *args: Any) -> np.ndarray:
        boxes.append((box.start[0], box.stop[0]))
        return np.asarray(original(self, box, *args))

    monkeypatch.setattr(MaskStore, read, recorded)
    sink.write(store, tmp_path)
    assert boxes == reads + reads  # building the volume, then comparing what highdicom reads back
