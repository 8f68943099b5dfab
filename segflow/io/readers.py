"""Readers chosen by format: each turns a source into a lazy :class:`~segflow.scene.Scene`.

Nothing after :func:`open_scene` names a file format. A reader is registered with a test
(does this source look like mine?) and an opener; the first whose test passes opens the
source, and GDAL (every raster format it reads, by every name it takes) is the fallback.
The volume readers (NIfTI, DICOM series) register here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..scene import Scene
from .dicom import is_dicom_input, open_dicom_input
from .gdal_names import input_name
from .geotiff import open_geotiff
from .nifti import is_nifti_name, open_nifti

__all__ = ["open_scene", "register_reader"]

Opener = Callable[[Path], Scene]
_READERS: list[tuple[str, Callable[[Path], bool], Opener]] = []


def register_reader(name: str, accepts: Callable[[Path], bool], opener: Opener) -> None:
    """Add a reader, tried before the ones registered earlier and before GDAL."""
    _READERS.insert(0, (name, accepts, opener))


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a GDAL name longer than a file name may be
        return False


def open_scene(path: str | os.PathLike[str]) -> Scene:
    """Open ``path`` with the first reader that accepts it (GDAL's raster formats otherwise).

    ``path`` is a local path or any name GDAL opens (``/vsizip/archive.zip/scene.tif``,
    ``NETCDF:"file.nc":variable``); such names reach GDAL as the exact string given. The
    registered readers are offered local paths, and names ``READER:...`` addressed to one by its
    registered name (``DICOM:<folder>:<SeriesInstanceUID>``, one series of a DICOM folder).
    """
    name = input_name(path)
    local = Path(name)
    prefix, sep, _ = name.partition(":")
    for reader, _, opener in _READERS if sep and len(prefix) > 1 else ():
        if reader.upper() == prefix.upper():  # a name addressed to a reader, e.g. DICOM:<folder>:<SeriesUID>
            return opener(local)
    if _READERS and _exists(local):
        for _, accepts, opener in _READERS:
            if accepts(local):
                return opener(local)
    return open_geotiff(name)


register_reader("DICOM", is_dicom_input, open_dicom_input)  # a folder of one series, or DICOM:<folder>:<uid>
register_reader("NIfTI", is_nifti_name, open_nifti)  # .nii / .nii.gz, any letter case
