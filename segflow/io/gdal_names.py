"""GDAL's names for rasters: local paths, ``/vsi...`` paths and driver-prefixed subdataset names.

segflow accepts every name GDAL opens (``scene.tif``, ``/vsizip/archive.zip/scene.tif``,
``NETCDF:"file.nc":var``, ``HDF5:"file.h5"://path``, ``GTIFF_DIR:2:scene.tif``...). Such a
name must travel as the string it is (``pathlib.Path`` would fold ``//`` in
``/vsicurl/https://...``), and where it names a local file inside (the zip archive, the
netCDF file) that file's size and modification time identify the input for resumption.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["existing_file", "input_name", "local_file", "shown_name"]

# /vsi handlers whose path continues with a local file (an archive or a compressed file)
_ARCHIVE_PREFIX = re.compile(r"^/vsi(?:(?:zip|tar|gzip|7z|rar)/|subfile/\d+(?:_\d+)?,)", re.IGNORECASE)
_QUOTED = re.compile(r'"([^"]+)"')


def input_name(name: str | os.PathLike[str]) -> str:
    """The name as GDAL takes it: a path object as its string, a string unchanged."""
    return os.fspath(name)


def existing_file(candidate: str) -> Path | None:
    """``candidate`` as a path when it names an existing local file (not a directory), else None."""
    try:
        p = Path(candidate)
        return p if candidate and p.is_file() else None
    except (OSError, ValueError):
        return None


def local_file(name: str | os.PathLike[str]) -> Path | None:
    """The local file that holds the raster ``name`` names, or None (a remote or in-memory source).

    ``scene.tif`` → itself; ``/vsizip/a.zip/x.tif`` → ``a.zip``; ``NETCDF:"f.nc":var`` →
    ``f.nc``; ``GTIFF_DIR:2:scene.tif`` → ``scene.tif``. A directory (a Zarr store) is not a file.
    """
    text = input_name(name)
    direct = existing_file(text)
    if direct is not None:
        return direct
    match = _ARCHIVE_PREFIX.match(text)
    if match:
        rest = text[match.end():]
        if rest.startswith("{"):  # /vsizip/{/path/to/a.zip}/inner.tif
            inner, _, _ = rest[1:].partition("}")
            return existing_file(inner)
        parts = rest.split("/")
        for i in range(1, len(parts) + 1):  # the shortest prefix that is a file is the archive
            found = existing_file("/".join(parts[:i]) or "/")
            if found is not None:
                return found
        return None
    for quoted in _QUOTED.findall(text):  # NETCDF:"f.nc":var, HDF5:"f.h5"://path
        found = local_file(quoted)
        if found is not None:
            return found
    parts = text.split(":")  # GTIFF_DIR:2:scene.tif, HDF4_EOS:EOS_GRID:f.hdf:grid:field
    for i in range(1, len(parts)):
        for j in range(i + 1, len(parts) + 1):
            found = existing_file(":".join(parts[i:j]))
            if found is not None:
                return found
    return None


def shown_name(name: str | os.PathLike[str]) -> str:
    """How provenance records an input: a local file's absolute path, any other GDAL name as given."""
    text = input_name(name)
    p = Path(text)
    try:
        if p.exists():
            return str(p.resolve())
    except OSError:
        pass
    return text
