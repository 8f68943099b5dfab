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

__all__ = ["input_identity", "run_fingerprint"]

_PROBE = 1 << 20  # bytes hashed at each end of an input


def input_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Size, modification time and a digest of the first and last MiB of a file.

    Cheap for inputs of any size, and it changes when the file is rewritten (new mtime) or its
    header or tail change (headers hold the georeferencing and the block offsets). For names
    that are not plain files (GDAL virtual paths) the name alone is used.
    """
    p = Path(path)
    try:
        stat = p.stat()
    except OSError:
        return {"name": str(path)}
    digest = hashlib.sha256()
    with open(p, "rb") as f:
        digest.update(f.read(_PROBE))
        if stat.st_size > _PROBE:
            f.seek(max(_PROBE, stat.st_size - _PROBE))
            digest.update(f.read(_PROBE))
    return {"name": p.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "probe_sha256": digest.hexdigest()}


def run_fingerprint(inputs: Mapping[str, Mapping[str, Any]], model: Mapping[str, Any],
                    parameters: Mapping[str, Any]) -> str:
    """SHA-256 (hex) over the inputs' identities, the model's digests, the parameters and segflow's version."""
    record = {"segflow": __version__, "inputs": dict(inputs), "model": dict(model), "parameters": dict(parameters)}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()
