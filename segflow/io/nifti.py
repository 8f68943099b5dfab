"""NIfTI-1 / NIfTI-2 images (``.nii``, ``.nii.gz``) → lazy ``(C, Z, Y, X)`` :class:`Scene`, read by slabs.

Axes and world. A NIfTI array is ``(i, j, k[, t/c])`` with ``i`` varying fastest on disk; the
scene presents it as ``(C, z, y, x) = (c, k, j, i)`` (a lazy transposition, no copy on disk or
in memory beyond the slab read). The file's voxel-to-world affine ``A`` (RAS+ millimetres) is
nibabel's ``img.affine``: the sform when ``sform_code != 0``, else the qform when ``qform_code
!= 0``, else nibabel's pixdim-only fallback (``Nifti1Header.get_best_affine``). The scene's
:class:`~segflow.geometry.VolumeGeometry` affine is ``A`` with its first three columns permuted,
so that ``(z, y, x, 1)`` → world equals ``A @ (i, j, k, 1)`` with ``(i, j, k) = (x, y, z)``;
``spacing`` ``(dz, dy, dx)`` are the norms of those columns (the true world step of each axis).

Channels. A 3D image is one channel. The 4th dimension is the channel axis ``C``; more
generally the only non-spatial dimension larger than 1 is, so NIfTI "vector" images stored
5D as ``(i, j, k, 1, c)`` (time 1, components in the 5th) are ``c`` channels. Two non-spatial
dimensions larger than 1 (a time series of vectors) are refused. A 2D image (``dim[0] == 2``)
is refused: NIfTI files are read as volumes, and a single slice stored 3D (``nk == 1``) is a
volume of depth 1, which a 3D model evaluates with windows of depth 1 (the tile is clipped to
the scene; a ``fixed_tile`` model's windows are padded to its tile).

Values. ``data`` holds the stored values in native byte order (big-endian files are swapped
slab by slab). ``scl_slope``/``scl_inter`` are the scene's ``scales``/``offsets``, decided by
nibabel's rule (``get_slope_inter``: slope 0 or non-finite = no scaling; a non-finite
intercept with a valid slope is refused), so :meth:`Scene.scaled` (what a model is fed unless
its package says ``values: raw``) gives nibabel's ``get_fdata(dtype=np.float32)`` values,
computed in float32 (within one float32 ulp of nibabel's float64-then-round). No nodata value:
NaN/inf voxels of float data are nodata (:attr:`Scene.valid`).

Reading cost. Each dask chunk is a slab of whole ``k`` planes (all channels): about 64 MiB of
stored data for ``.nii.gz``, 16 MiB for ``.nii`` (``slab_bytes``). A read of a box reads the
slabs it crosses through nibabel's ``ArrayProxy``: for an uncompressed ``.nii`` only their
bytes. A ``.nii.gz`` cannot seek: every read decompresses the stream from its start up to the
last byte it needs (for a 4D image, up to the last channel's planes), so reading a volume by
``n`` slabs decompresses about ``n/2`` times its size, and a run with many chunks over a large
``.nii.gz`` spends that again per chunk; ``gunzip`` such a file to ``.nii`` first (reads then
cost their own bytes). Opening decompresses the whole stream once (4 MiB at a time) to catch a
truncated or corrupt file (gzip's CRC) before a run starts. Measured on a 256³ int16
``.nii.gz`` (32 MiB of voxels, 25 MB on disk), peak RSS above the interpreter with numpy,
dask and nibabel loaded, reading every voxel once: ``img.get_fdata()`` +160 MiB (0.8 s),
``np.asanyarray(img.dataobj)`` +64 MiB (0.7 s); this reader by its default slab (the whole
32 MiB) +73 MiB (2.0 s, 0.7 s of it the check at open), by 64-plane slabs (8 MiB) +25 MiB
(2.9 s), by 16-plane slabs (2 MiB) +13 MiB (4.9 s: the repeated decompression).

``Scene.meta`` keys: ``format`` = ``"nifti"``; ``header``: what a writer needs to give a
label map the input's exact geometry, JSON-ready (see :func:`header_fields`): ``version`` (1
or 2), ``shape`` and ``dtype`` (nibabel's, e.g. ``">i2"``), ``datatype``, ``pixdim`` (8),
``xyzt_units``, ``dim_info``, ``qform_code``, ``quatern`` (b, c, d), ``qoffset`` (x, y, z),
``sform_code``, ``srow`` (3×4), ``affine`` (nibabel's ``img.affine``), ``scl_slope``/``scl_inter``
(None when not scaled); ``compressed`` (bool), ``slab`` (planes per dask chunk).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any, cast

import dask.array as da
import nibabel as nib
import numpy as np
from dask.base import tokenize
from nibabel.arrayproxy import ArrayProxy
from nibabel.filebasedimages import ImageFileError
from nibabel.openers import ImageOpener

from ..errors import InputError
from ..geometry import VolumeGeometry
from ..scene import Scene

__all__ = ["SLAB_BYTES", "header_fields", "is_nifti_name", "open_nifti"]

SLAB_BYTES = 64 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_PIECE = 4 << 20


def is_nifti_name(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a NIfTI file: ``.nii`` or ``.nii.gz``, any letter case."""
    name = os.fspath(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _finite(value: Any) -> float | None:
    number = float(value)
    return number if np.isfinite(number) else None


def header_fields(hdr: nib.Nifti1Header) -> dict[str, Any]:
    """The header fields a label map needs to sit exactly on an image's voxels, as JSON values.

    ``hdr`` is the header as stored in the file (read with nibabel's checks and fixes, as
    ``nib.load`` reads it). Raw fields, not matrices rebuilt from them, so that a writer
    reproduces the qform (its quaternion, offsets and qfac) and the sform bit for bit.
    Non-finite numbers become None.
    """
    slope, inter = hdr.get_slope_inter()
    return {
        "version": 2 if isinstance(hdr, nib.Nifti2Header) else 1,
        "shape": [int(s) for s in hdr.get_data_shape()],
        "dtype": hdr.get_data_dtype().str,
        "datatype": int(hdr["datatype"]),
        "pixdim": [_finite(v) for v in hdr["pixdim"]],
        "xyzt_units": int(hdr["xyzt_units"]),
        "dim_info": int(hdr["dim_info"]),
        "qform_code": int(hdr["qform_code"]),
        "quatern": [_finite(hdr[f"quatern_{a}"]) for a in "bcd"],
        "qoffset": [_finite(hdr[f"qoffset_{a}"]) for a in "xyz"],
        "sform_code": int(hdr["sform_code"]),
        "srow": [[_finite(v) for v in hdr[f"srow_{a}"]] for a in "xyz"],
        "affine": [[float(v) for v in row] for row in hdr.get_best_affine()],
        "scl_slope": slope,
        "scl_inter": inter,
    }


class _SlabReader:
    """Array-like ``(C, Z, Y, X)`` over a NIfTI file: ``reader[c, z, y, x]`` reads that box with nibabel.

    The stored values (no scaling), in native byte order. Each read opens the file anew (a
    fresh ``ArrayProxy``), so the reader is picklable and safe to share between threads.
    """

    def __init__(self, path: str, file_shape: tuple[int, ...], dtype: np.dtype, offset: int,
                 channel_axis: int | None):
        self.path = path
        self.file_shape = file_shape
        self.file_dtype = dtype
        self.offset = offset
        self.channel_axis = channel_axis
        self.dtype = dtype.newbyteorder("=")
        channels = 1 if channel_axis is None else file_shape[channel_axis]
        self.shape = (channels, file_shape[2], file_shape[1], file_shape[0])
        self.ndim = 4

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (4 - len(key))
        drop = tuple(n for n, k in enumerate(key) if isinstance(k, int | np.integer))
        cs, zs, ys, xs = (slice(int(k), int(k) + 1) if n in drop else k for n, k in enumerate(key))
        file_key: list[Any] = [xs, ys, zs]
        for axis in range(3, len(self.file_shape)):
            file_key.append(cs if axis == self.channel_axis else 0)
        proxy = ArrayProxy(self.path, (self.file_shape, self.file_dtype, self.offset, 1.0, 0.0), mmap=False)
        block = np.asarray(proxy[tuple(file_key)])  # (i, j, k[, c])
        if self.channel_axis is None:
            block = block.transpose(2, 1, 0)[np.newaxis][cs]
        else:
            block = block.transpose(3, 2, 1, 0)
        block = block.astype(self.dtype, copy=False)
        return block[tuple(0 if n in drop else slice(None) for n in range(4))] if drop else block


def _fail(path: Path, what: str, fix: str) -> InputError:
    return InputError(f"{path}: {what}; {fix}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _gzip_payload_size(path: Path) -> int:
    """Decompress ``path`` once (4 MiB at a time) and return its size; refuse a truncated or corrupt stream."""
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while piece := stream.read(_PIECE):
                total += len(piece)
    except (EOFError, OSError, zlib.error) as exc:
        raise _fail(path, f"the gzip stream is truncated or corrupt (Python's gzip: {_one_line(exc)})",
                    "re-create or re-download the file") from None
    return total


def _check_compression(path: Path) -> bool:
    """Whether ``path`` is gzip-compressed, refusing a name that says otherwise."""
    with path.open("rb") as f:
        head = f.read(2)
    if not head:
        raise _fail(path, "is empty (0 bytes)", "re-create or re-download it")
    gz = path.name.lower().endswith(".gz")
    if head == _GZIP_MAGIC and not gz:
        raise _fail(path, "is gzip-compressed but named .nii", "rename it to .nii.gz")
    if gz and head != _GZIP_MAGIC:
        raise _fail(path, "is named .nii.gz but is not gzip-compressed", "rename it to .nii if it is NIfTI")
    return gz


def _load(path: Path) -> tuple[nib.Nifti1Image | nib.Nifti2Image, nib.Nifti1Header]:
    """nibabel's image for ``path`` and its header as stored (nothing but headers is read), or one
    line saying why it is not a NIfTI image or why its header is unusable (nibabel computes the
    affine and the scaling as it loads: a broken qform or scl_inter fails here)."""
    try:
        img = nib.load(str(path))
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):  # a CIFTI-2 file is a .nii too
            raise _fail(path, f"is a {type(img).__name__}, not a single-file NIfTI image",
                        "convert it to NIfTI (.nii or .nii.gz)")
        with ImageOpener(str(path)) as stream:  # the image's own header may be adjusted for writing
            header = img.header_class.from_fileobj(stream)
    except InputError:
        raise
    except ImageFileError as exc:
        raise _fail(path, f"is not a NIfTI-1/NIfTI-2 image nibabel can read ({_one_line(exc)})",
                    "expected a .nii or .nii.gz NIfTI file") from None
    except Exception as exc:  # nibabel's HeaderDataError, ValueError (a qform's quaternion) and others
        raise _fail(path, f"its header cannot be used ({_one_line(exc)})",
                    "fix the header (qform/sform, datatype, scl_slope/scl_inter) and save it again") from None
    return img, header


def _channel_axis(path: Path, shape: tuple[int, ...]) -> int | None:
    """The file axis holding the channels (None: one channel), refusing shapes that are not volumes."""
    if any(s < 1 for s in shape):
        raise _fail(path, f"has a dimension of size 0 (shape {shape})", "re-create the file with every dimension >= 1")
    if len(shape) < 3:
        raise _fail(path, f"is a {len(shape)}D NIfTI image (shape {shape}); segflow reads NIfTI files as volumes",
                    f"for a 3D model save it as a volume of one slice (shape {(*shape, 1, 1)[:3]}), for a 2D model "
                    "convert it to a GeoTIFF")
    extra = [axis for axis in range(3, len(shape)) if shape[axis] > 1]
    if len(extra) > 1:
        raise _fail(path, f"has shape {shape}: {len(extra)} non-spatial dimensions larger than 1 (dims "
                          f"{', '.join(str(a + 1) for a in extra)}) but segflow reads one channel dimension",
                    "keep one, e.g. one time point: nibabel img.slicer[..., t, :]")
    if extra:
        return extra[0]
    return 3 if len(shape) > 3 else None


def _check_dtype(path: Path, hdr: nib.Nifti1Header, dtype: np.dtype) -> None:
    if dtype.fields is not None or dtype.kind not in "iuf":
        raise _fail(path, f"holds {hdr.get_value_label('datatype')} voxels, not one real number per voxel",
                    "convert it, e.g. complex to magnitude, RGB to a 4th dimension of 3 channels")


def _geometry(path: Path, hdr: nib.Nifti1Header) -> VolumeGeometry:
    which = ("sform" if int(hdr["sform_code"]) != 0 else "qform" if int(hdr["qform_code"]) != 0
             else "pixdim (no qform/sform code)")
    affine = np.asarray(hdr.get_best_affine(), dtype=np.float64)  # what nibabel's img.affine is (it loaded)
    fix = "fix the header's qform/sform (e.g. nibabel img.set_sform(affine, code=1)) and save it again"
    if not np.isfinite(affine).all():
        raise _fail(path, f"its voxel-to-world affine (from the {which}) is not finite: "
                          f"{np.array2string(affine, separator=',').replace(chr(10), '')}", fix)
    linear = affine[:3, :3]
    norms = np.linalg.norm(linear, axis=0)
    det = abs(float(np.linalg.det(linear)))
    if not (norms > 0).all() or det <= 1e-6 * float(np.prod(norms)):
        raise _fail(path, f"its voxel-to-world affine (from the {which}) is singular (columns "
                          f"{np.array2string(linear.T, separator=',').replace(chr(10), '')}, determinant {det:g}): "
                          "voxels have no volume in the world", fix)
    zyx = affine[:, [2, 1, 0, 3]]
    return VolumeGeometry.from_matrix(zyx.tolist(), (float(norms[2]), float(norms[1]), float(norms[0])), "RAS")


def open_nifti(path: str | os.PathLike[str], *, slab_bytes: int | None = None) -> Scene:
    """Open a NIfTI-1/-2 image (``.nii`` or ``.nii.gz``) lazily as a ``(C, Z, Y, X)`` volume scene.

    See the module docstring for the axis order, the affine, channels, values and the cost of
    reading a compressed file. ``slab_bytes`` is the stored size of one dask chunk (whole
    ``k`` planes, at least one): by default :data:`SLAB_BYTES` for ``.nii.gz`` (each read
    decompresses from the start, so few large reads), a quarter of it for ``.nii``.

    Raises :class:`InputError` (one line) for a missing file, a file nibabel cannot read as
    NIfTI, a header nibabel cannot use (a broken qform, an unknown datatype, a valid slope with a
    non-finite intercept), a truncated or corrupt file, a non-finite or singular affine, a 2D image, a
    dimension of size 0, two non-spatial dimensions larger than 1, and voxels that are not one
    real number.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input file not found: {path}; check the path")
    if not path.is_file():
        raise _fail(path, "is not a file", "pass a .nii or .nii.gz NIfTI file")
    compressed = _check_compression(path)
    size = _gzip_payload_size(path) if compressed else path.stat().st_size  # a cut stream is named as such
    img, hdr = _load(path)
    proxy = cast(ArrayProxy, img.dataobj)
    shape = tuple(int(s) for s in proxy.shape)
    channel_axis = _channel_axis(path, shape)
    dtype = np.dtype(proxy.dtype)  # as stored, byte order included
    _check_dtype(path, hdr, dtype)
    slope, inter = hdr.get_slope_inter()  # nibabel refused an invalid scaling as it loaded
    geometry = _geometry(path, hdr)
    offset = int(proxy.offset)
    needed = offset + int(np.prod(shape)) * dtype.itemsize
    if size < needed:
        raise _fail(path, f"is truncated: its {'decompressed ' if compressed else ''}size is {size} bytes but the "
                          f"header's {'x'.join(map(str, shape))} {dtype} voxels from byte {offset} need {needed}",
                    "re-create or re-download the file")
    reader = _SlabReader(str(path), shape, dtype, offset, channel_axis)
    channels, depth, height, width = reader.shape
    budget = slab_bytes or (SLAB_BYTES if compressed else SLAB_BYTES // 4)
    slab = max(1, min(depth, budget // max(1, channels * height * width * dtype.itemsize)))
    stat = path.stat()
    data = da.from_array(reader, chunks=(channels, slab, height, width), lock=False, asarray=True,
                         meta=np.empty((0, 0, 0, 0), dtype=reader.dtype),
                         name=f"nifti-{tokenize(str(path.resolve()), stat.st_size, stat.st_mtime_ns, slab)}")
    meta = {"format": "nifti", "header": header_fields(hdr), "compressed": compressed, "slab": slab}
    scales = (float(slope),) * channels if slope is not None else ()
    offsets = (float(inter),) * channels if inter is not None else ()
    return Scene(data=data, axes="CZYX", band_names=tuple(f"band{c + 1}" for c in range(channels)),
                 source=str(path), meta=meta, volume=geometry, scales=scales, offsets=offsets)
