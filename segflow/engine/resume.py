"""Run identity: what makes two runs the same run, so that the second continues the first.

A run is identified by the content identity of its inputs, the model (weights and contract
digests) and every parameter that changes pixels or the store's layout. The same command
into the same output therefore finds the earlier attempt's store (by this fingerprint) and
computes only the chunks without a completion record; a different model or different
parameters start afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import __version__
from ..io.gdal_names import input_name, local_file

__all__ = ["input_identity", "run_fingerprint"]

_PROBE = 1 << 20  # bytes hashed at each end of an input


def _file_identity(p: Path) -> dict[str, Any] | None:
    try:
        stat = p.stat()
        digest = hashlib.sha256()
        with open(p, "rb") as f:
            digest.update(f.read(_PROBE))
            if stat.st_size > _PROBE:
                f.seek(max(_PROBE, stat.st_size - _PROBE))
                digest.update(f.read(_PROBE))
    except OSError:
        return None
    return {"name": p.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "probe_sha256": digest.hexdigest()}


def input_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Size, modification time and a digest of the first and last MiB of a file.

    Cheap for inputs of any size, and it changes when the file is rewritten (new mtime) or its
    header or tail change (headers hold the georeferencing and the block offsets). A GDAL name
    that is not a local file (``/vsizip/a.zip/x.tif``, ``NETCDF:"f.nc":var``) is identified
    by the name and the identity of the local file that holds it (``a.zip``, ``f.nc``); a name
    with no local file behind it (a remote source, a directory) by the name alone.
    """
    name = input_name(path)
    p = Path(name)
    try:
        plain = p.is_file()
    except OSError:
        plain = False
    if plain:
        return _file_identity(p) or {"name": name}
    holder = local_file(name)
    identity = None if holder is None else _file_identity(holder)
    return {"name": name} if identity is None else {"name": name, "file": identity}


def run_fingerprint(inputs: Mapping[str, Mapping[str, Any]], model: Mapping[str, Any],
                    parameters: Mapping[str, Any]) -> str:
    """SHA-256 (hex) over the inputs' identities, the model's digests, the parameters and segflow's version."""
    record = {"segflow": __version__, "inputs": dict(inputs), "model": dict(model), "parameters": dict(parameters)}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()
