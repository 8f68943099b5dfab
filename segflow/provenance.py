"""The provenance block of ``run.json``: segflow's version, the input, the model, the parameters, the environment."""

from __future__ import annotations

import platform
from dataclasses import asdict
from typing import Any

import torch

from . import __version__
from .io.gdal_names import local_file, shown_name
from .models import ModelPackage
from .run_params import TileInferParams
from .tiling import WindowGrid

__all__ = ["provenance"]


def provenance(input_path: str, scene_meta: dict[str, Any], package: ModelPackage, params: TileInferParams,
               grid: WindowGrid, device: str, started: str) -> dict[str, Any]:
    """What ``run.json`` records of a run before its results: passwords of targets redacted."""
    p = asdict(params)
    p["bands"] = dict(params.bands)
    from .io.postgis import redact

    for target in ("postgis", "pacs"):  # never a password in run.json
        p[target] = None if p[target] is None else redact(p[target])
    return {
        "segflow_version": __version__,
        "started_utc": started,
        "input": {"path": shown_name(input_path), "size_bytes": _size(input_path), **scene_meta},
        "model": package.provenance(),
        "parameters": p,
        "effective": {"tile": list(grid.tile), "stride": list(grid.stride), "device": device},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "platform": platform.platform()},
    }


def _size(name: str) -> int | None:
    """Bytes of the local file holding input ``name`` (for a GDAL name, e.g. the zip archive), or None."""
    file = local_file(name)
    try:
        return None if file is None else file.stat().st_size
    except OSError:
        return None
