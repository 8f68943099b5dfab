"""``labels.nii.gz``: a volume's labels as a NIfTI label map on exactly the input's voxels.

What is written. The labels of ``mask.zarr`` as stored: uint8 class ids (``0`` = the model's
first class, usually background) and :data:`~segflow.labels.LABEL_NODATA` (255) where there
was no prediction (NaN/inf input voxels), never remapped, so that no voxel claims a class the
model did not give it. The header copies the input's geometry field for field: shape (the
spatial ``dim``; a 4D input's channels are not a dimension of the labels), ``pixdim`` (qfac
included), the qform (quaternion, offsets, code) and the sform (rows, code) as stored,
``xyzt_units`` and ``dim_info``; so every reader (nibabel, ITK/SimpleITK, FSL, ITK-SNAP, 3D
Slicer) places each label voxel where it placed the input's voxel, whichever of qform and
sform it prefers. A NIfTI-2 input gives a NIfTI-1 label map when NIfTI-1 holds its geometry
exactly (every dimension <= 32767, every pixdim/quatern/qoffset/srow number a float32: many
tools, SimpleITK 2.5 among them, read NIfTI-1 only), else a NIfTI-2 one. ``intent_code`` is
``NIFTI_INTENT_LABEL`` (1002), ``scl_slope``/``scl_inter`` are 1/0 (values are the ids),
``descrip`` lists the class ids and names as far as its 80 bytes go, and a NIfTI extension of
code 6 (comment) holds the whole table as JSON: ``{"segflow": {"labels": {"0": {"name": ...,
"color": [r, g, b] or null}, ...}, "nodata": 255, "model": ...}}``. NIfTI has no standard
place for class names; viewers show the numbers.

A multi-label model (classes that may overlap, :mod:`segflow.multilabel`) gives a 4D one-hot image
instead: dimensions ``(i, j, k, K)``, volume ``t = c`` being class ``c``'s plane (1 present, 0
absent, 255 no prediction), ``pixdim[4]`` 1 and no time unit; ``descrip`` reads ``segflow MODEL
multi-label: t0 NAME; t1 ...`` and the JSON extension has ``"multilabel": true``. On disk NIfTI's
``(i, j, k, t)`` Fortran order is the store's ``(K, z, y, x)`` C order, so it is streamed in the
same way, class after class.

A volume that did not come from a NIfTI file (a DICOM series) gets a header made from its
:class:`~segflow.geometry.VolumeGeometry`: the affine as sform and as qform (shears, which a
qform cannot hold, are dropped from the qform only, as nibabel's ``set_qform`` does), both
with code 1 (scanner), units mm, NIfTI-1 unless a dimension exceeds NIfTI-1's 32767.

How. The label map is streamed: header, then the store's labels slab by slab of whole ``z``
planes (about :data:`SLAB_BYTES`), into one gzip stream. The store is ``(z, y, x)`` in C order,
which is byte for byte NIfTI's ``(i, j, k)`` in its on-disk (Fortran) order, so no voxel is
reordered and memory stays bounded by the slab whatever the volume: measured peak RSS while
writing and reading back +56 MiB for 256³ labels, +74 MiB for 512³ (128 MiB), +73 MiB for
768³ (432 MiB). The gzip stream has no name and
mtime 0: the same labels give the same bytes. Before returning, the file is read back as a
stream (header bytes, every voxel against the store, gzip's CRC at the end) and opened with
nibabel, whose shape, dtype, codes and affine must be the expected ones.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import nibabel as nib
import numpy as np

from ..errors import OutputError
from ..geometry import VolumeGeometry
from ..labels import LABEL_NODATA
from ..tiling import Box
from .mask_store import MaskStore
from .nifti import header_fields

if TYPE_CHECKING:
    from ..models.package import ModelSpec
    from ..scene import Scene

__all__ = ["NIFTI_INTENT_LABEL", "NiftiLabelSink", "header_from_geometry", "nifti_label_sink", "write_nifti_labels"]

NIFTI_INTENT_LABEL = 1002
SLAB_BYTES = 16 << 20
_NIFTI1_MAX = 32767


def header_from_geometry(geometry: VolumeGeometry, shape_zyx: Sequence[int]) -> dict[str, Any]:
    """Header fields (as :func:`segflow.io.nifti.header_fields` gives them) for a volume not read from NIfTI."""
    if geometry.frame != "RAS":
        raise ValueError(f"volume affines are RAS+ by convention, got frame {geometry.frame!r}")
    if len(shape_zyx) != 3:
        raise ValueError(f"a NIfTI label map needs a (z, y, x) volume, got shape {tuple(shape_zyx)}")
    ijk = tuple(int(s) for s in reversed(shape_zyx))
    hdr = nib.Nifti2Header() if max(ijk) > _NIFTI1_MAX else nib.Nifti1Header()
    affine = np.asarray(geometry.affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    hdr.set_data_shape(ijk)
    hdr.set_data_dtype(np.uint8)
    hdr.set_sform(affine, code=1)
    hdr.set_qform(affine, code=1, strip_shears=True)
    hdr.set_xyzt_units("mm")
    return header_fields(hdr)


def _number(value: float | None) -> float:
    return 0.0 if value is None else float(value)


def _class_table(class_names: Sequence[str], colors: Sequence[tuple[int, int, int] | None], model: str,
                 multilabel: bool = False) -> tuple[bytes, nib.nifti1.Nifti1Extension]:
    """``descrip`` (at most 79 ASCII bytes) and the JSON comment extension holding the whole class table."""
    if multilabel:
        text = f"segflow {model} multi-label: " + "; ".join(f"t{i} {n}" for i, n in enumerate(class_names))
    else:
        listed = "; ".join(f"{i} {n}" for i, n in enumerate(class_names)) + f"; {LABEL_NODATA} none"
        text = f"segflow {model}: {listed}"
    raw = text.encode("ascii", "replace")
    descrip = raw if len(raw) <= 79 else raw[:76] + b"..."
    table: dict[str, Any] = {"segflow": {"labels": {str(i): {"name": n, "color": list(c) if c else None}
                                                    for i, (n, c) in enumerate(zip(class_names, colors, strict=True))},
                                         "nodata": LABEL_NODATA, "model": model}}
    if multilabel:  # "labels" keys are then the index along the 4th dimension
        table["segflow"].update(multilabel=True, values={"0": "absent", "1": "present"})
    content = json.dumps(table, ensure_ascii=False).encode("utf-8")
    content += b" " * (-(len(content) + 8) % 16)  # esize is a multiple of 16: pad with JSON whitespace
    return descrip, nib.nifti1.Nifti1Extension("comment", content)


def _fits_nifti1(fields: Mapping[str, Any]) -> bool:
    """Whether NIfTI-1 holds these geometry fields exactly: dimensions <= 32767, every number a float32."""
    numbers = [*fields["pixdim"], *fields["quatern"], *fields["qoffset"], *(v for row in fields["srow"] for v in row)]
    return (max(fields["shape"][:3]) <= _NIFTI1_MAX
            and all(v is None or float(np.float32(v)) == float(v) for v in numbers))


def build_header(fields: Mapping[str, Any], shape_zyx: Sequence[int], class_names: Sequence[str],
                 colors: Sequence[tuple[int, int, int] | None], model: str, *, multilabel: bool = False
                 ) -> nib.Nifti1Header:
    """The label map's header: the input's geometry fields, uint8, intent label, the class table.

    ``multilabel``: 4D ``(i, j, k, K)``, one volume per class (module docstring).
    """
    ijk = tuple(int(s) for s in reversed(shape_zyx))
    if list(ijk) != list(fields["shape"][:3]):
        raise RuntimeError(f"mask store (z, y, x) {tuple(shape_zyx)} does not match the NIfTI input's (i, j, k) "
                           f"{tuple(fields['shape'][:3])}")
    hdr = nib.Nifti2Header() if fields["version"] == 2 and not _fits_nifti1(fields) else nib.Nifti1Header()
    hdr.set_data_shape((*ijk, len(class_names)) if multilabel else ijk)
    hdr.set_data_dtype(np.uint8)
    pixdim = [_number(v) for v in fields["pixdim"]]
    if multilabel:
        pixdim[4] = 1.0  # the class axis: a step of one class, no unit
    hdr["pixdim"] = pixdim
    for axis, value in zip("bcd", fields["quatern"], strict=True):
        hdr[f"quatern_{axis}"] = _number(value)
    for axis, value in zip("xyz", fields["qoffset"], strict=True):
        hdr[f"qoffset_{axis}"] = _number(value)
    for axis, row in zip("xyz", fields["srow"], strict=True):
        hdr[f"srow_{axis}"] = [_number(v) for v in row]
    for key in ("qform_code", "sform_code", "xyzt_units", "dim_info"):
        hdr[key] = int(fields[key])
    if multilabel:
        hdr["xyzt_units"] = int(fields["xyzt_units"]) & 0x07  # the spatial unit; the 4th axis is no time
    hdr["intent_code"] = NIFTI_INTENT_LABEL
    hdr["intent_name"] = b"labels"
    hdr["scl_slope"], hdr["scl_inter"] = 1.0, 0.0
    descrip, extension = _class_table(class_names, colors, model, multilabel)
    hdr["descrip"] = descrip
    hdr.extensions.append(extension)
    return hdr


def _header_bytes(hdr: nib.Nifti1Header) -> bytes:
    """Everything before the voxels: header, extension flag and extensions, padded to ``vox_offset``."""
    hdr["vox_offset"] = 0  # nibabel sets the smallest offset past the extensions
    buffer = io.BytesIO()
    hdr.write_to(buffer)
    head = buffer.getvalue()
    return head + b"\0" * (int(hdr["vox_offset"]) - len(head))


def _slabs(shape: tuple[int, ...], slab_bytes: int) -> list[Box]:
    depth, height, width = shape
    step = max(1, slab_bytes // max(1, height * width))
    return [Box((z0, 0, 0), (min(z0 + step, depth), height, width)) for z0 in range(0, depth, step)]


def _damaged(path: Path, detail: str) -> OutputError:
    return OutputError(f"{path} does not read back as written ({detail}); the disk may be full or failing: "
                       "check the filesystem and run again (nothing was published)")


def _voxels(store: MaskStore, boxes: Sequence[Box]) -> Iterator[tuple[Box, np.ndarray]]:
    """The store's voxels in NIfTI's on-disk order, slab by slab: labels; or each class's plane in turn."""
    for k in range(int(store.present.shape[0])) if store.multilabel else [None]:
        for box in boxes:
            voxels = store.read_labels(box) if k is None else store.read_present(box, k)
            yield box, np.ascontiguousarray(voxels, dtype=np.uint8)


def write_nifti_labels(store: MaskStore, path: Path, hdr: nib.Nifti1Header, *, slab_bytes: int = SLAB_BYTES
                       ) -> None:
    """Stream the store's ``(z, y, x)`` labels (a multi-label store's ``(K, z, y, x)`` planes) into ``path``
    (``.nii.gz``) under ``hdr``, then read it back."""
    head = _header_bytes(hdr)
    boxes = _slabs(store.shape, slab_bytes)
    with path.open("wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as stream:
            stream.write(head)
            for _, voxels in _voxels(store, boxes):
                stream.write(voxels.data)  # no copy
        raw.flush()
        os.fsync(raw.fileno())
    verify_nifti_labels(path, store, head, boxes, hdr)


def verify_nifti_labels(path: Path, store: MaskStore, head: bytes, boxes: Sequence[Box], hdr: nib.Nifti1Header
                        ) -> None:
    """Read ``path`` back as a stream against ``head`` and the store, then check what nibabel makes of it."""
    try:
        with gzip.open(path, "rb") as stream:
            if stream.read(len(head)) != head:
                raise _damaged(path, "the header differs from the one written")
            for box, want in _voxels(store, boxes):
                got = np.frombuffer(stream.read(want.nbytes), dtype=np.uint8)
                if got.size != want.size or not np.array_equal(got, want.reshape(-1)):
                    bad = int(np.count_nonzero(got != want.reshape(-1)[:got.size])) + want.size - got.size
                    raise _damaged(path, f"{bad} voxels differ from mask.zarr in z {box.start[0]}:{box.stop[0]}")
            if stream.read(1):
                raise _damaged(path, "bytes after the last voxel")
        img = cast(nib.Nifti1Image, nib.load(str(path)))
        got_affine = np.asarray(img.affine)
    except OutputError:
        raise
    except (EOFError, OSError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        raise _damaged(path, " ".join(str(exc).split())[:200]) from None
    want_shape = tuple(int(s) for s in reversed(store.shape))
    if store.multilabel:
        want_shape += (int(store.present.shape[0]),)
    checks = {
        "shape": (tuple(img.shape), want_shape),
        "dtype": (img.get_data_dtype().str, np.dtype(np.uint8).str),
        "qform/sform codes": ((int(img.header["qform_code"]), int(img.header["sform_code"])),
                              (int(hdr["qform_code"]), int(hdr["sform_code"]))),
    }
    for what, (got_value, want_value) in checks.items():
        if got_value != want_value:
            raise _damaged(path, f"nibabel reads {what} {got_value}, expected {want_value}")
    if not np.array_equal(got_affine, hdr.get_best_affine()):
        raise _damaged(path, f"nibabel reads the affine {got_affine.tolist()}, expected "
                             f"{hdr.get_best_affine().tolist()}")


@dataclass(frozen=True)
class NiftiLabelSink:
    """``labels.nii.gz``: the labels on the input volume's exact voxels and world (see the module docstring).

    ``header`` holds the geometry fields (:func:`segflow.io.nifti.header_fields` of the input,
    or :func:`header_from_geometry` for a volume read from another format).
    """

    header: Mapping[str, Any] = field(hash=False)
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int] | None, ...]
    model: str = ""
    name: str = "labels.nii.gz"
    multilabel: bool = False  # a 4D image, one volume per class (module docstring)

    @property
    def entries(self) -> tuple[str, ...]:
        return (self.name,)

    def write(self, store: MaskStore, folder: Path) -> Path:
        path = folder / self.name
        if self.multilabel != store.multilabel:
            raise RuntimeError(f"the sink is for {'multi' if self.multilabel else 'single'}-label masks but "
                               f"{store.path} is not")
        hdr = build_header(self.header, store.shape, self.class_names, self.colors, self.model,
                           multilabel=self.multilabel)
        write_nifti_labels(store, path, hdr)
        return path


def nifti_label_sink(scene: Scene, spec: ModelSpec) -> NiftiLabelSink:
    """The label map of a volume scene: the input's own header fields for a NIfTI input, else its geometry's."""
    if scene.volume is None:
        raise ValueError("a NIfTI label map is made for volume scenes only")
    header = scene.meta.get("header") if scene.meta.get("format") == "nifti" else None
    if header is None:
        header = header_from_geometry(scene.volume, scene.spatial_shape)
    return NiftiLabelSink(header, tuple(spec.class_names), tuple(c.color for c in spec.classes), spec.name,
                          multilabel=spec.multilabel)
