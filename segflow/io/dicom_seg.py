"""``seg.dcm``: a DICOM Segmentation (SEG) of a DICOM series, built with highdicom from the source images.

What goes in:

- Type BINARY, one segment per non-background class (class 0 is the background: no
  segment; segment number = class index, so segments are 1..K-1 in the model's class order,
  empty ones included, each labelled with the class name). BINARY rather than LABELMAP: the
  label-map SEG (DICOM Supplement 243, highdicom >= 0.23) is new, and most viewers and PACS
  in use (3D Slicer's dcmqi, OHIF before v3.9, Horos/OsiriX, older dicom3tools' ``dciodvfy``)
  read only BINARY/FRACTIONAL SEG; bit-packed BINARY frames are small, and frames with no
  voxel of a segment are left out (``omit_empty_frames``). Nodata voxels (255 in the store,
  which a DICOM series does not produce) are written as no segment.
- A multi-label model (classes that may overlap, :mod:`segflow.multilabel`) gets one segment per
  class, the first included (segment number = class index + 1), from the store's ``present`` planes;
  BINARY segments may overlap, so a voxel may be in several.
- Frames reference the source images by SOPInstanceUID: frame ``z`` of the label volume is
  the ``z``-th file of ``Scene.meta["files"]`` (the reader's slice order along the normal),
  and highdicom copies that image's plane position. Patient, study and frame of reference
  come from the source images; nothing is converted between LPS and RAS here (the
  positions are the source's own).
- Segment descriptions: coded concepts from :data:`SEGMENT_TYPES` (class names that are
  not the standard's own words: ``fat`` → SCT "Adipose tissue"...), else the class name
  looked up by name in the DICOM context groups of segmentation property types (CID
  7191-7198, e.g. ``liver`` → CID 7192 Anatomical Structure / Liver), else the generic
  Tissue / Tissue. The recommended display colour is the class colour (CIELab).
- Algorithm identification: the model package's name and version, family Artificial
  Intelligence (DCM 123110), source ``segflow <version>``; algorithm type AUTOMATIC.
- UIDs are derived from the run's fingerprint: writing the same run again gives the same
  series and instance UIDs (a PACS stores it once).

Memory: highdicom takes the whole label volume, so it is assembled here from the store by
slabs of slices (uint8, ``Z·Y·X`` bytes, plus one slab); the build adds about 1.5× that, and
the read-back compares slab by slab (bounded). Measured on 300 × 512 × 512 labels (75 MiB, 3
classes): peak RSS +251 MiB over the whole write (about 3.4× the label volume; labels +140,
build +110, read-back +0), 6.1 s, a 19 MiB seg.dcm. A multi-label volume is K times that (one byte per
voxel and class).

After writing (atomically), the file is read back with ``highdicom.seg.segread``: its
label volume per source SOPInstanceUID must equal the store's exactly, and its segment
numbers, labels and referenced series must be the ones written; otherwise
:class:`~segflow.errors.OutputError` and nothing is published.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from .. import __version__
from ..errors import InputError, OutputError
from ..labels import LABEL_NODATA
from ..tiling import Box
from .atomic import atomic_path
from .mask_store import MaskStore

if TYPE_CHECKING:
    from ..models.package import ModelSpec
    from ..scene import Scene

__all__ = ["SEGMENT_TYPES", "DicomSegSink", "segment_codes"]

SEGMENT_TYPES: dict[str, tuple[str, str]] = {
    # class name (lower case, "_" between words) → (CID 7150 category keyword, SNOMED CT keyword of
    # pydicom's codes.SCT); for names that are not the standard's own words. Other names are looked
    # up in CID 7191-7198 by name (liver, kidney, soft_tissue, lesion, cyst...).
    "air": ("Substance", "Air"),
    "fat": ("Tissue", "AdiposeTissue"),
    "adipose": ("Tissue", "AdiposeTissue"),
    "bone": ("Tissue", "BoneTissue"),
    "muscle": ("Tissue", "MuscleTissue"),
    "vessel": ("Tissue", "BloodVessel"),
    "vessels": ("Tissue", "BloodVessel"),
    "tumor": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "tumour": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "body": ("AnatomicalStructure", "EntireBody"),
    "lungs": ("AnatomicalStructure", "Lung"),
    "kidneys": ("AnatomicalStructure", "Kidney"),
}
_CATEGORY_OF_GROUP = {  # context group of property types → its category in CID 7150, in lookup order
    "cid7191": "Tissue",
    "cid7192": "AnatomicalStructure",
    "cid7194": "MorphologicallyAbnormalStructure",
    "cid7197": "BodySubstance",
    "cid7198": "Substance",
    "cid7193": "PhysicalObject",
}
_FALLBACK = ("Tissue", "Tissue")
_SLAB_BYTES = 16 * 2**20  # store reads and read-back comparisons, per slab of slices
_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def _key(name: str) -> str:
    return "_".join(name.strip().lower().replace("-", " ").split())


def segment_codes(class_name: str) -> tuple[hd.sr.CodedConcept, hd.sr.CodedConcept]:
    """The (category, type) coded concepts of a class, by :data:`SEGMENT_TYPES`, CID 7191-7198, else Tissue."""
    key = _key(class_name)
    category_type = SEGMENT_TYPES.get(key)
    if category_type is not None:
        category, kind = category_type
        return _concept(getattr(codes.cid7150, category)), _concept(getattr(codes.SCT, kind))
    camel = "".join(part.capitalize() for part in key.split("_"))
    for group, category in _CATEGORY_OF_GROUP.items():
        concepts = getattr(codes, group).concepts
        if camel in concepts:
            return _concept(getattr(codes.cid7150, category)), _concept(concepts[camel])
    return _concept(getattr(codes.cid7150, _FALLBACK[0])), _concept(getattr(codes.SCT, _FALLBACK[1]))


def _concept(code: Any) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme_designator, meaning=code.meaning)


@dataclass(frozen=True)
class DicomSegSink:
    """``seg.dcm``: the labels as a DICOM SEG referencing the source series (see the module docstring)."""

    files: tuple[str, ...]
    sop_instance_uids: tuple[str, ...]
    series_uid: str
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int] | None, ...]
    model_name: str
    model_version: str
    name: str = "seg.dcm"
    multilabel: bool = False  # one (possibly overlapping) segment per class, class 0 included

    @classmethod
    def for_scene(cls, scene: Scene, spec: ModelSpec) -> DicomSegSink:
        """The sink of a scene opened by :func:`segflow.io.dicom.open_dicom_series` and a model."""
        meta = scene.meta
        return cls(files=tuple(meta["files"]), sop_instance_uids=tuple(meta["sop_instance_uids"]),
                   series_uid=str(meta["series_uid"]), class_names=tuple(spec.class_names),
                   colors=tuple(c.color for c in spec.classes), model_name=spec.name, model_version=spec.version,
                   multilabel=spec.multilabel)

    @property
    def entries(self) -> tuple[str, ...]:
        return (self.name,)

    def write(self, store: MaskStore, folder: Path) -> Path:
        sources = self._sources(store)
        labels = self._labels(store)
        seg = self._segmentation(sources, labels, store.fingerprint)
        del labels
        path = folder / self.name
        with atomic_path(path) as temp:
            seg.save_as(temp)
        del seg
        self._verify(path, store)
        return path

    # ------------------------------------------------------------------ steps

    def _sources(self, store: MaskStore) -> list[pydicom.Dataset]:
        """The source images' headers in the store's z order, checked to be the files the run read."""
        if store.shape[0] != len(self.files):
            raise InputError(f"the label volume has {store.shape[0]} slices but DICOM series {self.series_uid} "
                             f"has {len(self.files)} images; run again")
        out: list[pydicom.Dataset] = []
        for z, (file, uid) in enumerate(zip(self.files, self.sop_instance_uids, strict=True)):
            try:
                ds = pydicom.dcmread(file, stop_before_pixels=True)
            except Exception as exc:  # pydicom raises many types
                raise InputError(f"cannot read the source image {file} again to build seg.dcm "
                                 f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); it must stay in place "
                                 "until the run ends") from None
            if str(ds.get("SOPInstanceUID", "")) != uid or (int(ds.Rows), int(ds.Columns)) != store.shape[1:]:
                raise InputError(f"{file} (slice {z + 1}) changed since the run read it (it now holds "
                                 f"{ds.get('SOPInstanceUID', 'no SOPInstanceUID')}, expected {uid}); run again")
            out.append(ds)
        return out

    def _slab(self, store: MaskStore) -> int:
        return max(1, _SLAB_BYTES // max(1, math.prod(store.shape[1:])))

    def _first_segment(self) -> int:
        """The class of segment 1: class 1 (class 0 is the background), or class 0 for a multi-label model."""
        return 0 if self.multilabel else 1

    def _want(self, store: MaskStore, box: Box) -> np.ndarray:
        """What the SEG holds over ``box``: segment numbers ``box.shape`` (nodata 0), or for a multi-label
        store the per-segment masks ``(*box.shape, K)`` (0/1; nodata 0)."""
        if not store.multilabel:
            labels = store.read_labels(box)
            return np.where(labels == LABEL_NODATA, 0, labels)
        return np.moveaxis(store.read_present(box) == 1, 0, -1).astype(np.uint8)

    def _labels(self, store: MaskStore) -> np.ndarray:
        """The label volume ``(Z, Y, X)`` uint8 as segment numbers (class index; background and nodata 0);
        for a multi-label store ``(Z, Y, X, K)`` 0/1, one mask per segment."""
        if self.multilabel != store.multilabel:
            raise RuntimeError(f"the sink is for {'multi' if self.multilabel else 'single'}-label masks but "
                               f"{store.path} is not")
        if store.multilabel:
            depth, height, width = store.shape
            planes = np.empty((*store.shape, len(self.class_names)), dtype=np.uint8)
            step = max(1, self._slab(store) // len(self.class_names))
            for z0 in range(0, depth, step):
                z1 = min(depth, z0 + step)
                planes[z0:z1] = self._want(store, Box((z0, 0, 0), (z1, height, width)))
            return planes
        depth, height, width = store.shape
        labels = np.empty(store.shape, dtype=np.uint8)
        step = self._slab(store)
        for z0 in range(0, depth, step):
            z1 = min(depth, z0 + step)
            slab = labels[z0:z1]
            slab[...] = store.read_labels(Box((z0, 0, 0), (z1, height, width)))
            slab[slab == LABEL_NODATA] = 0
        too_big = int(labels.max(initial=0))
        if too_big >= len(self.class_names):
            raise OutputError(f"the label volume holds class {too_big} but the model has {len(self.class_names)} "
                              "classes; the store does not belong to this model: run again into a new folder")
        return labels

    def _descriptions(self) -> list[hd.seg.SegmentDescription]:
        algorithm = hd.AlgorithmIdentificationSequence(
            name=self.model_name[:64], version=self.model_version[:64],
            family=codes.cid7162.ArtificialIntelligence, source=f"segflow {__version__}")
        out = []
        first = self._first_segment()
        for index, (name, color) in enumerate(zip(self.class_names, self.colors, strict=True)):
            if index < first:
                continue  # the background: voxels in no segment
            category, kind = segment_codes(name)
            out.append(hd.seg.SegmentDescription(
                segment_number=index + 1 - first, segment_label=name[:64], segmented_property_category=category,
                segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                display_color=hd.color.CIELabColor.from_rgb(*color) if color is not None else None))
        return out

    def _segmentation(self, sources: Sequence[pydicom.Dataset], labels: np.ndarray, fingerprint: str | None
                      ) -> hd.seg.Segmentation:
        seed = [fingerprint] if fingerprint else None
        try:
            return hd.seg.Segmentation(
                source_images=list(sources), pixel_array=labels,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=self._descriptions(),
                series_instance_uid=generate_uid(entropy_srcs=[*seed, "series"] if seed else None),
                series_number=1, sop_instance_uid=generate_uid(entropy_srcs=[*seed, "instance"] if seed else None),
                instance_number=1, manufacturer="segflow", manufacturer_model_name=self.model_name[:64],
                software_versions=f"segflow {__version__}", device_serial_number="0",
                content_label="SEGFLOW", content_description=f"{self.model_name} {self.model_version}"[:64],
                series_description=f"segflow {self.model_name}"[:64], omit_empty_frames=True)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise InputError(f"cannot build a DICOM SEG on series {self.series_uid}: highdicom says "
                             f"{' '.join(str(exc).split())[:200]}") from None

    def _verify(self, path: Path, store: MaskStore) -> None:
        """Read ``path`` back with highdicom: segments and, slab by slab, labels as in the store."""
        try:
            seg = hd.seg.segread(path, lazy_frame_retrieval=True)
            numbers = list(seg.get_segment_numbers())
            names = [seg.get_segment_description(n).segment_label for n in numbers]
            referenced = [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence]
            depth, height, width = store.shape
            step = max(1, self._slab(store) // (len(self.class_names) if self.multilabel else 1))
            for z0 in range(0, depth, step):
                z1 = min(depth, z0 + step)
                got = seg.get_pixels_by_source_instance(
                    source_sop_instance_uids=list(self.sop_instance_uids[z0:z1]),
                    combine_segments=not self.multilabel, dtype=np.uint8)
                want = self._want(store, Box((z0, 0, 0), (z1, height, width)))
                if not np.array_equal(got, want):
                    bad = int(np.count_nonzero(got != want))
                    raise _damaged(path, f"{bad} voxels differ from mask.zarr in slices {z0}:{z1}")
        except OutputError:
            raise
        except Exception as exc:  # highdicom and pydicom raise many types for damaged files
            raise _damaged(path, f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}") from None
        if seg.SOPClassUID != _SEG_SOP_CLASS or referenced != [self.series_uid]:
            raise _damaged(path, f"SOP class {seg.SOPClassUID}, referenced series {referenced}")
        classes = self.class_names[self._first_segment():]
        if numbers != list(range(1, len(classes) + 1)) or names != [n[:64] for n in classes]:
            raise _damaged(path, f"segments {list(zip(numbers, names, strict=True))}")


def _damaged(what: Path, detail: str) -> OutputError:
    return OutputError(f"{what} does not read back as written ({detail}); the disk may be full or failing: "
                       "check the filesystem and run again (nothing was published)")
