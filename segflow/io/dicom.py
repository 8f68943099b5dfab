"""DICOM series → a lazy ``(1, Z, Y, X)`` volume :class:`~segflow.scene.Scene`.

A folder is scanned recursively (PACS exports nest ``patient/study/series/`` folders; no
DICOMDIR is needed, one present is ignored), reading headers only. Files are grouped by
SeriesInstanceUID; a folder holding several image series is refused with the list of them
(UID, modality, description, image count) unless one is chosen: ``series=UID`` here, or the
input name ``DICOM:<folder>:<SeriesInstanceUID>`` (:func:`dicom_series_name`), which
:func:`segflow.io.readers.open_scene` routes here and which, being the input's name, also
makes the choice part of the run's identity. Segmentation objects (Modality ``SEG``) and
non-image objects (SR, RTSTRUCT, DICOMDIR...) in the folder are not image series and are
passed over.

Slices are sorted by their position along the slice normal ``n = row × column`` (the
cross product of the two ImageOrientationPatient direction cosines), ascending, so voxel
index ``z`` is the ``z``-th slice in that order. A series that is not one regular grid is
refused, each with what was found and what to do: several orientations (a localizer
mixed in), different sizes or pixel spacings, two images at one position (several volumes
in one series: phases, echoes), positions that drift sideways off the normal (gantry tilt:
resample first), missing slices (a gap that is a whole number of steps) and uneven
spacing; multi-frame (enhanced) images are not supported and are refused. (Those header
checks live in :mod:`segflow.io._dicom_series`.)

Pixels are read lazily, one dask chunk per slab of whole slices (each DICOM file decoded
at most once per chunk read). Each slice's RescaleSlope/RescaleIntercept is applied at the
reader (they may differ from slice to slice): the scene holds modality values (Hounsfield
units for CT), ``int16`` when every slope and intercept is an integer and every possible
stored value maps into int16's range, ``float32`` otherwise; ``Scene.scales``/``offsets``
stay empty. Every voxel is valid (no nodata, no mask).

Geometry: :class:`~segflow.geometry.VolumeGeometry` whose affine maps voxel ``(z, y, x, 1)``
to RAS+ millimetres: DICOM's patient frame is LPS, so ``RAS = diag(-1, -1, 1) · LPS``; ``x``
runs along the row direction (PixelSpacing[1] apart), ``y`` along the column direction
(PixelSpacing[0] apart), ``z`` along the slice normal, from the first slice's
ImagePositionPatient (the centre of its first pixel). Spacing is ``(dz, dy, dx)`` in mm.

``Scene.meta`` (JSON-ready, it goes into run.json): ``format`` ``"dicom"``, ``folder``,
``series_uid``, ``study_uid``, ``frame_of_reference_uid``, ``modality``,
``series_description``, ``sop_class_uid``, ``files`` (absolute paths in z order),
``sop_instance_uids`` (in z order), ``dtype``, ``rescale`` (``{"slope", "intercept"}``, or
``"per-slice"``), ``units`` and ``identity`` (a SHA-256 over the files' names, sizes,
modification times and SOP instance UIDs: a folder's name alone does not identify its
content). The DICOM SEG writer (:mod:`segflow.io.dicom_seg`) reads ``files`` and
``sop_instance_uids``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pydicom
from dask.base import tokenize

from ..errors import InputError
from ..geometry import VolumeGeometry
from ..scene import Scene
from ._dicom_series import Image, check_uniform, looks_dicom, read_header, sorted_geometry, value_type

__all__ = [
    "DICOM_PREFIX",
    "SeriesInfo",
    "dicom_series_name",
    "is_dicom_input",
    "list_series",
    "open_dicom_input",
    "open_dicom_series",
]

DICOM_PREFIX = "DICOM:"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_SLAB_BYTES = 16 * 2**20  # target size of one dask chunk of whole slices
_LISTED = 10  # series named in a message


# ---------------------------------------------------------------------------------------------- names


def dicom_series_name(folder: str | os.PathLike[str], series: str | None = None) -> str:
    """The input name of one series of a folder: ``DICOM:<folder>:<SeriesInstanceUID>`` (or ``DICOM:<folder>``).

    Give it anywhere an input path goes (``tile_infer``, ``--input``); the CLI's ``--series`` builds it.
    """
    return f"{DICOM_PREFIX}{os.fspath(folder)}" + (f":{series}" if series else "")


def _parse_name(name: str) -> tuple[Path, str | None]:
    """``DICOM:<folder>[:<uid>]`` or a plain folder → ``(folder, uid or None)``."""
    if not name.upper().startswith(DICOM_PREFIX):
        return Path(name), None
    rest = name[len(DICOM_PREFIX):]
    folder, sep, uid = rest.rpartition(":")
    if sep and folder and _UID.match(uid):
        return Path(folder), uid
    return Path(rest), None


def _files(folder: Path) -> list[Path]:
    """Every regular file under ``folder``, recursively, hidden names skipped, in a stable order."""
    out: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
    return out


def is_dicom_input(path: Path) -> bool:
    """Does ``path`` name a DICOM folder (or a ``DICOM:`` name)? Registered with :func:`~segflow.io.readers.open_scene`.

    A folder is one when a file under it starts like a DICOM file, or when it holds no file at
    all (then the reader says so). Zarr stores and other folders go to GDAL.
    """
    text = str(path)
    if text.upper().startswith(DICOM_PREFIX):
        return True
    if not path.is_dir() or any((path / marker).exists() for marker in ("zarr.json", ".zgroup", ".zarray")):
        return False
    files = _files(path)
    return not files or any(looks_dicom(f) for f in files)


def open_dicom_input(path: Path) -> Scene:
    """The opener :func:`~segflow.io.readers.open_scene` calls: a folder, or ``DICOM:<folder>[:<uid>]``."""
    folder, series = _parse_name(str(path))
    return open_dicom_series(folder, series)


@dataclass(frozen=True)
class SeriesInfo:
    """One image series of a folder: its UID, modality, description and number of images."""

    uid: str
    modality: str
    description: str
    images: int

    def describe(self) -> str:
        what = " ".join(p for p in (self.modality, repr(self.description) if self.description else "") if p)
        return f"--series {self.uid} ({what}, {self.images} image{'s' if self.images != 1 else ''})"


def _scan(folder: Path) -> tuple[dict[str, list[Image]], int]:
    """Image headers by series UID, and how many DICOM objects were found (images or not)."""
    if not folder.is_dir():
        raise InputError(f"DICOM input {folder} is not a folder; give the folder that holds the series' files")
    series: dict[str, list[Image]] = {}
    found = 0
    for path in _files(folder):
        image = read_header(path, folder)
        if image is None:
            continue
        found += 1
        if image.is_image:
            series.setdefault(image.series_uid, []).append(image)
    return series, found


def _infos(series: dict[str, list[Image]]) -> list[SeriesInfo]:
    return sorted((SeriesInfo(uid, imgs[0].modality, imgs[0].description, len(imgs)) for uid, imgs in series.items()),
                  key=lambda s: (-s.images, s.uid))


def _listing(infos: Sequence[SeriesInfo]) -> str:
    shown = "; ".join(i.describe() for i in infos[:_LISTED])
    return shown + (f"; and {len(infos) - _LISTED} more" if len(infos) > _LISTED else "")


def list_series(folder: str | os.PathLike[str]) -> list[SeriesInfo]:
    """The image series under ``folder``, the largest first."""
    return _infos(_scan(Path(folder))[0])


def _choose(folder: Path, series: dict[str, list[Image]], found: int, uid: str | None) -> list[Image]:
    if not series:
        what = f" ({found} DICOM objects, none an image: reports, structure sets, DICOMDIR...)" if found else ""
        raise InputError(f"no DICOM images in {folder}{what}; give the folder that holds the series' image files")
    infos = _infos(series)
    if uid is not None:
        if uid not in series:
            raise InputError(f"DICOM series {uid} is not in {folder}; it holds: {_listing(infos)}")
        return series[uid]
    if len(series) > 1:
        raise InputError(f"{folder} holds {len(series)} DICOM image series; pick one: {_listing(infos)}")
    return next(iter(series.values()))


# ---------------------------------------------------------------------------------------------- pixels


class _SliceReader:
    """Array-like ``(1, Z, Y, X)`` over the sorted files: ``reader[...]`` decodes only the slices it needs."""

    def __init__(self, images: Sequence[Image], dtype: np.dtype, where: str):
        self.images = tuple(images)
        self.dtype = dtype
        self.where = where
        self.shape = (1, len(images), images[0].rows, images[0].cols)
        self.ndim = 4

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (4 - len(key))
        zkey = key[1]
        zs = range(self.shape[1])[zkey] if isinstance(zkey, slice) else [int(zkey)]
        stack = np.empty((1, len(zs), *self.shape[2:]), dtype=self.dtype)
        for n, z in enumerate(zs):
            stack[0, n] = self._slice(z)
        return stack[(key[0], slice(None) if isinstance(zkey, slice) else 0, key[2], key[3])]

    def _slice(self, z: int) -> np.ndarray:
        image = self.images[z]
        try:
            pixels = pydicom.dcmread(image.path).pixel_array
        except Exception as exc:  # pydicom and its decoders raise many types
            raise InputError(f"{self.where}: cannot read the pixels of {image.path} (slice {z + 1} of "
                             f"{self.shape[1]}): {type(exc).__name__}: {' '.join(str(exc).split())[:160]}; "
                             "check the file") from None
        if pixels.shape != self.shape[2:]:
            raise InputError(f"{self.where}: {image.path} decodes to {pixels.shape} pixels but its header says "
                             f"{self.shape[2:]}; the file is damaged")
        if self.dtype == np.int16:
            return (pixels.astype(np.int32) * int(image.slope) + int(image.intercept)).astype(np.int16)
        return (pixels.astype(np.float64) * image.slope + image.intercept).astype(np.float32)


def _identity(files: Sequence[str], stats: Sequence[tuple[int, int]], uids: Sequence[str]) -> str:
    """SHA-256 over each file's path, size, modification time and SOPInstanceUID, in z order."""
    h = hashlib.sha256()
    for file, (size, mtime), uid in zip(files, stats, uids, strict=True):
        h.update(f"{file}\0{size}\0{mtime}\0{uid}\n".encode())
    return h.hexdigest()


def open_dicom_series(folder: str | os.PathLike[str], series: str | None = None) -> Scene:
    """Open one DICOM series under ``folder`` lazily as a ``(1, Z, Y, X)`` scene (see the module docstring).

    ``series`` is its SeriesInstanceUID; needed only when the folder holds several image
    series. Raises :class:`~segflow.errors.InputError` (one line: what is wrong, what to do)
    for an empty folder, several series and no choice, and a series that is not one regular grid.
    """
    root = Path(folder)
    found, count = _scan(root)
    images = _choose(root, found, count, series)
    uid = images[0].series_uid
    where = f"DICOM series {uid} in {root}"
    check_uniform(images, where)
    images, lps, step = sorted_geometry(images, where)
    ras = np.eye(4)
    ras[:3] = _LPS_TO_RAS @ lps[:3]
    dy, dx = images[0].pixel_spacing  # type: ignore[misc]
    geometry = VolumeGeometry.from_matrix(ras.tolist(), (step, dy, dx))
    dtype = value_type(images)
    reader = _SliceReader(images, dtype, where)
    slab = max(1, min(len(images), _SLAB_BYTES // (images[0].rows * images[0].cols * dtype.itemsize)))
    files = [str(i.path.resolve()) for i in images]
    stats = [(st.st_size, st.st_mtime_ns) for st in map(os.stat, files)]
    uids = [i.sop_uid for i in images]
    data = da.from_array(reader, chunks=(1, slab, images[0].rows, images[0].cols), lock=False, asarray=True,
                         meta=np.empty((0, 0, 0, 0), dtype=dtype), name=f"dicom-{tokenize(files, stats, str(dtype))}")
    slopes = {(i.slope, i.intercept) for i in images}
    rescale: dict[str, float] | str = ({"slope": images[0].slope, "intercept": images[0].intercept}
                                       if len(slopes) == 1 else "per-slice")
    first = images[0]
    meta: dict[str, Any] = {
        "format": "dicom", "folder": str(root.resolve()), "series_uid": uid, "study_uid": first.study_uid,
        "frame_of_reference_uid": first.frame_of_reference, "modality": first.modality,
        "series_description": first.description, "sop_class_uid": first.sop_class, "dtype": str(dtype),
        "rescale": rescale, "units": first.units, "files": files,
        "sop_instance_uids": uids, "identity": _identity(files, stats, uids),
    }
    return Scene(data=data, axes="CZYX", band_names=((first.modality or "image").lower(),), source=str(root),
                 meta=meta, volume=geometry)
