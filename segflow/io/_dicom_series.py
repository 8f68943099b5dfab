"""Headers of a DICOM series and the checks that they form one regular grid (for :mod:`segflow.io.dicom`).

``Image`` holds what the reader needs from one file's header; :func:`check_uniform` and
:func:`sorted_geometry` refuse, each with one line saying what was found and what to do, a
series that is not one volume on a regular grid; :func:`value_type` picks the voxel type of
the rescaled values. Tolerances: positions within :data:`TOL_MM` mm or :data:`TOL_REL` of
the slice step (or pixel size, sideways), direction cosines within :data:`TOL_COS`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ..errors import InputError

__all__ = ["Image", "check_uniform", "looks_dicom", "read_header", "sorted_geometry", "value_type"]

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
TOL_MM = 0.02  # positions: absolute tolerance (DS values are often written with 2 decimals)
TOL_REL = 0.02  # ... and relative to the slice step or pixel size
TOL_COS = 1e-3  # direction cosines (about 0.06 degrees)


def looks_dicom(path: Path) -> bool:
    """A DICOM file by its first bytes: the ``DICM`` marker after the preamble, or a bare dataset."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or head[:2] in (b"\x08\x00", b"\x02\x00")


@dataclass(frozen=True)
class Image:
    """What the reader needs from one file's header (``None`` where the file does not say)."""

    path: Path
    shown: str  # the path under the folder, for messages
    series_uid: str
    sop_uid: str
    modality: str
    description: str
    is_image: bool
    frames: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    rows: int
    cols: int
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float
    bits_stored: int
    signed: bool
    samples: int
    transfer_syntax: str
    frame_of_reference: str
    study_uid: str
    sop_class: str
    units: str
    modality_lut: bool
    gantry_tilt: float


def _floats(ds: pydicom.Dataset, keyword: str, count: int, path: Path) -> tuple[float, ...] | None:
    if keyword not in ds or ds[keyword].VM == 0:
        return None
    try:
        values = tuple(float(v) for v in (ds[keyword].value if ds[keyword].VM > 1 else [ds[keyword].value]))
    except (TypeError, ValueError):
        raise InputError(f"{path}: {keyword} {ds[keyword].value!r} is not {count} numbers; fix or remove the "
                         "file") from None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise InputError(f"{path}: {keyword} {list(values)} is not {count} finite numbers; fix or remove the file")
    return values


def read_header(path: Path, root: Path) -> Image | None:
    """The header of ``path`` when it is a DICOM object with a series, else None."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        if not looks_dicom(path):
            return None
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # not DICOM after all
            return None
    except Exception as exc:  # pydicom raises many types for damaged files
        raise InputError(f"{path} is a DICOM file pydicom cannot read ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]}); remove or replace it") from None
    series_uid = str(ds.get("SeriesInstanceUID", "") or "")
    if not series_uid or "SOPInstanceUID" not in ds:
        return None
    sop_class = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", "") or "")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    spacing = _floats(ds, "PixelSpacing", 2, path)
    slope = _floats(ds, "RescaleSlope", 1, path)
    intercept = _floats(ds, "RescaleIntercept", 1, path)
    tilt = _floats(ds, "GantryDetectorTilt", 1, path)
    meta = getattr(ds, "file_meta", None)
    return Image(
        path=path, shown=os.path.relpath(path, root), series_uid=series_uid, sop_uid=str(ds.SOPInstanceUID),
        modality=modality,
        description=" ".join(str(ds.get("SeriesDescription", "") or "").split()),
        is_image=rows > 0 and cols > 0 and modality != "SEG" and sop_class != SEG_SOP_CLASS,
        frames=int(ds.get("NumberOfFrames", 1) or 1),
        position=_floats(ds, "ImagePositionPatient", 3, path),  # type: ignore[arg-type]
        orientation=_floats(ds, "ImageOrientationPatient", 6, path),
        rows=rows, cols=cols, pixel_spacing=spacing,  # type: ignore[arg-type]
        slope=slope[0] if slope else 1.0, intercept=intercept[0] if intercept else 0.0,
        bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16),
        signed=int(ds.get("PixelRepresentation", 0) or 0) == 1, samples=int(ds.get("SamplesPerPixel", 1) or 1),
        transfer_syntax=str(meta.get("TransferSyntaxUID", "")) if meta is not None else "",
        frame_of_reference=str(ds.get("FrameOfReferenceUID", "") or ""),
        study_uid=str(ds.get("StudyInstanceUID", "") or ""), sop_class=sop_class,
        units=str(ds.get("RescaleType", "") or ("HU" if modality == "CT" else "")),
        modality_lut="ModalityLUTSequence" in ds, gantry_tilt=tilt[0] if tilt else 0.0)


def _name(image: Image) -> str:
    return image.shown


def check_uniform(images: list[Image], where: str) -> None:
    first = images[0]
    multi = [i for i in images if i.frames > 1]
    if multi:
        raise InputError(f"{where}: {_name(multi[0])} is a multi-frame (enhanced) image of {multi[0].frames} frames; "
                         "segflow reads series of single-frame images: convert it first (e.g. dcm4che's emf2sf)")
    colour = [i for i in images if i.samples != 1]
    if colour:
        raise InputError(f"{where}: {_name(colour[0])} has {colour[0].samples} samples per pixel (colour); "
                         "segflow reads greyscale volumes (CT, MR, PET)")
    for i in images:
        if i.position is None or i.orientation is None or i.pixel_spacing is None:
            missing = [k for k, v in (("ImagePositionPatient", i.position), ("ImageOrientationPatient", i.orientation),
                                      ("PixelSpacing", i.pixel_spacing)) if v is None]
            raise InputError(f"{where}: {_name(i)} has no {', '.join(missing)}, so it cannot be placed in a volume "
                             "(a radiograph, secondary capture or screenshot?); pick another series or remove it")
        if i.modality_lut:
            raise InputError(f"{where}: {_name(i)} maps its values by a Modality LUT, which segflow does not apply; "
                             "convert the series to rescale slope/intercept first")
    sizes = sorted({(i.rows, i.cols) for i in images})
    if len(sizes) > 1:
        raise InputError(f"{where}: images differ in size ({', '.join(f'{c}x{r}' for r, c in sizes)} pixels); "
                         "a volume needs one size: pick another series or remove the odd images")
    spacing = np.array([i.pixel_spacing for i in images])
    if np.abs(spacing - spacing[0]).max() > 1e-4 * spacing[0].max():
        raise InputError(f"{where}: images differ in pixel spacing ({spacing.min(axis=0).tolist()} to "
                         f"{spacing.max(axis=0).tolist()} mm); resample the series to one grid first")
    cosines = np.array([i.orientation for i in images])
    if np.abs(cosines - cosines[0]).max() > TOL_COS:
        kinds = len({tuple(np.round(c, 2)) for c in cosines})
        raise InputError(f"{where}: images have {kinds} different orientations (ImageOrientationPatient), e.g. a "
                         "localizer mixed in; keep only the images of one stack, or pick another series")
    row, col = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])  # type: ignore[index]
    if (abs(np.linalg.norm(row) - 1) > TOL_COS or abs(np.linalg.norm(col) - 1) > TOL_COS
            or abs(row @ col) > TOL_COS):
        raise InputError(f"{where}: ImageOrientationPatient {list(first.orientation)} is not two orthogonal unit "  # type: ignore[arg-type]
                         "vectors; the files' geometry is damaged")
    frames = {i.frame_of_reference for i in images}
    if len(frames) > 1:
        raise InputError(f"{where}: images belong to {len(frames)} frames of reference (FrameOfReferenceUID); "
                         "a volume has one: pick another series")
    for syntax in sorted({i.transfer_syntax for i in images if i.transfer_syntax}):
        _check_decodable(syntax, where)


def _check_decodable(syntax: str, where: str) -> None:
    from pydicom.pixels import get_decoder

    uid = pydicom.uid.UID(syntax)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise InputError(f"{where}: pixel data in transfer syntax {uid} ({uid.name}) cannot be decoded by pydicom; "
                         "convert the series to an uncompressed syntax first (e.g. dcmtk's dcmdjpeg)") from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies)
        raise InputError(f"{where}: pixel data is {uid.name}, which pydicom decodes only with a plug-in ({needs}); "
                         "install one (e.g. pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)")


def sorted_geometry(images: list[Image], where: str) -> tuple[list[Image], np.ndarray, float]:
    """Images in order along the slice normal, the LPS affine over (z, y, x, 1) and the slice step (mm)."""
    orient = np.asarray(images[0].orientation, dtype=np.float64)
    row, col = orient[:3], orient[3:]
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    depth = [float(normal @ np.asarray(i.position)) for i in images]
    if len(images) == 1:
        raise InputError(f"{where}: the series has 1 image, not a volume; give a series of 2 or more slices")
    order = sorted(range(len(images)), key=lambda k: (depth[k], images[k].sop_uid))
    images = [images[k] for k in order]
    d = np.array([depth[k] for k in order])
    pos = np.array([i.position for i in images], dtype=np.float64)
    dy, dx = images[0].pixel_spacing  # type: ignore[misc]  # PixelSpacing: between rows, between columns
    gaps = np.diff(d)
    same = np.flatnonzero(gaps <= TOL_MM)
    if len(same):
        k = int(same[0])
        stacked = int(np.sum(np.abs(d - d[k]) <= TOL_MM))
        raise InputError(f"{where}: {stacked} images lie at one position ({d[k]:.2f} mm along the slice normal, "
                         f"e.g. {_name(images[k])} and {_name(images[k + 1])}): the series holds several volumes "
                         "(phases, echoes, repeats); put each volume in a folder of its own")
    step = float(np.median(gaps))
    tol = max(TOL_MM, TOL_REL * step)
    sideways = (pos - pos[0]) - np.outer(d - d[0], normal)
    drift = np.linalg.norm(sideways, axis=1)
    if drift.max() > max(TOL_MM, TOL_REL * min(dx, dy)):
        k = int(np.argmax(drift))
        angle = math.degrees(math.atan2(drift[k], d[k] - d[0]))
        stated = f", GantryDetectorTilt {images[0].gantry_tilt:g}°" if images[0].gantry_tilt else ""
        raise InputError(f"{where}: slices are not stacked along their normal (gantry tilt about {angle:.1f}°"
                         f"{stated}: {_name(images[k])} is {drift[k]:.2f} mm sideways of the first); the series needs "
                         "resampling to an orthogonal grid first (e.g. dcm2niix corrects gantry tilt; give its NIfTI)")
    for k, gap in enumerate(gaps):
        if abs(gap - step) <= tol:
            continue
        between = (f"between image {k + 1} ({_name(images[k])}, {d[k]:.2f} mm along the slice normal) and image "
                   f"{k + 2} ({_name(images[k + 1])}, {d[k + 1]:.2f} mm) of {len(images)} in slice order")
        steps = round(gap / step)
        if steps >= 2 and abs(gap - steps * step) <= tol:
            raise InputError(f"{where}: {steps - 1} slice{'s' if steps > 2 else ''} missing {between}: a gap of "
                             f"{gap:.2f} mm where slices are {step:.2f} mm apart; add the missing images to the "
                             "folder, or resample the series to a regular grid first")
        raise InputError(f"{where}: uneven slice spacing, {gap:.3f} mm {between} where slices are {step:.3f} mm "
                         "apart elsewhere; resample the series to a regular grid first (e.g. dcm2niix, SimpleITK)")
    mean_step = (d[-1] - d[0]) / (len(images) - 1)
    residual = np.abs(d - (d[0] + mean_step * np.arange(len(images))))
    if residual.max() > tol:  # gaps each close to the step but drifting as a whole
        k = int(np.argmax(residual))
        raise InputError(f"{where}: uneven slice spacing, image {k + 1} ({_name(images[k])}) is {residual[k]:.3f} mm "
                         f"off a regular {mean_step:.3f} mm grid; resample the series to a regular grid first")
    lps = np.eye(4)
    lps[:3, 0] = (pos[-1] - pos[0]) / (len(images) - 1)
    lps[:3, 1] = col * dy
    lps[:3, 2] = row * dx
    lps[:3, 3] = pos[0]
    return images, lps, float(mean_step)


def value_type(images: list[Image]) -> np.dtype:
    """int16 when every slice's rescale keeps integers inside int16, else float32."""
    low, high = math.inf, -math.inf
    for i in images:
        if not (float(i.slope).is_integer() and float(i.intercept).is_integer()):
            return np.dtype(np.float32)
        lo, hi = (-(2 ** (i.bits_stored - 1)), 2 ** (i.bits_stored - 1) - 1) if i.signed else (0, 2**i.bits_stored - 1)
        ends = (lo * i.slope + i.intercept, hi * i.slope + i.intercept)
        low, high = min(low, *ends), max(high, *ends)
    info = np.iinfo(np.int16)
    return np.dtype(np.int16) if info.min <= low and high <= info.max else np.dtype(np.float32)
